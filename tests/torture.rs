//! Crash torture: N jobs, each with notification targets (one queued at creation, one after the
//! job is seen finished), P worker and notifier processes, and a `kill -9` of a random one
//! every few tens of milliseconds (replaced at once), until all work and all deliveries are
//! done. Then `recover`, and the invariants are checked on what is on disk and in the logs the
//! processes kept of every execution and delivery.
//!
//! The lifecycle is exercised alongside the kills: workers fail a fraction of their attempts
//! (`WorkLease::fail`; tiny backoff, a high attempt budget, so every job is fulfilled in the
//! end), every 8th job is created delayed, and every 20th is cancelled while the workers run.
//! Every job must end fulfilled, or cancelled if (and only if) its `cancel` succeeded: none
//! lost, failed, expired or stuck, and no result written twice or changed.
//!
//! Work affinity too (FORMAT.md §9.11): each worker process runs as an instance (`w<k>`,
//! joined again by its replacement), every 5th job is created for one of them (handed over
//! to the others each time its worker is killed), and every 15th is created sticky for `w0`:
//! those must be executed by `w0` only.
//!
//! Short run (CI): `cargo test --release --test torture -- --nocapture`
//! Long run: `JOBDIR_TORTURE_JOBS=10000 JOBDIR_TORTURE_PROCS=6 JOBDIR_TORTURE_KILL_MS=100 \
//!            cargo test --release --test torture -- --nocapture`

mod common;
use common::child::{self, env_u64};
use common::process::Owned;

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobdir::{
    Affinity, CompromiseReason, CreateOptions, Error, InstanceId, JobId, JobState, RecoverOptions,
    RetryPolicy, Store,
};
use serde_json::json;

/// Nanoseconds on the system-wide monotonic clock (comparable across processes on one host).
fn mono_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Milliseconds since the Unix epoch (wall clock; one host, so comparable across processes).
fn wall_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A time in a job's files (RFC 3339), in ms.
fn rfc_ms(v: &serde_json::Value) -> Option<u64> {
    Some(wall_ms(humantime::parse_rfc3339(v.as_str()?).ok()?))
}

/// The earliest time (ms) attempt `attempt` of a job may start, from its files alone: its
/// `not_before`, and after its last failed attempt, that attempt's `retry_at` (a `fail`), or
/// at least half the backoff after the attempt ended (a run timeout or an expired lease: the
/// epoch directory's mtime; FORMAT.md §6.21).
fn earliest_start(job_dir: &Path, attempt: u64, policy: &RetryPolicy) -> u64 {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("job.json")).unwrap()).unwrap();
    let mut at = rfc_ms(&record["not_before"]).unwrap_or(0);
    let mut failures = 0u32;
    let mut last = None;
    for e in 1..attempt {
        let epoch = job_dir.join(format!("claims/{e:010}"));
        if epoch.join("failed").is_dir() {
            failures += 1;
            let note: serde_json::Value = std::fs::read(epoch.join("failed/error.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            last = rfc_ms(&note["retry_at"]);
        } else if epoch.join("expired").is_dir() || epoch.join("timedout").is_dir() {
            failures += 1;
            let ended = wall_ms(std::fs::metadata(&epoch).unwrap().modified().unwrap());
            let half = policy.backoff_for(failures).as_millis() as u64 / 2;
            last = Some(ended + half);
        }
    }
    if let Some(l) = last {
        at = at.max(l);
    }
    at
}

fn append(path: &Path, line: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap(); // one write: whole lines even when killed
}

fn answer(n: u64) -> String {
    format!("{}", n * n + 1)
}

/// Whether a worker fails this attempt of this job (deterministic, about `pct` percent).
fn fails(id: &JobId, attempt: u64, pct: u64) -> bool {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in id.to_string().bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h % 100 < pct
}

/// The child side: a worker or a notifier that logs every execution and delivery.
#[test]
fn helper() {
    let Ok(role) = std::env::var("JOBDIR_TORTURE_ROLE") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("JOBDIR_TORTURE_DIR").unwrap());
    let log = PathBuf::from(std::env::var("JOBDIR_TORTURE_LOG").unwrap());
    let store = common::store::builder(&dir.join("store"), 5000, 200)
        .open()
        .unwrap();
    let fail_pct = env_u64("JOBDIR_TORTURE_FAIL_PCT", 25);
    // A worker runs as its instance: its predecessor's presence (killed) is dead, so the join
    // takes it over.
    let me: InstanceId = std::env::var("JOBDIR_TORTURE_INSTANCE")
        .unwrap_or_else(|_| "none".into())
        .parse()
        .unwrap();
    let _presence = (role == "worker").then(|| store.join(&me).unwrap());
    let who = Affinity::new(me.clone()).unallocated(true);
    loop {
        if role == "worker" {
            let Some(job) = store
                .pull_work_timeout_as(&who, Duration::from_secs(1))
                .unwrap()
            else {
                continue;
            };
            let n = job.request()["n"].as_u64().unwrap();
            append(
                &log,
                &format!(
                    "exec {} {} {} {} {me}\n",
                    job.id(),
                    mono_ns(),
                    job.attempt(),
                    wall_ms(SystemTime::now())
                ),
            );
            let (id, told) = (job.id(), log.clone());
            job.on_compromised(move |reason| {
                if reason == CompromiseReason::Cancelled {
                    append(&told, &format!("cancelled-held {id} {}\n", mono_ns()));
                }
            });
            // A little work, so that cancels and kills meet running jobs.
            std::thread::sleep(Duration::from_millis(2));
            if fails(&job.id(), job.attempt(), fail_pct) {
                let id = job.id();
                if job.fail("torture: planned failure").is_ok() {
                    append(&log, &format!("fail {id} {}\n", mono_ns()));
                }
                continue;
            }
            let _ = job.fulfill(answer(n));
        } else {
            let Some(note) = store
                .pull_notification_timeout(Duration::from_secs(1))
                .unwrap()
            else {
                continue;
            };
            let id = note.id();
            let all = note.waiting().to_vec();
            for t in &all {
                if note.is_compromised() {
                    break;
                }
                append(&log, &format!("deliver {id} {t} {}\n", mono_ns()));
            }
            if note.done(&all).is_ok() {
                let now = mono_ns();
                for t in &all {
                    append(&log, &format!("done {id} {t} {now}\n"));
                }
            }
        }
    }
}

/// A helper process, killed when dropped (also when the test panics: no orphans).
fn spawn(role: &str, dir: &Path, k: usize) -> Owned {
    let log = dir
        .join("logs")
        .join(format!("{role}-{k}-{}.log", mono_ns()));
    let child = child::self_command()
        .env("JOBDIR_TORTURE_ROLE", role)
        .env("JOBDIR_TORTURE_INSTANCE", format!("w{k}"))
        .env("JOBDIR_TORTURE_DIR", dir)
        .env("JOBDIR_TORTURE_LOG", log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Owned::new(child)
}

#[test]
fn torture() {
    let jobs = env_u64("JOBDIR_TORTURE_JOBS", 400);
    let procs = env_u64("JOBDIR_TORTURE_PROCS", 4).max(2) as usize;
    let kill_ms = env_u64("JOBDIR_TORTURE_KILL_MS", 50);
    let limit = Duration::from_secs(env_u64("JOBDIR_TORTURE_SECS", 600));
    let base = tempfile::tempdir().unwrap();
    let dir = base.path();
    std::fs::create_dir(dir.join("logs")).unwrap();
    let store = Store::open(dir.join("store")).unwrap();
    let started = Instant::now();

    let mut created: HashMap<JobId, u64> = HashMap::new();
    let mut queued: HashSet<(JobId, String)> = HashSet::new();
    let mut to_cancel = Vec::new();
    let policy = RetryPolicy::default()
        .with_max_attempts(1000)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50));
    let workers: Vec<InstanceId> = (0..procs)
        .filter(|k| k % 2 == 0)
        .map(|k| format!("w{k}").parse().unwrap())
        .collect();
    for w in &workers {
        store.available(w).unwrap();
    }
    let mut sticky = HashSet::new();
    for n in 0..jobs {
        let mut opts = CreateOptions::default().retry(policy.clone());
        if n % 8 == 3 {
            opts = opts.delay(Duration::from_millis(100 * (n % 10)));
        }
        if n % 15 == 4 {
            opts = opts.instance(workers[0].clone()).sticky(true);
        } else if n % 5 == 1 {
            opts = opts.instance(workers[(n as usize / 5) % workers.len()].clone());
        }
        let id = store.create_with(&json!({ "n": n }), opts).unwrap();
        if n % 15 == 4 {
            sticky.insert(id);
        }
        if n % 20 == 7 {
            to_cancel.push(id);
        }
        let t = json!({ "first": n });
        store.queue(&id, &t).unwrap();
        queued.insert((id, t.to_string()));
        created.insert(id, n);
    }

    let created_in = started.elapsed();
    let roles: Vec<&str> = (0..procs)
        .map(|k| if k % 2 == 0 { "worker" } else { "notifier" })
        .collect();
    let mut children: Vec<Owned> = roles
        .iter()
        .enumerate()
        .map(|(k, r)| spawn(r, dir, k))
        .collect();
    // A canceller cancels its jobs one by one while the workers run. A cancel that succeeds
    // must leave the job cancelled; one refused (it had finished: fulfilled) must leave it so.
    let canceller = {
        let store = store.clone();
        std::thread::spawn(move || {
            let (mut cancelled, mut refused) = (HashSet::new(), HashSet::new());
            // Alternately from the back (jobs not started yet) and from the front (near where
            // the workers are), so that cancels meet pending, running and fulfilled jobs.
            let mut order = Vec::new();
            let (mut lo, mut hi) = (0, to_cancel.len());
            while lo < hi {
                hi -= 1;
                order.push(to_cancel[hi]);
                if lo < hi {
                    order.push(to_cancel[lo]);
                    lo += 1;
                }
            }
            for id in order {
                std::thread::sleep(Duration::from_millis(60));
                match store.cancel(&id, "torture: cancelled") {
                    Ok(()) => cancelled.insert(id),
                    Err(Error::WrongState { .. }) => refused.insert(id),
                    Err(e) => panic!("cancel {id}: {e}"),
                };
            }
            (cancelled, refused)
        })
    };
    // A checker thread queues a second target on each job it sees finished (remembering the
    // first result it saw) and says when everything is done; the main thread keeps killing.
    let finished = Arc::new(AtomicBool::new(false));
    let checker = {
        let store = store.clone();
        let created = created.clone();
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let mut seen_result: HashMap<JobId, Vec<u8>> = HashMap::new();
            let mut seen_unfulfilled: HashMap<JobId, JobState> = HashMap::new();
            let mut queued_after = Vec::new();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                for (id, n) in &created {
                    if seen_result.contains_key(id) || seen_unfulfilled.contains_key(id) {
                        continue;
                    }
                    match store.result(id) {
                        Ok(None) => continue,
                        Ok(Some(v)) => {
                            seen_result.insert(*id, v);
                        }
                        Err(Error::Unfulfilled { state, .. }) => {
                            seen_unfulfilled.insert(*id, state);
                        }
                        Err(e) => panic!("result of {id}: {e}"),
                    }
                    let t = json!({ "second": n });
                    store.queue(id, &t).unwrap();
                    queued_after.push((*id, t.to_string()));
                }
                let c = store.counts().unwrap();
                if seen_result.len() + seen_unfulfilled.len() == created.len()
                    && c.pending + c.running + c.delayed == 0
                    && c.notifications == 0
                {
                    finished.store(true, Ordering::SeqCst);
                    return (seen_result, seen_unfulfilled, queued_after);
                }
                if started.elapsed() > limit {
                    finished.store(true, Ordering::SeqCst);
                    let stuck: Vec<String> = created
                        .keys()
                        .filter(|id| {
                            !seen_result.contains_key(id) && !seen_unfulfilled.contains_key(id)
                        })
                        .take(5)
                        .map(|id| format!("{:?}", store.get(id)))
                        .collect();
                    panic!("not finished after {limit:?}: {c:?}; unfinished: {stuck:#?}");
                }
            }
        })
    };
    let mut kills = 0u64;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    while !finished.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(kill_ms));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let k = (rng % procs as u64) as usize;
        let _ = children[k].child().kill();
        let _ = children[k].child().wait();
        kills += 1;
        children[k] = spawn(roles[k], dir, k);
    }
    let (seen_result, seen_unfulfilled, queued_after) = checker.join().expect("checker");
    let (cancelled, refused) = canceller.join().expect("canceller");
    queued.extend(queued_after);
    drop(children);
    let elapsed = started.elapsed();
    let report = store
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap();

    // Read what every process logged.
    let mut execs: HashMap<JobId, u64> = HashMap::new();
    let mut wrong_instance: Vec<(JobId, String)> = Vec::new();
    let mut starts: Vec<(JobId, u64, u64)> = Vec::new();
    let mut failures = 0u64;
    let mut cancelled_held = 0u64;
    let mut delivered: HashMap<(JobId, String), Vec<u128>> = HashMap::new();
    let mut done_at: HashMap<(JobId, String), u128> = HashMap::new();
    for entry in std::fs::read_dir(dir.join("logs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["exec", id, _, attempt, wall, who] => {
                    let id: JobId = id.parse().unwrap();
                    *execs.entry(id).or_default() += 1;
                    starts.push((id, attempt.parse().unwrap(), wall.parse().unwrap()));
                    if sticky.contains(&id) && *who != workers[0].as_str() {
                        wrong_instance.push((id, who.to_string()));
                    }
                }
                ["fail", _, _] => failures += 1,
                ["cancelled-held", _, _] => cancelled_held += 1,
                ["deliver", id, t, ts] => delivered
                    .entry((id.parse().unwrap(), t.to_string()))
                    .or_default()
                    .push(ts.parse().unwrap()),
                ["done", id, t, ts] => {
                    let ts: u128 = ts.parse().unwrap();
                    let e = done_at
                        .entry((id.parse().unwrap(), t.to_string()))
                        .or_insert(ts);
                    *e = (*e).min(ts);
                }
                _ => {} // a line cut by kill -9 mid-write cannot happen (one write), but be lenient
            }
        }
    }

    let mut lost = 0;
    let mut changed = 0;
    let mut wrong_outcome = Vec::new();
    for (id, n) in &created {
        match store.result(id) {
            Ok(Some(v)) => {
                if v != answer(*n).into_bytes() || seen_result.get(id) != Some(&v) {
                    changed += 1;
                }
                if cancelled.contains(id) {
                    wrong_outcome.push((*id, "fulfilled after its cancel succeeded".to_string()));
                }
            }
            Err(Error::Unfulfilled { state, error, .. }) => {
                if state != JobState::Cancelled || !cancelled.contains(id) {
                    wrong_outcome.push((*id, format!("{state}: {error}")));
                }
                if seen_unfulfilled.get(id) != Some(&state) {
                    changed += 1;
                }
            }
            _ => lost += 1,
        }
    }
    for id in &refused {
        if !seen_result.contains_key(id) {
            wrong_outcome.push((*id, "cancel refused, yet not fulfilled".to_string()));
        }
    }
    let undelivered = queued
        .iter()
        .filter(|q| !delivered.contains_key(*q))
        .count();
    let after_done = done_at
        .iter()
        .filter(|(k, d)| delivered.get(*k).is_some_and(|ts| ts.iter().any(|t| t > d)))
        .count();
    let duplicate_work: u64 = execs.values().map(|&e| e.saturating_sub(1)).sum();
    // No attempt started before its time: `not_before`, the `retry_at` of the failed attempt
    // before it, or the backoff after a run timeout or an expired lease (kills make those).
    let early: Vec<String> = starts
        .iter()
        .filter_map(|(id, attempt, wall)| {
            let t = id.to_string();
            let job_dir = dir.join("store/jobs").join(&t[34..]).join(&t);
            let earliest = earliest_start(&job_dir, *attempt, &policy);
            (*wall < earliest).then(|| {
                format!(
                    "{id} attempt {attempt} started {} ms early",
                    earliest - wall
                )
            })
        })
        .collect();
    let leftover_leases = std::fs::read_dir(dir.join("store/leases")).unwrap().count();
    let leftover_tmp = std::fs::read_dir(dir.join("store/tmp")).unwrap().count();
    println!(
        "torture: jobs {jobs}, processes {procs}, kills {kills} (every {kill_ms} ms), {:.1} s \
         (creating: {:.1} s)\n\
         acknowledged {}, fulfilled {}, cancelled {} (refused {}; holders told \
         {cancelled_held}), lost {lost}, \
         changed or second results {changed}, wrong outcomes {}\n\
         executions {}, failed attempts {failures}, duplicate work (at-least-once and \
         retries) {duplicate_work}, started before their time {}\n\
         targets {}, delivered at least once {}, delivered after done {after_done}\n\
         after recover: leases {leftover_leases}, temporaries {leftover_tmp}, quarantined {}",
        elapsed.as_secs_f64(),
        created_in.as_secs_f64(),
        created.len(),
        seen_result.len(),
        cancelled.len(),
        refused.len(),
        wrong_outcome.len(),
        execs.values().sum::<u64>(),
        early.len(),
        queued.len(),
        queued.len() - undelivered,
        report.quarantined.len(),
    );
    assert_eq!(lost, 0, "jobs lost");
    assert!(
        early.is_empty(),
        "attempts started before their time: {early:?}"
    );
    assert_eq!(changed, 0, "results changed");
    assert!(wrong_outcome.is_empty(), "{wrong_outcome:?}");
    assert!(
        wrong_instance.is_empty(),
        "sticky jobs of w0 run elsewhere: {wrong_instance:?}"
    );
    for w in &workers {
        assert!(store.jobs(w).unwrap().is_empty(), "allocations left on {w}");
    }
    assert_eq!(undelivered, 0, "targets never delivered");
    assert_eq!(after_done, 0, "targets delivered after their done");
    assert_eq!(
        (leftover_leases, leftover_tmp),
        (0, 0),
        "left behind after recover"
    );
    assert!(report.quarantined.is_empty(), "{report:?}");
    assert!(kills > 0);
}
