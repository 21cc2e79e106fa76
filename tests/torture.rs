//! Crash torture: N jobs, each with notification targets (one queued at creation, one after the
//! job is seen fulfilled), P worker and notifier processes, and a `kill -9` of a random one
//! every few tens of milliseconds (replaced at once), until all work and all deliveries are
//! done. Then `recover`, and the invariants are checked on what is on disk and in the logs the
//! processes kept of every execution and delivery.
//!
//! Short run (CI): `cargo test --release --test torture -- --nocapture`
//! Long run: `JOBDIR_TORTURE_JOBS=10000 JOBDIR_TORTURE_PROCS=6 JOBDIR_TORTURE_KILL_MS=100 \
//!            cargo test --release --test torture -- --nocapture`

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jobdir::{JobId, RecoverOptions, Store};
use serde_json::json;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

/// The child side: a worker or a notifier that logs every execution and delivery.
#[test]
fn helper() {
    let Ok(role) = std::env::var("JOBDIR_TORTURE_ROLE") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("JOBDIR_TORTURE_DIR").unwrap());
    let log = PathBuf::from(std::env::var("JOBDIR_TORTURE_LOG").unwrap());
    let store = Store::builder(dir.join("store"))
        .lease(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(200))
        .open()
        .unwrap();
    loop {
        if role == "worker" {
            let Some(job) = store.pull_work_timeout(Duration::from_secs(1)).unwrap() else {
                continue;
            };
            let n = job.request()["n"].as_u64().unwrap();
            append(&log, &format!("exec {} {}\n", job.id(), mono_ns()));
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

fn spawn(role: &str, dir: &Path, k: usize) -> Child {
    let log = dir
        .join("logs")
        .join(format!("{role}-{k}-{}.log", mono_ns()));
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper", "--nocapture", "--test-threads=1", "-q"])
        .env("JOBDIR_TORTURE_ROLE", role)
        .env("JOBDIR_TORTURE_DIR", dir)
        .env("JOBDIR_TORTURE_LOG", log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
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
    for n in 0..jobs {
        let id = store.create(&json!({ "n": n })).unwrap();
        let t = json!({ "first": n });
        store.queue(&id, &t).unwrap();
        queued.insert((id, t.to_string()));
        created.insert(id, n);
    }

    let created_in = started.elapsed();
    let roles: Vec<&str> = (0..procs)
        .map(|k| if k % 2 == 0 { "worker" } else { "notifier" })
        .collect();
    let mut children: Vec<Child> = roles
        .iter()
        .enumerate()
        .map(|(k, r)| spawn(r, dir, k))
        .collect();
    // A checker thread queues a second target on each job it sees fulfilled (remembering the
    // first result it saw) and says when everything is done; the main thread keeps killing.
    let finished = Arc::new(AtomicBool::new(false));
    let checker = {
        let store = store.clone();
        let created = created.clone();
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let mut seen_result: HashMap<JobId, Vec<u8>> = HashMap::new();
            let mut queued_after = Vec::new();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                for (id, n) in &created {
                    if seen_result.contains_key(id) {
                        continue;
                    }
                    if let Some(v) = store.result(id).unwrap() {
                        seen_result.insert(*id, v);
                        let t = json!({ "second": n });
                        store.queue(id, &t).unwrap();
                        queued_after.push((*id, t.to_string()));
                    }
                }
                let c = store.counts().unwrap();
                if seen_result.len() == created.len()
                    && c.pending + c.running == 0
                    && c.notifications == 0
                {
                    finished.store(true, Ordering::SeqCst);
                    return (seen_result, queued_after);
                }
                if started.elapsed() > limit {
                    finished.store(true, Ordering::SeqCst);
                    panic!("not finished after {limit:?}: {c:?}");
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
        let _ = children[k].kill();
        let _ = children[k].wait();
        kills += 1;
        children[k] = spawn(roles[k], dir, k);
    }
    let (seen_result, queued_after) = checker.join().expect("checker");
    queued.extend(queued_after);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let elapsed = started.elapsed();
    let report = store
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap();

    // Read what every process logged.
    let mut execs: HashMap<JobId, u64> = HashMap::new();
    let mut delivered: HashMap<(JobId, String), Vec<u128>> = HashMap::new();
    let mut done_at: HashMap<(JobId, String), u128> = HashMap::new();
    for entry in std::fs::read_dir(dir.join("logs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["exec", id, _] => *execs.entry(id.parse().unwrap()).or_default() += 1,
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
    for (id, n) in &created {
        match store.result(id) {
            Ok(Some(v)) => {
                if v != answer(*n).into_bytes() || seen_result.get(id) != Some(&v) {
                    changed += 1;
                }
            }
            _ => lost += 1,
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
    let leftover_leases = std::fs::read_dir(dir.join("store/leases")).unwrap().count();
    let leftover_tmp = std::fs::read_dir(dir.join("store/tmp")).unwrap().count();
    println!(
        "torture: jobs {jobs}, processes {procs}, kills {kills} (every {kill_ms} ms), {:.1} s \
         (creating: {:.1} s)\n\
         acknowledged {}, fulfilled {}, lost {lost}, changed or second results {changed}\n\
         executions {}, duplicate work (at-least-once) {duplicate_work}\n\
         targets {}, delivered at least once {}, delivered after done {after_done}\n\
         after recover: leases {leftover_leases}, temporaries {leftover_tmp}, quarantined {}",
        elapsed.as_secs_f64(),
        created_in.as_secs_f64(),
        created.len(),
        seen_result.len(),
        execs.values().sum::<u64>(),
        queued.len(),
        queued.len() - undelivered,
        report.quarantined.len(),
    );
    assert_eq!(lost, 0, "jobs lost");
    assert_eq!(changed, 0, "results changed");
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
