//! `jobdir events`: one JSON line per job state change, from the library's event stream.
//!
//! Invariant kept here: it only reports what `Store::events` yields (it never changes the
//! store), one complete line per event, flushed at once, so a reader sees each as it happens.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::log;
use super::output::rfc3339;
use super::shutdown::Shutdown;

pub const LONG_ABOUT: &str = "Print one JSON line per job state change, as it happens, until \
    interrupted (or --max-events):\n\n\
    {\"at\":\"2026-11-23T20:41:16.645Z\",\"id\":\"01a2...\",\"event\":\"running\",\"attempt\":1}\n\n\
    event is one of created, pending (again, after a delay, a backoff or a retry), delayed, \
    running, fulfilled, failed, cancelled, expired, released (given back by its worker) and \
    lost (its worker died or lost the lease); attempt is the claim it concerns (0 before the \
    first); at is when this process saw it. Changes made on this host are seen at once (file \
    events); other hosts' claims and lease ends are found by a re-scan every second, and their \
    other changes are not seen. An event may be printed after the job has moved on. Jobs \
    already in the store are not listed (use `jobdir ls`). \"events: watching DIR\" on stderr \
    says that watching has begun.";

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// JSON lines (the default and only format; accepted for symmetry with other commands)
    #[arg(long)]
    json: bool,
    /// Exit 0 after printing this many events
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_events: Option<u64>,
}

/// One line of `jobdir events`.
#[derive(Serialize)]
struct EventLine<'a> {
    at: String,
    id: String,
    event: &'a str,
    attempt: u64,
}

pub fn run(dir: &Path, a: EventsArgs) -> anyhow::Result<()> {
    let _ = a.json;
    let store = super::open(dir)?;
    let shutdown = Shutdown::register(Duration::ZERO)?;
    let mut events = store.events()?;
    log::line(&format!(
        "events: watching {}{}",
        dir.display(),
        if events.file_events() {
            ""
        } else {
            " (no file events: polling)"
        }
    ));
    let mut printed = 0u64;
    while !shutdown.requested() {
        let Some(ev) = events.next_timeout(Duration::from_millis(200))? else {
            continue;
        };
        let line = EventLine {
            at: rfc3339(ev.at),
            id: ev.id.to_string(),
            event: ev.event.as_str(),
            attempt: ev.attempt,
        };
        let text = serde_json::to_string(&line)?;
        let mut out = io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()?;
        printed += 1;
        if a.max_events.is_some_and(|max| printed >= max) {
            break;
        }
    }
    Ok(())
}
