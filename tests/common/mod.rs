//! What several integration-test files share. Each test file is a crate of its own that
//! includes this module with `mod common;` and uses a part of it, hence the `allow` below.
//!
//! - here: running the `jobdir` binary against a store, to its end;
//! - [`process`]: child processes a test owns (killed and reaped when dropped, signalled,
//!   waited for within a patience, their output read line by line);
//! - [`child`]: this test binary run again as a child process in a *role* (the `helper` test);
//! - [`store`]: opening a store with the short poll and lease settings the tests use;
//! - [`wait`]: waiting for a condition, bounded only by a generous patience.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod child;
pub mod process;
pub mod store;
pub mod wait;

use std::path::Path;
use std::process::{Command, Output};

/// The command `jobdir --dir DIR ARGS...`, without the caller's `JOBDIR` or `RUST_LOG`.
pub fn jobdir_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobdir"));
    cmd.arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("JOBDIR")
        .env_remove("RUST_LOG");
    cmd
}

/// `jobdir --dir DIR ARGS...`, run to its end, without the caller's `JOBDIR` or `RUST_LOG`.
pub fn jobdir(dir: &Path, args: &[&str]) -> Output {
    jobdir_command(dir, args).output().expect("run jobdir")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    succeeded(args, jobdir(dir, args))
}

/// Runs a command that must exit with `code`; returns its stderr.
pub fn exits(dir: &Path, args: &[&str], code: i32) -> String {
    let out = jobdir(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "jobdir {args:?}: {stderr}");
    stderr
}

/// The stdout of `jobdir ARGS...` that ended in `out`, which must have succeeded.
pub fn succeeded(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "jobdir {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// The stderr of `jobdir ARGS...` that ended in `out`, which must have exited with `code` and
/// said exactly one line, an `error:` one.
pub fn one_error(args: &[&str], out: Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "jobdir {args:?}: {stderr}");
    assert!(stderr.starts_with("error:"), "stderr: {stderr:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr:?}");
    stderr
}
