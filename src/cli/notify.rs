//! `jobdir notify`: deliver fulfilled jobs' results by running a program per waiting target.
//!
//! Invariants kept here:
//! - A target is marked done only when its program exited 0 while the notification's lease was
//!   held; every other target stays queued for a later pull.
//! - A target that failed is not retried at once: in this run it waits out a growing backoff
//!   (with --until-empty, it is not retried at all), so a broken target cannot spin the loop.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use jobdir::{JobId, NotificationLease, Store};
use serde_json::Value;

use super::child::{self, Outcome, Program, Stop};
use super::shutdown::Shutdown;
use super::{args, log};

pub const LONG_ABOUT: &str = "Deliver results: pull fulfilled jobs that have notification \
    targets waiting, and run PROGRAM once per waiting target.\n\n\
    PROGRAM gets the job's result bytes on stdin, and JOBDIR_JOB_ID, JOBDIR_TARGET (the \
    target's compact JSON) and JOBDIR_DIR in its environment. Targets whose PROGRAM exits 0 are \
    marked done and never delivered again; the others stay queued and are retried later (after \
    a growing pause, up to a minute).\n\n\
    --until-empty returns once no notification is waiting, or only ones whose targets already \
    failed in this run. SIGINT or SIGTERM: stop pulling, let running programs finish for up to \
    --grace seconds, then terminate them (their targets stay queued); exit 0.\n\n\
    Example: jobdir notify -- sh -c 'curl -s --data-binary @- \"$(echo \"$JOBDIR_TARGET\" | jq -r .url)\"'";

/// How long one pull waits before the runner looks at its flags again.
const PULL_SLICE: Duration = Duration::from_millis(200);
/// The longest pause before a failed target is retried (in a run without --until-empty).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct NotifyArgs {
    /// Number of notifications handled at once
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    concurrency: u64,
    /// Return once no notification is waiting (failed targets stay queued)
    #[arg(long)]
    until_empty: bool,
    #[command(flatten)]
    run: args::ProgramArgs,
}

/// A target that failed in this run: how often, and when last.
struct Failed {
    times: u32,
    last: Instant,
}

struct Notifier {
    store: Store,
    program: Program,
    dir: OsString,
    until_empty: bool,
    shutdown: Shutdown,
    /// (job, target's compact JSON) → its failures in this run.
    failed: Mutex<HashMap<(JobId, String), Failed>>,
    delivered: AtomicU64,
    failures: AtomicU64,
}

pub fn run(dir: &Path, a: NotifyArgs) -> anyhow::Result<()> {
    let program = Program::resolve(&a.run.program)?;
    let store = Store::open(dir)?;
    let n = Notifier {
        store,
        program,
        dir: dir.as_os_str().to_owned(),
        until_empty: a.until_empty,
        shutdown: Shutdown::register(a.run.grace)?,
        failed: Mutex::new(HashMap::new()),
        delivered: AtomicU64::new(0),
        failures: AtomicU64::new(0),
    };
    thread::scope(|s| {
        for _ in 0..a.concurrency {
            s.spawn(|| n.worker());
        }
    });
    log::line(&format!(
        "notify: {} delivered, {} failed",
        n.delivered.load(Ordering::SeqCst),
        n.failures.load(Ordering::SeqCst)
    ));
    n.shutdown.outcome()
}

impl Notifier {
    fn worker(&self) {
        // Notifications whose every target is backing off: held (the lease is heartbeated) so
        // that the next pull reaches the notifications behind them, and let go when a retry is
        // due.
        let mut parked: Vec<(NotificationLease, Instant)> = Vec::new();
        while !self.shutdown.stopping() {
            parked.retain(|(_, due)| *due > Instant::now());
            let note = match self.store.pull_notification_timeout(PULL_SLICE) {
                Ok(Some(note)) => note,
                Ok(None) if self.until_empty => return,
                Ok(None) => continue,
                Err(e) => {
                    self.shutdown
                        .fail(anyhow::Error::new(e).context("pull a notification"));
                    return;
                }
            };
            if self.shutdown.stopping() {
                return; // dropping the lease releases it, every target still queued
            }
            match self.next_retry(&note) {
                None => self.deliver(note),
                Some(_) if self.until_empty => {
                    // Only targets that already failed in this run are left: done here.
                    if let Err(e) = note.done(&[]) {
                        tracing::warn!("cannot release a notification: {e}");
                    }
                    return;
                }
                Some(due) => parked.push((note, due)),
            }
        }
    }

    /// When a target that failed may be tried again: never in an --until-empty run, else after
    /// a pause that doubles with its failures (1 s, 2 s, ... up to a minute).
    fn retry_at(&self, f: &Failed) -> Option<Instant> {
        let backoff = Duration::from_secs(1u64 << f.times.min(6)).min(MAX_BACKOFF);
        (!self.until_empty).then_some(f.last + backoff)
    }

    /// Whether a target failed before in this run and is not due for a retry.
    fn skip(&self, key: &(JobId, String)) -> bool {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed
            .get(key)
            .is_some_and(|f| self.retry_at(f).is_none_or(|t| t > Instant::now()))
    }

    /// `None` when some waiting target of `note` is due now; else (every target failed before
    /// in this run and is backing off) when the first retry is due.
    fn next_retry(&self, note: &NotificationLease) -> Option<Instant> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut first = now + MAX_BACKOFF;
        for target in note.waiting() {
            let f = failed.get(&(note.id(), target.to_string()))?;
            match self.retry_at(f) {
                Some(t) if t <= now => return None,
                Some(t) => first = first.min(t),
                None => {}
            }
        }
        Some(first)
    }

    /// Runs PROGRAM for each waiting target that is due; marks the delivered ones done.
    fn deliver(&self, note: NotificationLease) {
        let id = note.id();
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        note.on_compromised(move |reason| {
            flag.store(true, Ordering::SeqCst);
            tracing::warn!("notification of job {id}: lease lost ({reason:?})");
        });
        let id_text = id.to_string();
        let mut delivered: Vec<Value> = Vec::new();
        for target in note.waiting() {
            let compact = target.to_string();
            let key = (id, compact.clone());
            if self.skip(&key) {
                continue;
            }
            if self.shutdown.grace_over() || self.shutdown.aborted() {
                break;
            }
            let env: [(&str, &OsStr); 3] = [
                ("JOBDIR_JOB_ID", OsStr::new(&id_text)),
                ("JOBDIR_TARGET", OsStr::new(&compact)),
                ("JOBDIR_DIR", &self.dir),
            ];
            let outcome = child::run(&self.program, &env, note.value().to_vec(), || {
                if lost.load(Ordering::SeqCst) || note.is_compromised() {
                    Some(Stop::LeaseLost)
                } else if self.shutdown.grace_over() {
                    Some(Stop::Shutdown)
                } else {
                    None
                }
            });
            let why = match outcome {
                Outcome::Exited { status, .. } if status.success() => {
                    self.failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&key);
                    delivered.push(target.clone());
                    continue;
                }
                Outcome::Exited { status, .. } => child::describe(status),
                Outcome::Stopped(Stop::LeaseLost) => {
                    log::line(&format!("notification of job {id}: lease lost; stopping"));
                    return;
                }
                Outcome::Stopped(Stop::Shutdown) => "terminated at shutdown".to_string(),
                Outcome::Failed(e) => {
                    self.shutdown
                        .fail(anyhow::anyhow!("cannot run {}: {e}", self.program.name()));
                    format!("cannot run: {e}")
                }
            };
            self.failures.fetch_add(1, Ordering::SeqCst);
            log::line(&format!(
                "job {id}: notification of {compact} failed: {why} (stays queued)"
            ));
            let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            let f = failed.entry(key).or_insert(Failed {
                times: 0,
                last: Instant::now(),
            });
            f.times += 1;
            f.last = Instant::now();
        }
        let n = delivered.len() as u64;
        match note.done(&delivered) {
            Ok(()) => {
                self.delivered.fetch_add(n, Ordering::SeqCst);
                if n > 0 {
                    log::line(&format!("job {id}: {n} notification(s) delivered"));
                }
            }
            Err(e) => log::line(&format!(
                "notification of job {id}: cannot mark {n} target(s) done: {e}"
            )),
        }
    }
}
