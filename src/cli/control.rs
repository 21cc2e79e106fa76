//! Broadcast control messages as `jobdir work` obeys them: pause, resume, drain, and custom
//! messages passed on to PROGRAM through the file named by `JOBDIR_CONTROL`.
//!
//! Invariants kept here:
//! - Pause and drain never interrupt a running PROGRAM: they only stop pulls. A job pulled
//!   while a pause arrived is released untouched.
//! - "paused; no job running" is said only once every worker thread is waiting for `resume`,
//!   so after that line no job is pulled until `resume` (tests rely on it).
//! - Every message this worker receives is appended whole, as one line written by one
//!   `write(2)`, to the `JOBDIR_CONTROL` file, in the order received.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use jobdir::{Control, ControlListener, ControlMessage, Store};
use tempfile::NamedTempFile;

use super::log;

/// How long the listener thread waits for a message before it checks whether to stop.
const LISTEN_SLICE: Duration = Duration::from_millis(200);

/// Hands every control message to `on` until `stop` is set (looking at it at least every
/// 200 ms). A read error is logged once per distinct text and retried a second later.
pub fn follow(
    mut listener: ControlListener,
    stop: &AtomicBool,
    mut on: impl FnMut(ControlMessage),
) {
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.next_timeout(LISTEN_SLICE) {
            Ok(Some(m)) => on(m),
            Ok(None) => {}
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!("cannot read control messages (will retry): {text}");
                    last_error = text;
                }
                thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// What the worker threads of one `jobdir work` share about control messages.
pub struct WorkerControl {
    paused: AtomicBool,
    /// Set by a `drain` message or by SIGUSR1 (the pool's way to pass a drain on).
    draining: Arc<AtomicBool>,
    /// Set when the runner is done: the listener thread ends.
    stop: AtomicBool,
    /// Worker threads waiting for `resume`.
    waiting: AtomicU64,
    /// "paused; no job running" was said for the current pause.
    quiet: AtomicBool,
    /// "draining" was said.
    drain_said: AtomicBool,
    gate: Mutex<()>,
    resumed: Condvar,
    /// The file PROGRAM finds in JOBDIR_CONTROL (removed when the worker exits); `None` if it
    /// could not be made (JOBDIR_CONTROL is then /dev/null).
    channel: Mutex<Option<NamedTempFile>>,
    channel_path: std::path::PathBuf,
}

impl WorkerControl {
    /// Starts listening on the store (before any job is pulled), learns whether the store is
    /// paused, makes the `JOBDIR_CONTROL` file, and lets SIGUSR1 mean `drain`. A `control/`
    /// that cannot be read (a planted symlink, say) or a full `$TMPDIR` costs the control
    /// messages, with a warning, never the work.
    pub fn start(store: &Store) -> anyhow::Result<(WorkerControl, Option<ControlListener>)> {
        let listener = match store.listen_control() {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("control messages are not available: {e}");
                None
            }
        };
        let draining = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&draining))?;
        let channel = match tempfile::Builder::new()
            .prefix("jobdir-control.")
            .suffix(".jsonl")
            .tempfile()
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("cannot make the JOBDIR_CONTROL file ({e}); it is /dev/null");
                None
            }
        };
        let channel_path = channel
            .as_ref()
            .map_or_else(|| "/dev/null".into(), |f| f.path().to_path_buf());
        let paused = listener.as_ref().is_some_and(ControlListener::paused);
        if paused {
            log::line("work: paused by an earlier broadcast; waiting for resume");
        }
        Ok((
            WorkerControl {
                paused: AtomicBool::new(paused),
                draining,
                stop: AtomicBool::new(false),
                waiting: AtomicU64::new(0),
                quiet: AtomicBool::new(false),
                drain_said: AtomicBool::new(false),
                gate: Mutex::new(()),
                resumed: Condvar::new(),
                channel: Mutex::new(channel),
                channel_path,
            },
            listener,
        ))
    }

    /// The file PROGRAM finds in `JOBDIR_CONTROL`.
    pub fn channel_path(&self) -> &Path {
        &self.channel_path
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Paused and every worker thread is waiting for `resume`.
    pub fn quiet(&self) -> bool {
        self.quiet.load(Ordering::SeqCst)
    }

    /// A pulled job must be given back untouched.
    pub fn holding_back(&self) -> bool {
        self.paused() || self.draining()
    }

    /// The listener thread: applies messages until [`stop`](Self::stop).
    pub fn listen(&self, listener: Option<ControlListener>) {
        if let Some(listener) = listener {
            follow(listener, &self.stop, |m| self.apply(&m));
        }
    }

    /// Ends the listener thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn apply(&self, m: &ControlMessage) {
        self.pass_on(m);
        let id = &m.id;
        match &m.message {
            Control::Pause => {
                self.quiet.store(false, Ordering::SeqCst);
                self.paused.store(true, Ordering::SeqCst);
                log::line(&format!(
                    "work: pause (broadcast {id}): running jobs finish, no more are pulled"
                ));
            }
            Control::Resume => {
                self.paused.store(false, Ordering::SeqCst);
                self.quiet.store(false, Ordering::SeqCst);
                self.wake();
                log::line(&format!("work: resume (broadcast {id})"));
            }
            Control::Drain => {
                self.draining.store(true, Ordering::SeqCst);
                self.wake();
            }
            Control::Custom(_) => {
                log::line(&format!("work: message {id} passed on in JOBDIR_CONTROL"));
            }
        }
    }

    /// Appends the message to the JOBDIR_CONTROL file: one line, one write.
    fn pass_on(&self, m: &ControlMessage) {
        let mut line = m.to_json_line();
        line.push('\n');
        let mut f = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(f) = f.as_mut() else {
            return;
        };
        if let Err(e) = f.as_file_mut().write_all(line.as_bytes()) {
            tracing::warn!("cannot write {}: {e}", self.channel_path.display());
        }
    }

    fn wake(&self) {
        let _g = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        self.resumed.notify_all();
    }

    /// A worker thread's wait while paused: until `resume`, `drain`, or `max` passes.
    pub fn wait_while_paused(&self, max: Duration) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let g = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .resumed
            .wait_timeout_while(g, max, |_| {
                self.paused() && !self.draining() && !self.stop.load(Ordering::SeqCst)
            })
            .unwrap_or_else(PoisonError::into_inner);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Called by the runner's main thread: says "paused; no job running" once all `live`
    /// worker threads wait for `resume`, and "draining" once.
    pub fn announce(&self, live: usize) {
        if self.draining() && !self.drain_said.swap(true, Ordering::SeqCst) {
            log::line("work: draining: running jobs finish, then this worker exits");
        }
        if self.paused()
            && !self.draining()
            && !self.quiet()
            && self.waiting.load(Ordering::SeqCst) >= live as u64
        {
            self.quiet.store(true, Ordering::SeqCst);
            if self.paused() {
                log::line("work: paused; no job running");
            } else {
                // A resume came meanwhile.
                self.quiet.store(false, Ordering::SeqCst);
            }
        }
    }
}
