//! Logging to stderr (tracing), and stderr lines that do not tear a progress bar.
//!
//! Invariant kept here: everything the CLI writes to stderr while a progress bar is drawn goes
//! through [`suspend_bar`], so log lines and the bar never interleave mid-line.

use std::io::{self, IsTerminal, Write};
use std::sync::{Mutex, OnceLock, PoisonError};

use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);
/// Written before every log line (set by processes that run beside others, like demo workers).
static PREFIX: OnceLock<String> = OnceLock::new();

/// Installs the stderr logger: `RUST_LOG` when set, else warn, raised by each `-v`.
pub fn init(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring RUST_LOG={spec:?}: {e}");
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrLines)
        .with_ansi(io::stderr().is_terminal())
        .try_init();
}

/// Starts every later log line with `prefix` (set once).
pub fn set_prefix(prefix: String) {
    let _ = PREFIX.set(prefix);
}

/// Shows `bar` (or stops showing one) for the lines written through [`suspend_bar`].
pub fn set_bar(bar: Option<ProgressBar>) {
    *BAR.lock().unwrap_or_else(PoisonError::into_inner) = bar;
}

/// Runs `f` (which writes to stderr) with the progress bar, if any, hidden meanwhile.
pub fn suspend_bar<R>(f: impl FnOnce() -> R) -> R {
    let bar = BAR.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match bar {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// Writes one line to stderr (around the progress bar, if any), after the prefix, if any.
pub fn line(text: &str) {
    let prefix = PREFIX.get().map_or("", String::as_str);
    suspend_bar(|| {
        let _ = writeln!(io::stderr().lock(), "{prefix}{text}");
    });
}

/// The tracing writer: one buffer per event, written whole on drop.
struct StderrLines;

struct EventBuffer(Vec<u8>);

impl<'a> MakeWriter<'a> for StderrLines {
    type Writer = EventBuffer;

    fn make_writer(&'a self) -> EventBuffer {
        EventBuffer(
            PREFIX
                .get()
                .map(|p| p.as_bytes().to_vec())
                .unwrap_or_default(),
        )
    }
}

impl Write for EventBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.len() > PREFIX.get().map_or(0, String::len) {
            suspend_bar(|| {
                let _ = io::stderr().lock().write_all(&buf);
            });
        }
    }
}
