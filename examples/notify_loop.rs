//! Workflow 3 of 3 — the notification loop: pull a fulfilled job's notification, deliver its
//! result to each waiting target, and mark the delivered targets done.
//!
//! ```text
//! cargo run --example notify_loop -- [DIR] [IDLE_SECONDS]
//! cargo run --example notify_loop -- /tmp/jobs 2
//! ```
//!
//! `DIR` is the store (default `./.jobdir`); the loop ends after `IDLE_SECONDS` (default 2)
//! without a new notification. "Delivering" here is printing `target <- result`; a real
//! notifier would send the email or make the HTTP call.
//!
//! What the store promises: a notification is held by one notifier at a time; `done` removes
//! exactly the targets it is given, so a target whose delivery failed, or one queued while the
//! notification was held, stays queued for a later pull; a target marked done is never
//! delivered again. If the lease is lost (or this process dies) before `done`, every target
//! still queued is delivered again by whoever pulls next: delivery is at least once.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jobdir::{NotificationLease, Store};
use serde_json::Value;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "./.jobdir".to_string());
    let idle = match args.next() {
        Some(s) => Duration::from_secs_f64(
            s.parse()
                .map_err(|e| format!("IDLE_SECONDS must be a number, not {s:?}: {e}"))?,
        ),
        None => Duration::from_secs(2),
    };

    let store = Store::open(&dir)?;
    let mut delivered_total = 0usize;

    // Like `pull_work_timeout`: a notification at once if one is waiting, else a sleep until
    // one appears (a job with targets is fulfilled, or a target is queued on a fulfilled job)
    // or the timeout passes.
    while let Some(note) = store.pull_notification_timeout(idle)? {
        delivered_total += notify(note)?;
    }
    eprintln!("idle for {idle:?}: stopping ({delivered_total} targets notified)");
    Ok(())
}

/// Delivers one notification to its waiting targets; returns how many were marked done.
fn notify(note: NotificationLease) -> Result<usize, Box<dyn Error>> {
    let id = note.id();

    // As in the fulfilment loop: stop delivering if the lease is lost, since another notifier
    // now owns these targets.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    note.on_compromised(move |reason| {
        eprintln!("notification of {id}: lease lost ({reason:?}); stopping");
        flag.store(true, Ordering::SeqCst);
    });

    // The result, as stored by `fulfill` (bytes; this example's results are text).
    let value = String::from_utf8_lossy(note.value()).into_owned();

    let mut delivered: Vec<Value> = Vec::new();
    for target in note.waiting() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if deliver(target, &id.to_string(), &value) {
            delivered.push(target.clone());
        }
        // A failed delivery is simply left out of `delivered`: the target stays queued and
        // comes back with a later pull.
    }

    // Removes exactly the delivered targets and releases the notification. Refused if the lease
    // was lost: then nothing is removed and the next holder delivers them again.
    let n = delivered.len();
    match note.done(&delivered) {
        Ok(()) => Ok(n),
        Err(e @ jobdir::Error::LeaseLost(_)) => {
            eprintln!("notification of {id}: {e}; its targets stay queued");
            Ok(0)
        }
        Err(e) => Err(e.into()),
    }
}

/// "Sends" the result to one target. Returns whether the delivery succeeded.
fn deliver(target: &Value, job: &str, value: &str) -> bool {
    println!("{target} <- {value} (job {job})");
    true
}
