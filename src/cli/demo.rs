//! `jobdir demo`: jobs, real worker processes, one of them killed with SIGKILL mid-job, and the
//! proof that nothing was lost or written twice.
//!
//! Invariant kept here: the demo judges the store only by what it can check independently —
//! every result is recomputed, every execution and every accepted fulfilment is counted from
//! the workers' own records, every notification is checked against its target and value — and
//! exits non-zero when any check fails.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use jobdir::{Error, JobId, JobState, Store};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::output::human;
use super::{args, fail, log, usage};

pub const LONG_ABOUT: &str = "Show what the store survives, in a fresh temporary store.\n\n\
    Creates --jobs jobs (each with a notification target), starts --workers worker processes \
    (this same program) that each compute an iterated SHA-256 per job, kills one worker with \
    SIGKILL while it holds a job, starts a replacement, and measures how soon another worker \
    takes the killed worker's job over and fulfils it. Meanwhile it delivers every job's \
    notification in-process. Then it checks everything independently: every job fulfilled \
    exactly once with the right (recomputed) result, every notification delivered once with \
    the right value; it reports duplicated executions (allowed: the killed worker's job runs \
    twice) and the throughput, and exits non-zero if any check failed.\n\n\
    The store is a temporary directory, removed afterwards; with --dir (given on the command \
    line; $JOBDIR is ignored here) it is DIR/store, kept for inspection, with the workers' \
    execution records in DIR/executions.";

/// The demo workers' lease: short, so that even the cross-host path (expiry) would be quick.
const DEMO_LEASE: Duration = Duration::from_secs(5);
/// Threads creating the demo's jobs.
const CREATORS: u64 = 4;
/// How long the demo waits for any one phase before declaring it stuck.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of jobs to create
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    jobs: u64,
    /// Number of worker processes
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// SHA-256 rounds each job computes (its amount of work)
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// File to append `<job id>` to at the start of every execution
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// Lease length in seconds
    #[arg(long, value_name = "SECONDS", value_parser = args::seconds)]
    lease: Duration,
}

/// A demo job's answer: SHA-256 of `jobdir-demo:<n>`, hashed again `rounds - 1` times, in hex.
fn compute(n: u64, rounds: u32) -> String {
    let mut h = Sha256::digest(format!("jobdir-demo:{n}").as_bytes());
    for _ in 1..rounds {
        h = Sha256::digest(h);
    }
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn request_numbers(request: &Value) -> Option<(u64, u32)> {
    let n = request.get("n")?.as_u64()?;
    let rounds = u32::try_from(request.get("rounds")?.as_u64()?).ok()?;
    Some((n, rounds))
}

/// The hidden `demo-worker` command: pull, record the execution, compute, fulfil; print
/// `holding <id>` when a job is pulled and `done <id>` once its result is stored. Exits when
/// its stdin closes (the demo is over, or gone).
pub fn worker(dir: &Path, a: WorkerArgs) -> anyhow::Result<()> {
    let name = a.log.file_stem().map(|s| s.to_string_lossy().into_owned());
    log::set_prefix(format!(
        "[{} pid {}] ",
        name.unwrap_or_else(|| "worker".into()),
        std::process::id()
    ));
    let store = Store::builder(dir).lease(a.lease).open()?;
    let mut record = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .with_context(|| format!("open {}", a.log.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
        flag.store(true, Ordering::SeqCst);
    });
    let say = |line: String| -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()
    };
    while !stop.load(Ordering::SeqCst) {
        let Some(job) = store.pull_work_timeout(Duration::from_millis(100))? else {
            continue;
        };
        let id = job.id();
        say(format!("holding {id}"))?;
        record.write_all(format!("{id}\n").as_bytes())?;
        let (n, rounds) = request_numbers(job.request())
            .ok_or_else(|| anyhow::anyhow!("job {id} is not a demo job"))?;
        match job.fulfill(compute(n, rounds)) {
            Ok(()) => say(format!("done {id}"))?,
            Err(e @ (Error::LeaseLost(_) | Error::AlreadyFulfilled(_))) => {
                say(format!("refused {id}"))?;
                tracing::warn!("{e}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What the workers said, as the demo heard it.
#[derive(Default)]
struct Heard {
    /// Each worker's last line: `Some(job)` while it holds one.
    holding: HashMap<usize, Option<JobId>>,
    /// Accepted fulfilments per job.
    fulfils: HashMap<JobId, u32>,
    /// Fulfilments refused (the lease was lost first, or another worker's result was first).
    refused: u64,
}

struct Worker {
    index: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
}

fn spawn_worker(
    index: usize,
    store_dir: &Path,
    logs: &Path,
    heard: &Arc<Mutex<Heard>>,
) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe().context("find this executable")?;
    let mut child = Command::new(exe)
        .arg("--dir")
        .arg(store_dir)
        .arg("demo-worker")
        .arg("--log")
        .arg(logs.join(format!("worker-{index}.log")))
        .arg("--lease")
        .arg(DEMO_LEASE.as_secs_f64().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start a worker process")?;
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("worker {index} has no stdout"))?;
    let heard = Arc::clone(heard);
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut h = heard.lock().unwrap_or_else(PoisonError::into_inner);
            let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            let id = rest.parse::<JobId>().ok();
            match word {
                "holding" => {
                    h.holding.insert(index, id);
                }
                "done" => {
                    h.holding.insert(index, None);
                    if let Some(id) = id {
                        *h.fulfils.entry(id).or_insert(0) += 1;
                    }
                }
                "refused" => {
                    h.holding.insert(index, None);
                    h.refused += 1;
                }
                _ => {
                    h.holding.insert(index, None);
                }
            }
        }
    });
    Ok(Worker {
        index,
        child,
        stdin,
        reader: Some(reader),
    })
}

/// The process state letter from /proc (`T` when stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our unreaped child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The kill: freeze the worker (SIGSTOP), check that it holds a job that is still running,
/// then SIGKILL it; otherwise let it go on (SIGCONT) and try again.
fn kill_mid_job(
    w: &mut Worker,
    others: &[u32],
    heard: &Mutex<Heard>,
    store: &Store,
) -> anyhow::Result<Option<(JobId, Instant)>> {
    let pid = w.child.id();
    for attempt in 0..500u64 {
        // The other workers are frozen too while we look, so that a small queue cannot drain
        // between the attempts.
        for &o in others {
            signal(o, libc::SIGSTOP);
        }
        signal(pid, libc::SIGSTOP);
        let t = Instant::now();
        while process_state(pid) != Some('T') && t.elapsed() < Duration::from_secs(1) {
            thread::sleep(Duration::from_millis(1));
        }
        // Let the reader take in what the worker wrote before it froze.
        thread::sleep(Duration::from_millis(20));
        let held = heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .holding
            .get(&w.index)
            .copied()
            .flatten();
        if let Some(job) = held
            && store.get(&job)?.state == JobState::Running
        {
            signal(pid, libc::SIGKILL);
            let at = Instant::now();
            for &o in others {
                signal(o, libc::SIGCONT);
            }
            w.child.wait().context("reap the killed worker")?;
            return Ok(Some((job, at)));
        }
        signal(pid, libc::SIGCONT);
        for &o in others {
            signal(o, libc::SIGCONT);
        }
        let c = store.counts()?;
        if c.pending + c.running == 0 {
            return Ok(None); // all done before the worker could be caught holding a job
        }
        thread::sleep(Duration::from_millis(1 + attempt % 7));
    }
    Ok(None)
}

/// Closes a worker's stdin (it exits after its current job) and reaps it.
fn stop_worker(mut w: Worker) {
    drop(w.stdin.take());
    let t = Instant::now();
    loop {
        match w.child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if t.elapsed() > Duration::from_secs(10) => {
                let _ = w.child.kill();
                let _ = w.child.wait();
                break;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
        }
    }
    if let Some(r) = w.reader.take() {
        let _ = r.join();
    }
}

/// Notifications delivered in-process: job → (target, value) per delivery.
type Deliveries = HashMap<JobId, Vec<(Value, Vec<u8>)>>;

fn start_notifier(
    store: Store,
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<anyhow::Result<Deliveries>> {
    thread::spawn(move || {
        let mut got = Deliveries::new();
        loop {
            let Some(note) = store.pull_notification_timeout(Duration::from_millis(100))? else {
                if stop.load(Ordering::SeqCst) {
                    return Ok(got);
                }
                continue;
            };
            let targets = note.waiting().to_vec();
            let value = note.value().to_vec();
            let id = note.id();
            note.done(&targets)?;
            let n = targets.len() as u64;
            got.entry(id)
                .or_default()
                .extend(targets.into_iter().map(|t| (t, value.clone())));
            delivered.fetch_add(n, Ordering::SeqCst);
        }
    })
}

/// The directory the demo may use: `--dir` must be new or empty.
fn prepare(explicit: Option<&Path>) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    match explicit {
        Some(dir) => {
            match fs::read_dir(dir) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(usage(format!(
                            "demo needs a new or empty directory; {} is not empty",
                            dir.display()
                        )));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?
                }
                Err(e) => return Err(e).with_context(|| format!("open {}", dir.display())),
            }
            Ok((None, dir.to_path_buf()))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("jobdir-demo.")
                .tempdir()
                .context("create a temporary directory")?;
            let path = tmp.path().to_path_buf();
            Ok((Some(tmp), path))
        }
    }
}

/// A progress bar on stdout when it is a terminal.
fn progress_bar(len: u64, what: &str) -> Option<ProgressBar> {
    if !io::stdout().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stdout());
    let template = format!(
        "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what} {{per_sec:1}} ETA {{eta}}"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

fn say(text: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

pub fn run(explicit: Option<&Path>, a: DemoArgs) -> anyhow::Result<()> {
    let (tmp, root) = prepare(explicit)?;
    let store_dir = root.join("store");
    let logs = root.join("executions");
    fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let store = Store::builder(&store_dir).lease(DEMO_LEASE).open()?;
    let n = a.jobs;
    say(&format!(
        "jobdir demo: {n} jobs, {} worker processes, {} SHA-256 rounds per job; durable store in {}",
        a.workers,
        a.rounds,
        store_dir.display()
    ));

    // 1. Jobs, each with a notification target, created by a few threads at once.
    let t = Instant::now();
    let creating = progress_bar(n, "created");
    let mut jobs: Vec<(JobId, u64)> = thread::scope(|s| {
        let creators: Vec<_> = (0..CREATORS)
            .map(|c| {
                let store = &store;
                let creating = &creating;
                s.spawn(move || -> anyhow::Result<Vec<(JobId, u64)>> {
                    let mut mine = Vec::new();
                    for i in (c..n).step_by(CREATORS as usize) {
                        let id = store.create(&json!({"n": i, "rounds": a.rounds}))?;
                        store.queue(&id, &json!({"n": i}))?;
                        mine.push((id, i));
                        if let Some(bar) = creating {
                            bar.inc(1);
                        }
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n as usize);
        for c in creators {
            let mine = c
                .join()
                .map_err(|_| anyhow::anyhow!("a job-creating thread panicked"))??;
            all.extend(mine);
        }
        anyhow::Ok(all)
    })?;
    jobs.sort_by_key(|&(_, i)| i);
    if let Some(bar) = creating {
        bar.finish_and_clear();
    }
    let create_time = t.elapsed();
    say(&format!(
        "created {n} jobs with a notification target each in {} ({:.0} jobs/s)",
        human(create_time),
        rate(n, create_time)
    ));

    // 2. Notifications are delivered in this process while the workers work.
    let delivered = Arc::new(AtomicU64::new(0));
    let stop_notifier = Arc::new(AtomicBool::new(false));
    let notifier = start_notifier(
        store.clone(),
        Arc::clone(&delivered),
        Arc::clone(&stop_notifier),
    );

    // 3. Worker processes.
    let heard = Arc::new(Mutex::new(Heard::default()));
    let t_work = Instant::now();
    let mut workers = Vec::new();
    for i in 0..a.workers as usize {
        workers.push(spawn_worker(i, &store_dir, &logs, &heard)?);
    }
    say(&format!(
        "started {} worker processes (lease {}s)",
        a.workers,
        DEMO_LEASE.as_secs()
    ));
    let bar = progress_bar(n, "fulfilled");
    // Progress as the workers report it (cheap); the store itself is checked at the end.
    let fulfilled = || -> u64 {
        let done = heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fulfils
            .len() as u64;
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
        done
    };

    // 4. Kill one worker mid-job, once some jobs are done.
    let warm = (n / 5).max(1).min(n.saturating_sub(1));
    let t = Instant::now();
    while fulfilled() < warm && t.elapsed() < PHASE_LIMIT {
        thread::sleep(Duration::from_millis(10));
    }
    let mut problems: Vec<String> = Vec::new();
    let mut victim = workers.remove(0);
    let others: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
    let killed = kill_mid_job(&mut victim, &others, &heard, &store)?;
    let victim_pid = victim.child.id();
    stop_worker(victim);
    workers.push(spawn_worker(a.workers as usize, &store_dir, &logs, &heard)?);
    let mut recovery = None;
    match killed {
        Some((job, at)) => {
            let msg = format!(
                "killed worker 0 (pid {victim_pid}) with SIGKILL while it held job {job}; started a replacement"
            );
            match &bar {
                Some(b) => b.println(&msg),
                None => say(&msg),
            }
            match store.wait(&job, PHASE_LIMIT) {
                Ok(_) => {
                    let took = at.elapsed();
                    let attempts = store.get(&job)?.attempts;
                    recovery = Some((job, took, attempts));
                    let msg = format!(
                        "job {job} was taken over and fulfilled by another worker {} after the kill (attempt {attempts})",
                        human(took)
                    );
                    match &bar {
                        Some(b) => b.println(&msg),
                        None => say(&msg),
                    }
                }
                Err(Error::Timeout) => problems.push(format!(
                    "the killed worker's job {job} was not fulfilled within {}",
                    human(PHASE_LIMIT)
                )),
                Err(e) => return Err(e.into()),
            }
        }
        None => problems.push("could not catch worker 0 holding a job to kill it".into()),
    }

    // 5. Every job fulfilled (as reported; the store is asked once a second, in case a report
    //    was missed).
    let t = Instant::now();
    let mut asked = Instant::now();
    while fulfilled() < n && t.elapsed() < PHASE_LIMIT {
        if asked.elapsed() >= Duration::from_secs(1) {
            asked = Instant::now();
            let c = store.counts()?;
            if c.pending + c.running == 0 {
                break;
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    let work_time = t_work.elapsed();
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    say(&format!(
        "all jobs done in {} after the workers started ({:.0} jobs/s)",
        human(work_time),
        rate(n, work_time)
    ));
    for w in workers {
        stop_worker(w);
    }

    // 6. Every notification delivered.
    let t = Instant::now();
    while delivered.load(Ordering::SeqCst) < n && t.elapsed() < PHASE_LIMIT {
        thread::sleep(Duration::from_millis(20));
    }
    stop_notifier.store(true, Ordering::SeqCst);
    let deliveries = notifier
        .join()
        .map_err(|_| anyhow::anyhow!("the notification thread panicked"))??;

    // 7. Check everything independently.
    let mut lost = 0u64;
    let mut wrong = 0u64;
    let mut still_waiting = 0u64;
    for (id, i) in &jobs {
        let info = store.get(id)?;
        match &info.result {
            None => lost += 1,
            Some(r) if *r != compute(*i, a.rounds).as_bytes() => wrong += 1,
            Some(_) => {}
        }
        if !info.waiting.is_empty() {
            still_waiting += 1;
        }
    }
    let heard = std::mem::take(&mut *heard.lock().unwrap_or_else(PoisonError::into_inner));
    let twice_fulfilled = heard.fulfils.values().filter(|&&c| c > 1).count();
    let (executions, executed) = read_executions(&logs)?;
    let reruns = executions - executed.len() as u64;
    let mut notified_ok = 0u64;
    let mut notified_dup = 0u64;
    for (id, i) in &jobs {
        let got = deliveries.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let expected_value = compute(*i, a.rounds);
        let good = got
            .iter()
            .filter(|(t, v)| *t == json!({"n": i}) && *v == expected_value.as_bytes())
            .count();
        if good >= 1 {
            notified_ok += 1;
        }
        notified_dup += got.len().saturating_sub(1) as u64;
    }
    let counts = store.counts()?;

    if lost > 0 {
        problems.push(format!("{lost} jobs lost (not fulfilled)"));
    }
    if wrong > 0 {
        problems.push(format!("{wrong} results differ from the recomputation"));
    }
    if twice_fulfilled > 0 {
        problems.push(format!(
            "{twice_fulfilled} jobs had their result accepted twice"
        ));
    }
    if notified_ok < n || still_waiting > 0 || counts.notifications > 0 {
        problems.push(format!(
            "{} notifications undelivered ({still_waiting} targets still waiting)",
            n - notified_ok
        ));
    }
    if notified_dup > 0 {
        problems.push(format!("{notified_dup} notifications delivered twice"));
    }
    if executed.len() as u64 != n {
        problems.push(format!(
            "the workers recorded executions of {} distinct jobs, not {n}",
            executed.len()
        ));
    }

    say("");
    say("summary");
    say(&format!("  jobs created          {n}"));
    say(&format!(
        "  jobs fulfilled        {}/{n}, every result checked against a recomputation ({wrong} wrong)",
        n - lost
    ));
    say(&format!(
        "  duplicate results     {twice_fulfilled} (jobs whose result was accepted more than once)"
    ));
    say(&format!(
        "  executions            {executions} ({reruns} re-run{}: work a killed worker started is done again)",
        if reruns == 1 { "" } else { "s" }
    ));
    say(&format!(
        "  refused fulfilments   {} (a worker whose lease was lost may not store its result)",
        heard.refused
    ));
    say(&format!(
        "  notifications         {notified_ok}/{n} delivered, {notified_dup} duplicates"
    ));
    match &recovery {
        Some((job, took, attempts)) => say(&format!(
            "  killed worker's job   back and fulfilled {} after SIGKILL (job {job}, attempt {attempts})",
            human(*took)
        )),
        None => say("  killed worker's job   not recovered"),
    }
    say(&format!(
        "  throughput            {:.0} jobs/s ({n} jobs in {} with {} workers; creation {:.0} jobs/s)",
        rate(n, work_time),
        human(work_time),
        a.workers,
        rate(n, create_time)
    ));
    if tmp.is_none() {
        say(&format!(
            "  kept                  store {}, execution records {}",
            store_dir.display(),
            logs.display()
        ));
    }
    let verdict = if problems.is_empty() {
        say(
            "  verdict               OK: no job lost, every result written once and correct, every notification delivered",
        );
        Ok(())
    } else {
        say(&format!(
            "  verdict               FAILED: {}",
            problems.join("; ")
        ));
        Err(fail(
            super::EXIT_FAILURE,
            format!("demo failed: {}", problems.join("; ")),
        ))
    };
    drop(store);
    if let Some(tmp) = tmp {
        remove_in_parallel(&store_dir.join("jobs"));
        if let Err(e) = tmp.close() {
            tracing::warn!("cannot remove the demo's temporary directory: {e}");
        }
    }
    verdict
}

/// Removes the directories inside `dir` from several threads: removing many small files is
/// bound by the latency of each unlink, and one thread took 20 s or more here where eight took
/// two.
fn remove_in_parallel(dir: &Path) {
    const REMOVERS: usize = 8;
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    let next = AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..REMOVERS {
            s.spawn(|| {
                while let Some(p) = paths.get(next.fetch_add(1, Ordering::SeqCst) as usize) {
                    if let Err(e) = fs::remove_dir_all(p) {
                        tracing::warn!("cannot remove {}: {e}", p.display());
                    }
                }
            });
        }
    });
}

/// (executions recorded, distinct jobs executed) from the workers' records.
fn read_executions(logs: &Path) -> anyhow::Result<(u64, HashSet<JobId>)> {
    let mut total = 0;
    let mut distinct = HashSet::new();
    for entry in fs::read_dir(logs).with_context(|| format!("list {}", logs.display()))? {
        let path = entry?.path();
        let mut text = String::new();
        fs::File::open(&path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("read {}", path.display()))?;
        for line in text.lines() {
            let Ok(id) = line.parse::<JobId>() else {
                bail!("{}: not a job id: {line:?}", path.display());
            };
            total += 1;
            distinct.insert(id);
        }
    }
    Ok((total, distinct))
}
