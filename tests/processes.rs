//! Behaviour across real OS processes: this test binary re-executes itself as worker, holder
//! and notifier processes (the `helper` test, active only when `JOBDIR_TEST_ROLE` is set), and
//! the tests kill, stop and resume them and check what is left on disk.

mod common;
use common::child::{self, say, spawn};
use common::store::open;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobdir::{Error, Store};
use serde_json::{Value, json};

/// The child side. Does nothing unless this binary was started as a helper process.
#[test]
fn helper() {
    let Some(role) = child::role() else {
        return;
    };
    let store = child::open_store();
    match role.as_str() {
        // Pull and fulfil until nothing is left; print one line per successful fulfilment.
        "worker" => loop {
            match store
                .pull_work_timeout(Duration::from_millis(500))
                .expect("pull")
            {
                Some(job) => {
                    let n = job.request()["n"].as_u64().expect("n");
                    let id = job.id();
                    match job.fulfill((n * n).to_string()) {
                        Ok(()) => say!("fulfilled {id}"),
                        Err(e) => say!("refused {id} {e}"),
                    }
                }
                None => {
                    let c = store.counts().expect("counts");
                    if c.pending + c.running == 0 {
                        say!("idle");
                        return;
                    }
                }
            }
        },
        // Pull one job, say so, then hold it: until killed, or until the lease is lost (then
        // try to fulfil anyway and report what the store said).
        "hold" => {
            let job = store
                .pull_work_timeout(Duration::from_secs(30))
                .expect("pull")
                .expect("a job to hold");
            let fired = Arc::new(Mutex::new(None));
            let f2 = Arc::clone(&fired);
            job.on_compromised(move |reason| *f2.lock().unwrap() = Some(reason));
            say!("holding {}", job.id());
            let start = Instant::now();
            while !job.is_compromised() && start.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(20));
            }
            say!("compromised {}", job.is_compromised());
            say!("callback {:?}", fired.lock().unwrap().take());
            match job.fulfill("late") {
                Ok(()) => say!("fulfill ok"),
                Err(Error::LeaseLost(_)) => say!("fulfill refused"),
                Err(e) => say!("fulfill error {e}"),
            }
        }
        // Fulfil one given job without a lease, racing other processes.
        "race" => {
            let id = std::env::var("JOBDIR_TEST_JOB").unwrap().parse().unwrap();
            let me = std::process::id().to_string();
            match store.fulfill(&id, me.as_bytes()) {
                Ok(()) => say!("won {me}"),
                Err(Error::AlreadyFulfilled(_)) => say!("lost"),
                Err(e) => say!("error {e}"),
            }
        }
        // Deliver every waiting target; print them.
        "notifier" => {
            while let Some(note) = store
                .pull_notification_timeout(Duration::from_millis(500))
                .expect("pull notification")
            {
                for t in note.waiting() {
                    say!("delivered {} {}", note.id(), t);
                }
                let all = note.waiting().to_vec();
                note.done(&all).expect("done");
            }
            say!("idle");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn four_processes_fulfil_two_thousand_jobs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let mut ids = HashMap::new();
    for n in 0..2000u64 {
        ids.insert(store.create(&json!({ "n": n })).unwrap(), n);
    }
    let workers: Vec<_> = (0..4).map(|_| spawn("worker", dir.path(), &[])).collect();
    let mut fulfilled = Vec::new();
    for w in workers {
        for line in w.finish() {
            if let Some(id) = line.strip_prefix("fulfilled ") {
                fulfilled.push(id.to_string());
            }
        }
    }
    let unique: HashSet<_> = fulfilled.iter().collect();
    assert_eq!(
        fulfilled.len(),
        2000,
        "every job fulfilled by exactly one success"
    );
    assert_eq!(unique.len(), 2000);
    for (id, n) in &ids {
        assert_eq!(
            store.result(id).unwrap().unwrap(),
            (n * n).to_string().into_bytes()
        );
    }
    let c = store.counts().unwrap();
    assert_eq!((c.pending, c.running, c.fulfilled), (0, 0, 2000));
}

#[test]
fn killed_holder_job_comes_back_well_before_the_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let id = store.create(&json!({"n": 3})).unwrap();
    let mut holder = spawn("hold", dir.path(), &[]);
    let line = holder.expect_line("holding ");
    assert_eq!(line, format!("holding {id}"));
    holder.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    holder.wait();
    let job = store
        .pull_work_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("the killed holder's job comes back");
    let waited = killed_at.elapsed();
    assert_eq!(job.id(), id);
    // Attempt 1 expired (taken over: a failed attempt); the claim that took it over found the
    // job within its backoff (default 1 s) and deferred it (attempt 2, released; a key this
    // process still held may defer it once more); then it runs.
    assert!(job.attempt() >= 3, "attempt {}", job.attempt());
    let errors = store.get(&id).unwrap().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    // Liveness bound only: the lease is 30 s; same-host death is seen through flock.
    assert!(waited < Duration::from_secs(20), "took {waited:?}");
    job.fulfill("9").unwrap();
    assert_eq!(store.result(&id).unwrap().unwrap(), b"9");
    // Nothing left behind: the dead holder's lease file is gone.
    let leases: Vec<_> = std::fs::read_dir(dir.path().join("leases"))
        .unwrap()
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
}

#[test]
fn stopped_holder_loses_its_lease_and_its_late_fulfil_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lease_ms = 1500;
    let store = open(dir.path(), lease_ms);
    let id = store.create(&json!({"n": 4})).unwrap();
    let holder = spawn(
        "hold",
        dir.path(),
        &[("JOBDIR_TEST_LEASE_MS", &lease_ms.to_string())],
    );
    holder.expect_line("holding ");
    holder.signal(libc::SIGSTOP);
    // The holder is alive (its flock is held) but its heartbeat stops: after a lease without
    // change another process takes the job.
    let job = store
        .pull_work_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("taken over");
    assert_eq!(job.id(), id);
    // Taken over (attempt 1 expired), deferred by its backoff (attempt 2, perhaps more from
    // keys this process still held), then run.
    assert!(job.attempt() >= 3, "attempt {}", job.attempt());
    job.fulfill("second").unwrap();
    holder.signal(libc::SIGCONT);
    assert_eq!(holder.expect_line("compromised "), "compromised true");
    assert_eq!(holder.expect_line("callback "), "callback Some(Expired)");
    assert_eq!(holder.expect_line("fulfill "), "fulfill refused");
    holder.finish();
    assert_eq!(store.result(&id).unwrap().unwrap(), b"second");
}

#[test]
fn concurrent_unfenced_fulfils_have_one_winner_and_the_value_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let id = store.create(&json!({"n": 1})).unwrap();
    let racers: Vec<_> = (0..6)
        .map(|_| spawn("race", dir.path(), &[("JOBDIR_TEST_JOB", &id.to_string())]))
        .collect();
    let mut winners = Vec::new();
    let mut losers = 0;
    for r in racers {
        for line in r.finish() {
            if let Some(pid) = line.strip_prefix("won ") {
                winners.push(pid.to_string());
            } else if line == "lost" {
                losers += 1;
            } else {
                panic!("unexpected {line}");
            }
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(losers, 5);
    assert_eq!(store.result(&id).unwrap().unwrap(), winners[0].as_bytes());
    assert!(matches!(
        store.fulfill(&id, "again"),
        Err(Error::AlreadyFulfilled(_))
    ));
    assert_eq!(store.result(&id).unwrap().unwrap(), winners[0].as_bytes());
}

/// The seed README's two scenarios: targets queued before and after fulfilment are both
/// delivered, by other processes.
#[test]
fn notifications_queued_before_and_after_fulfilment_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let before = store.create(&json!({"n": 5})).unwrap();
    let after = store.create(&json!({"n": 6})).unwrap();
    store.queue(&before, &json!({"to": "before"})).unwrap();
    spawn("worker", dir.path(), &[]).finish();
    store.queue(&after, &json!({"to": "after"})).unwrap();
    let lines = spawn("notifier", dir.path(), &[]).finish();
    let delivered: HashSet<_> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("delivered "))
        .map(str::to_string)
        .collect();
    let want: HashSet<_> = [
        format!("{before} {}", json!({"to": "before"})),
        format!("{after} {}", json!({"to": "after"})),
    ]
    .into_iter()
    .collect();
    assert_eq!(delivered, want);
    assert!(store.get(&before).unwrap().waiting.is_empty());
    assert!(store.get(&after).unwrap().waiting.is_empty());
    // Nothing is delivered again after done.
    let again = spawn("notifier", dir.path(), &[]).finish();
    assert!(
        again.iter().all(|l| !l.starts_with("delivered")),
        "{again:?}"
    );
}

#[test]
fn a_target_queued_while_a_notification_is_held_stays_for_the_next_pull() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let other = open(dir.path(), 30_000); // a second handle, as another process would have
    let id = store.create(&1).unwrap();
    store.queue(&id, &"first").unwrap();
    store.fulfill(&id, "v").unwrap();
    let note = store.pull_notification().unwrap().unwrap();
    assert_eq!(note.waiting(), &[json!("first")]);
    other.queue(&id, &"second").unwrap();
    // While held, nobody else gets it.
    assert!(other.pull_notification().unwrap().is_none());
    note.done(&[json!("first")]).unwrap();
    assert_eq!(store.get(&id).unwrap().waiting, vec![json!("second")]);
    let note = other
        .pull_notification_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the target queued meanwhile");
    assert_eq!(note.waiting(), &[json!("second")]);
    note.done(&[json!("second")]).unwrap();
    assert!(store.pull_notification().unwrap().is_none());
    assert!(store.get(&id).unwrap().waiting.is_empty());
}

#[test]
fn an_equal_target_queued_again_while_held_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let other = open(dir.path(), 30_000);
    let id = store.create(&1).unwrap();
    store.queue(&id, &"same").unwrap();
    store.fulfill(&id, "v").unwrap();
    let note = store.pull_notification().unwrap().unwrap();
    // Delivery is under way; meanwhile someone asks for the same target again, twice (the
    // second file may reuse the first one's freed inode number).
    other.queue(&id, &"same").unwrap();
    other.queue(&id, &"same").unwrap();
    note.done(&[json!("same")]).unwrap();
    assert_eq!(store.get(&id).unwrap().waiting, vec![json!("same")]);
    let again = other
        .pull_notification_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the second request is delivered too");
    again.done(&[json!("same")]).unwrap();
    assert!(store.get(&id).unwrap().waiting.is_empty());
}

#[test]
fn corrupt_and_foreign_files_never_break_a_pull_and_recover_quarantines_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let good = store.create(&json!({"n": 1})).unwrap();
    let bad = store.create(&json!({"n": 2})).unwrap();
    let root = dir.path();
    // A job whose record is truncated, a foreign file among the jobs, a bogus index entry.
    let shard = &bad.to_string()[34..];
    std::fs::write(
        root.join("jobs")
            .join(shard)
            .join(bad.to_string())
            .join("job.json"),
        b"{\"id\":",
    )
    .unwrap();
    std::fs::write(root.join("jobs/00/not-a-job"), b"x").unwrap();
    let class = std::fs::read_dir(root.join("pending"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bucket = std::fs::read_dir(&class)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(bucket.join("garbage"), b"").unwrap();
    std::fs::write(root.join("stray.txt"), b"hello").unwrap();

    let fresh = open(root, 30_000);
    let mut pulled = Vec::new();
    while let Some(job) = fresh.pull_work().unwrap() {
        pulled.push(job.id());
        job.fulfill("ok").unwrap();
    }
    assert_eq!(pulled, vec![good]);
    let report = fresh.recover().unwrap();
    let reasons: Vec<String> = report
        .quarantined
        .iter()
        .map(|q| q.path.to_string_lossy().into_owned())
        .collect();
    assert!(
        reasons.iter().any(|p| p.ends_with("not-a-job")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|p| p.ends_with("garbage")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|p| p == "stray.txt"), "{reasons:?}");
    // The corrupt job was quarantined by the pull that met it.
    assert!(matches!(fresh.get(&bad), Err(Error::NotFound(_))));
    assert_eq!(fresh.counts().unwrap().quarantined, 4);
    // A second recover finds nothing more to do.
    let again = fresh.recover().unwrap();
    assert!(again.quarantined.is_empty(), "{:?}", again.quarantined);
}

#[test]
fn invalid_ids_are_refused_before_any_path_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(dir.path(), 30_000);
    for bad in ["../x", "/etc/passwd", "", "a\0b", "..", "jobs"] {
        assert!(
            matches!(bad.parse::<jobdir::JobId>(), Err(Error::InvalidId(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn release_makes_a_job_pending_again_and_counts_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let other = open(dir.path(), 30_000);
    let id = store.create(&"r").unwrap();
    let job = store.pull_work().unwrap().unwrap();
    assert_eq!(store.get(&id).unwrap().state, jobdir::JobState::Running);
    assert!(other.pull_work().unwrap().is_none());
    job.release().unwrap();
    assert_eq!(store.get(&id).unwrap().state, jobdir::JobState::Pending);
    let again = other
        .pull_work_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(again.attempt(), 2);
    assert_eq!(store.get(&id).unwrap().attempts, 2);
}

#[test]
fn a_store_of_another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jobdir.json"),
        br#"{"format":"jobdir","version":99}"#,
    )
    .unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::FormatVersion { found: 99, .. }),
        "{err}"
    );
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("precious.txt"), b"data").unwrap();
    assert!(matches!(
        Store::open(other.path()),
        Err(Error::NotAStore { .. })
    ));
    assert!(!other.path().join("jobs").exists());
}

#[test]
fn priorities_then_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let mut want = Vec::new();
    let low: Vec<_> = (0..3).map(|i| store.create(&i).unwrap()).collect();
    let high: Vec<_> = (0..3)
        .map(|i| {
            store
                .create_with(&i, jobdir::CreateOptions::default().priority(5))
                .unwrap()
        })
        .collect();
    want.extend(high);
    want.extend(low);
    let fresh = open(dir.path(), 30_000);
    let mut got = Vec::new();
    while let Some(job) = fresh.pull_work().unwrap() {
        got.push(job.id());
        job.fulfill("").unwrap();
    }
    assert_eq!(got, want);
    let _: Value = json!(null);
}

#[test]
fn a_dead_holder_of_another_host_is_taken_over_only_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let lease_ms = 1500;
    let id = open(dir.path(), lease_ms).create(&json!({"n": 7})).unwrap();
    let mut holder = spawn(
        "hold",
        dir.path(),
        &[
            ("JOBDIR_TEST_LEASE_MS", &lease_ms.to_string()),
            ("JOBDIR_HOST_ID", "host-a"),
        ],
    );
    holder.expect_line("holding ");
    holder.signal(libc::SIGKILL);
    holder.wait();
    // Another host cannot trust a free flock (it may not even see it): only a heartbeat that
    // stopped changing for a whole lease, watched on its own clock, proves the holder dead.
    let other_host = Store::builder(dir.path())
        .lease(Duration::from_millis(lease_ms))
        .host_id("host-b")
        .open()
        .unwrap();
    assert!(
        other_host.pull_work().unwrap().is_none(),
        "taken on first sight"
    );
    let job = other_host
        .pull_work_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("taken over after the lease");
    assert_eq!(job.id(), id);
    // Taken over (attempt 1 expired), deferred by its backoff (attempt 2, perhaps more from
    // keys this process still held), then run.
    assert!(job.attempt() >= 3, "attempt {}", job.attempt());
}

#[test]
fn handles_are_send_sync_and_cheap_to_clone() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send::<jobdir::WorkLease>();
    send::<jobdir::NotificationLease>();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let clones: Vec<Store> = (0..4).map(|_| store.clone()).collect();
    let handles: Vec<_> = clones
        .into_iter()
        .enumerate()
        .map(|(i, s)| std::thread::spawn(move || s.create(&json!({ "n": i })).unwrap()))
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.counts().unwrap().pending, 4);
}

/// Regression: a commit moves `held/` out of its epoch directory; the directory must stay
/// non-empty, or a stale claimant's rename onto it (POSIX replaces an empty directory) would
/// claim the same epoch a second time.
#[test]
fn a_committed_epoch_cannot_be_claimed_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let id = store.create(&1).unwrap();
    store.pull_work().unwrap().unwrap().fulfill("v").unwrap();
    let shard = &id.to_string()[34..];
    let epoch = dir
        .path()
        .join("jobs")
        .join(shard)
        .join(id.to_string())
        .join("claims/0000000001");
    assert!(epoch.is_dir());
    let stale = dir.path().join("tmp/stale-token");
    std::fs::create_dir_all(stale.join("held")).unwrap();
    let err = std::fs::rename(&stale, &epoch).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists
        ),
        "{err}"
    );
    assert_eq!(store.get(&id).unwrap().attempts, 1);
}

/// Regression: without file events, a pull whose every candidate is held by someone else
/// must end (it used to re-read the disk and meet the same busy job forever).
#[test]
fn without_file_events_a_pull_of_busy_jobs_ends_and_polling_finds_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let holder = open(dir.path(), 30_000);
    let polling = Store::builder(dir.path())
        .file_events(false)
        .poll_interval(Duration::from_millis(50))
        .open()
        .unwrap();
    holder.create(&1).unwrap();
    let held = holder.pull_work().unwrap().unwrap();
    assert!(polling.pull_work().unwrap().is_none());
    let id = holder.create(&2).unwrap();
    let job = polling
        .pull_work_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("found by polling");
    assert_eq!(job.id(), id);
    drop(held);
}
