//! Running the user's PROGRAM for one job or one notification target.
//!
//! Invariants kept here:
//! - The caller is never blocked for good: the child is polled (never waited on blindly), and a
//!   stop condition (lease lost, shutdown past its grace) terminates it: SIGTERM to its whole
//!   process group, SIGKILL after [`KILL_GRACE`].
//! - Output is used only from a program that exited by itself; a terminated program's output is
//!   discarded.
//! - The process group is signalled only while its leader is not yet reaped (a zombie keeps the
//!   group id reserved), so a recycled pid is never signalled.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::usage;

/// How long a terminated program gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often a running child is checked: first after 1 ms, doubling up to 16 ms, so that quick
/// programs are not slowed by the polling.
const POLL_FIRST: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(16);
/// How long stdout may stay open after the program exited (held by a background process it
/// left behind) before that process group is killed.
const STDOUT_GRACE: Duration = Duration::from_secs(1);

/// The program to run, resolved once before any job is pulled.
#[derive(Clone, Debug)]
pub struct Program {
    exe: PathBuf,
    argv0: OsString,
    args: Vec<OsString>,
}

impl Program {
    /// Resolves `argv[0]` (through `PATH` unless it holds a `/`) to an executable file: a bad
    /// PROGRAM is reported before the store is touched.
    pub fn resolve(argv: &[OsString]) -> anyhow::Result<Program> {
        let Some((argv0, args)) = argv.split_first() else {
            return Err(usage("no PROGRAM given"));
        };
        let exe = find_executable(argv0).ok_or_else(|| {
            usage(format!(
                "PROGRAM {:?} is not an executable file (nor found in PATH)",
                argv0
            ))
        })?;
        Ok(Program {
            exe,
            argv0: argv0.clone(),
            args: args.to_vec(),
        })
    }

    /// The program as the user named it, for log lines.
    pub fn name(&self) -> String {
        self.argv0.to_string_lossy().into_owned()
    }

    /// A command that runs the program with its arguments (stdio inherited).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg0(&self.argv0).args(&self.args);
        cmd
    }
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_executable(name: &OsStr) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.as_bytes().contains(&b'/') {
        let p = PathBuf::from(name);
        return is_executable_file(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable_file(p))
}

/// Why a running program was stopped by the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The lease it worked under was lost.
    LeaseLost,
    /// The runner is shutting down and the grace period is over.
    Shutdown,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The program exited by itself. `stderr_tail` is the end of what it wrote to stderr (which
    /// is passed through as it comes), at most [`STDERR_TAIL`] bytes.
    Exited {
        status: ExitStatus,
        stdout: Vec<u8>,
        stderr_tail: Vec<u8>,
    },
    /// The runner terminated it; its output is discarded.
    Stopped(Stop),
    /// It could not be started, or its output could not be read.
    Failed(io::Error),
}

/// Describes an exit status for a log line: `exit 3`, `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// How much of the end of a program's stderr is kept (a failed job's error).
pub const STDERR_TAIL: usize = 2048;

/// Copies a program's stderr to ours as it comes and keeps its last [`STDERR_TAIL`] bytes.
fn pass_stderr(mut from: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = io::stderr().lock().write_all(&buf[..n]);
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > 2 * STDERR_TAIL {
                        tail.drain(..tail.len() - STDERR_TAIL);
                    }
                }
            }
        }
        if tail.len() > STDERR_TAIL {
            tail.drain(..tail.len() - STDERR_TAIL);
        }
        tail
    })
}

/// Runs `program` with `env` added, `input` on its stdin, stdout collected, stderr passed through
/// (and its tail kept),
/// in its own process group; `stop` is asked every poll whether to terminate it.
pub fn run(
    program: &Program,
    env: &[(&str, &OsStr)],
    input: Vec<u8>,
    mut stop: impl FnMut() -> Option<Stop>,
) -> Outcome {
    let mut cmd = Command::new(&program.exe);
    cmd.arg0(&program.argv0)
        .args(&program.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read its input gets EPIPE here, which is fine.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let (tx, output) = mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = tx.send(stdout.read_to_end(&mut buf).map(|_| buf));
        });
    }
    let stderr = child.stderr.take().map(pass_stderr);
    let group = child.id() as libc::pid_t;
    let mut stopped: Option<(Stop, Instant)> = None;
    let mut killed = false;
    let mut nap = POLL_FIRST;
    loop {
        match exited(&child) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                signal_group(group, libc::SIGKILL);
                let _ = child.wait();
                return Outcome::Failed(e);
            }
        }
        match stopped {
            None => {
                if let Some(why) = stop() {
                    signal_group(group, libc::SIGTERM);
                    stopped = Some((why, Instant::now()));
                }
            }
            Some((_, since)) if !killed && since.elapsed() >= KILL_GRACE => {
                signal_group(group, libc::SIGKILL);
                killed = true;
            }
            Some(_) => {}
        }
        thread::sleep(nap);
        nap = (nap * 2).min(POLL_MAX);
    }
    // The leader is a zombie now: its group id cannot be reused until we reap it.
    let collected = match output.recv_timeout(STDOUT_GRACE) {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::warn!(
                "{} exited but a process it started still holds its stdout: killing its group",
                program.name()
            );
            signal_group(group, libc::SIGKILL);
            output.recv_timeout(STDOUT_GRACE).ok()
        }
    };
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    if let Some((why, _)) = stopped {
        return Outcome::Stopped(why);
    }
    // A grandchild that keeps stderr open must not hold us up: take the tail only if done.
    let stderr_tail = match stderr {
        Some(h) if h.is_finished() => h.join().unwrap_or_default(),
        Some(h) => {
            let t = Instant::now();
            while !h.is_finished() && t.elapsed() < STDOUT_GRACE {
                thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                h.join().unwrap_or_default()
            } else {
                Vec::new()
            }
        }
        None => Vec::new(),
    };
    match collected {
        Some(Ok(stdout)) => Outcome::Exited {
            status,
            stdout,
            stderr_tail,
        },
        Some(Err(e)) => Outcome::Failed(e),
        None => Outcome::Failed(io::Error::other(
            "its stdout stayed open after it exited (held by a process outside its group)",
        )),
    }
}

/// True once the child has exited, without reaping it.
fn exited(child: &Child) -> io::Result<bool> {
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid only writes into `info`, which lives for the call; WNOWAIT leaves the
    // child to be reaped by `Child::wait`.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            child.id() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (si_pid is 0 when no child has exited yet).
    Ok(unsafe { info.si_pid() } != 0)
}

/// Sends `sig` to the process group led by our child (which is not reaped yet).
fn signal_group(group: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let r = unsafe { libc::kill(-group, sig) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!("cannot signal process group {group}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(args: &[&str]) -> Program {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        Program::resolve(&argv).expect("resolvable")
    }

    #[test]
    fn collects_stdout_and_status() {
        let p = program(&["sh", "-c", "cat; exit 3"]);
        match run(&p, &[], b"hello".to_vec(), || None) {
            Outcome::Exited { status, stdout, .. } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stdout, b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stop_terminates_the_whole_group() {
        let p = program(&["sh", "-c", "sleep 30 & sleep 30; echo never"]);
        let t = Instant::now();
        let out = run(&p, &[], Vec::new(), || {
            (t.elapsed() > Duration::from_millis(100)).then_some(Stop::Shutdown)
        });
        assert!(matches!(out, Outcome::Stopped(Stop::Shutdown)), "{out:?}");
        assert!(t.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn unknown_programs_are_refused_up_front() {
        assert!(Program::resolve(&[OsString::from("no-such-program-xyz")]).is_err());
        assert!(Program::resolve(&[]).is_err());
    }
}
