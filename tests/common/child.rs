//! This test binary run again as a child process in a *role*.
//!
//! A test file that uses this has a test named `helper` that does nothing unless [`role`] says
//! it was started as a child; then it opens the store in [`dir`] and plays the role, telling
//! the parent what happens with [`say!`] lines. The parent starts it with [`spawn`] (or
//! [`command`] and [`Helper::start`] for more settings), reads those lines from the
//! [`Helper`], and the child is killed when the `Helper` is dropped.
//!
//! ```ignore
//! #[test]
//! fn helper() {
//!     let Some(role) = child::role() else { return };
//!     let store = common::store::open(&child::dir(), 30_000);
//!     match role.as_str() { "worker" => { /* ... */ say!("done") } _ => panic!() }
//! }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;

use super::process::{self, Owned};
use super::wait::PATIENCE;

/// The environment variable naming the role a child plays (unset: not a child).
pub const ROLE: &str = "JOBDIR_TEST_ROLE";
/// The environment variable naming the store directory of a child.
pub const DIR: &str = "JOBDIR_TEST_DIR";
/// The arguments that run the `helper` test alone, its output not captured.
pub const HELPER_ARGS: [&str; 5] = ["--exact", "helper", "--nocapture", "--test-threads=1", "-q"];

/// A line for the parent test: `@ ` and the text (the test harness prints lines of its own
/// too; those are ignored).
macro_rules! say {
    ($($arg:tt)*) => { println!("@ {}", format!($($arg)*)) };
}
pub(crate) use say;

/// In a child, the role it plays; `None` in the test process itself.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// In a child, its store directory.
pub fn dir() -> PathBuf {
    PathBuf::from(std::env::var(DIR).expect("JOBDIR_TEST_DIR"))
}

/// The environment variable with a child's lease in ms ([`open_store`]).
pub const LEASE_MS: &str = "JOBDIR_TEST_LEASE_MS";

/// In a child, its store (see [`super::store::open`]) with the lease in [`LEASE_MS`]
/// (default 30 s).
pub fn open_store() -> jobdir::Store {
    super::store::open(&dir(), env_u64(LEASE_MS, 30_000))
}

/// A number from the environment, or `default` when it is unset or not a number.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This test binary, running the `helper` test alone (no role or directory set).
pub fn self_command() -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(HELPER_ARGS);
    cmd
}

/// This test binary as a child playing `role` on the store in `dir`.
pub fn command(role: &str, dir: &Path) -> Command {
    wrapped(&[], role, dir)
}

/// [`command`], run by a `wrapper` command line (e.g. `unshare --pid --fork`) when not empty.
pub fn wrapped(wrapper: &[&str], role: &str, dir: &Path) -> Command {
    let mut cmd = match wrapper {
        [] => self_command(),
        [program, args @ ..] => {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .arg(std::env::current_exe().expect("the test binary"))
                .args(HELPER_ARGS);
            cmd
        }
    };
    cmd.env(ROLE, role).env(DIR, dir);
    cmd
}

/// Starts a child playing `role` on the store in `dir`, with `env` added to its environment.
pub fn spawn(role: &str, dir: &Path, env: &[(&str, &str)]) -> Helper {
    let mut cmd = command(role, dir);
    cmd.envs(env.iter().copied());
    Helper::start(cmd)
}

/// A running child, the lines it says, and its stdin if the command piped it. Killed and
/// reaped when dropped.
pub struct Helper {
    pub child: Owned,
    pub stdin: Option<ChildStdin>,
    /// What the child said (its `say!` lines, without the `@ `), as it says it.
    pub lines: Receiver<String>,
}

impl Helper {
    /// Starts `cmd` (e.g. from [`command`]) with its stdout piped to [`Helper::lines`].
    pub fn start(mut cmd: Command) -> Helper {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn helper");
        let stdin = child.stdin.take();
        let lines = process::lines(child.stdout.take().expect("stdout"), "@ ");
        Helper {
            child: Owned::new(child),
            stdin,
            lines,
        }
    }

    /// The next line, or panic after [`PATIENCE`].
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("no line from the helper: {e}"))
    }

    /// The next line starting with `prefix` (others are skipped), or panic after [`PATIENCE`].
    pub fn expect_line(&self, prefix: &str) -> String {
        process::expect_line(&self.lines, prefix, PATIENCE)
    }

    /// Writes one line to the child's stdin (which the command must have piped).
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to helper");
        stdin.flush().expect("flush");
    }

    /// Sends `sig` to the child; it must still be there to receive it.
    pub fn signal(&self, sig: libc::c_int) {
        process::signal(self.child.get(), sig).expect("kill(2) the helper");
    }

    /// SIGKILL, and reaped: it is dead when this returns.
    pub fn kill(mut self) {
        self.child.child().kill().expect("kill the helper");
        self.wait();
    }

    /// Waits for the child to exit, whatever way.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.child().wait().expect("wait for the helper")
    }

    /// Closes its stdin, waits for it to exit; its status and every line it said.
    pub fn exit(mut self) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let status = self.wait();
        let lines = self.lines.iter().collect();
        (status, lines)
    }

    /// [`Helper::exit`], which must be a success; every line it said.
    pub fn finish(self) -> Vec<String> {
        let (status, lines) = self.exit();
        assert!(status.success(), "helper failed: {status}");
        lines
    }
}
