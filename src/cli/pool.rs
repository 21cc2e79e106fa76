//! `jobdir pool`: supervise N `jobdir work` processes on one store, restart the ones that crash,
//! and add up their statistics.
//!
//! Invariants kept here:
//! - The pool holds no job: its workers do, under their own leases. A worker that dies (even by
//!   `kill -9`) leaves its job to the store's takeover, which gives it to another worker; the
//!   pool only starts a replacement. No job is lost by a crash of a worker or of the pool.
//! - A worker that exits 0 (the queue was empty with `--until-empty`, a `drain`, a signal) is
//!   done; any other end (a non-zero status, death by a signal) is a crash and is restarted
//!   after a pause that doubles (100 ms up to 10 s), unless the pool is stopping.
//! - Statistics come from the workers over a pipe of their own (each worker's stdout, one JSON
//!   object per line), never mixed with job results, which go to the store.

use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use jobdir::Control;
use serde::{Deserialize, Serialize};

use super::child::{self, Program};
use super::output::human;
use super::shutdown::Shutdown;
use super::{args, log, open};

pub const LONG_ABOUT: &str = "Run N worker processes (`jobdir work`) on the store and keep \
    them running.\n\n\
    Each worker pulls jobs and runs PROGRAM once per job, exactly as `jobdir work -- PROGRAM` \
    does (request on stdin, stdout becomes the result; JOBDIR, JOBDIR_DIR, JOBDIR_JOB_ID, \
    JOBDIR_ATTEMPT and JOBDIR_CONTROL in its environment). A worker that crashes (killed by a \
    signal, or a non-zero exit) is restarted after a pause that doubles from 100 ms up to 10 s; \
    its job is taken over by another worker at once (its lock dies with it) and runs again \
    after its retry backoff, so no job is lost. A worker that exits 0 is not restarted. A worker that exits non-zero within 2 s of \
    its start 5 times in a row stops the pool (exit 1).\n\n\
    --until-empty: each worker exits once no job is pending, running or delayed, and the pool when all \
    have. `jobdir broadcast drain`: the workers finish their jobs and exit, and so does the \
    pool. `jobdir broadcast pause` / `resume`: the workers stop and resume pulling. SIGINT or \
    SIGTERM: passed on to every worker (running jobs get --grace to finish), then exit 0.\n\n\
    Statistics (jobs done and failed, per worker and in total, jobs per second) are shown on \
    stderr, a line per second when they change, if stderr is a terminal or with --progress. At \
    the end one JSON object is printed on stdout: {\"workers\":[{\"worker\":0,\"pid\":..,\
    \"done\":..,\"failed\":..,\"restarts\":..,\"rate\":..,\"exit\":\"exit 0\"},..],\"total\":\
    {\"done\":..,\"failed\":..,\"restarts\":..,\"rate\":..},\"elapsed_s\":..}.\n\n\
    Example: jobdir pool --workers 4 --until-empty -- sh -c 'jq .n | factor'";

/// The first pause before a crashed worker is restarted; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that ran this long before it crashed restarts after [`FIRST_BACKOFF`] again.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// A non-zero exit this soon after the start counts as a failure to start.
const QUICK_EXIT: Duration = Duration::from_secs(2);
/// Failures to start in a row after which the pool gives up.
const MAX_QUICK_EXITS: u32 = 5;
/// How long the pool waits for a dead worker's last statistics (its pipe's end of file).
const LAST_WORDS: Duration = Duration::from_secs(1);
/// How often the live line may be printed.
const LIVE_EVERY: Duration = Duration::from_secs(1);
/// How often a worker reports when nothing changed (its liveness towards the pool).
const REPORT_EVERY: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct PoolArgs {
    /// Number of worker processes [default: the number of CPUs, at most 4]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=256))]
    workers: Option<u64>,
    #[command(flatten)]
    worker: args::WorkerArgs,
    /// Each worker exits once no job is pending or running; the pool exits when all have
    #[arg(long)]
    until_empty: bool,
    /// Run worker N as instance PREFIX-N (`jobdir work --instance`): jobs created for it run
    /// there first, and a restarted worker joins as the same instance again
    #[arg(long, value_name = "PREFIX")]
    instance_prefix: Option<String>,
    /// Show the statistics line on stderr even when stderr is not a terminal
    #[arg(long)]
    progress: bool,
    #[command(flatten)]
    run: args::ProgramArgs,
}

/// What a pool worker reports, one JSON object per line on its stdout: its own counts since it
/// started. Sent at start, on every change (at most every 100 ms), at least every second, and
/// once more just before it exits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub pid: u32,
    /// Jobs fulfilled.
    pub done: u64,
    /// Runs that failed (non-zero exit, lease lost, terminated at shutdown).
    pub failed: u64,
    /// Jobs running now.
    pub running: u64,
    /// Paused by a broadcast, and no job running.
    pub paused: bool,
    /// Draining: finishing its jobs, then exiting.
    pub draining: bool,
}

/// The worker's side of the statistics pipe.
#[derive(Default)]
pub struct Reporter {
    last: Option<(WorkerStats, Instant)>,
}

impl Reporter {
    /// Writes `stats` as one line if they changed, if a second passed, or with `force`. An
    /// error means the pool is gone (EPIPE).
    pub fn send(&mut self, stats: &WorkerStats, force: bool) -> io::Result<()> {
        let due = match &self.last {
            None => true,
            Some((last, at)) => force || last != stats || at.elapsed() >= REPORT_EVERY,
        };
        if !due {
            return Ok(());
        }
        let mut line = serde_json::to_vec(stats).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut out = io::stdout().lock();
        out.write_all(&line)?;
        out.flush()?;
        self.last = Some((stats.clone(), Instant::now()));
        Ok(())
    }
}

enum Event {
    Stats {
        slot: usize,
        generation: u64,
        stats: WorkerStats,
    },
    /// A worker's statistics pipe reached its end: the worker is gone.
    Closed {
        slot: usize,
        generation: u64,
    },
    Drain(String),
}

/// One worker place of the pool, through its successive processes.
struct Slot {
    index: usize,
    child: Option<Child>,
    generation: u64,
    pid: u32,
    started: Instant,
    /// The current process's last report.
    current: WorkerStats,
    /// The current process has reported: it listens for control messages and handles SIGUSR1.
    ready: bool,
    /// Totals of the earlier processes of this slot.
    done_before: u64,
    failed_before: u64,
    restarts: u64,
    backoff: Duration,
    restart_at: Option<Instant>,
    quick_exits: u32,
    /// The process exited (status), waiting for its pipe to close (or LAST_WORDS).
    exited: Option<(ExitStatus, Instant)>,
    closed: bool,
    finished: bool,
    last_exit: Option<String>,
}

impl Slot {
    fn done(&self) -> u64 {
        self.done_before + self.current.done
    }

    fn failed(&self) -> u64 {
        self.failed_before + self.current.failed
    }
}

/// How to start a worker.
struct Launch {
    exe: PathBuf,
    dir: PathBuf,
    verbose: u8,
    a: PoolArgs,
}

/// The instance worker `index` runs as with `--instance-prefix PREFIX`.
fn instance_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

impl Launch {
    fn spawn(&self, slot: &mut Slot, tx: &Sender<Event>) -> anyhow::Result<()> {
        let a = &self.a;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--dir").arg(&self.dir);
        for _ in 0..self.verbose {
            cmd.arg("-v");
        }
        cmd.arg("work")
            .arg("--pool-worker")
            .arg(slot.index.to_string())
            .arg("--concurrency")
            .arg(a.worker.concurrency.to_string())
            .arg("--grace")
            .arg(a.run.grace.as_secs_f64().to_string());
        if let Some(lease) = a.worker.lease {
            cmd.arg("--lease").arg(lease.as_secs_f64().to_string());
        }
        if a.until_empty {
            cmd.arg("--until-empty");
        }
        if let Some(spec) = &a.worker.priority_slots {
            cmd.arg("--priority-slots").arg(spec);
            if a.worker.strict_slots {
                cmd.arg("--strict-slots");
            }
        }
        if let Some(prefix) = &a.instance_prefix {
            cmd.arg("--instance").arg(instance_name(prefix, slot.index));
            if a.worker.unallocated {
                cmd.arg("--unallocated");
            }
        }
        cmd.arg("--")
            .args(&a.run.program)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a terminal's Ctrl-C reaches the pool, which passes it on.
            .process_group(0);
        let mut child = cmd.spawn().context("start a worker process")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("worker {} has no stdout", slot.index))?;
        slot.generation += 1;
        slot.pid = child.id();
        slot.started = Instant::now();
        slot.current = WorkerStats {
            pid: slot.pid,
            ..WorkerStats::default()
        };
        slot.child = Some(child);
        slot.ready = false;
        slot.exited = None;
        slot.closed = false;
        let (index, generation, tx) = (slot.index, slot.generation, tx.clone());
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str(&line) {
                    Ok(stats) => {
                        let _ = tx.send(Event::Stats {
                            slot: index,
                            generation,
                            stats,
                        });
                    }
                    Err(e) => tracing::debug!("worker {index}: not a statistics line: {e}"),
                }
            }
            let _ = tx.send(Event::Closed {
                slot: index,
                generation,
            });
        });
        Ok(())
    }
}

/// The final report, printed as JSON on stdout.
#[derive(Serialize)]
struct Report {
    workers: Vec<WorkerReport>,
    total: Total,
    elapsed_s: f64,
}

#[derive(Serialize)]
struct WorkerReport {
    worker: usize,
    pid: u32,
    done: u64,
    failed: u64,
    restarts: u64,
    rate: f64,
    exit: Option<String>,
}

#[derive(Serialize)]
struct Total {
    done: u64,
    failed: u64,
    restarts: u64,
    rate: f64,
}

/// Jobs per second, to three decimals.
fn rate(done: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    (done as f64 / secs * 1000.0).round() / 1000.0
}

/// The number of CPUs, at most 4 (as okanjo-conductor's default worker limit).
fn default_workers() -> u64 {
    thread::available_parallelism().map_or(1, |n| n.get().min(4) as u64)
}

/// Sends `sig` to a worker that has not been reaped (so its pid cannot have been reused).
fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    if r != 0 {
        tracing::debug!(
            "cannot signal worker {}: {}",
            child.id(),
            io::Error::last_os_error()
        );
    }
}

pub fn run(dir: &Path, verbose: u8, a: PoolArgs) -> anyhow::Result<()> {
    // Refused here, before any worker starts (each would fail the same way).
    a.worker.slots()?;
    if a.worker.unallocated && a.instance_prefix.is_none() {
        return Err(super::usage("--unallocated needs --instance-prefix PREFIX"));
    }
    Program::resolve(&a.run.program)?;
    let n = a.workers.unwrap_or_else(default_workers) as usize;
    if let Some(prefix) = &a.instance_prefix {
        // Every worker's name is checked here, before any worker starts.
        for index in 0..n {
            jobdir::InstanceId::new(instance_name(prefix, index))
                .map_err(|e| super::usage(format!("--instance-prefix: {e}")))?;
        }
    }
    let store = open(dir)?;
    // A `control/` that cannot be read costs the drain message (with a warning), not the pool.
    let listener = store
        .listen_control()
        .map_err(|e| tracing::warn!("control messages are not available: {e}"))
        .ok();
    let shutdown = Shutdown::register(a.run.grace)?;
    let live = a.progress || io::stderr().is_terminal();
    let launch = Launch {
        exe: std::env::current_exe().context("find this executable")?,
        dir: dir.to_path_buf(),
        verbose,
        a,
    };
    let (tx, rx) = mpsc::channel();
    let stop_listening = Arc::new(AtomicBool::new(false));
    let listening = {
        let (tx, stop) = (tx.clone(), Arc::clone(&stop_listening));
        thread::spawn(move || {
            if let Some(listener) = listener {
                super::control::follow(listener, &stop, |m| {
                    if m.message == Control::Drain {
                        let _ = tx.send(Event::Drain(m.id));
                    }
                });
            }
        })
    };
    let started = Instant::now();
    let mut slots: Vec<Slot> = (0..n)
        .map(|index| Slot {
            index,
            child: None,
            generation: 0,
            pid: 0,
            started,
            current: WorkerStats::default(),
            ready: false,
            done_before: 0,
            failed_before: 0,
            restarts: 0,
            backoff: FIRST_BACKOFF,
            restart_at: None,
            quick_exits: 0,
            exited: None,
            closed: false,
            finished: false,
            last_exit: None,
        })
        .collect();
    let mut pool = Pool {
        launch: &launch,
        shutdown: &shutdown,
        tx,
        draining: false,
        stopping: false,
    };
    for slot in &mut slots {
        if let Err(e) = pool.launch.spawn(slot, &pool.tx) {
            shutdown.fail(e);
            slot.finished = true;
        }
    }
    let mut last_line: Option<(String, Instant)> = None;
    while !slots
        .iter()
        .all(|s| s.finished && s.child.is_none() && s.exited.is_none())
    {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => pool.handle(&mut slots, ev),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        while let Ok(ev) = rx.try_recv() {
            pool.handle(&mut slots, ev);
        }
        pool.pass_on_stop(&mut slots);
        for slot in &mut slots {
            pool.reap(slot);
            pool.restart_if_due(slot);
        }
        if live {
            let line = live_line(&slots, started.elapsed());
            let changed = last_line.as_ref().is_none_or(|(l, _)| *l != line);
            let due = last_line
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() >= LIVE_EVERY);
            if changed && due {
                log::line(&line);
                last_line = Some((line, Instant::now()));
            }
        }
    }
    stop_listening.store(true, Ordering::SeqCst);
    let _ = listening.join();
    let elapsed = started.elapsed();
    let report = Report {
        workers: slots
            .iter()
            .map(|s| WorkerReport {
                worker: s.index,
                pid: s.pid,
                done: s.done(),
                failed: s.failed(),
                restarts: s.restarts,
                rate: rate(s.done(), elapsed),
                exit: s.last_exit.clone(),
            })
            .collect(),
        total: Total {
            done: slots.iter().map(Slot::done).sum(),
            failed: slots.iter().map(Slot::failed).sum(),
            restarts: slots.iter().map(|s| s.restarts).sum(),
            rate: rate(slots.iter().map(Slot::done).sum(), elapsed),
        },
        elapsed_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
    };
    if live {
        log::line(&live_line(&slots, elapsed));
    }
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, &report)?;
    writeln!(out)?;
    drop(out);
    shutdown.outcome()
}

/// `pool: 4 workers (4 running), 120 done, 2 failed, 38.50 jobs/s, 1 restart`.
fn live_line(slots: &[Slot], elapsed: Duration) -> String {
    let running = slots.iter().filter(|s| s.child.is_some()).count();
    let done: u64 = slots.iter().map(Slot::done).sum();
    let failed: u64 = slots.iter().map(Slot::failed).sum();
    let restarts: u64 = slots.iter().map(|s| s.restarts).sum();
    let mut line = format!(
        "pool: {} workers ({running} running), {done} done, {failed} failed, {:.2} jobs/s, \
         {restarts} restarts, {}",
        slots.len(),
        rate(done, elapsed),
        human(elapsed),
    );
    let live: Vec<&Slot> = slots.iter().filter(|s| s.child.is_some()).collect();
    if !live.is_empty() && live.iter().all(|s| s.current.paused) {
        line.push_str(", paused");
    }
    if live.iter().any(|s| s.current.draining) {
        line.push_str(", draining");
    }
    line
}

struct Pool<'a> {
    launch: &'a Launch,
    shutdown: &'a Shutdown,
    tx: Sender<Event>,
    draining: bool,
    /// SIGTERM was passed on to the workers.
    stopping: bool,
}

impl Pool<'_> {
    fn handle(&mut self, slots: &mut [Slot], ev: Event) {
        match ev {
            Event::Stats {
                slot,
                generation,
                stats,
            } => {
                if let Some(s) = slots.get_mut(slot)
                    && s.generation == generation
                {
                    s.current = stats;
                    if !s.ready {
                        s.ready = true;
                        if self.draining
                            && let Some(child) = &s.child
                        {
                            // The drain this worker may have missed (see Event::Drain).
                            signal(child, libc::SIGUSR1);
                        }
                    }
                }
            }
            Event::Closed { slot, generation } => {
                if let Some(s) = slots.get_mut(slot)
                    && s.generation == generation
                {
                    s.closed = true;
                }
            }
            Event::Drain(id) => {
                if !self.draining {
                    self.draining = true;
                    log::line(&format!(
                        "pool: drain (broadcast {id}): workers finish their jobs and exit"
                    ));
                    // A worker that started listening after the message (a restarted one) does
                    // not see it: SIGUSR1 is `drain` for `jobdir work`. Only once it reported,
                    // though: before, SIGUSR1 would kill it (then it gets it at its report).
                    for s in slots.iter_mut() {
                        s.restart_at = None;
                        if let Some(child) = &s.child
                            && s.ready
                        {
                            signal(child, libc::SIGUSR1);
                        }
                        if s.child.is_none() {
                            s.finished = true;
                        }
                    }
                }
            }
        }
    }

    /// On SIGINT/SIGTERM (or a fatal error): SIGTERM to every worker, no more restarts.
    fn pass_on_stop(&mut self, slots: &mut [Slot]) {
        if self.stopping || !self.shutdown.stopping() {
            return;
        }
        self.stopping = true;
        if self.shutdown.requested() {
            log::line(&format!(
                "pool: stopping; running jobs get {} to finish",
                human(self.shutdown.grace())
            ));
        }
        for s in slots.iter_mut() {
            s.restart_at = None;
            match &s.child {
                Some(child) => signal(child, libc::SIGTERM),
                None => s.finished = true,
            }
        }
    }

    /// Collects a worker that exited, once its last statistics are in.
    fn reap(&mut self, slot: &mut Slot) {
        if slot.exited.is_none()
            && let Some(child) = slot.child.as_mut()
        {
            match child.try_wait() {
                Ok(Some(status)) => {
                    slot.child = None;
                    slot.exited = Some((status, Instant::now()));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("worker {}: {e}", slot.index),
            }
        }
        let Some((status, at)) = slot.exited else {
            return;
        };
        if !slot.closed && at.elapsed() < LAST_WORDS {
            return;
        }
        slot.exited = None;
        slot.done_before += slot.current.done;
        slot.failed_before += slot.current.failed;
        slot.current = WorkerStats {
            pid: slot.pid,
            ..WorkerStats::default()
        };
        let how = child::describe(status);
        slot.last_exit = Some(how.clone());
        let ran = slot.started.elapsed();
        if status.success() || self.stopping || self.draining {
            slot.finished = true;
            return;
        }
        if status.code().is_some() && ran < QUICK_EXIT {
            slot.quick_exits += 1;
        } else {
            slot.quick_exits = 0;
        }
        if slot.quick_exits >= MAX_QUICK_EXITS {
            slot.finished = true;
            self.shutdown.fail(anyhow::anyhow!(
                "worker {} keeps failing ({how} within {} of its start, {} times): stopping",
                slot.index,
                human(QUICK_EXIT),
                MAX_QUICK_EXITS
            ));
            return;
        }
        if ran >= STABLE_RUN {
            slot.backoff = FIRST_BACKOFF;
        }
        log::line(&format!(
            "pool: worker {} (pid {}) {how}; restarting in {}",
            slot.index,
            slot.pid,
            human(slot.backoff)
        ));
        slot.restart_at = Some(Instant::now() + slot.backoff);
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
    }

    fn restart_if_due(&mut self, slot: &mut Slot) {
        let Some(at) = slot.restart_at else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        slot.restart_at = None;
        match self.launch.spawn(slot, &self.tx) {
            Ok(()) => slot.restarts += 1,
            Err(e) => {
                slot.finished = true;
                self.shutdown.fail(e);
            }
        }
    }
}
