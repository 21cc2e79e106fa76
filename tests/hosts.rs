//! Several hosts on one machine, and clocks that disagree.
//!
//! - Holders with different host identities run in separate PID namespaces
//!   (`unshare --pid --fork`, root only), so their process ids collide (each is pid 1): no one
//!   takes another's live lease, and a dead host's lease is reclaimed only after it expires.
//! - A holder or an observer whose clock runs hours ahead or behind (libfaketime through
//!   `LD_PRELOAD`, Debian package `faketime`) neither breaks others' live leases nor has its own
//!   broken: liveness is the heartbeat *changing*, timed on the observer's own clock.
//!
//! Tests that need root or libfaketime print why they are skipped.

mod common;
use common::child::{self, Helper, say};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jobdir::{JobId, Store};
use serde_json::json;

const LEASE_MS: u64 = 3000; // generous: a loaded CI machine must not stall a heartbeat past it
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn store(dir: &Path, host: &str) -> Store {
    common::store::builder(dir, LEASE_MS, 100)
        .host_id(host)
        .open()
        .unwrap()
}

/// Child side: hold one job (or observe), reporting what happens.
#[test]
fn helper() {
    let Some(role) = child::role() else {
        return;
    };
    let host = std::env::var("JOBDIR_HOST_ID").unwrap();
    let s = store(&child::dir(), &host);
    match role.as_str() {
        "hold" => {
            let job = s
                .pull_work_timeout(Duration::from_secs(30))
                .unwrap()
                .unwrap();
            say!("holding {} pid {}", job.id(), std::process::id());
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(120) {
                if job.is_compromised() {
                    say!("lost {}", job.id());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Try to pull for the given time; report anything taken.
        "observe" => {
            let ms: u64 = std::env::var("JOBDIR_TEST_MS").unwrap().parse().unwrap();
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(ms) {
                if let Some(job) = s.pull_work_timeout(Duration::from_millis(100)).unwrap() {
                    say!("took {}", job.id());
                    std::mem::forget(job);
                }
            }
            say!("observed");
        }
        other => panic!("{other}"),
    }
}

/// Runs this test binary as a helper, optionally wrapped (e.g. in `unshare`), with extra env.
fn spawn(wrapper: &[&str], role: &str, dir: &Path, host: &str, env: &[(&str, &str)]) -> Helper {
    let mut cmd = child::wrapped(wrapper, role, dir);
    cmd.env("JOBDIR_HOST_ID", host).envs(env.iter().copied());
    Helper::start(cmd)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn unshare_works() -> bool {
    is_root()
        && Command::new("unshare")
            .args(["--pid", "--fork", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn hosts_in_separate_pid_namespaces_with_colliding_pids() {
    if !unshare_works() {
        println!("skipped: needs root and unshare(1) for PID namespaces");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "observer");
    let a_job = s.create(&json!({"job": "a"})).unwrap();
    let b_job = s.create(&json!({"job": "b"})).unwrap();
    let ns = ["unshare", "--pid", "--fork", "--kill-child"];
    let a = spawn(&ns, "hold", dir.path(), "host-a", &[]);
    let a_line = a.expect_line("holding ");
    let b = spawn(&ns, "hold", dir.path(), "host-b", &[]);
    let b_line = b.expect_line("holding ");
    // Same pid inside each namespace: the pid tells nothing about who holds what.
    assert!(
        a_line.ends_with("pid 1") && b_line.ends_with("pid 1"),
        "{a_line} / {b_line}"
    );
    assert!(a_line.contains(&a_job.to_string()) && b_line.contains(&b_job.to_string()));

    // An observer with host-b's identity (so it trusts flock for host-b's leases) and one of a
    // third host watch for two lease lengths: both leases are live, neither is taken.
    let window = (2 * LEASE_MS).to_string();
    let o1 = spawn(
        &ns,
        "observe",
        dir.path(),
        "host-b",
        &[("JOBDIR_TEST_MS", &window)],
    );
    let o2 = spawn(
        &[],
        "observe",
        dir.path(),
        "host-c",
        &[("JOBDIR_TEST_MS", &window)],
    );
    for o in [o1, o2] {
        let lines = o.exit().1;
        assert!(
            lines.iter().all(|l| !l.starts_with("took")),
            "took a live lease: {lines:?}"
        );
    }

    // host-a dies. Its flock is free, but it is not this host's: only its lease expiring counts.
    a.kill();
    let died = Instant::now();
    let other = store(dir.path(), "host-b");
    assert!(
        other.pull_work().unwrap().is_none(),
        "reclaimed on first sight"
    );
    let job = other
        .pull_work_timeout(Duration::from_secs(60))
        .unwrap()
        .expect("reclaimed after the lease");
    assert_eq!(job.id(), a_job);
    assert!(
        died.elapsed() >= Duration::from_millis(LEASE_MS),
        "before the lease expired"
    );
    // host-b, alive all along, never lost its lease.
    assert!(b.lines.try_iter().all(|l| !l.starts_with("lost")));
    b.kill();
}

fn faketime_env(offset: &str) -> Option<Vec<(&'static str, String)>> {
    if !Path::new(FAKETIME).exists() {
        return None;
    }
    Some(vec![
        ("LD_PRELOAD", FAKETIME.to_string()),
        ("FAKETIME", offset.to_string()),
        // Skew the wall clock (what differs between hosts); each host's monotonic clock is its
        // own anyway, and Rust's timed waits use absolute monotonic deadlines in futex calls
        // that libfaketime cannot rewrite.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ])
}

fn skewed_holder_and_observer(holder_skew: &str, observer_skew: &str) {
    let (Some(h_env), Some(o_env)) = (faketime_env(holder_skew), faketime_env(observer_skew))
    else {
        println!("skipped: needs libfaketime ({FAKETIME}; apt-get install faketime)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let id: JobId = store(dir.path(), "x")
        .create(&json!({"skew": holder_skew}))
        .unwrap();
    let h_env: Vec<(&str, &str)> = h_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut o_env: Vec<(&str, &str)> = o_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let holder = spawn(&[], "hold", dir.path(), "host-h", &h_env);
    assert!(holder.expect_line("holding ").contains(&id.to_string()));
    // The skew is real: the holder's lease file records its (faked) wall-clock time.
    let lease = std::fs::read_dir(dir.path().join("leases"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lease.path()).unwrap()).unwrap();
    let acquired = humantime::parse_rfc3339(meta["acquired_at"].as_str().unwrap()).unwrap();
    let now = std::time::SystemTime::now();
    let skew_secs = match acquired.duration_since(now) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    };
    let want: i64 = match holder_skew {
        "+3h" => 3 * 3600,
        "-5h" => -5 * 3600,
        _ => 0,
    };
    assert!(
        (skew_secs - want).abs() < 600,
        "holder clock off by {skew_secs} s, want {want}"
    );
    let window = (3 * LEASE_MS).to_string();
    o_env.push(("JOBDIR_TEST_MS", &window));
    // Same host identity as the holder, and another host's: neither may break the live lease.
    for host in ["host-h", "host-o"] {
        let lines = spawn(&[], "observe", dir.path(), host, &o_env).exit().1;
        assert!(lines.iter().any(|l| l == "observed"), "{lines:?}");
        assert!(
            lines.iter().all(|l| !l.starts_with("took")),
            "{holder_skew}/{observer_skew}: {lines:?}"
        );
    }
    assert!(
        holder.lines.try_iter().all(|l| !l.starts_with("lost")),
        "holder lost its lease"
    );
    holder.kill();
}

#[test]
fn a_holder_whose_clock_runs_hours_ahead_keeps_its_lease() {
    skewed_holder_and_observer("+3h", "+0");
}

#[test]
fn a_holder_whose_clock_runs_hours_behind_keeps_its_lease() {
    skewed_holder_and_observer("-5h", "+0");
}

#[test]
fn an_observer_whose_clock_is_off_breaks_no_live_lease() {
    skewed_holder_and_observer("+0", "+7h");
    skewed_holder_and_observer("+0", "-7h");
}
