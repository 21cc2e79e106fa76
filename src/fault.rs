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

/// A pause point for the library's own unit tests: runs the closure a test registered for
/// `name` on this thread ([`on_pause`]), so that a test can act between two steps of an
/// operation and make a race happen every time. Compiles to nothing outside `cargo test` of
/// the library itself.
#[cfg(test)]
pub(crate) fn pause(name: &str) {
    let hook = PAUSES.with(|p| p.borrow_mut().remove(name));
    if let Some(f) = hook {
        f();
    }
}

/// Outside the library's unit tests pause points compile to nothing.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn pause(_name: &str) {}

#[cfg(test)]
thread_local! {
    static PAUSES: std::cell::RefCell<std::collections::HashMap<String, Box<dyn FnOnce()>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Registers `f` to run once, on this thread, when it next reaches pause point `name`.
#[cfg(test)]
pub(crate) fn on_pause(name: &str, f: impl FnOnce() + 'static) {
    PAUSES.with(|p| p.borrow_mut().insert(name.to_string(), Box::new(f)));
}
