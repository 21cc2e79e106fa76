//! Issue 6 items 7 and 8 across processes: priority slots (`jobdir work --priority-slots`),
//! progress (`JOBDIR_PROGRESS`, `get`, `status --progress`) and the event stream (`jobdir
//! events`, `Store::events`). Real `jobdir` processes on a fresh store per test; no timing
//! assertions: every wait is for a state that must be reached, with a generous bound, and the
//! slot limits are checked at every look on the way.

mod common;
use common::process::{Owned as Running, exit_within, signal};
use common::wait::PATIENCE;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

/// A PROGRAM that runs until `$REL/<its job id>` or `$REL/all` exists (or `$REL` is gone: a
/// program orphaned by a worker killed with -9 ends with its test).
const BLOCKING: &str = r#"while [ -d "$REL" ] && [ ! -e "$REL/$JOBDIR_JOB_ID" ] && [ ! -e "$REL/all" ]; do sleep 0.02; done; echo done"#;

struct Env {
    _tmp: TempDir,
    dir: PathBuf,
    rel: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("store");
        let rel = tmp.path().join("release");
        std::fs::create_dir(&rel).expect("mkdir");
        Env {
            _tmp: tmp,
            dir,
            rel,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = common::jobdir_command(&self.dir, args);
        c.env("REL", &self.rel);
        c
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        common::succeeded(args, self.command(args).output().expect("run jobdir"))
    }

    fn create(&self, priority: i32) -> String {
        let p = priority.to_string();
        self.ok(&["create", "--priority", &p, "{}"])
            .trim()
            .to_string()
    }

    fn get(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", id])).expect("get prints JSON")
    }

    /// The running jobs: id → priority.
    fn running(&self) -> Vec<(String, i64)> {
        self.ok(&["ls", "--state", "running", "--json"])
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("JSON line");
                (
                    v["id"].as_str().expect("id").to_string(),
                    v["priority"].as_i64().expect("priority"),
                )
            })
            .collect()
    }

    fn release(&self, id: &str) {
        std::fs::write(self.rel.join(id), b"").expect("release file");
    }

    fn release_all(&self) {
        std::fs::write(self.rel.join("all"), b"").expect("release file");
    }

    fn spawn(&self, args: &[&str]) -> Running {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jobdir");
        Running::new(child)
    }

    fn fulfilled(&self) -> usize {
        let v: Value = serde_json::from_str(&self.ok(&["status", "--json"])).expect("status JSON");
        v["fulfilled"].as_u64().expect("count") as usize
    }
}

/// A spawned `jobdir` ([`Running`]) is killed if a test fails before it exits.
impl Running {
    /// SIGTERM, then its exit status (it must exit 0).
    fn stop(&mut self) {
        let _ = signal(self.get(), libc::SIGTERM);
        let status =
            exit_within(self.child(), PATIENCE).unwrap_or_else(|| panic!("no exit after SIGTERM"));
        assert!(status.success(), "exit after SIGTERM: {status}");
    }
}

/// Waits (up to PATIENCE) until `cond` holds (it may assert invariants at every look).
fn eventually(what: &str, cond: impl FnMut() -> bool) {
    common::wait::eventually_within(what, PATIENCE, Duration::from_millis(30), cond)
}

fn ids(running: &[(String, i64)]) -> BTreeSet<String> {
    running.iter().map(|r| r.0.clone()).collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Waits until exactly `want` run, checking at every look that no more than `max_low` jobs of
/// priority below `low_below`, nor more than `max_total` in all, run.
fn until_running(env: &Env, want: &[&String], limits: &[(i64, i64, usize)], total: usize) {
    let want = set(want);
    eventually(&format!("running = {want:?}"), || {
        let running = env.running();
        assert!(
            running.len() <= total,
            "more than {total} running: {running:?}"
        );
        for &(lo, hi, max) in limits {
            let n = running.iter().filter(|r| r.1 >= lo && r.1 < hi).count();
            assert!(
                n <= max,
                "{n} > {max} running with priority in [{lo}, {hi}): {running:?}"
            );
        }
        ids(&running) == want
    });
}

#[test]
fn priority_slots_keep_low_jobs_to_their_share_and_let_high_ones_use_every_slot() {
    let env = Env::new();
    let lows: Vec<String> = (0..3).map(|_| env.create(0)).collect();
    let mut worker = env.spawn(&[
        "work",
        "--concurrency",
        "3",
        "--priority-slots",
        "1:2",
        "--",
        "sh",
        "-c",
        BLOCKING,
    ]);
    // Priorities below 1 get the one slot not reserved: the oldest low job runs, alone.
    let low_limit = [(i64::MIN, 1, 1)];
    until_running(&env, &[&lows[0]], &low_limit, 3);
    assert_eq!(env.get(&lows[1])["state"], "pending");
    // High jobs take the two reserved slots; the third waits.
    let highs: Vec<String> = (0..3).map(|_| env.create(5)).collect();
    until_running(&env, &[&lows[0], &highs[0], &highs[1]], &low_limit, 3);
    assert_eq!(env.get(&highs[2])["state"], "pending");
    // The low job ends: its slot goes to the waiting high job (high work may use every slot).
    env.release(&lows[0]);
    until_running(&env, &[&highs[0], &highs[1], &highs[2]], &low_limit, 3);
    assert_eq!(env.get(&lows[1])["state"], "pending");
    // A high job ends: two high jobs keep the reserved slots busy, so a low one may run.
    env.release(&highs[0]);
    until_running(&env, &[&highs[1], &highs[2], &lows[1]], &low_limit, 3);
    env.release_all();
    eventually("every job fulfilled", || env.fulfilled() == 6);
    worker.stop();
}

#[test]
fn strict_slots_keep_every_guarantee_but_the_lowest_ranges() {
    let env = Env::new();
    // 3 slots: 1 for priority >= 2, 1 for 1 <= p < 2, and the lowest range's 1 that the others
    // may borrow. High work can have 2 (its own and the lowest range's), never the middle one's.
    let highs: Vec<String> = (0..3).map(|_| env.create(5)).collect();
    let mut worker = env.spawn(&[
        "work",
        "--concurrency",
        "3",
        "--priority-slots",
        "1:1,2:1",
        "--strict-slots",
        "--",
        "sh",
        "-c",
        BLOCKING,
    ]);
    let limits = [(2, i64::MAX, 2), (i64::MIN, 1, 1)];
    until_running(&env, &[&highs[0], &highs[1]], &limits, 3);
    // The free slot is the middle range's: a middle job gets it, the third high job still waits.
    let mid = env.create(1);
    until_running(&env, &[&highs[0], &highs[1], &mid], &limits, 3);
    assert_eq!(env.get(&highs[2])["state"], "pending");
    // A high job ends: the lowest range's slot is free again and the best job takes it.
    let low = env.create(0);
    env.release(&highs[0]);
    until_running(&env, &[&highs[1], &highs[2], &mid], &limits, 3);
    assert_eq!(env.get(&low)["state"], "pending");
    // The middle job ends: its slot is reserved, so neither the low nor a high job may take it;
    // the next middle job does.
    env.release(&mid);
    eventually("the middle job fulfilled", || {
        env.get(&mid)["state"] == "fulfilled"
    });
    let mid2 = env.create(1);
    until_running(&env, &[&highs[1], &highs[2], &mid2], &limits, 3);
    assert_eq!(env.get(&low)["state"], "pending");
    env.release_all();
    eventually("every job fulfilled", || env.fulfilled() == 6);
    worker.stop();
}

#[test]
fn bad_priority_slots_are_refused_before_the_store_is_touched() {
    let env = Env::new();
    for spec in ["1:4", "x", "1:1,1:1"] {
        let out = env
            .command(&[
                "work",
                "--concurrency",
                "3",
                "--priority-slots",
                spec,
                "--",
                "true",
            ])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{spec}: {out:?}");
    }
    let out = env
        .command(&["pool", "--priority-slots", "1:2", "--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "pool, 2 > 1 slot: {out:?}");
    assert!(!env.dir.exists(), "no store was created");
}

#[test]
fn progress_written_by_program_shows_in_get_and_status() {
    let env = Env::new();
    let id = env.create(0);
    let program = format!(r#"echo '{{"pct":50}}' >> "$JOBDIR_PROGRESS"; {BLOCKING}"#);
    let mut worker = env.spawn(&["work", "--", "sh", "-c", &program]);
    eventually("progress in get", || {
        env.get(&id).get("progress") == Some(&json!({"pct": 50}))
    });
    let plain: Value = serde_json::from_str(&env.ok(&["status", "--json"])).expect("JSON");
    assert!(plain.get("running_jobs").is_none(), "{plain}");
    let with: Value =
        serde_json::from_str(&env.ok(&["status", "--json", "--progress"])).expect("JSON");
    assert_eq!(
        with["running_jobs"],
        json!([{"id": id, "progress": {"pct": 50}}])
    );
    let text = env.ok(&["status", "--progress"]);
    assert!(text.contains(&format!("{id}  {{\"pct\":50}}")), "{text}");
    // `status --watch` shows it too (a line per running job).
    let mut watch = env.spawn(&["status", "--watch"]);
    let out = watch.child().stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let t = Instant::now();
    loop {
        let line = lines.next().expect("a line").expect("utf-8");
        if line.contains(&id) && line.contains("\"pct\":50") {
            break;
        }
        assert!(t.elapsed() < PATIENCE, "no progress line in status --watch");
    }
    watch.stop();
    env.release_all();
    eventually("fulfilled", || env.get(&id)["state"] == "fulfilled");
    assert!(
        env.get(&id).get("progress").is_none(),
        "shown only while running"
    );
    worker.stop();
}

/// Any attempt, in [`Events::expect`] (a pending read after the next claim counts it).
const ANY: u64 = u64::MAX;

/// A running `jobdir events` and the lines it printed so far.
struct Events {
    _proc: Running,
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Events {
    fn start(env: &Env) -> Events {
        let mut proc = env.spawn(&["events"]);
        let stderr = proc.child().stderr.take().expect("stderr");
        let mut err = BufReader::new(stderr).lines();
        let first = err.next().expect("a line on stderr").expect("utf-8");
        assert!(first.starts_with("events: watching"), "{first}");
        thread::spawn(move || err.for_each(drop));
        let stdout = proc.child().stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Events {
            _proc: proc,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until `id` has had the events `want` (as (event, attempt), [`ANY`] matching any
    /// attempt), in that order; other events may come between. Returns the job's events so far.
    fn expect(&mut self, id: &str, want: &[(&str, u64)]) -> Vec<(String, u64)> {
        let t = Instant::now();
        loop {
            let mine: Vec<(String, u64)> = self
                .seen
                .iter()
                .filter(|v| v["id"] == id)
                .map(|v| {
                    (
                        v["event"].as_str().expect("event").to_string(),
                        v["attempt"].as_u64().expect("attempt"),
                    )
                })
                .collect();
            let mut it = mine.iter();
            if want
                .iter()
                .all(|w| it.any(|m| m.0 == w.0 && (w.1 == ANY || m.1 == w.1)))
            {
                return mine;
            }
            let left = PATIENCE.saturating_sub(t.elapsed());
            assert!(
                !left.is_zero(),
                "events of {id}: want {want:?}, got {mine:?}"
            );
            if let Ok(v) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                for key in ["at", "id", "event", "attempt"] {
                    assert!(v.get(key).is_some(), "{v}");
                }
                self.seen.push(v);
            }
        }
    }
}

#[test]
fn events_follow_a_job_worked_by_another_process() {
    let env = Env::new();
    env.ok(&["status"]); // make the store
    let mut events = Events::start(&env);
    let id = env.create(0);
    env.ok(&["work", "--max-jobs", "1", "--", "cat"]);
    let mine = events.expect(&id, &[("created", 0), ("running", 1), ("fulfilled", 1)]);
    assert_eq!(mine.len(), 3, "each once: {mine:?}");
}

#[test]
fn events_report_retries_failures_cancels_releases_and_deaths() {
    let env = Env::new();
    env.ok(&["status"]);
    let mut events = Events::start(&env);
    // Two attempts, both failing: a delayed retry between them, then failed.
    let failing = env
        .ok(&["create", "--max-attempts", "2", "--backoff", "100ms", "1"])
        .trim()
        .to_string();
    env.ok(&["work", "--until-empty", "--", "sh", "-c", "exit 3"]);
    events.expect(
        &failing,
        &[
            ("created", 0),
            ("running", 1),
            ("delayed", 1),
            ("pending", ANY),
            ("running", 2),
            ("failed", 2),
        ],
    );
    let cancelled = env.create(0);
    env.ok(&["cancel", &cancelled]);
    events.expect(&cancelled, &[("created", 0), ("cancelled", 0)]);
    // A worker stopped with SIGTERM and no grace releases its job.
    let released = env.create(0);
    let mut worker = env.spawn(&["work", "--grace", "0", "--", "sh", "-c", BLOCKING]);
    events.expect(&released, &[("created", 0), ("running", 1)]);
    worker.stop();
    events.expect(&released, &[("running", 1), ("released", 1)]);
    // A worker killed with -9 loses its job at once (its lease file is closed unlinked).
    let mut worker = env.spawn(&["work", "--", "sh", "-c", BLOCKING]);
    events.expect(&released, &[("running", 2)]);
    worker.child().kill().expect("kill -9");
    events.expect(&released, &[("running", 2), ("lost", 2)]);
    env.release_all(); // the orphaned PROGRAM ends
    let delayed = env
        .ok(&["create", "--delay", "200ms", "7"])
        .trim()
        .to_string();
    events.expect(&delayed, &[("created", 0), ("delayed", 0)]);
}

#[test]
fn events_without_file_events_still_see_claims_and_finishes() {
    let env = Env::new();
    let store = jobdir::Store::builder(&env.dir)
        .file_events(false)
        .poll_interval(Duration::from_millis(100))
        .open()
        .expect("open");
    let mut events = store.events().expect("events");
    assert!(!events.file_events());
    let id = env.create(0);
    let mut worker = env.spawn(&["work", "--", "sh", "-c", BLOCKING]);
    // Only the lease re-scan runs: the claim and the end are seen, the creation is not.
    let mut got = Vec::new();
    let t = Instant::now();
    while !got
        .iter()
        .any(|e: &jobdir::JobEvent| e.event == jobdir::EventKind::Running)
    {
        assert!(t.elapsed() < PATIENCE, "no running event: {got:?}");
        if let Some(e) = events
            .next_timeout(Duration::from_millis(200))
            .expect("next")
        {
            got.push(e);
        }
    }
    env.release_all();
    while !got.iter().any(|e| e.event == jobdir::EventKind::Fulfilled) {
        assert!(t.elapsed() < PATIENCE, "no fulfilled event: {got:?}");
        if let Some(e) = events
            .next_timeout(Duration::from_millis(200))
            .expect("next")
        {
            got.push(e);
        }
    }
    assert!(got.iter().all(|e| e.id.to_string() == id), "{got:?}");
    worker.stop();
}

#[test]
fn progress_is_fenced_by_the_lease_and_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = jobdir::Store::open(dir.path()).expect("open");
    let id = store.create(&"x").expect("create");
    let job = store.pull_work().expect("pull").expect("a job");
    job.progress(&json!({"pct": 1})).expect("progress");
    job.progress(&json!({"pct": 2})).expect("progress replaces");
    assert_eq!(store.progress(&id).expect("read"), Some(json!({"pct": 2})));
    let big = "x".repeat(70 * 1024);
    assert!(matches!(
        job.progress(&big),
        Err(jobdir::Error::TooLarge { .. })
    ));
    // Cancelled while held: the lease is gone, and so is the right to report progress.
    store.cancel(&id, "stop").expect("cancel");
    assert!(matches!(
        job.progress(&json!({"pct": 3})),
        Err(jobdir::Error::LeaseLost(_))
    ));
    assert!(job.is_compromised());
    assert_eq!(store.progress(&id).expect("read"), None);
    assert!(store.get(&id).expect("get").progress.is_none());
}
