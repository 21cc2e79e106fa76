//! Child processes a test owns: killed and reaped when dropped (also when the test panics: no
//! orphans), signalled, waited for within a patience, their output read line by line.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// A child killed (SIGKILL) and reaped when dropped, unless taken back with [`Owned::into_child`].
pub struct Owned(Option<Child>);

impl Owned {
    pub fn new(child: Child) -> Owned {
        Owned(Some(child))
    }

    pub fn get(&self) -> &Child {
        self.0.as_ref().expect("the child is still owned")
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is still owned")
    }

    /// The child, no longer killed on drop.
    pub fn into_child(mut self) -> Child {
        self.0.take().expect("the child is still owned")
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `sig` to a child not yet reaped.
pub fn signal(child: &Child, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) on the pid of a child we own and have not reaped.
    match unsafe { libc::kill(child.id() as libc::pid_t, sig) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The child's exit status once it exits, looking every 20 ms; `None` if it is still running
/// after `patience`.
pub fn exit_within(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > patience {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines `out` gives that start with `prefix`, without it (`""`: every line), sent on a
/// channel by a thread as they come; the channel ends when `out` does. The thread stops reading
/// once the receiver is dropped.
pub fn lines(out: impl Read + Send + 'static, prefix: &'static str) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(line) = line.strip_prefix(prefix)
                && tx.send(line.to_string()).is_err()
            {
                break;
            }
        }
    });
    rx
}

/// The next line from `lines` that starts with `prefix` (others are skipped), or panic when
/// none came within `patience`.
pub fn expect_line(lines: &Receiver<String>, prefix: &str, patience: Duration) -> String {
    let deadline = Instant::now() + patience;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?}: {e}"),
        }
    }
}
