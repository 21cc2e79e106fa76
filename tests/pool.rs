//! `jobdir pool`, `jobdir broadcast` and `jobdir lookup`, driven as a user would: the real
//! binary in real processes, a fresh store per test, assertions on the store's state, exit
//! statuses and the pool's final JSON. No assertion depends on timing: every wait is for an
//! observable event (a line on stderr, a job's state), bounded only by a generous patience.

mod common;
use common::process::{self, Owned, exit_within};
use common::wait::{PATIENCE, eventually};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use jobdir::{Control, JobId, JobState, Store};
use serde_json::{Value, json};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_jobdir");

/// A temporary directory with a store path inside it.
struct Env {
    tmp: TempDir,
    dir: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("store");
        Env { tmp, dir }
    }

    /// `jobdir --dir <store> ARGS...`, with no JOBDIR or RUST_LOG from the caller, and the
    /// binary's directory first in PATH (so that PROGRAMs can run `jobdir`).
    fn command(&self, args: &[&str]) -> Command {
        let bin_dir = Path::new(BIN).parent().expect("binary directory");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin_dir.to_path_buf()];
        paths.extend(std::env::split_paths(&path));
        let mut c = common::jobdir_command(&self.dir, args);
        c.env("PATH", std::env::join_paths(paths).expect("PATH"));
        c
    }

    /// Runs a command; returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.command(args).output().expect("run jobdir");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, Some(0), "jobdir {args:?} failed: {err}");
        out
    }

    /// Runs a command that must fail with `code` and one `error:` line.
    fn fails(&self, args: &[&str], code: i32) -> String {
        common::one_error(args, self.command(args).output().expect("run jobdir"), code)
    }

    fn create(&self, request: &str) -> JobId {
        self.ok(&["create", request])
            .trim()
            .parse()
            .expect("create prints an id")
    }

    fn store(&self) -> Store {
        Store::open(&self.dir).expect("open store")
    }

    /// A long-running `jobdir` whose stderr lines arrive on a channel.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jobdir");
        let stderr = child.stderr.take().expect("stderr");
        Running {
            lines: process::lines(stderr, ""),
            child: Owned::new(child),
            seen: Vec::new(),
        }
    }
}

/// A spawned `jobdir`, killed if a test fails before it exits.
struct Running {
    child: Owned,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn child(&mut self) -> &mut Child {
        self.child.child()
    }

    /// Waits for a stderr line containing `needle` that was not consumed by an earlier wait.
    fn wait_line(&mut self, needle: &str) -> String {
        let t = Instant::now();
        loop {
            let left = PATIENCE.saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {needle:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits (up to PATIENCE) for the process to exit; returns its status and stdout.
    fn finish(self) -> (ExitStatus, String) {
        let mut child = self.child.into_child();
        if exit_within(&mut child, PATIENCE).is_none() {
            let _ = child.kill();
            panic!("process did not exit; stderr:\n{}", self.seen.join("\n"));
        }
        let out = child.wait_with_output().expect("collect output");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn signal(&mut self, sig: libc::c_int) {
        process::signal(self.child.get(), sig).expect("kill(2)");
    }
}

fn fulfilled(store: &Store, id: &JobId) -> bool {
    store.get(id).expect("get").state == JobState::Fulfilled
}

/// The `jobdir work` processes a pool started (its direct children), by pid.
fn pool_workers(pool_pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let tasks = format!("/proc/{pool_pid}/task");
    for task in std::fs::read_dir(&tasks).expect("list the pool's tasks") {
        let path = task.expect("task").path().join("children");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            if args.iter().any(|a| *a == b"--pool-worker") {
                out.push(pid);
            }
        }
    }
    out
}

#[test]
fn a_pool_drains_the_queue_and_its_totals_count_every_job() {
    let env = Env::new();
    let ids: Vec<JobId> = (0..12)
        .map(|i| env.create(&format!("{{\"n\":{i}}}")))
        .collect();
    let out = env.ok(&[
        "pool",
        "--workers",
        "3",
        "--until-empty",
        "--",
        "sh",
        "-c",
        r#"printf '%s:' "$JOBDIR_JOB_ID"; cat"#,
    ]);
    let report: Value = serde_json::from_str(&out).expect("the pool prints one JSON object");
    assert_eq!(report["total"]["done"], 12, "{report}");
    assert_eq!(report["total"]["failed"], 0, "{report}");
    assert_eq!(report["total"]["restarts"], 0, "{report}");
    assert!(report["total"]["rate"].as_f64().is_some_and(|r| r > 0.0));
    assert!(report["elapsed_s"].as_f64().is_some_and(|s| s > 0.0));
    let workers = report["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 3);
    let sum: u64 = workers
        .iter()
        .map(|w| w["done"].as_u64().expect("done"))
        .sum();
    assert_eq!(sum, 12);
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w["worker"], i);
        assert!(w["pid"].as_u64().is_some_and(|p| p > 0));
        assert_eq!(w["exit"], "exit 0");
    }
    let store = env.store();
    for (i, id) in ids.iter().enumerate() {
        let job = store.get(id).expect("get");
        assert_eq!(job.state, JobState::Fulfilled);
        let expected = format!("{id}:{{\"n\":{i}}}");
        assert_eq!(job.result.as_deref(), Some(expected.as_bytes()));
    }
}

#[test]
fn a_pool_of_instances_runs_each_instance_s_jobs_on_its_worker() {
    let env = Env::new();
    env.ok(&["instance", "available", "w-0"]);
    env.ok(&["instance", "available", "w-1"]);
    let mut want = Vec::new();
    for i in 0..6 {
        let instance = format!("w-{}", i % 2);
        let id = env.ok(&["create", "--instance", &instance, "--sticky", "1"]);
        want.push((id.trim().to_string(), instance));
    }
    let free = env.create("2");
    let err = env.fails(&["pool", "--instance-prefix", "bad/name", "--", "cat"], 2);
    assert!(err.contains("--instance-prefix"), "{err}");
    let out = env.ok(&[
        "pool",
        "--workers",
        "2",
        "--instance-prefix",
        "w",
        "--unallocated",
        "--until-empty",
        "--",
        "sh",
        "-c",
        r#"printf %s "$JOBDIR_INSTANCE""#,
    ]);
    let report: Value = serde_json::from_str(&out).expect("the pool prints one JSON object");
    assert_eq!(report["total"]["done"], 7, "{report}");
    let store = env.store();
    for (id, instance) in &want {
        let job = store.get(&id.parse().unwrap()).expect("get");
        assert_eq!(job.result.as_deref(), Some(instance.as_bytes()), "job {id}");
    }
    let job = store.get(&free).expect("get");
    assert_eq!(
        job.state,
        JobState::Fulfilled,
        "the unallocated job ran too"
    );
}

#[test]
fn a_pool_restarts_a_worker_killed_with_sigkill_and_loses_no_job() {
    let env = Env::new();
    let ids: Vec<JobId> = (0..40).map(|i| env.create(&i.to_string())).collect();
    let mut pool = env.spawn(&[
        "pool",
        "--workers",
        "2",
        "--until-empty",
        "--",
        "sh",
        "-c",
        "sleep 0.05; cat",
    ]);
    let store = env.store();
    eventually("a few jobs done", || {
        ids.iter().filter(|id| fulfilled(&store, id)).count() >= 3
    });
    let pool_pid = pool.child().id();
    let mut workers = Vec::new();
    eventually("two worker processes", || {
        workers = pool_workers(pool_pid);
        workers.len() == 2
    });
    let victim = workers[0];
    // SAFETY: kill(2) on a grandchild we found in /proc; it is alive (the pool has not reaped it).
    assert_eq!(
        unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) },
        0
    );
    pool.wait_line(&format!("(pid {victim}) killed by signal 9; restarting"));
    let (status, out) = pool.finish();
    assert!(status.success(), "pool: {status}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert!(report["total"]["restarts"].as_u64() >= Some(1), "{report}");
    assert!(
        report["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .any(|w| w["restarts"].as_u64() >= Some(1) && w["pid"] != victim),
        "the killed worker's place has a new process: {report}"
    );
    for (i, id) in ids.iter().enumerate() {
        let job = store.get(id).expect("get");
        assert_eq!(job.state, JobState::Fulfilled, "job {i} was lost");
        assert_eq!(job.result.as_deref(), Some(i.to_string().as_bytes()));
    }
}

#[test]
fn pause_stops_pulls_resume_restarts_them_and_drain_ends_the_worker() {
    let env = Env::new();
    let store = env.store();
    let first = env.create("1");
    let mut work = env.spawn(&["work", "--concurrency", "2", "--", "cat"]);
    // The worker listens before it pulls: once a job is done, it is listening.
    eventually("the first job", || fulfilled(&store, &first));
    env.ok(&["broadcast", "pause"]);
    work.wait_line("work: paused; no job running");
    let later: Vec<JobId> = (2..5).map(|i| env.create(&i.to_string())).collect();
    // A later event the worker observably handled: the jobs were there before it.
    let ping = env.ok(&["broadcast", r#"{"ping":1}"#]);
    work.wait_line(&format!("message {} passed on", ping.trim()));
    for id in &later {
        let job = store.get(id).expect("get");
        assert_eq!(job.state, JobState::Pending, "pulled while paused");
        assert_eq!(job.attempts, 0, "pulled while paused");
    }
    env.ok(&["broadcast", "resume"]);
    eventually("the jobs created while paused", || {
        later.iter().all(|id| fulfilled(&store, id))
    });
    env.ok(&["broadcast", "drain"]);
    work.wait_line("work: draining");
    let (status, _) = work.finish();
    assert!(status.success(), "work after drain: {status}");
}

#[test]
fn a_worker_started_after_a_pause_stays_paused_until_resume() {
    let env = Env::new();
    env.ok(&["broadcast", "pause"]);
    let id = env.create("7");
    let mut work = env.spawn(&["work", "--", "cat"]);
    work.wait_line("paused by an earlier broadcast");
    work.wait_line("work: paused; no job running");
    let store = env.store();
    assert_eq!(store.get(&id).expect("get").attempts, 0);
    env.ok(&["broadcast", "resume"]);
    eventually("the job", || fulfilled(&store, &id));
    work.signal(libc::SIGTERM);
    let (status, _) = work.finish();
    assert!(status.success());
}

#[test]
fn a_custom_message_reaches_program_through_jobdir_control() {
    let env = Env::new();
    let started = env.tmp.path().join("started");
    let id = env.create("0");
    // PROGRAM says it runs, waits for the message in its JOBDIR_CONTROL file, and prints it.
    let script = format!(
        r#"touch '{}'; while ! grep -q ping "$JOBDIR_CONTROL"; do sleep 0.02; done; cat "$JOBDIR_CONTROL""#,
        started.display()
    );
    let work = env.spawn(&["work", "--", "sh", "-c", &script]);
    eventually("PROGRAM to start", || started.exists());
    let sent = env.ok(&["broadcast", r#"{"ping":[1,2]}"#]);
    let store = env.store();
    eventually("the job", || fulfilled(&store, &id));
    let result = store.result(&id).expect("result").expect("fulfilled");
    let text = String::from_utf8(result).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line: Value = serde_json::from_str(lines[0]).expect("one JSON line");
    assert_eq!(line["message"], json!({"ping": [1, 2]}));
    assert_eq!(line["id"], sent.trim());
    assert!(line["at"].is_string());
    env.ok(&["broadcast", "drain"]);
    let (status, _) = work.finish();
    assert!(status.success());
}

#[test]
fn drain_stops_a_pool_and_sigterm_stops_another() {
    let env = Env::new();
    let store = env.store();
    let id = env.create("1");
    let mut pool = env.spawn(&["pool", "--workers", "2", "--progress", "--", "cat"]);
    eventually("the job", || fulfilled(&store, &id));
    // Workers that started listening after the drain get it from the pool (SIGUSR1).
    env.ok(&["broadcast", "drain"]);
    pool.wait_line("pool: drain");
    let (status, out) = pool.finish();
    assert!(status.success(), "pool after drain: {status}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["total"]["done"], 1, "{report}");
    for w in report["workers"].as_array().expect("workers") {
        assert_eq!(w["exit"], "exit 0", "{report}");
    }

    // A drain is for the workers running when it is sent: a new pool runs.
    let id = env.create("2");
    let mut pool = env.spawn(&["pool", "--workers", "1", "--", "cat"]);
    eventually("the job", || fulfilled(&store, &id));
    pool.signal(libc::SIGTERM);
    let (status, out) = pool.finish();
    assert!(status.success(), "pool after SIGTERM: {status}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["total"]["done"], 1, "{report}");
}

#[test]
fn lookup_commands_set_get_list_remove_with_exit_codes() {
    let env = Env::new();
    env.ok(&["lookup", "set", "fruits", "a", r#""apple""#]);
    env.ok(&[
        "lookup",
        "set",
        "fruits",
        "b",
        r#"{"name":"banana","kcal":89}"#,
    ]);
    env.ok(&["lookup", "set", "veggies", "c d", r#""carrot""#]);
    assert_eq!(env.ok(&["lookup", "get", "fruits", "a"]), "\"apple\"\n");
    let b: Value = serde_json::from_str(&env.ok(&["lookup", "get", "fruits", "b"])).expect("json");
    assert_eq!(b, json!({"name": "banana", "kcal": 89}));
    assert_eq!(env.ok(&["lookup", "ls"]), "fruits\nveggies\n");
    assert_eq!(
        env.ok(&["lookup", "ls", "fruits"]),
        "a\t\"apple\"\nb\t{\"kcal\":89,\"name\":\"banana\"}\n"
    );
    let table: Value =
        serde_json::from_str(&env.ok(&["lookup", "ls", "veggies", "--json"])).expect("json");
    assert_eq!(table, json!({"c d": "carrot"}));
    // Replace, remove.
    env.ok(&["lookup", "set", "fruits", "a", r#""apricot""#]);
    assert_eq!(env.ok(&["lookup", "get", "fruits", "a"]), "\"apricot\"\n");
    env.ok(&["lookup", "rm", "fruits", "a"]);
    // Exit codes: absent 3, bad JSON or name 2.
    env.fails(&["lookup", "get", "fruits", "a"], 3);
    env.fails(&["lookup", "rm", "fruits", "a"], 3);
    env.fails(&["lookup", "get", "nosuchtable", "a"], 3);
    env.fails(&["lookup", "set", "fruits", "x", "{not json"], 2);
    env.fails(&["lookup", "set", "../etc", "x", "1"], 2);
    env.fails(&["lookup", "get", "fruits", "bad\nkey"], 2);
    env.fails(&["broadcast", "not-json-nor-a-word"], 2);
    // Reading commands never create a store, and bad input creates none either.
    let other = Env::new();
    other.fails(&["lookup", "get", "fruits", "a"], 3);
    other.fails(&["lookup", "set", "../etc", "x", "1"], 2);
    assert_eq!(other.ok(&["lookup", "ls"]), "");
    assert!(!other.dir.exists());
}

#[test]
fn lookups_round_trip_between_the_library_and_other_processes() {
    let env = Env::new();
    let store = env.store();
    store
        .lookup_set("prices", "apple", &json!({"cents": 120}))
        .expect("set");
    // Another process reads what the library wrote ...
    assert_eq!(
        env.ok(&["lookup", "get", "prices", "apple"]),
        "{\"cents\":120}\n"
    );
    // ... and the library reads what another process wrote.
    env.ok(&["lookup", "set", "prices", "pear", "95"]);
    assert_eq!(
        store.lookup_get("prices", "pear").expect("get"),
        Some(json!(95))
    );
    let table = store.lookup_table("prices").expect("table");
    assert_eq!(table.len(), 2);
    assert_eq!(store.lookup_tables().expect("tables"), ["prices"]);
    // A worker's PROGRAM finds the store in $JOBDIR and reads the table itself.
    let id = env.create(r#""pear""#);
    env.ok(&[
        "work",
        "--until-empty",
        "--",
        "sh",
        "-c",
        r#"jobdir lookup get prices "$(tr -d '"')""#,
    ]);
    assert_eq!(
        store.result(&id).expect("result").as_deref(),
        Some(&b"95\n"[..])
    );
    assert!(store.lookup_remove("prices", "pear").expect("remove"));
    env.fails(&["lookup", "get", "prices", "pear"], 3);
}

#[test]
fn recover_keeps_lookups_and_messages_and_quarantines_what_is_foreign_there() {
    let env = Env::new();
    let store = env.store();
    store.lookup_set("t", "k", &1).expect("set");
    store.broadcast(&Control::Pause).expect("broadcast");
    std::fs::write(env.dir.join("lookups/t/junk"), b"?").expect("plant");
    std::fs::write(env.dir.join("control/junk"), b"?").expect("plant");
    let report: Value = serde_json::from_str(&env.ok(&["recover", "--json"])).expect("json");
    let q = report["quarantined"].as_array().expect("quarantined");
    let mut paths: Vec<&str> = q.iter().filter_map(|x| x["path"].as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["control/junk", "lookups/t/junk"], "{report}");
    assert_eq!(report["control_pruned"], 0);
    assert_eq!(store.lookup_get("t", "k").expect("get"), Some(json!(1)));
    assert_eq!(store.control_messages().expect("messages").len(), 1);
    // The latest pause survives any pruning; older messages do not.
    store
        .broadcast(&Control::Custom(json!("x")))
        .expect("broadcast");
    assert_eq!(store.prune_control(Duration::ZERO).expect("prune"), 1);
    let left = store.control_messages().expect("messages");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message, Control::Pause);
}

#[test]
fn help_explains_the_new_commands() {
    for args in [
        &["pool", "--help"][..],
        &["broadcast", "--help"],
        &["lookup", "--help"],
        &["lookup", "set", "--help"],
    ] {
        let out = Command::new(BIN).args(args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: jobdir"), "{args:?}: {text}");
    }
}
