//! Workflow 1 of 3 — job creation: add jobs to the store and print their ids.
//!
//! ```text
//! cargo run --example create_jobs -- [DIR] [COUNT]
//! cargo run --example create_jobs -- /tmp/jobs 5
//! ```
//!
//! `DIR` is the store (default `./.jobdir`, created on first use); `COUNT` defaults to 5. Each
//! job asks for a sum (`{"calculate": "3+3"}`, which `fulfil_loop` computes) and gets one
//! notification target (who wants the result, which `notify_loop` delivers). Creating a job
//! does not claim it: workers pull it with `pull_work`. When `create` returns, the job is on
//! disk for good (fsynced, in the default durable mode) and any worker may pull it.
//!
//! Run the three examples together:
//!
//! ```text
//! cargo run --example create_jobs -- /tmp/jobs 5
//! cargo run --example fulfil_loop -- /tmp/jobs
//! cargo run --example notify_loop -- /tmp/jobs
//! ```

use std::error::Error;

use jobdir::{CreateOptions, Store};
use serde_json::json;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "./.jobdir".to_string());
    let count: u64 = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|e| format!("COUNT must be a number, not {n:?}: {e}"))?,
        None => 5,
    };

    // Any number of processes may open the same directory at once.
    let store = Store::open(&dir)?;

    for i in 1..=count {
        // The request is any JSON value; this one is what `fulfil_loop` knows how to compute.
        let request = json!({"calculate": format!("{i}+{i}")});
        // Higher priorities are pulled first (FIFO within a priority); 0 is the default, as
        // `store.create(&request)` would give.
        let id = store.create_with(&request, CreateOptions::default().priority(0))?;

        // Someone wants the result: queue a notification target (again any JSON value). It is
        // delivered once the job is fulfilled. Queueing an equal target twice keeps one.
        store.queue(&id, &json!({"email": format!("user{i}@example.com")}))?;

        // The id is the handle for everything else: `get`, `wait`, `queue`, `fulfill`...
        println!("{id}");
    }
    Ok(())
}
