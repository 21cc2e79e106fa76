//! SIGINT/SIGTERM handling for the long-running commands (`work`, `notify`, `status --watch`).
//!
//! Invariant kept here: a signal never kills the runner outright: it sets a flag; the runner
//! stops pulling, lets running programs finish until the grace period ends, then terminates
//! them and releases their leases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The shutdown state shared by a runner's threads.
#[derive(Debug)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    since: OnceLock<Instant>,
    grace: Duration,
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
        })
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
