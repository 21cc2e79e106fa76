//! Named crash points for fault-injection tests.
//!
//! Invariant kept here: release builds carry no crash points. Only with the cargo feature
//! `fault-injection` does [`point`] do anything: when the environment variable
//! `JOBDIR_CRASH_AT` names the point, the process kills itself with `SIGKILL` there, exactly as
//! `kill -9` would.

/// Crashes the process here if `JOBDIR_CRASH_AT` names this point (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &str) {
    if std::env::var("JOBDIR_CRASH_AT").is_ok_and(|v| v == name) {
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Without the `fault-injection` feature crash points compile to nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
