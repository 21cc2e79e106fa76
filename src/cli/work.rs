//! `jobdir work`: pull jobs and run a program once per job; its stdout becomes the result.
//!
//! Invariants kept here:
//! - A result is stored only from a program that exited 0 while its lease was held, through the
//!   lease (`WorkLease::fulfill`, fenced); every other ending releases the job to pending.
//! - A program whose lease is lost is terminated and its output never stored.
//! - A signal stops pulling; running programs get the grace period, then are terminated and
//!   their jobs released. Nothing is lost: every pulled job is either fulfilled or released.

use std::ffi::{OsStr, OsString};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use jobdir::{Affinity, Error, Failure, InstanceId, PrioritySlots, Store, WorkLease};

use super::child::{self, Outcome, Program, Stop};
use super::control::WorkerControl;
use super::output::human;
use super::pool::{Reporter, WorkerStats};
use super::progress::ProgressDir;
use super::shutdown::Shutdown;
use super::{args, log, usage};

pub const LONG_ABOUT: &str = "Pull jobs and run PROGRAM once per job.\n\n\
    PROGRAM gets the request JSON on stdin and JOBDIR_JOB_ID, JOBDIR_DIR (and JOBDIR, the \
    same store, so that PROGRAM can run `jobdir lookup get`), JOBDIR_ATTEMPT, \
    JOBDIR_CONTROL and JOBDIR_PROGRESS in its environment; its stderr is passed through. Exit 0: the job is \
    fulfilled with PROGRAM's stdout. Any other exit, or death by a signal: the attempt fails, \
    with the end of PROGRAM's stderr (up to 2 KiB) as its error, and the job's retry policy \
    decides (`jobdir create --max-attempts --backoff`; default 5 attempts, backoff from 1 s \
    doubling, with jitter): the job is delayed and retried, or on its last attempt it is \
    failed (`jobdir retry ID` runs it again). If the job's lease is lost while PROGRAM runs \
    (taken over, cancelled, past its run timeout or deadline), PROGRAM is terminated \
    (SIGTERM, then SIGKILL 5 s later) and its output is not stored.\n\n\
    SIGINT or SIGTERM: stop pulling, let running programs finish for up to --grace seconds, \
    then terminate them and release their jobs; exit 0.\n\n\
    Progress: PROGRAM may write JSON lines to the file named by JOBDIR_PROGRESS (`echo \
    '{\"pct\":50}' >> \"$JOBDIR_PROGRESS\"`); the latest complete line is the job's progress, \
    shown by `jobdir get` and `jobdir status --progress` while it runs.\n\n\
    Priority slots: --priority-slots P:S,... reserves S of the --concurrency slots for \
    priorities from P up (to the next P); priorities below the lowest P share the slots left \
    over. A job may use the slots of its own range and of every lower range, never a higher \
    one's; with --strict-slots only its own and the lowest range's. Example: --concurrency 100 \
    --priority-slots 1:30,2:20 runs at most 50 jobs of priority < 1, 80 of priority < 2, and \
    100 in all (strict: 50, 80 and 70 of priority >= 2).\n\n\
    Instances: with --instance NAME the worker joins as NAME (live while it runs; a second \
    live worker of the same NAME is refused) and takes NAME's own jobs (`create --instance \
    NAME`) first, then the non-sticky jobs of dead instances (or of unavailable ones no \
    process runs), and with --unallocated the jobs of no instance; PROGRAM gets \
    JOBDIR_INSTANCE. Without --instance a worker takes the jobs of no instance and the \
    non-sticky jobs of dead instances, never a live instance's. --until-empty still waits \
    until no job at all is pending, running or delayed, including jobs this worker may not \
    take.\n\n\
    Control messages (`jobdir broadcast`): pause stops pulling once running jobs finish, until \
    resume (also when the pause was sent before this worker started); drain (or SIGUSR1) lets \
    running jobs finish, then exits 0; any other JSON message is appended as one line \
    {\"at\":..,\"id\":..,\"message\":<JSON>} to the file named by JOBDIR_CONTROL, which \
    holds every message this worker received.\n\n\
    Shows a progress bar on a terminal, else one line per job on stderr.\n\n\
    Example: jobdir work --concurrency 4 -- sh -c 'jq .n | factor'";

/// How long one pull waits for a job before the runner looks at its flags again.
const PULL_SLICE: Duration = Duration::from_millis(200);
/// The same with priority slots: a slot freed while a pull waits widens the next pull's
/// priorities, so the wait is shorter.
const SLOT_SLICE: Duration = Duration::from_millis(100);
/// Consecutive store errors a worker thread tolerates (with a pause between) before giving up.
const MAX_STORE_ERRORS: u32 = 5;

#[derive(Args, Debug)]
pub struct WorkArgs {
    #[command(flatten)]
    worker: args::WorkerArgs,
    /// Return once no job is pending, running or delayed (retries waiting out their backoff count)
    #[arg(long)]
    until_empty: bool,
    /// Stop after running PROGRAM this many times
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_jobs: Option<u64>,
    /// Run as this instance (joined while the worker runs, so others see it live): its own
    /// jobs (`create --instance NAME`) first, then the non-sticky jobs of dead instances
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,
    /// Run as worker N of `jobdir pool` (internal): statistics on stdout, no progress bar
    #[arg(long, value_name = "N", hide = true)]
    pool_worker: Option<u64>,
    #[command(flatten)]
    run: args::ProgramArgs,
}

/// What every worker thread shares.
struct Runner {
    store: Store,
    program: Program,
    dir: OsString,
    until_empty: bool,
    max_jobs: Option<u64>,
    shutdown: Shutdown,
    started: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    bar: Option<ProgressBar>,
    /// Broadcast control messages: pause, resume, drain, custom (FORMAT.md §11).
    control: WorkerControl,
    /// Jobs whose PROGRAM runs now.
    running: AtomicU64,
    /// As a `jobdir pool` worker: the statistics pipe to the pool (stdout).
    reporter: Option<Mutex<Reporter>>,
    /// `--priority-slots`: which priorities each pull may take.
    slots: Option<SlotGate>,
    /// `--instance`: whose jobs the pulls take.
    affinity: Option<Affinity>,
    /// Where each job's `JOBDIR_PROGRESS` file lives.
    progress: ProgressDir,
}

/// Priority slots as the worker threads share them (DESIGN.md §3.14): one thread pulls at a
/// time, with the priorities the running counts allow, and counts the job it got before the
/// next thread looks. Counts only fall meanwhile, so no range ever runs past its limit.
struct SlotGate {
    slots: PrioritySlots,
    running: Mutex<Vec<usize>>,
    turn: Mutex<()>,
}

/// A slot taken by one job, given back on drop.
struct Slot<'a> {
    gate: &'a SlotGate,
    range: usize,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut running = self
            .gate
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = running.get_mut(self.range) {
            *n = n.saturating_sub(1);
        }
    }
}

impl SlotGate {
    fn new(slots: PrioritySlots) -> SlotGate {
        SlotGate {
            running: Mutex::new(vec![0; slots.ranges()]),
            slots,
            turn: Mutex::new(()),
        }
    }

    /// Pulls a job whose priority range may start one now, and takes its slot.
    fn pull(
        &self,
        store: &Store,
        who: Option<&Affinity>,
        wait: Duration,
    ) -> jobdir::Result<Option<(WorkLease, Slot<'_>)>> {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let filters = {
            let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            self.slots.filters(&running)
        };
        if filters.is_empty() {
            // Every slot is taken (cannot happen with one thread per slot): look again later.
            thread::sleep(wait);
            return Ok(None);
        }
        let pulled = match who {
            Some(who) => store.pull_work_timeout_among_as(who, &filters, wait)?,
            None => store.pull_work_timeout_among(&filters, wait)?,
        };
        let Some(lease) = pulled else {
            return Ok(None);
        };
        let range = self.slots.range_of(lease.priority());
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = running.get_mut(range) {
            *n += 1;
        }
        Ok(Some((lease, Slot { gate: self, range })))
    }
}

pub fn run(dir: &Path, a: WorkArgs) -> anyhow::Result<()> {
    let slots = a.worker.slots()?;
    if a.worker.unallocated && a.instance.is_none() {
        return Err(usage("--unallocated needs --instance NAME"));
    }
    let program = Program::resolve(&a.run.program)?;
    let mut builder = Store::builder(dir);
    if let Some(lease) = a.worker.lease {
        builder = builder.lease(lease);
    }
    let store = builder.open()?;
    // Joined for as long as the worker runs: its presence tells others it is live.
    let (affinity, _presence) = match &a.instance {
        Some(name) => {
            let id = InstanceId::new(name.as_str())?;
            let presence = store.join(&id)?;
            (
                Some(Affinity::new(id).unallocated(a.worker.unallocated)),
                Some(presence),
            )
        }
        None => (None, None),
    };
    if let Some(n) = a.pool_worker {
        log::set_prefix(format!("[worker {n}] "));
    }
    let (control, listener) = WorkerControl::start(&store)?;
    let bar = (a.pool_worker.is_none() && std::io::stderr().is_terminal()).then(new_bar);
    log::set_bar(bar.clone());
    let runner = Runner {
        store,
        program,
        dir: dir.as_os_str().to_owned(),
        until_empty: a.until_empty,
        max_jobs: a.max_jobs,
        shutdown: Shutdown::register(a.run.grace)?,
        started: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        bar,
        control,
        running: AtomicU64::new(0),
        reporter: a.pool_worker.map(|_| Mutex::new(Reporter::default())),
        slots: slots.map(SlotGate::new),
        affinity,
        progress: ProgressDir::new(),
    };
    runner.report(false);
    thread::scope(|s| {
        let control = &runner.control;
        s.spawn(move || control.listen(listener));
        let handles: Vec<_> = (0..a.worker.concurrency)
            .map(|_| s.spawn(|| runner.worker()))
            .collect();
        runner.supervise(&handles);
        runner.control.stop();
    });
    if let Some(bar) = &runner.bar {
        bar.finish_and_clear();
    }
    log::set_bar(None);
    let (done, failed) = (
        runner.done.load(Ordering::SeqCst),
        runner.failed.load(Ordering::SeqCst),
    );
    log::line(&format!("work: {done} done, {failed} failed"));
    runner.report(true);
    runner.shutdown.outcome()
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} {per_sec:1} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

impl Runner {
    /// The main thread: waits for the workers, keeps the progress bar's length current, and
    /// says when a shutdown began.
    fn supervise(&self, handles: &[thread::ScopedJoinHandle<'_, ()>]) {
        let mut announced = false;
        let mut last_len: Option<Instant> = None;
        while !handles.iter().all(|h| h.is_finished()) {
            self.control
                .announce(handles.iter().filter(|h| !h.is_finished()).count());
            self.report(false);
            if !announced && self.shutdown.requested() {
                announced = true;
                log::line(&format!(
                    "work: stopping; running jobs get {} to finish",
                    human(self.shutdown.grace())
                ));
            }
            if let Some(bar) = &self.bar
                && last_len.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                last_len = Some(Instant::now());
                if let Ok(c) = self.store.counts() {
                    let mut len = bar.position() + c.pending + c.running;
                    if let Some(max) = self.max_jobs {
                        len = len.min(max);
                    }
                    bar.set_length(len.max(bar.position()));
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One worker thread: pull, run, repeat.
    fn worker(&self) {
        let mut errors = 0;
        while !self.shutdown.stopping() && !self.control.draining() {
            if self.control.paused() {
                self.control.wait_while_paused(PULL_SLICE);
                continue;
            }
            if let Some(max) = self.max_jobs
                && self.started.fetch_add(1, Ordering::SeqCst) >= max
            {
                return;
            }
            let pulled = match &self.slots {
                Some(gate) => gate
                    .pull(&self.store, self.affinity.as_ref(), SLOT_SLICE)
                    .map(|p| p.map(|(l, s)| (l, Some(s)))),
                None => match &self.affinity {
                    Some(who) => self.store.pull_work_timeout_as(who, PULL_SLICE),
                    None => self.store.pull_work_timeout(PULL_SLICE),
                }
                .map(|l| l.map(|l| (l, None))),
            };
            let (lease, _slot) = match pulled {
                Ok(Some((lease, slot))) => {
                    errors = 0;
                    (lease, slot)
                }
                Ok(None) => {
                    errors = 0;
                    self.give_back_slot();
                    if self.until_empty && self.is_empty() {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    self.give_back_slot();
                    errors += 1;
                    if errors >= MAX_STORE_ERRORS {
                        self.shutdown
                            .fail(anyhow::Error::new(e).context("pull work"));
                        return;
                    }
                    tracing::warn!("pull failed (will retry): {e}");
                    thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if self.shutdown.stopping() {
                // Signalled while pulling: give it back untouched.
                let _ = lease.release();
                return;
            }
            if self.control.holding_back() {
                // A pause or a drain came while pulling: give it back untouched.
                self.give_back_slot();
                self.release(lease);
                continue;
            }
            self.running.fetch_add(1, Ordering::SeqCst);
            self.execute(lease);
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn give_back_slot(&self) {
        if self.max_jobs.is_some() {
            self.started.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// True when no job is pending, running or delayed (for --until-empty): a job waiting out
    /// a retry's backoff (or a delay) keeps the worker.
    fn is_empty(&self) -> bool {
        match self.store.counts() {
            Ok(c) => c.pending + c.running + c.delayed == 0,
            Err(e) => {
                tracing::warn!("cannot count jobs: {e}");
                false
            }
        }
    }

    /// Runs PROGRAM for one job and stores its result, or records its failure.
    fn execute(&self, lease: WorkLease) {
        let id = lease.id();
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        lease.on_compromised(move |reason| {
            flag.store(true, Ordering::SeqCst);
            tracing::warn!("job {id}: lease lost ({reason:?})");
        });
        let input = match serde_json::to_vec(lease.request()) {
            Ok(v) => v,
            Err(e) => {
                self.shutdown
                    .fail(anyhow::Error::new(e).context("encode the request"));
                return;
            }
        };
        let id_text = id.to_string();
        let attempt = lease.attempt().to_string();
        let mut progress = self.progress.file(&id_text);
        let mut env: Vec<(&str, &OsStr)> = vec![
            ("JOBDIR_JOB_ID", OsStr::new(&id_text)),
            ("JOBDIR_DIR", &self.dir),
            ("JOBDIR", &self.dir),
            ("JOBDIR_ATTEMPT", OsStr::new(&attempt)),
            ("JOBDIR_CONTROL", self.control.channel_path().as_os_str()),
        ];
        let progress_path = progress.as_ref().map(|p| p.path().to_path_buf());
        if let Some(path) = &progress_path {
            env.push(("JOBDIR_PROGRESS", path.as_os_str()));
        }
        if let Some(who) = &self.affinity {
            env.push(("JOBDIR_INSTANCE", OsStr::new(who.instance().as_str())));
        }
        let started = Instant::now();
        let outcome = child::run(&self.program, &env, input, || {
            // Forward PROGRAM's latest progress line (FORMAT.md §13.2); a lost lease is
            // handled below, any other failure only logged.
            if let Some(value) = progress.as_mut().and_then(|p| p.poll())
                && let Err(e) = lease.progress(&value)
                && !matches!(e, Error::LeaseLost(_))
            {
                tracing::warn!("job {id}: cannot store progress: {e}");
            }
            if lost.load(Ordering::SeqCst) || lease.is_compromised() {
                Some(Stop::LeaseLost)
            } else if self.shutdown.grace_over() {
                Some(Stop::Shutdown)
            } else {
                None
            }
        });
        let took = human(started.elapsed());
        match outcome {
            Outcome::Exited { status, stdout, .. } if status.success() => {
                match lease.fulfill(stdout) {
                    Ok(()) => self.job_done(&format!("job {id} done in {took}")),
                    Err(e @ (Error::LeaseLost(_) | Error::AlreadyFulfilled(_))) => self.job_failed(
                        &format!("job {id} finished but its result was refused: {e}"),
                    ),
                    Err(e) => {
                        self.job_failed(&format!("job {id}: cannot store the result: {e}"));
                    }
                }
            }
            Outcome::Exited {
                status,
                stderr_tail,
                ..
            } => {
                let how = child::describe(status);
                let tail = String::from_utf8_lossy(&stderr_tail);
                let tail = tail.trim();
                let error = if tail.is_empty() {
                    format!("{} {how}", self.program.name())
                } else {
                    format!("{} {how}: {tail}", self.program.name())
                };
                let what = match lease.fail(&error) {
                    Ok(Failure::Retrying { after }) => format!("retried in {}", human(after)),
                    Ok(Failure::Failed) => "no attempts left: failed".to_string(),
                    Ok(_) => "recorded".to_string(),
                    Err(e) => format!("cannot record the failure: {e}"),
                };
                self.job_failed(&format!("job {id} failed: {how} after {took} ({what})"));
            }
            Outcome::Stopped(Stop::LeaseLost) => {
                drop(lease);
                self.job_failed(&format!(
                    "job {id}: lease lost; {} terminated, output discarded",
                    self.program.name()
                ));
            }
            Outcome::Stopped(Stop::Shutdown) => {
                self.release(lease);
                self.job_failed(&format!(
                    "job {id}: {} terminated at shutdown (released)",
                    self.program.name()
                ));
            }
            Outcome::Failed(e) => {
                self.release(lease);
                self.job_failed(&format!(
                    "job {id}: cannot run {}: {e}",
                    self.program.name()
                ));
                self.shutdown
                    .fail(anyhow::anyhow!("cannot run {}: {e}", self.program.name()));
            }
        }
    }

    /// As a pool worker, tells the pool this worker's counts (when they changed, every second,
    /// and with `last` before exiting). The pool gone (EPIPE): stop as on SIGTERM.
    fn report(&self, last: bool) {
        let Some(reporter) = &self.reporter else {
            return;
        };
        let stats = WorkerStats {
            pid: std::process::id(),
            done: self.done.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            running: self.running.load(Ordering::SeqCst),
            paused: self.control.paused() && self.control.quiet(),
            draining: self.control.draining(),
        };
        let sent = reporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(&stats, last);
        if let Err(e) = sent
            && !self.shutdown.requested()
        {
            log::line(&format!("work: the pool is gone ({e}); stopping"));
            self.shutdown.request();
        }
    }

    fn release(&self, lease: WorkLease) {
        let id = lease.id();
        if let Err(e) = lease.release() {
            tracing::warn!("job {id}: release failed: {e}");
        }
    }

    fn job_done(&self, line: &str) {
        self.done.fetch_add(1, Ordering::SeqCst);
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                self.bar_message(bar);
            }
            None => log::line(line),
        }
    }

    fn job_failed(&self, line: &str) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        if let Some(bar) = &self.bar {
            bar.inc(1);
            self.bar_message(bar);
        }
        log::line(line);
    }

    fn bar_message(&self, bar: &ProgressBar) {
        bar.set_message(format!(
            "done {} failed {}",
            self.done.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst)
        ));
    }
}
