//! Waiting for something another process does. Never a timing assertion: the patience is a
//! generous liveness bound, reached only when something is wrong.

use std::time::{Duration, Instant};

/// How long a test waits for anything before it gives up.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How often [`eventually`] looks again.
pub const STEP: Duration = Duration::from_millis(20);

/// Waits (up to [`PATIENCE`]) until `cond` holds; `what` names it if it never does. `cond` may
/// assert invariants at every look.
pub fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, PATIENCE, STEP, cond)
}

/// [`eventually`] with another patience, looking every `step`.
pub fn eventually_within(
    what: &str,
    patience: Duration,
    step: Duration,
    mut cond: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < patience, "gave up waiting for {what}");
        std::thread::sleep(step);
    }
}
