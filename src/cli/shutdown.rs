//! SIGINT/SIGTERM handling for the long-running commands (`work`, `notify`, `status --watch`),
//! and the fatal error that stops every thread of a runner.
//!
//! Invariant kept here: a signal never kills the runner outright: it sets a flag; the runner
//! stops pulling, lets running programs finish until the grace period ends, then terminates
//! them and releases their leases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The shutdown state shared by a runner's threads.
#[derive(Debug)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    since: OnceLock<Instant>,
    grace: Duration,
    /// The first fatal error of any thread; set, it stops them all at once.
    fatal: Mutex<Option<anyhow::Error>>,
    aborted: AtomicBool,
}

impl Shutdown {
    /// Registers SIGINT and SIGTERM; running programs get `grace` to finish after one arrives.
    pub fn register(grace: Duration) -> anyhow::Result<Shutdown> {
        let requested = Arc::new(AtomicBool::new(false));
        for sig in [SIGINT, SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&requested))?;
        }
        Ok(Shutdown {
            requested,
            since: OnceLock::new(),
            grace,
            fatal: Mutex::new(None),
            aborted: AtomicBool::new(false),
        })
    }

    /// True once a signal arrived or a thread failed fatally: stop pulling.
    pub fn stopping(&self) -> bool {
        self.requested() || self.aborted()
    }

    /// True once a thread failed fatally: stop at once, no grace.
    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    /// Records a fatal error (the first one is kept) and stops every thread.
    pub fn fail(&self, e: anyhow::Error) {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(e);
        self.aborted.store(true, Ordering::SeqCst);
    }

    /// The runner's outcome: the recorded fatal error, if any.
    pub fn outcome(&self) -> anyhow::Result<()> {
        match self
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops as a signal would (the supervising pool went away, say).
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    /// True once a signal arrived (stop pulling).
    pub fn requested(&self) -> bool {
        let yes = self.requested.load(Ordering::SeqCst);
        if yes {
            self.since.get_or_init(Instant::now);
        }
        yes
    }

    /// True once a signal arrived and the grace period for running programs is over.
    pub fn grace_over(&self) -> bool {
        self.requested() && self.since.get().is_some_and(|t| t.elapsed() >= self.grace)
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }
}
