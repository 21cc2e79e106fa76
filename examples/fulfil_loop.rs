//! Workflow 2 of 3 — the fulfilment loop: pull a job under an exclusive lease, compute its
//! result, fulfil it; stop once no job has come for a while.
//!
//! ```text
//! cargo run --example fulfil_loop -- [DIR] [IDLE_SECONDS]
//! cargo run --example fulfil_loop -- /tmp/jobs 2
//! ```
//!
//! `DIR` is the store (default `./.jobdir`); the loop ends after `IDLE_SECONDS` (default 2)
//! without a new job. Run several copies at once, on one host or several hosts sharing the
//! directory: each job is held by one of them at a time.
//!
//! What the lease gives: while this process holds a job, a background thread renews the lease.
//! If the lease is lost anyway (the process was paused longer than the lease and another worker
//! took the job over, or the job was removed), the `on_compromised` callback runs: it sets a
//! stop flag that the computation checks, and a late `fulfill` is refused. If this process
//! dies, its job becomes pullable again (at once on the same host).

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jobdir::{Store, WorkLease};
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
    let (mut fulfilled, mut abandoned) = (0u64, 0u64);

    // `pull_work_timeout` returns a job at once if one is pending, else sleeps until one is
    // created (woken by file events, so there is no polling delay on one host) or until the
    // timeout: `None` means nothing came for `idle`, and the loop ends.
    while let Some(job) = store.pull_work_timeout(idle)? {
        if work_on(job)? {
            fulfilled += 1;
        } else {
            abandoned += 1;
        }
    }
    eprintln!("idle for {idle:?}: stopping ({fulfilled} fulfilled, {abandoned} abandoned)");
    Ok(())
}

/// Computes and fulfils one job. Returns false if the job was given up because its lease was
/// lost; errors other than losing the job are returned.
fn work_on(job: WorkLease) -> Result<bool, Box<dyn Error>> {
    let id = job.id();

    // The stop flag: set from the heartbeat thread if the lease is lost. The callback must be
    // quick and must not block; it runs at once if the lease is already lost.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    job.on_compromised(move |reason| {
        eprintln!("job {id}: lease lost ({reason:?}); stopping work on it");
        flag.store(true, Ordering::SeqCst);
    });

    let result = match compute(job.request(), &stop) {
        Some(result) => result,
        None => {
            // Stopped mid-way: another worker owns the job now. Dropping the lease is all
            // that is left to do (a lost lease needs no release).
            return Ok(false);
        }
    };

    // `fulfill` stores the result and ends the lease in one atomic step, fenced by the lease:
    // it is refused if the lease was lost (even if the callback has not run yet), and if the
    // job already has a result (results are written once).
    match job.fulfill(result.as_bytes()) {
        Ok(()) => {
            println!("fulfilled {id}: {result}");
            Ok(true)
        }
        Err(e @ (jobdir::Error::LeaseLost(_) | jobdir::Error::AlreadyFulfilled(_))) => {
            eprintln!("job {id}: {e}; moving on");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The "work": sums the terms of `{"calculate": "1+2+3"}`. A request it cannot compute gets an
/// `error: ...` result rather than being released, since a released job is pulled again at once
/// and would come back forever. Returns `None` if told to stop.
fn compute(request: &Value, stop: &AtomicBool) -> Option<String> {
    let Some(expr) = request.get("calculate").and_then(Value::as_str) else {
        return Some(format!(
            "error: expected {{\"calculate\": \"a+b\"}}, got {request}"
        ));
    };
    let mut sum: i64 = 0;
    for term in expr.split('+') {
        // Long computations check the flag now and then, and give up when it is set.
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match term.trim().parse::<i64>() {
            Ok(n) => sum = sum.saturating_add(n),
            Err(_) => return Some(format!("error: cannot compute {expr:?}")),
        }
    }
    Some(sum.to_string())
}
