//! What several integration-test files share: running the `jobdir` binary against a store.
#![allow(dead_code)] // each test file uses a part

use std::path::Path;
use std::process::{Command, Output};

/// `jobdir --dir DIR ARGS...`, run to its end, without the caller's `JOBDIR` or `RUST_LOG`.
pub fn jobdir(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jobdir"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("JOBDIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("run jobdir")
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = jobdir(dir, args);
    assert!(
        out.status.success(),
        "jobdir {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs a command that must exit with `code`; returns its stderr.
pub fn exits(dir: &Path, args: &[&str], code: i32) -> String {
    let out = jobdir(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "jobdir {args:?}: {stderr}");
    stderr
}
