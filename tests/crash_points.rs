//! Fault injection: for every named crash point in the protocol, a real process is killed
//! (SIGKILL) exactly there; then `recover` must heal what is left, and the invariants must hold:
//! no acknowledged job lost, no result changed, no queued target lost, none re-delivered after
//! its `done`, no lease file or temporary left; a job whose `fail` crashed still runs, and a job
//! whose `cancel` was acknowledged stays cancelled unless its `retry` was reached. Needs the
//! `fault-injection` feature:
//!
//! ```sh
//! cargo test --release --features fault-injection --test crash_points
//! ```
#![cfg(feature = "fault-injection")]

mod common;
use common::child::{self, say};

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use jobdir::{CreateOptions, Failure, JobId, JobState, RecoverOptions, RetryPolicy, Store};
use serde_json::{Value, json};

/// Every crash point compiled into the library (`grep fault::point src`); the test fails if one
/// is missing here or is not reached by its scenario.
const POINTS: &[&str] = &[
    "create.after_temp_write",
    "create.after_rename",
    "create.after_index_entry",
    "create.after_dir_fsync",
    "create.after_index",
    "claim.after_lease_file",
    "claim.after_claim",
    "fulfill.before_commit",
    "fulfill.after_result",
    "fulfill.after_notify_index",
    "queue.after_target",
    "done.after_unqueue",
    "done.after_index",
    "end.after_rename",
    "remove.after_rename",
    "takeover.before_rename",
    "takeover.after_rename",
    "fail.after_delayed",
    "promote.after_pending",
    "cancel.after_outcome",
    "retry.after_rename",
];

fn open(dir: &Path) -> Store {
    common::store::builder(dir, 30_000, 100).open().unwrap()
}

/// The child side: one pass through every protocol step, saying what was acknowledged.
#[test]
fn helper() {
    let Some(role) = child::role() else {
        return;
    };
    let store = open(&child::dir());
    if role == "hold" {
        let job = store.pull_work().unwrap().unwrap();
        say!("holding {}", job.id());
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let a = store.create(&json!({"job": "a"})).unwrap();
    say!("created {a}");
    store.queue(&a, &json!("t1")).unwrap();
    say!("queued {a} \"t1\"");
    let b = store.create(&json!({"job": "b"})).unwrap();
    say!("created {b}");
    while let Some(job) = store.pull_work().unwrap() {
        let id = job.id();
        let value = format!("value of {id}");
        job.fulfill(&value).unwrap();
        say!("fulfilled {id} {value}");
    }
    store.queue(&a, &json!("t2")).unwrap();
    say!("queued {a} \"t2\"");
    while let Some(note) = store.pull_notification().unwrap() {
        let all = note.waiting().to_vec();
        let id = note.id();
        for t in &all {
            say!("delivered {id} {t}"); // the delivery itself happens before done
        }
        note.done(&all).unwrap();
        for t in &all {
            say!("done {id} {t}");
        }
    }
    let c = store.create(&json!({"job": "c"})).unwrap();
    say!("created {c}");
    let job = store.pull_work().unwrap().unwrap();
    job.release().unwrap();
    say!("removing {c}"); // from here on, c may be gone
    store.remove(&c).unwrap();
    say!("removed {c}");
    // The lifecycle: a failure retried at once (no backoff), then a cancel and a manual retry.
    let retry_at_once = RetryPolicy::default()
        .with_max_attempts(3)
        .with_backoff(Duration::ZERO, Duration::ZERO);
    let d = store
        .create_with(
            &json!({"job": "d"}),
            CreateOptions::default().retry(retry_at_once),
        )
        .unwrap();
    say!("created {d}");
    let job = store.pull_work().unwrap().unwrap();
    assert_eq!(
        job.fail("boom").unwrap(),
        Failure::Retrying {
            after: Duration::ZERO
        }
    );
    let job = store.pull_work().unwrap().expect("promoted at once");
    assert_eq!((job.id(), job.attempt()), (d, 2));
    let value = format!("value of {d}");
    job.fulfill(&value).unwrap();
    say!("fulfilled {d} {value}");
    let e = store.create(&json!({"job": "e"})).unwrap();
    say!("created {e}");
    say!("cancelling {e}"); // from here on, e may be cancelled
    store.cancel(&e, "stop").unwrap();
    say!("retrying {e}"); // from here on, e may be pending again
    store.retry(&e).unwrap();
    say!("retried {e}");
    let job = store.pull_work().unwrap().unwrap();
    let value = format!("value of {e}");
    job.fulfill(&value).unwrap();
    say!("fulfilled {e} {value}");
    say!("finished");
}

/// Every `fault::point("...")` in `src/` is listed in POINTS, and nothing else is.
#[test]
fn every_crash_point_in_the_source_is_listed() {
    fn scan(dir: &Path, out: &mut HashSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                scan(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split("fault::point(\"").skip(1) {
                    out.insert(part.split('"').next().unwrap().to_string());
                }
            }
        }
    }
    let mut found = HashSet::new();
    scan(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    let listed: HashSet<String> = POINTS.iter().map(|p| p.to_string()).collect();
    let mut missing: Vec<_> = found.difference(&listed).collect();
    missing.sort();
    let mut extra: Vec<_> = listed.difference(&found).collect();
    extra.sort();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "crash points in src/ but not in POINTS: {missing:?}; in POINTS but not in src/: {extra:?}"
    );
}

#[test]
fn every_crash_point_is_healed_by_recover() {
    for point in POINTS {
        check_point(point);
    }
}

fn check_point(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(root);
    let mut held_job = None;
    if point.starts_with("takeover.") {
        // A holder dies; the scripted process meets its dead lease and takes it over.
        held_job = Some(store.create(&json!({"job": "held"})).unwrap());
        let holder = child::spawn("hold", root, &[]);
        assert!(holder.line().starts_with("holding "));
        holder.kill();
    }
    let (status, lines) = child::spawn("script", root, &[("JOBDIR_CRASH_AT", point)]).exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "{point}: crash point not reached ({status}); said {lines:?}"
    );

    let mut created = HashSet::new();
    let mut results: HashMap<JobId, String> = HashMap::new();
    let mut queued: HashSet<(JobId, String)> = HashSet::new();
    let mut done: HashSet<(JobId, String)> = HashSet::new();
    let mut delivered: HashSet<(JobId, String)> = HashSet::new();
    let mut removed = HashSet::new();
    let mut may_be_cancelled = HashSet::new();
    let mut retried = HashSet::new();
    for l in &lines {
        let mut it = l.splitn(3, ' ');
        let (what, id, rest) = (it.next().unwrap(), it.next().unwrap(), it.next());
        let id: JobId = id.parse().unwrap();
        match what {
            "created" => {
                created.insert(id);
            }
            "fulfilled" => {
                results.insert(id, rest.unwrap().to_string());
            }
            "queued" => {
                queued.insert((id, rest.unwrap().to_string()));
            }
            "done" => {
                done.insert((id, rest.unwrap().to_string()));
            }
            "delivered" => {
                delivered.insert((id, rest.unwrap().to_string()));
            }
            "removing" | "removed" => {
                removed.insert(id);
            }
            "cancelling" => {
                may_be_cancelled.insert(id);
            }
            "retrying" => {}
            "retried" => {
                retried.insert(id);
            }
            other => panic!("{other}"),
        }
    }
    created.extend(held_job);

    // Heal, then finish all work the way a restarted deployment would.
    let fresh = open(root);
    let report = fresh
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap();
    assert!(
        report.quarantined.is_empty(),
        "{point}: a crash made junk: {report:?}"
    );
    // A job whose holder died in the crash is taken over (an expired lease: a failed attempt)
    // and runs again after its backoff (FORMAT.md §6.21), so wait until nothing is left.
    let patience = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match fresh.pull_work_timeout(Duration::from_millis(200)).unwrap() {
            Some(job) => job.fulfill("after recovery").unwrap(),
            None => {
                let c = fresh.counts().unwrap();
                if c.pending + c.delayed + c.running == 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < patience,
                    "{point}: work left: {c:?}"
                );
            }
        }
    }
    let mut delivered_after = HashSet::new();
    while let Some(note) = fresh.pull_notification().unwrap() {
        for t in note.waiting() {
            delivered_after.insert((note.id(), t.to_string()));
        }
        let all = note.waiting().to_vec();
        note.done(&all).unwrap();
    }

    for id in &created {
        if removed.contains(id) {
            continue;
        }
        let info = fresh
            .get(id)
            .unwrap_or_else(|e| panic!("{point}: acknowledged job {id} lost: {e}"));
        if info.state == JobState::Cancelled {
            // Only a job whose cancel was reached, and whose retry was not acknowledged.
            assert!(
                may_be_cancelled.contains(id) && !retried.contains(id),
                "{point}: {id} cancelled: {info:?}"
            );
            assert!(info.waiting.is_empty(), "{point}: targets left on {id}");
            continue;
        }
        let got = String::from_utf8(info.result.expect("fulfilled")).unwrap();
        if let Some(v) = results.get(id) {
            assert_eq!(&got, v, "{point}: result of {id} changed");
        }
        assert!(info.waiting.is_empty(), "{point}: targets left on {id}");
    }
    for q in &queued {
        if removed.contains(&q.0) {
            continue;
        }
        assert!(
            delivered.contains(q) || delivered_after.contains(q),
            "{point}: queued target {q:?} never delivered"
        );
    }
    for d in &done {
        assert!(
            !delivered_after.contains(d),
            "{point}: {d:?} delivered again after done"
        );
    }
    let again = fresh
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap();
    assert!(again.quarantined.is_empty(), "{point}: {again:?}");
    let c = fresh.counts().unwrap();
    assert_eq!(
        (c.pending, c.running, c.notifications),
        (0, 0, 0),
        "{point}: {c:?}"
    );
    for sub in ["leases", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(root.join(sub)).unwrap().collect();
        assert!(left.is_empty(), "{point}: {sub}/ not empty: {left:?}");
    }
    let _: Value = Value::Null;
}
