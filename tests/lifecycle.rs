//! The job lifecycle (issue 6) across real processes: failures and retries with backoff, the
//! attempt budget (expired leases and run timeouts count), manual retry, delayed jobs reaching
//! a worker blocked in another process, cancellation of pending and running jobs, run timeouts,
//! deadlines and pickup timeouts, `recover` on a store holding all of these, and the CLI's
//! validation of the lifecycle flags.
//!
//! This test binary re-executes itself as worker and holder processes (the `helper` test, active
//! only when `JOBDIR_TEST_ROLE` is set, as in `tests/processes.rs`), and drives the `jobdir`
//! binary for waiters, `cancel`, `retry`, `recover` and `status`. No assertion is about how
//! fast anything happens: only about what happens, and that nothing happens before its time.
//!
//! `cargo test --release --test lifecycle`

mod common;
use common::child::{self, Helper, say};
use common::process::{Owned, exit_within};
use common::wait::{PATIENCE, eventually};
use common::{jobdir, ok};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobdir::{CreateOptions, Error, Failure, JobId, JobInfo, JobState, RetryPolicy, Store};
use serde_json::{Value, json};

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn now_ms() -> u64 {
    ms(SystemTime::now())
}

fn open(dir: &Path, lease_ms: u64, events: bool) -> Store {
    common::store::builder(dir, lease_ms, 200)
        .file_events(events)
        .open()
        .expect("open store")
}

/// The child side. Does nothing unless this binary was started as a helper process.
#[test]
fn helper() {
    let Some(role) = child::role() else {
        return;
    };
    let env_u64 = child::env_u64;
    let dir = child::dir();
    let events = std::env::var("JOBDIR_TEST_NO_EVENTS").is_err();
    let store = open(&dir, env_u64("JOBDIR_TEST_LEASE_MS", 30_000), events);
    let wait = Duration::from_millis(env_u64("JOBDIR_TEST_WAIT_MS", 30_000));
    match role.as_str() {
        // Pull and fail COUNT jobs (or attempts), saying what the store made of each failure.
        "failer" => {
            for _ in 0..env_u64("JOBDIR_TEST_COUNT", 1) {
                let job = store
                    .pull_work_timeout(wait)
                    .expect("pull")
                    .expect("a job to fail");
                let (id, attempt) = (job.id(), job.attempt());
                match job.fail(&format!("boom {attempt}")).expect("fail") {
                    Failure::Retrying { after } => {
                        say!("retrying {id} {attempt} {}", after.as_millis())
                    }
                    Failure::Failed => say!("failed {id} {attempt}"),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        // Say "waiting", then block in one pull; fulfil what it returns, saying when (by this
        // host's clock) the pull returned it.
        "worker" => {
            say!("waiting");
            match store.pull_work_timeout(wait).expect("pull") {
                Some(job) => {
                    let at = now_ms();
                    let (id, attempt) = (job.id(), job.attempt());
                    job.fulfill("ok").expect("fulfil");
                    say!("fulfilled {id} {attempt} {at}");
                }
                None => say!("none"),
            }
        }
        // Pull one job and hold it until the lease is lost (or the process is killed); then say
        // why it was lost and what the store said to a late fulfilment.
        "hold" => {
            let job = store
                .pull_work_timeout(wait)
                .expect("pull")
                .expect("a job to hold");
            let fired = Arc::new(Mutex::new(None));
            let f2 = Arc::clone(&fired);
            job.on_compromised(move |reason| *f2.lock().unwrap() = Some(reason));
            say!("holding {} {}", job.id(), job.attempt());
            let start = Instant::now();
            while fired.lock().unwrap().is_none() && start.elapsed() < PATIENCE {
                std::thread::sleep(Duration::from_millis(20));
            }
            say!("callback {:?}", fired.lock().unwrap().take());
            match job.fulfill("late") {
                Ok(()) => say!("fulfill ok"),
                Err(Error::LeaseLost(_)) => say!("fulfill refused"),
                Err(e) => say!("fulfill error {e}"),
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// A helper process; it watches for file events unless `env` sets `JOBDIR_TEST_NO_EVENTS`.
fn spawn(role: &str, dir: &Path, env: &[(&str, &str)]) -> Helper {
    let mut cmd = child::command(role, dir);
    cmd.env_remove("JOBDIR_TEST_NO_EVENTS")
        .envs(env.iter().copied());
    Helper::start(cmd)
}

/// Runs a command that must exit with `code`; returns its stderr.
fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let stderr = common::exits(dir, args, code);
    assert!(stderr.contains("error"), "jobdir {args:?}: {stderr:?}");
    stderr
}

/// A `jobdir` process left running (a blocked `wait`); killed if the test fails first.
struct Running(Owned);

impl Running {
    fn start(dir: &Path, args: &[&str]) -> Running {
        let child = common::jobdir_command(dir, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jobdir");
        Running(Owned::new(child))
    }

    /// Its exit status and stderr, waiting up to PATIENCE.
    fn finish(mut self) -> (Option<i32>, String) {
        let child = self.0.child();
        let status = exit_within(child, PATIENCE).expect("jobdir did not exit");
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (status.code(), stderr)
    }
}

fn job_dir(dir: &Path, id: &JobId) -> PathBuf {
    let text = id.to_string();
    dir.join("jobs").join(&text[34..]).join(&text)
}

/// Every regular file below `root`, as paths.
fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The index entries (below `pending/` or `delayed/`) that name `id`.
fn entries_of(dir: &Path, index: &str, id: &JobId) -> Vec<PathBuf> {
    files_below(&dir.join(index))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .ends_with(&id.to_string())
        })
        .collect()
}

/// (attempt, error) pairs of a job's failed attempts.
fn errors(info: &JobInfo) -> Vec<(u64, String)> {
    info.errors
        .iter()
        .map(|e| (e.attempt, e.error.clone()))
        .collect()
}

fn status_json(dir: &Path) -> Value {
    serde_json::from_str(&ok(dir, &["status", "--json"])).unwrap()
}

#[test]
fn a_failure_backs_off_as_delayed_then_pending_and_another_process_fulfils_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000, true);
    let policy = RetryPolicy::default()
        .with_max_attempts(3)
        .with_backoff(Duration::from_millis(1500), Duration::from_secs(10));
    let id = store
        .create_with(&json!({"n": 1}), CreateOptions::default().retry(policy))
        .unwrap();
    let failer = spawn("failer", dir.path(), &[]);
    let line = failer.expect_line("retrying ");
    failer.finish();
    let after: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((750..=1500).contains(&after), "jitter: half to all: {line}");

    // Backing off: pending with a run_at (delayed is for jobs created to run later), not
    // pullable, its only index entry in `delayed/`.
    let info = store.get(&id).unwrap();
    let run_at = info.run_at.expect("a run_at while backing off");
    assert_eq!(info.state, JobState::Pending);
    assert_eq!(entries_of(dir.path(), "delayed", &id).len(), 1);
    assert!(entries_of(dir.path(), "pending", &id).is_empty());
    let c = store.counts().unwrap();
    assert_eq!((c.pending, c.delayed), (1, 0), "{c:?}");
    if SystemTime::now() < run_at {
        assert!(
            store.pull_work().unwrap().is_none(),
            "pulled during backoff"
        );
    }
    assert_eq!(info.attempts, 1);
    assert_eq!(errors(&info), [(1, "boom 1".to_string())]);
    let epoch = job_dir(dir.path(), &id).join("claims/0000000001/failed/error.json");
    let note: Value = serde_json::from_slice(&std::fs::read(epoch).unwrap()).unwrap();
    assert_eq!(note["error"], "boom 1");
    assert!(
        note["at"].is_string() && note["retry_at"].is_string(),
        "{note}"
    );

    // After the backoff (and before any pull promoted it): pending, run_at gone.
    eventually("the backoff to pass", || SystemTime::now() >= run_at);
    let info = store.get(&id).unwrap();
    assert_eq!(info.state, JobState::Pending);
    assert_eq!(info.run_at, None);
    let c = store.counts().unwrap();
    assert_eq!((c.pending, c.delayed), (1, 0), "{c:?}");

    // Another process pulls it: attempt 2, not before its run_at.
    let worker = spawn("worker", dir.path(), &[]);
    let line = worker.expect_line("fulfilled ");
    worker.finish();
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts[1], id.to_string());
    assert_eq!(parts[2], "2", "{line}");
    assert!(parts[3].parse::<u64>().unwrap() >= ms(run_at), "{line}");
    let info = store.get(&id).unwrap();
    assert_eq!(info.state, JobState::Fulfilled);
    assert_eq!(info.result.as_deref(), Some(&b"ok"[..]));
    assert_eq!(errors(&info), [(1, "boom 1".to_string())]);
    assert!(entries_of(dir.path(), "delayed", &id).is_empty());
    assert!(entries_of(dir.path(), "pending", &id).is_empty());
}

#[test]
fn out_of_attempts_is_failed_with_its_history_and_retry_runs_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let policy = RetryPolicy::default()
        .with_max_attempts(2)
        .with_backoff(Duration::ZERO, Duration::ZERO);
    let id = store
        .create_with(&json!({"n": 2}), CreateOptions::default().retry(policy))
        .unwrap();
    let failer = spawn("failer", d, &[("JOBDIR_TEST_COUNT", "2")]);
    assert_eq!(
        failer.expect_line("retrying "),
        format!("retrying {id} 1 0")
    );
    assert_eq!(failer.expect_line("failed "), format!("failed {id} 2"));
    failer.finish();

    let info = store.get(&id).unwrap();
    assert_eq!(info.state, JobState::Failed);
    assert_eq!(info.error.as_deref(), Some("boom 2"));
    assert!(info.finished_at.is_some());
    assert_eq!(info.attempts, 2);
    let both = vec![(1, "boom 1".to_string()), (2, "boom 2".to_string())];
    assert_eq!(errors(&info), both);
    let outcome: Value = serde_json::from_slice(
        &std::fs::read(job_dir(d, &id).join("result/outcome.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(outcome["state"], "failed");
    assert_eq!(outcome["error"], "boom 2");
    match store.result(&id) {
        Err(Error::Unfulfilled { state, error, .. }) => {
            assert_eq!((state, error.as_str()), (JobState::Failed, "boom 2"))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.wait(&id, Duration::from_secs(5)),
        Err(Error::Unfulfilled {
            state: JobState::Failed,
            ..
        })
    ));
    let idt = id.to_string();
    assert!(fails(d, &["result", &idt], 5).contains("boom 2"));
    fails(d, &["wait", &idt, "--timeout", "5"], 5);
    assert_eq!(status_json(d)["failed"], 1);
    assert!(ok(d, &["ls", "--state", "failed"]).contains(&idt));

    // A manual retry: pending again, with a fresh budget of two attempts; history kept.
    ok(d, &["retry", &idt]);
    let info = store.get(&id).unwrap();
    assert_eq!(info.state, JobState::Pending);
    assert_eq!(info.error, None);
    assert_eq!(errors(&info), both);
    let failer = spawn("failer", d, &[]);
    assert_eq!(
        failer.expect_line("retrying "),
        format!("retrying {id} 3 0")
    );
    failer.finish();
    let worker = spawn("worker", d, &[]);
    assert!(
        worker
            .expect_line("fulfilled ")
            .starts_with(&format!("fulfilled {id} 4 "))
    );
    worker.finish();
    let info = store.get(&id).unwrap();
    assert_eq!(info.state, JobState::Fulfilled);
    let mut all = both.clone();
    all.push((3, "boom 3".to_string()));
    assert_eq!(errors(&info), all);
    // A fulfilled job cannot be retried (nor cancelled).
    fails(d, &["retry", &idt], 1);
    fails(d, &["cancel", &idt], 1);
    assert_eq!(ok(d, &["result", &idt]), "ok");
}

#[test]
fn an_expired_lease_counts_as_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 1500, true);
    let lease = [("JOBDIR_TEST_LEASE_MS", "1500")];
    for max in [2, 1] {
        let policy = RetryPolicy::default().with_max_attempts(max);
        let id = store
            .create_with(&json!({"max": max}), CreateOptions::default().retry(policy))
            .unwrap();
        let holder = spawn("hold", d, &lease);
        assert_eq!(holder.expect_line("holding "), format!("holding {id} 1"));
        holder.kill();
        // The next claimer (another process) takes the dead holder's lease over.
        let worker = spawn(
            "worker",
            d,
            &[
                ("JOBDIR_TEST_LEASE_MS", "1500"),
                ("JOBDIR_TEST_WAIT_MS", "3000"),
            ],
        );
        let info = if max == 2 {
            // One attempt left: it runs again, after the backoff (default: 1 s, jittered to
            // at least half of it) measured from the takeover. The claim that took the lease
            // over was deferred (attempt 2), so it runs as attempt 3.
            let line = worker.expect_line("fulfilled ");
            assert!(line.starts_with(&format!("fulfilled {id} 3 ")), "{line}");
            let at: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(
                at >= ms(ended_at(d, &id, 1)) + 500,
                "ran during its backoff: {line}"
            );
            worker.finish();
            let info = store.get(&id).unwrap();
            assert_eq!(info.state, JobState::Fulfilled);
            assert!(job_dir(d, &id).join("claims/0000000002/released").is_dir());
            info
        } else {
            // None left: the claimer finishes it as failed and finds nothing else to do.
            assert_eq!(worker.expect_line("none"), "none");
            worker.finish();
            let info = store.get(&id).unwrap();
            assert_eq!(info.state, JobState::Failed);
            let error = info.error.clone().unwrap();
            assert!(error.contains("lease expired"), "{error}");
            assert!(
                entries_of(d, "pending", &id).is_empty(),
                "a failed job keeps no entry"
            );
            info
        };
        assert_eq!(info.attempts, max as u64 + 1);
        assert_eq!(info.errors[0].attempt, 1);
        assert!(info.errors[0].error.contains("lease expired"), "{info:?}");
        assert!(job_dir(d, &id).join("claims/0000000001/expired").is_dir());
    }
    assert!(files_below(&d.join("leases")).is_empty());
}

#[test]
fn a_delayed_job_is_invisible_until_due_and_reaches_a_worker_blocked_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    // With file events, then without (polling only: what other NFS hosts rely on).
    for events in [true, false] {
        let mut env = vec![];
        if !events {
            env.push(("JOBDIR_TEST_NO_EVENTS", "1"));
        }
        let worker = spawn("worker", d, &env);
        worker.expect_line("waiting");
        let id = store
            .create_with(
                &json!({"events": events}),
                CreateOptions::default().delay(Duration::from_millis(1500)),
            )
            .unwrap();
        let info = store.get(&id).unwrap();
        let run_at = info.run_at.expect("run_at");
        let ahead = run_at.duration_since(info.created_at).unwrap();
        assert!(
            ahead <= Duration::from_millis(1501),
            "run_at {ahead:?} after creation"
        );
        if SystemTime::now() < run_at {
            assert_eq!(info.state, JobState::Delayed);
            assert!(
                store.pull_work().unwrap().is_none(),
                "pulled before its time"
            );
        }
        assert!(entries_of(d, "pending", &id).is_empty());
        let line = worker.expect_line("fulfilled ");
        worker.finish();
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts[1], id.to_string(), "{line}");
        assert!(
            parts[3].parse::<u64>().unwrap() >= ms(run_at),
            "pulled before its run_at {}: {line}",
            ms(run_at)
        );
        assert!(entries_of(d, "delayed", &id).is_empty(), "promoted");
    }

    // From the CLI: `--delay` and `--at`, shown as delayed by get, ls and status.
    let later = ok(d, &["create", "--delay", "1h", "{}"]).trim().to_string();
    let at = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(7200));
    let at_id = ok(d, &["create", "--at", &at.to_string(), "{}"])
        .trim()
        .to_string();
    for id in [&later, &at_id] {
        let info: Value = serde_json::from_str(&ok(d, &["get", id])).unwrap();
        assert_eq!(info["state"], "delayed", "{info}");
        assert!(info["run_at"].is_string(), "{info}");
    }
    let got: Value = serde_json::from_str(&ok(d, &["get", &at_id])).unwrap();
    assert_eq!(
        got["run_at"].as_str().unwrap(),
        at.to_string().replace('Z', ".000Z")
    );
    let listed = ok(d, &["ls", "--state", "delayed"]);
    assert!(
        listed.contains(&later) && listed.contains(&at_id),
        "{listed}"
    );
    let s = status_json(d);
    assert_eq!(
        (s["delayed"].as_u64(), s["pending"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    assert!(store.pull_work().unwrap().is_none());
}

#[test]
fn cancelling_a_pending_job_tells_its_waiters_and_notifiers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let id = store.create(&json!({"n": 5})).unwrap();
    let idt = id.to_string();
    store.queue(&id, &json!("mailto:ann@example.com")).unwrap();
    let waiter = Running::start(d, &["wait", &idt]);
    ok(d, &["cancel", &idt, "--reason", "no longer needed"]);
    let (code, stderr) = waiter.finish();
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains("cancelled") && stderr.contains("no longer needed"),
        "{stderr}"
    );

    let info = store.get(&id).unwrap();
    assert_eq!(info.state, JobState::Cancelled);
    assert_eq!(info.error.as_deref(), Some("no longer needed"));
    assert!(info.finished_at.is_some());
    assert_eq!(info.attempts, 0);
    assert!(store.pull_work().unwrap().is_none());
    assert!(entries_of(d, "pending", &id).is_empty());
    fails(d, &["result", &idt], 5);
    assert!(fails(d, &["cancel", &idt], 1).contains("cancelled"));
    assert!(ok(d, &["ls", "--state", "cancelled"]).contains(&idt));
    assert_eq!(status_json(d)["cancelled"], 1);

    // The waiting parties are told too.
    let note = store.pull_notification().unwrap().expect("a notification");
    assert_eq!(note.id(), id);
    assert_eq!(note.state(), JobState::Cancelled);
    assert_eq!(note.error(), Some("no longer needed"));
    assert!(note.value().is_empty());
    assert_eq!(note.waiting(), [json!("mailto:ann@example.com")]);
    let all = note.waiting().to_vec();
    note.done(&all).unwrap();
    assert!(store.pull_notification().unwrap().is_none());
}

#[test]
fn cancelling_a_running_job_tells_its_holder_and_refuses_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let id = store.create(&json!({"n": 6})).unwrap();
    let holder = spawn("hold", d, &[("JOBDIR_TEST_LEASE_MS", "1500")]);
    assert_eq!(holder.expect_line("holding "), format!("holding {id} 1"));
    assert_eq!(store.get(&id).unwrap().state, JobState::Running);
    store.cancel(&id, "stop").unwrap();
    assert_eq!(holder.expect_line("callback "), "callback Some(Cancelled)");
    assert_eq!(holder.expect_line("fulfill "), "fulfill refused");
    holder.finish();
    let info = store.get(&id).unwrap();
    assert_eq!(info.state, JobState::Cancelled);
    assert_eq!(info.error.as_deref(), Some("stop"));
    assert!(
        info.errors.is_empty(),
        "a cancellation is no failed attempt"
    );
    assert!(job_dir(d, &id).join("claims/0000000001/cancelled").is_dir());
    assert!(matches!(
        store.result(&id),
        Err(Error::Unfulfilled {
            state: JobState::Cancelled,
            ..
        })
    ));
    assert!(matches!(
        store.cancel(&id, "again"),
        Err(Error::WrongState { .. })
    ));
    assert!(files_below(&d.join("leases")).is_empty());
}

#[test]
fn a_run_timeout_tells_the_holder_and_counts_as_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let opts = CreateOptions::default()
        .run_timeout(Duration::from_secs(1))
        .retry(
            RetryPolicy::default()
                .with_max_attempts(2)
                .with_backoff(Duration::from_secs(4), Duration::from_secs(4)),
        );
    let id = store.create_with(&json!({"n": 7}), opts).unwrap();
    let holder = spawn("hold", d, &[("JOBDIR_TEST_LEASE_MS", "1500")]);
    assert_eq!(holder.expect_line("holding "), format!("holding {id} 1"));
    assert_eq!(holder.expect_line("callback "), "callback Some(TimedOut)");
    assert_eq!(holder.expect_line("fulfill "), "fulfill refused");
    holder.finish();
    let info = store.get(&id).unwrap();
    // One failed attempt counted; pending again after the backoff (4 s, jittered: 2 to 4 s)
    // measured from the end of the attempt, which `get` reports as `run_at` until then.
    assert_eq!(info.state, JobState::Pending);
    assert_eq!(errors(&info), [(1, "run timeout".to_string())]);
    assert!(job_dir(d, &id).join("claims/0000000001/timedout").is_dir());
    let end = ended_at(d, &id, 1);
    if let Some(at) = info.run_at {
        assert!(at >= end + Duration::from_secs(2) && at <= end + Duration::from_secs(4));
    }
    let worker = spawn("worker", d, &[]);
    let line = worker.expect_line("fulfilled ");
    // The worker's first claim was deferred (attempt 2); attempt 3 ran, after the backoff.
    assert!(line.starts_with(&format!("fulfilled {id} 3 ")), "{line}");
    let at: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(at >= ms(end) + 2000, "ran during its backoff: {line}");
    worker.finish();
    assert_eq!(store.get(&id).unwrap().state, JobState::Fulfilled);
}

#[test]
fn a_deadline_expires_a_pending_job_for_a_cli_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let deadline = SystemTime::now() + Duration::from_millis(1500);
    let text = humantime::format_rfc3339_millis(deadline).to_string();
    let id = ok(d, &["create", "--deadline", &text, "{}"])
        .trim()
        .to_string();
    let waiter = Running::start(d, &["wait", &id]);
    let (code, stderr) = waiter.finish();
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    assert!(SystemTime::now() >= deadline, "expired before its deadline");
    let info: Value = serde_json::from_str(&ok(d, &["get", &id])).unwrap();
    assert_eq!(info["state"], "expired");
    assert!(info["error"].as_str().unwrap().contains(&text), "{info}");
    let store = open(d, 30_000, true);
    assert!(store.pull_work().unwrap().is_none());
    assert_eq!(store.counts().unwrap().expired, 1);
}

#[test]
fn a_deadline_expires_a_running_job_and_tells_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let deadline = SystemTime::now() + Duration::from_millis(3000);
    let id = store
        .create_with(
            &json!({"n": 8}),
            CreateOptions::default().deadline(deadline),
        )
        .unwrap();
    let holder = spawn("hold", d, &[("JOBDIR_TEST_LEASE_MS", "1500")]);
    assert_eq!(holder.expect_line("holding "), format!("holding {id} 1"));
    assert_eq!(holder.expect_line("callback "), "callback Some(TimedOut)");
    assert!(SystemTime::now() >= deadline);
    assert_eq!(holder.expect_line("fulfill "), "fulfill refused");
    holder.finish();
    let info = store.get(&id).unwrap();
    assert_eq!(info.state, JobState::Expired);
    assert!(
        info.error.as_deref().unwrap().contains("deadline"),
        "{info:?}"
    );
    assert!(info.errors.is_empty());
    // The holder's own lease token became the outcome (held/ -> result/).
    let held_became_result: Vec<_> = std::fs::read_dir(job_dir(d, &id).join("claims/0000000001"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(held_became_result, ["epoch"]);
    assert!(job_dir(d, &id).join("result/outcome.json").is_file());
    // The heartbeat left the index work to pullers: the first one tidies the entry.
    assert!(store.pull_work().unwrap().is_none());
    assert!(entries_of(d, "pending", &id).is_empty());
    let c = store.counts().unwrap();
    assert_eq!((c.expired, c.pending, c.running), (1, 0, 0), "{c:?}");
}

#[test]
fn a_pickup_timeout_expires_a_job_nobody_pulled_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let opts = || CreateOptions::default().pickup_timeout(Duration::from_secs(1));
    let a = store.create_with(&"a", opts()).unwrap();
    let b = store.create_with(&"b", opts()).unwrap();
    let lazy = store.create_with(&"lazy", opts()).unwrap();
    // `a` and `b` are pulled in time (and given back): their pickup timeout no longer applies.
    let first = store.pull_work().unwrap().unwrap();
    let second = store.pull_work().unwrap().unwrap();
    assert_eq!((first.id(), second.id()), (a, b));
    first.release().unwrap();
    second.release().unwrap();
    let created = store.get(&a).unwrap().created_at;
    eventually("the pickup timeout to pass", || {
        SystemTime::now() >= created + Duration::from_millis(1100)
    });
    let fresh = store
        .create_with(
            &"fresh",
            CreateOptions::default().pickup_timeout(Duration::from_millis(300)),
        )
        .unwrap();
    let fresh_created = store.get(&fresh).unwrap().created_at;
    eventually("the fresh pickup timeout to pass", || {
        SystemTime::now() >= fresh_created + Duration::from_millis(400)
    });
    // Another process pulls: `a` and `b` run (their second attempts).
    for id in [a, b] {
        let worker = spawn("worker", d, &[("JOBDIR_TEST_WAIT_MS", "3000")]);
        let line = worker.expect_line("fulfilled ");
        assert!(line.starts_with(&format!("fulfilled {id} 2 ")), "{line}");
        worker.finish();
    }
    // `lazy` is expired by a read (get), `fresh` by the next claim.
    let info = store.get(&lazy).unwrap();
    assert_eq!(info.state, JobState::Expired);
    assert_eq!(info.error.as_deref(), Some("not picked up within 1000 ms"));
    let worker = spawn("worker", d, &[("JOBDIR_TEST_WAIT_MS", "1000")]);
    assert_eq!(worker.expect_line("none"), "none");
    worker.finish();
    let info = store.get(&fresh).unwrap();
    assert_eq!(info.state, JobState::Expired);
    assert_eq!(info.error.as_deref(), Some("not picked up within 300 ms"));
    let c = store.counts().unwrap();
    assert_eq!((c.expired, c.fulfilled, c.pending), (2, 2, 0), "{c:?}");
}

#[test]
fn recover_keeps_outcomes_and_delayed_entries_and_reindexes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let once = || CreateOptions::default().retry(RetryPolicy::default().with_max_attempts(1));
    let hour = Duration::from_secs(3600);

    let failed = store.create_with(&"failed", once()).unwrap();
    let job = store.pull_work().unwrap().unwrap();
    assert_eq!(job.fail("no").unwrap(), Failure::Failed);
    let backoff = store
        .create_with(
            &"backoff",
            CreateOptions::default().retry(RetryPolicy::default().with_backoff(hour, hour)),
        )
        .unwrap();
    let job = store.pull_work().unwrap().unwrap();
    assert!(matches!(
        job.fail("later").unwrap(),
        Failure::Retrying { .. }
    ));
    let fulfilled = store.create(&"fulfilled").unwrap();
    store.pull_work().unwrap().unwrap().fulfill("v").unwrap();
    let cancelled = store.create(&"cancelled").unwrap();
    store.cancel(&cancelled, "").unwrap();
    let delayed = store
        .create_with(&"delayed", CreateOptions::default().delay(hour))
        .unwrap();
    let cancelled_delayed = store
        .create_with(&"cancelled delayed", CreateOptions::default().delay(hour))
        .unwrap();
    store.cancel(&cancelled_delayed, "x").unwrap();
    let lost_delayed = store
        .create_with(&"lost delayed", CreateOptions::default().delay(hour))
        .unwrap();
    let lost_backoff = store
        .create_with(
            &"lost backoff",
            CreateOptions::default().retry(RetryPolicy::default().with_backoff(hour, hour)),
        )
        .unwrap();
    let job = store.pull_work().unwrap().unwrap();
    assert_eq!(job.id(), lost_backoff);
    assert!(matches!(
        job.fail("later").unwrap(),
        Failure::Retrying { .. }
    ));

    let lost_pending = store.create(&"lost pending").unwrap();

    // Damage: index entries lost (as a power loss in fast mode could).
    for p in entries_of(d, "delayed", &lost_delayed)
        .into_iter()
        .chain(entries_of(d, "delayed", &lost_backoff))
        .chain(entries_of(d, "pending", &lost_pending))
    {
        std::fs::remove_file(p).unwrap();
    }
    assert_eq!(
        entries_of(d, "delayed", &cancelled_delayed).len(),
        1,
        "stale"
    );

    let before: Vec<_> = [
        failed,
        backoff,
        fulfilled,
        cancelled,
        delayed,
        cancelled_delayed,
    ]
    .iter()
    .map(|id| store.get(id).unwrap())
    .collect();
    let report: Value = serde_json::from_str(&ok(d, &["recover", "--json"])).unwrap();
    assert_eq!(report["quarantined"], json!([]), "{report}");
    assert_eq!(report["entries_added"], 3, "{report}");
    assert_eq!(report["entries_removed"], 1, "{report}");

    for old in before {
        let now = store.get(&old.id).unwrap();
        assert_eq!(
            (now.state, &now.error, &now.errors, now.run_at),
            (old.state, &old.error, &old.errors, old.run_at),
            "recover changed {:?}",
            old.request
        );
    }
    assert_eq!(store.get(&failed).unwrap().state, JobState::Failed);
    assert_eq!(store.get(&cancelled).unwrap().state, JobState::Cancelled);
    // Jobs whose delayed entry was lost wait for their time again: not run early.
    assert_eq!(store.get(&lost_delayed).unwrap().state, JobState::Delayed);
    for id in [backoff, lost_backoff] {
        let info = store.get(&id).unwrap();
        assert_eq!(info.state, JobState::Pending);
        assert!(info.run_at.unwrap() > SystemTime::now() + Duration::from_secs(1000));
    }
    for id in [backoff, delayed, lost_delayed, lost_backoff] {
        assert_eq!(entries_of(d, "delayed", &id).len(), 1, "{id}");
        assert!(entries_of(d, "pending", &id).is_empty(), "{id}");
    }
    assert!(entries_of(d, "delayed", &cancelled_delayed).is_empty());
    assert_eq!(entries_of(d, "pending", &lost_pending).len(), 1);
    for id in [failed, fulfilled, cancelled, cancelled_delayed] {
        assert!(entries_of(d, "pending", &id).is_empty(), "{id}");
    }
    // Exactly the pending job is pullable.
    let fresh = open(d, 30_000, true);
    let job = fresh.pull_work().unwrap().expect("the re-indexed job");
    assert_eq!(job.id(), lost_pending);
    job.fulfill("w").unwrap();
    assert!(fresh.pull_work().unwrap().is_none());
    let s = status_json(d);
    assert_eq!(
        [
            &s["pending"],
            &s["delayed"],
            &s["fulfilled"],
            &s["failed"],
            &s["cancelled"]
        ],
        [&json!(2), &json!(2), &json!(2), &json!(1), &json!(2)],
        "{s}"
    );
    // A second recover finds nothing to do.
    let again: Value = serde_json::from_str(&ok(d, &["recover", "--json"])).unwrap();
    assert_eq!(
        (&again["entries_added"], &again["entries_removed"]),
        (&json!(0), &json!(0))
    );
}

#[test]
fn the_cli_validates_lifecycle_flags_before_touching_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("store");
    let bad: &[&[&str]] = &[
        &["create", "--delay", "5x", "{}"],
        &["create", "--delay", "soon", "{}"],
        &["create", "--at", "2026-13-45T00:00:00Z", "{}"],
        &["create", "--at", "tomorrow", "{}"],
        &[
            "create",
            "--delay",
            "1s",
            "--at",
            "2026-12-01T08:00:00Z",
            "{}",
        ],
        &["create", "--max-attempts", "0", "{}"],
        &["create", "--max-attempts", "-1", "{}"],
        &["create", "--max-attempts", "many", "{}"],
        &["create", "--backoff", "fast", "{}"],
        &["create", "--max-backoff", "1 parsec", "{}"],
        &["create", "--run-timeout", "abc", "{}"],
        &["create", "--deadline", "whenever", "{}"],
        &["create", "--pickup-timeout", "", "{}"],
        &["cancel", "not-an-id"],
        &["retry", "not-an-id"],
    ];
    for args in bad {
        let out = jobdir(&d, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "jobdir {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!d.exists(), "jobdir {args:?} touched the store");
    }
    // Valid flags are stored in job.json as FORMAT.md §4.4 says.
    let id: JobId = ok(
        &d,
        &[
            "create",
            "--max-attempts",
            "3",
            "--backoff",
            "2s",
            "--max-backoff",
            "1m",
            "--run-timeout",
            "5m",
            "--deadline",
            "1h",
            "--pickup-timeout",
            "10m",
            "{}",
        ],
    )
    .trim()
    .parse()
    .unwrap();
    let rec: Value =
        serde_json::from_slice(&std::fs::read(job_dir(&d, &id).join("job.json")).unwrap()).unwrap();
    assert_eq!(
        rec["retry"],
        json!({"max_attempts": 3, "backoff_ms": 2000, "max_backoff_ms": 60000})
    );
    assert_eq!(rec["run_timeout_ms"], 300_000);
    assert_eq!(rec["pickup_timeout_ms"], 600_000);
    let deadline = humantime::parse_rfc3339(rec["deadline"].as_str().unwrap()).unwrap();
    let left = deadline.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3000) && left <= Duration::from_secs(3600));
    assert!(rec.get("not_before").is_none());
    // A valid id that is not there: exit 3.
    let other = JobId::generate().to_string();
    fails(&d, &["cancel", &other], 3);
    fails(&d, &["retry", &other], 3);
    // Retrying a job that has not finished: exit 1.
    fails(&d, &["retry", &id.to_string()], 1);
}

/// The mtime of an epoch directory of a job: when that attempt ended (the rename of `held`).
fn ended_at(dir: &Path, id: &JobId, epoch: u64) -> SystemTime {
    std::fs::metadata(job_dir(dir, id).join(format!("claims/{epoch:010}")))
        .unwrap()
        .modified()
        .unwrap()
}

/// A pull that returned a job must have done so at or after `at` (its run-at time).
fn not_before(job: Option<jobdir::WorkLease>, at: SystemTime, what: &str) {
    if let Some(job) = job {
        let now = SystemTime::now();
        assert!(
            now >= at,
            "{what}: attempt {} of {} started {} ms before its time",
            job.attempt(),
            job.id(),
            ms(at) - ms(now)
        );
    }
}

#[test]
fn a_stale_pull_key_in_another_handle_never_runs_a_job_during_its_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = open(d, 30_000, true);
    // Handle B keeps what its frontier loaded: no file events, no periodic re-read.
    let b = Store::builder(d)
        .lease(Duration::from_secs(30))
        .poll_interval(Duration::from_secs(3600))
        .file_events(false)
        .open()
        .unwrap();
    let policy =
        RetryPolicy::default().with_backoff(Duration::from_secs(4), Duration::from_secs(4));
    let first = a.create(&json!("first")).unwrap();
    let id = a
        .create_with(&json!("second"), CreateOptions::default().retry(policy))
        .unwrap();
    // B loads both keys and takes the first job; the second job's key stays in its frontier.
    let held = b.pull_work().unwrap().expect("the first job");
    assert_eq!(held.id(), first);
    // A takes the second job and fails it: backing off, its pending entry gone.
    let job = a.pull_work().unwrap().expect("the second job");
    assert_eq!(job.id(), id);
    assert!(matches!(
        job.fail("boom").unwrap(),
        Failure::Retrying { .. }
    ));
    let retry_at = a.get(&id).unwrap().run_at.expect("backing off");
    assert!(entries_of(d, "pending", &id).is_empty());
    // B pulls from its stale key: the claim must not run the job.
    not_before(b.pull_work().unwrap(), retry_at, "stale pending key");
    if SystemTime::now() < retry_at {
        let info = a.get(&id).unwrap();
        assert_eq!(info.state, JobState::Pending);
        assert_eq!(info.run_at, Some(retry_at));
        assert_eq!(info.attempts, 2, "the deferred claim took a claim number");
        assert_eq!(errors(&info), [(1, "boom".to_string())], "not a failure");
        assert!(job_dir(d, &id).join("claims/0000000002/released").is_dir());
        assert!(entries_of(d, "pending", &id).is_empty());
        assert_eq!(entries_of(d, "delayed", &id).len(), 1);
    }
    // After the backoff it runs, in B (which learnt the due time from its deferral).
    let job = b
        .pull_work_timeout(PATIENCE)
        .unwrap()
        .expect("the job, after its backoff");
    assert_eq!(job.id(), id);
    let attempt = job.attempt();
    not_before(Some(job), retry_at, "after the backoff");
    assert_eq!(attempt, 3);
    drop(held);
}

#[test]
fn a_stale_delayed_entry_does_not_run_a_job_before_its_retry_at() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let policy =
        RetryPolicy::default().with_backoff(Duration::from_secs(4), Duration::from_secs(4));
    let id = store
        .create_with(&json!("x"), CreateOptions::default().retry(policy))
        .unwrap();
    let job = store.pull_work().unwrap().unwrap();
    assert!(matches!(
        job.fail("boom").unwrap(),
        Failure::Retrying { .. }
    ));
    let retry_at = store.get(&id).unwrap().run_at.expect("backing off");
    // The entry an earlier backoff left (the job was cancelled and retried by hand while it
    // waited, then failed again with a longer backoff): same job, due a minute ago.
    let real = entries_of(d, "delayed", &id);
    assert_eq!(real.len(), 1);
    let name = real[0].file_name().unwrap().to_string_lossy().to_string();
    let (due, rest) = name.split_once('.').unwrap();
    let stale = format!("{:013}.{rest}", due.parse::<u64>().unwrap() - 60_000);
    std::fs::write(real[0].with_file_name(stale), b"").unwrap();
    // A pull promotes the stale entry; the claim must not run the job.
    not_before(store.pull_work().unwrap(), retry_at, "stale delayed entry");
    if SystemTime::now() < retry_at {
        let info = store.get(&id).unwrap();
        assert_eq!(
            (info.state, info.run_at),
            (JobState::Pending, Some(retry_at))
        );
        assert!(entries_of(d, "pending", &id).is_empty());
        assert_eq!(
            entries_of(d, "delayed", &id),
            real,
            "only the real entry is left"
        );
    }
    let job = store
        .pull_work_timeout(PATIENCE)
        .unwrap()
        .expect("the job, after its backoff");
    not_before(Some(job), retry_at, "after the backoff");
}

#[test]
fn a_claim_before_not_before_defers_a_retried_delayed_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = open(d, 30_000, true);
    let id = store
        .create_with(
            &json!("x"),
            CreateOptions::default().delay(Duration::from_secs(3)),
        )
        .unwrap();
    let at = store.get(&id).unwrap().run_at.expect("delayed");
    // Cancelled and retried by hand while it waits: the retry makes a pending entry at once.
    store.cancel(&id, "").unwrap();
    store.retry(&id).unwrap();
    assert_eq!(entries_of(d, "pending", &id).len(), 1);
    not_before(store.pull_work().unwrap(), at, "retried before not_before");
    if SystemTime::now() < at {
        assert!(entries_of(d, "pending", &id).is_empty());
        assert_eq!(store.get(&id).unwrap().state, JobState::Delayed);
    }
    let job = store.pull_work_timeout(PATIENCE).unwrap().expect("the job");
    not_before(Some(job), at, "at not_before");
}
