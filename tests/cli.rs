//! The `jobdir` command line, driven as a user would: the real binary, a fresh store per test,
//! assertions on output, exit status and the store's state (read back through `jobdir get`).

mod common;
use common::process::{Owned as Running, exit_within, signal};

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A generous liveness bound for anything the tests wait for.
const PATIENCE: Duration = Duration::from_secs(30);

/// A temporary directory with a store path inside it (not created yet).
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

    /// `jobdir --dir <store> ARGS...`, with no JOBDIR or RUST_LOG from the caller.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("jobdir").expect("the jobdir binary");
        c.arg("--dir")
            .arg(&self.dir)
            .args(args)
            .env_remove("JOBDIR")
            .env_remove("RUST_LOG")
            .timeout(Duration::from_secs(120));
        c
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        common::succeeded(args, self.cmd(args).output().expect("run jobdir"))
    }

    /// Runs a command that must fail with `code`; returns its stderr (checked to be one
    /// `error:` line).
    fn fails(&self, args: &[&str], code: i32) -> String {
        common::one_error(args, self.cmd(args).output().expect("run jobdir"), code)
    }

    fn create(&self, request: &str) -> String {
        let out = self.ok(&["create", request]);
        let id = out.trim().to_string();
        assert_eq!(out, format!("{id}\n"), "create prints the id alone");
        id
    }

    fn get(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", id])).expect("get prints JSON")
    }

    fn state(&self, id: &str) -> String {
        self.get(id)["state"]
            .as_str()
            .expect("state is a string")
            .to_string()
    }

    /// A long-running `jobdir` process (for signals and blocking commands).
    fn spawn(&self, args: &[&str]) -> Running {
        let child = common::jobdir_command(&self.dir, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jobdir");
        Running::new(child)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Waits (up to PATIENCE) until `cond` holds.
fn eventually(what: &str, cond: impl FnMut() -> bool) {
    common::wait::eventually_within(what, PATIENCE, common::wait::STEP, cond)
}

/// Waits (up to PATIENCE) for a child to exit.
fn exit_of(running: &mut Running) -> ExitStatus {
    let child = running.child();
    exit_within(child, PATIENCE).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("process did not exit within {PATIENCE:?}");
    })
}

fn stderr_of(running: Running) -> String {
    let out = running
        .into_child()
        .wait_with_output()
        .expect("collect output");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sigterm(running: &mut Running) {
    signal(running.child(), libc::SIGTERM).expect("kill(2)");
}

fn valid_unknown_id() -> String {
    jobdir::JobId::generate().to_string()
}

#[test]
fn create_then_get_shows_a_pending_job() {
    let env = Env::new();
    let id = env.create(r#"{"calculate": "3+3"}"#);
    let job = env.get(&id);
    assert_eq!(job["id"], json!(id));
    assert_eq!(job["state"], "pending");
    assert_eq!(job["request"], json!({"calculate": "3+3"}));
    assert_eq!(job["attempts"], 0);
    assert_eq!(job["priority"], 0);
    assert_eq!(job["waiting"], json!([]));
    let created = job["created_at"].as_str().expect("created_at");
    humantime::parse_rfc3339(created).expect("created_at is RFC 3339");
    assert!(job.get("result").is_none() && job.get("result_base64").is_none());
    assert!(job.get("fulfilled_at").is_none());
}

#[test]
fn create_reads_stdin_and_takes_a_priority() {
    let env = Env::new();
    let out = env
        .cmd(&["create", "--priority", "7"])
        .write_stdin("[1, 2, 3]")
        .output()
        .expect("run");
    assert!(out.status.success());
    let a = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let out = env
        .cmd(&["create", "--priority", "-2", "-"])
        .write_stdin("\"text\"")
        .output()
        .expect("run");
    assert!(out.status.success());
    let b = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_eq!(env.get(&a)["request"], json!([1, 2, 3]));
    assert_eq!(env.get(&a)["priority"], 7);
    assert_eq!(env.get(&b)["request"], json!("text"));
    assert_eq!(env.get(&b)["priority"], -2);
}

#[test]
fn invalid_json_exits_2_and_creates_no_store() {
    let env = Env::new();
    let err = env.fails(&["create", "{not json"], 2);
    assert!(err.contains("JSON"), "{err}");
    env.cmd(&["create"])
        .write_stdin("{")
        .assert()
        .code(2)
        .stdout("");
    assert!(
        !env.dir.exists(),
        "a failed create must not create the store"
    );
    // Targets too, and before the job is looked up.
    let id = valid_unknown_id();
    env.fails(&["queue", &id, "nope"], 2);
    assert!(!env.dir.exists());
}

#[test]
fn invalid_ids_exit_2_and_create_nothing() {
    let env = Env::new();
    for args in [
        vec!["get", "../x"],
        vec!["result", "../x"],
        vec!["wait", "../x", "--timeout", "0.1"],
        vec!["remove", "/etc/passwd"],
        vec!["queue", "../x", "1"],
        vec!["unqueue", "../x", "1"],
        vec!["get", "00000000-0000-4000-8000-000000000000"],
    ] {
        let err = env.fails(&args, 2);
        assert!(err.contains("invalid job id"), "{args:?}: {err}");
    }
    assert!(!env.dir.exists());
}

#[test]
fn unknown_ids_exit_3() {
    let env = Env::new();
    let id = valid_unknown_id();
    // No store yet: nothing is created by asking.
    env.fails(&["get", &id], 3);
    env.fails(&["result", &id], 3);
    assert!(!env.dir.exists());
    // An existing store.
    env.create("1");
    for args in [
        vec!["get", id.as_str()],
        vec!["result", id.as_str()],
        vec!["wait", id.as_str(), "--timeout", "0.1"],
        vec!["remove", id.as_str()],
        vec!["queue", id.as_str(), "\"t\""],
    ] {
        let err = env.fails(&args, 3);
        assert!(err.contains("no such job"), "{args:?}: {err}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    let out = env.cmd(&["frobnicate"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.starts_with(b"error:"));
    env.cmd(&["work"]).assert().code(2);
    env.cmd(&["wait", &valid_unknown_id(), "--timeout", "soon"])
        .assert()
        .code(2);
    env.cmd(&["prune", "--older-than", "whenever"])
        .assert()
        .code(2);
    let out = env
        .cmd(&["ls", "--state", "sleeping"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.starts_with(b"error:"));
    assert!(!env.dir.exists());
}

#[test]
fn result_before_fulfilment_exits_4() {
    let env = Env::new();
    let id = env.create("1");
    let err = env.fails(&["result", &id], 4);
    assert!(err.contains("not fulfilled"), "{err}");
    env.cmd(&["result", &id]).assert().code(4).stdout("");
}

#[test]
fn wait_times_out_with_124() {
    let env = Env::new();
    let id = env.create("1");
    let t = Instant::now();
    let err = env.fails(&["wait", &id, "--timeout", "0.2"], 124);
    assert!(err.contains("timed out"), "{err}");
    assert!(t.elapsed() < PATIENCE);
    assert_eq!(env.state(&id), "pending");
}

#[test]
fn wait_prints_the_result_once_it_arrives() {
    let env = Env::new();
    let id = env.create(r#"{"x": 1}"#);
    let waiter = env.spawn(&["wait", &id]);
    env.ok(&[
        "work",
        "--until-empty",
        "--",
        "sh",
        "-c",
        "printf 'the answer'",
    ]);
    let out = waiter.into_child().wait_with_output().expect("wait output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"the answer", "raw bytes, no newline added");
    env.cmd(&["result", &id])
        .assert()
        .success()
        .stdout("the answer");
}

#[test]
fn work_until_empty_runs_every_job_with_its_environment() {
    let env = Env::new();
    let ids: Vec<String> = (0..6)
        .map(|i| env.create(&format!("{{\"n\":{i}}}")))
        .collect();
    let script = r#"printf '%s|%s|%s|' "$JOBDIR_JOB_ID" "$JOBDIR_ATTEMPT" "$JOBDIR_DIR"; cat"#;
    env.ok(&[
        "work",
        "--until-empty",
        "--concurrency",
        "3",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let dir = std::path::absolute(&env.dir).expect("absolute");
    for (i, id) in ids.iter().enumerate() {
        let job = env.get(id);
        assert_eq!(job["state"], "fulfilled", "{job}");
        assert_eq!(job["attempts"], 1);
        assert!(job["fulfilled_at"].is_string());
        let expected = format!("{id}|1|{}|{{\"n\":{i}}}", dir.display());
        assert_eq!(job["result"], json!(expected));
    }
    let status: Value = serde_json::from_str(&env.ok(&["status", "--json"])).expect("json");
    assert_eq!(status["pending"], 0);
    assert_eq!(status["fulfilled"], 6);
}

#[test]
fn max_jobs_limits_executions() {
    let env = Env::new();
    for i in 0..4 {
        env.create(&i.to_string());
    }
    env.ok(&["work", "--max-jobs", "2", "--until-empty", "--", "cat"]);
    let ls = env.ok(&["ls", "--state", "fulfilled"]);
    assert_eq!(ls.lines().count(), 2, "{ls}");
    assert_eq!(env.ok(&["ls", "--state", "pending"]).lines().count(), 2);
}

#[test]
fn a_failing_program_releases_the_job_and_attempts_grow() {
    let env = Env::new();
    let id = env.create(r#""task""#);
    let out = env
        .cmd(&[
            "work",
            "--until-empty",
            "--max-jobs",
            "3",
            "--",
            "sh",
            "-c",
            "echo oops >&2; exit 3",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("oops"), "PROGRAM's stderr passes through");
    assert!(
        stderr.contains(&format!("job {id} failed: exit 3")),
        "{stderr}"
    );
    let job = env.get(&id);
    assert_eq!(job["state"], "pending");
    // Three failed attempts. A pull from a key this process still held during a backoff is
    // deferred (FORMAT.md §6.21): it uses a claim number but is not an attempt that ran.
    assert_eq!(job["errors"].as_array().map(Vec::len), Some(3), "{job}");
    assert!(job["attempts"].as_u64().is_some_and(|a| a >= 3), "{job}");
    assert!(job.get("result").is_none());
    // A later success fulfils it.
    env.ok(&["work", "--until-empty", "--", "cat"]);
    let job = env.get(&id);
    assert_eq!(job["state"], "fulfilled");
    assert!(job["attempts"].as_u64().is_some_and(|a| a >= 4), "{job}");
    assert_eq!(job["result"], "\"task\"");
}

#[test]
fn a_job_that_always_fails_does_not_hold_up_the_jobs_behind_it() {
    let env = Env::new();
    let a = env.create("\"a\"");
    let b = env.create("\"b\"");
    let script = r#"x=$(cat); test "$x" = '"b"' && printf %s "$x""#;
    env.ok(&["work", "--max-jobs", "2", "--", "sh", "-c", script]);
    assert_eq!(env.get(&b)["result"], "\"b\"");
    let job = env.get(&a);
    assert_eq!(job["state"], "pending", "released when work exits: {job}");
    assert_eq!(job["attempts"], 1);
}

#[test]
fn a_program_killed_mid_job_releases_it() {
    let env = Env::new();
    let id = env.create("1");
    let out = env
        .cmd(&[
            "work",
            "--max-jobs",
            "1",
            "--",
            "sh",
            "-c",
            "echo partial; kill -9 $$",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("killed by signal 9"), "{stderr}");
    let job = env.get(&id);
    assert_eq!(job["state"], "pending", "{job}");
    assert_eq!(job["attempts"], 1);
    assert!(job.get("result").is_none(), "partial output is not stored");
}

#[test]
fn a_missing_program_is_refused_before_any_job_is_pulled() {
    let env = Env::new();
    let id = env.create("1");
    let err = env.fails(&["work", "--", "/no/such/program"], 2);
    assert!(err.contains("PROGRAM"), "{err}");
    assert_eq!(env.get(&id)["attempts"], 0);
}

#[test]
fn sigterm_releases_a_running_job_after_the_grace_period() {
    let env = Env::new();
    let id = env.create("1");
    let marker = env.path("finished");
    let script = format!("sleep 30; touch {}", marker.display());
    let mut work = env.spawn(&["work", "--grace", "0.5", "--", "sh", "-c", &script]);
    eventually("the job to be running", || env.state(&id) == "running");
    sigterm(&mut work);
    let status = exit_of(&mut work);
    assert!(status.success(), "work exits 0 on SIGTERM: {status}");
    let stderr = stderr_of(work);
    assert!(stderr.contains("terminated at shutdown"), "{stderr}");
    let job = env.get(&id);
    assert_eq!(job["state"], "pending", "released, not lost: {job}");
    assert_eq!(job["attempts"], 1);
    assert!(!marker.exists(), "PROGRAM was terminated");
    // Nothing is left holding it: the next worker gets it at once.
    env.ok(&["work", "--until-empty", "--", "cat"]);
    assert_eq!(env.state(&id), "fulfilled");
}

#[test]
fn sigterm_lets_a_running_job_finish_within_the_grace_period() {
    let env = Env::new();
    let a = env.create("\"first\"");
    let b = env.create("\"second\"");
    let mut work = env.spawn(&["work", "--grace", "25", "--", "sh", "-c", "sleep 1; cat"]);
    eventually("the first job to be running", || env.state(&a) == "running");
    sigterm(&mut work);
    let status = exit_of(&mut work);
    assert!(status.success(), "{status}");
    assert_eq!(env.get(&a)["result"], "\"first\"");
    assert_eq!(
        env.state(&b),
        "pending",
        "no new job is pulled after the signal"
    );
    assert_eq!(env.get(&b)["attempts"], 0);
}

#[test]
fn a_lost_lease_terminates_the_program_and_discards_its_output() {
    let env = Env::new();
    let id = env.create("1");
    let marker = env.path("finished");
    let script = format!("sleep 30; touch {}; echo result", marker.display());
    let mut work = env.spawn(&[
        "work",
        "--lease",
        "0.3",
        "--max-jobs",
        "1",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    eventually("the job to be running", || env.state(&id) == "running");
    // Removing the job takes its lease away from the worker.
    env.ok(&["remove", &id]);
    let status = exit_of(&mut work);
    assert!(status.success(), "{status}");
    let stderr = stderr_of(work);
    assert!(stderr.contains("lease lost"), "{stderr}");
    assert!(!marker.exists(), "PROGRAM was terminated");
    env.fails(&["get", &id], 3);
}

#[test]
fn queue_keeps_one_of_equal_targets_and_unqueue_removes() {
    let env = Env::new();
    let id = env.create("1");
    env.ok(&["queue", &id, r#"{"b": 1, "a": 2}"#]);
    env.ok(&["queue", &id, r#"{"a": 2, "b": 1}"#]);
    env.ok(&["queue", &id, r#""mailto:ann@example.com""#]);
    let waiting = env.get(&id)["waiting"].clone();
    assert_eq!(waiting.as_array().map(Vec::len), Some(2), "{waiting}");
    assert!(
        waiting
            .as_array()
            .is_some_and(|w| w.contains(&json!({"a": 2, "b": 1})))
    );
    env.ok(&["unqueue", &id, r#"{"a":2,"b":1}"#]);
    assert_eq!(env.get(&id)["waiting"], json!(["mailto:ann@example.com"]));
}

#[test]
fn notify_marks_delivered_targets_and_keeps_failed_ones_queued() {
    let env = Env::new();
    let id = env.create("1");
    env.ok(&["queue", &id, r#"{"ok": true}"#]);
    env.ok(&["queue", &id, r#"{"ok": false}"#]);
    env.ok(&[
        "work",
        "--until-empty",
        "--",
        "sh",
        "-c",
        "printf 'the result'",
    ]);
    let inbox = env.path("inbox");
    let script = format!(
        r#"echo "$JOBDIR_TARGET" >> {inbox}.targets; case "$JOBDIR_TARGET" in *true*) cat > {inbox}; echo "$JOBDIR_JOB_ID" >> {inbox}.ids;; *) exit 1;; esac"#,
        inbox = inbox.display()
    );
    let out = env
        .cmd(&["notify", "--until-empty", "--", "sh", "-c", &script])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed: exit 1 (stays queued)"), "{stderr}");
    assert_eq!(std::fs::read(&inbox).expect("delivered"), b"the result");
    let ids = std::fs::read_to_string(inbox.with_extension("ids")).expect("ids");
    assert_eq!(ids, format!("{id}\n"), "delivered once, with JOBDIR_JOB_ID");
    let targets = std::fs::read_to_string(inbox.with_extension("targets")).expect("targets");
    let mut targets: Vec<&str> = targets.lines().collect();
    targets.sort_unstable();
    assert_eq!(
        targets,
        [r#"{"ok":false}"#, r#"{"ok":true}"#],
        "each target once, as compact JSON in JOBDIR_TARGET"
    );
    assert_eq!(env.get(&id)["waiting"], json!([{"ok": false}]));
    let status: Value = serde_json::from_str(&env.ok(&["status", "--json"])).expect("json");
    assert_eq!(status["notifications"], 1);
    // A later run with a working program delivers the rest.
    env.ok(&[
        "notify",
        "--until-empty",
        "--",
        "sh",
        "-c",
        "cat >/dev/null",
    ]);
    assert_eq!(env.get(&id)["waiting"], json!([]));
}

#[test]
fn a_failing_target_does_not_hold_up_other_notifications() {
    let env = Env::new();
    let a = env.create("\"a\"");
    env.ok(&["queue", &a, "\"bad\""]);
    env.ok(&["work", "--until-empty", "--", "cat"]);
    let b = env.create("\"b\"");
    env.ok(&["queue", &b, "\"good\""]);
    env.ok(&["work", "--until-empty", "--", "cat"]);
    let script = r#"cat >/dev/null; test "$JOBDIR_TARGET" = '"good"'"#;
    let mut notify = env.spawn(&["notify", "--", "sh", "-c", script]);
    eventually("b's notification to be delivered", || {
        env.get(&b)["waiting"] == json!([])
    });
    sigterm(&mut notify);
    let status = exit_of(&mut notify);
    assert!(status.success(), "{status}");
    let stderr = stderr_of(notify);
    assert!(stderr.contains("failed: exit 1 (stays queued)"), "{stderr}");
    assert_eq!(env.get(&a)["waiting"], json!(["bad"]));
}

#[test]
fn get_and_result_handle_binary_results() {
    let env = Env::new();
    let id = env.create("1");
    env.ok(&["work", "--until-empty", "--", "printf", r"\377\376\000x"]);
    let job = env.get(&id);
    assert_eq!(job["state"], "fulfilled");
    assert_eq!(job["result_base64"], "//4AeA==");
    assert!(job.get("result").is_none());
    env.cmd(&["result", &id])
        .assert()
        .success()
        .stdout(&b"\xff\xfe\x00x"[..]);
}

#[test]
fn ls_prints_lines_or_json_and_filters_by_state() {
    let env = Env::new();
    assert_eq!(env.ok(&["ls"]), "", "an empty store lists nothing");
    let a = env.create("\"a\"");
    let b = env.create("\"b\"");
    env.ok(&["work", "--max-jobs", "1", "--", "cat"]);
    let lines = env.ok(&["ls"]);
    assert_eq!(lines, format!("{a} fulfilled\n{b} pending\n"));
    assert_eq!(
        env.ok(&["ls", "--state", "pending"]),
        format!("{b} pending\n")
    );
    let json_lines = env.ok(&["ls", "--json"]);
    let jobs: Vec<Value> = json_lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0], env.get(&a), "ls --json prints what get prints");
    assert_eq!(jobs[1]["state"], "pending");
}

#[test]
fn status_reports_counts_in_text_and_json() {
    let env = Env::new();
    let empty: Value = serde_json::from_str(&env.ok(&["status", "--json"])).expect("json");
    assert_eq!(
        empty,
        json!({"pending": 0, "running": 0, "fulfilled": 0, "notifications": 0,
               "quarantined": 0, "oldest_pending_age_seconds": null})
    );
    let a = env.create("1");
    env.create("2");
    env.ok(&["queue", &a, "\"t\""]);
    env.ok(&["work", "--max-jobs", "1", "--", "cat"]);
    let s: Value = serde_json::from_str(&env.ok(&["status", "--json"])).expect("json");
    assert_eq!(s["pending"], 1);
    assert_eq!(s["running"], 0);
    assert_eq!(s["fulfilled"], 1);
    assert_eq!(s["notifications"], 1);
    assert_eq!(s["quarantined"], 0);
    assert!(
        s["oldest_pending_age_seconds"]
            .as_f64()
            .is_some_and(|x| x >= 0.0),
        "{s}"
    );
    let text = env.ok(&["status"]);
    for label in [
        "pending",
        "running",
        "fulfilled",
        "notifications",
        "quarantined",
        "oldest pending",
    ] {
        assert!(text.contains(label), "{text}");
    }
}

#[test]
fn status_watch_redraws_until_interrupted() {
    let env = Env::new();
    env.create("1");
    let mut watch = env.spawn(&["status", "--json", "--watch"]);
    let mut lines = BufReader::new(watch.child().stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(lines.next().expect("a redraw").expect("utf-8"));
    }
    sigterm(&mut watch);
    let status = exit_of(&mut watch);
    assert!(status.success(), "interrupted --watch exits 0: {status}");
    seen.extend(lines.map_while(Result::ok));
    for line in &seen {
        let v: Value = serde_json::from_str(line).expect("a JSON object per redraw");
        assert_eq!(v["pending"], 1);
    }
}

#[test]
fn remove_deletes_a_job() {
    let env = Env::new();
    let id = env.create("1");
    env.ok(&["remove", &id]);
    env.fails(&["get", &id], 3);
    env.fails(&["remove", &id], 3);
    assert_eq!(env.ok(&["ls"]), "");
}

#[test]
fn prune_removes_old_fulfilled_jobs_without_waiting_targets() {
    let env = Env::new();
    let done = env.create("\"done\"");
    let notified = env.create("\"notified\"");
    env.ok(&["queue", &notified, "\"someone\""]);
    env.ok(&["work", "--until-empty", "--", "cat"]);
    let pending = env.create("\"pending\"");
    assert_eq!(env.ok(&["prune", "--older-than", "1h"]), "removed 0 jobs\n");
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        env.ok(&["prune", "--older-than", "10ms"]),
        "removed 1 job\n"
    );
    env.fails(&["get", &done], 3);
    assert_eq!(env.state(&notified), "fulfilled", "targets still wait");
    assert_eq!(env.state(&pending), "pending");
}

#[test]
fn recover_quarantines_a_planted_foreign_file() {
    let env = Env::new();
    let id = env.create("1");
    std::fs::write(env.dir.join("stray.txt"), b"not the store's").expect("plant");
    let report: Value = serde_json::from_str(&env.ok(&["recover", "--json"])).expect("json");
    let q = report["quarantined"].as_array().expect("quarantined list");
    assert_eq!(q.len(), 1, "{report}");
    assert_eq!(q[0]["path"], "stray.txt");
    assert!(q[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(!env.dir.join("stray.txt").exists());
    for key in ["leases_reclaimed", "temp_removed", "entries_added"] {
        assert!(report[key].is_u64(), "{key} in {report}");
    }
    let s: Value = serde_json::from_str(&env.ok(&["status", "--json"])).expect("json");
    assert_eq!(s["quarantined"], 1);
    assert_eq!(env.state(&id), "pending", "jobs are untouched");
    let text = env.ok(&["recover", "--temp-grace", "0s"]);
    assert!(text.contains("quarantined              0"), "{text}");
}

#[test]
fn the_store_directory_comes_from_jobdir_or_defaults_to_dot_jobdir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let from_env = tmp.path().join("from-env");
    let out = Command::cargo_bin("jobdir")
        .expect("bin")
        .args(["create", "1"])
        .env("JOBDIR", &from_env)
        .current_dir(tmp.path())
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(from_env.join("jobdir.json").exists());
    let out = Command::cargo_bin("jobdir")
        .expect("bin")
        .args(["create", "2"])
        .env_remove("JOBDIR")
        .current_dir(tmp.path())
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(tmp.path().join(".jobdir").join("jobdir.json").exists());
}

#[test]
fn help_explains_every_command() {
    for cmd in [
        "create", "get", "result", "wait", "work", "queue", "unqueue", "notify", "ls", "status",
        "remove", "prune", "recover", "demo",
    ] {
        let out = Command::cargo_bin("jobdir")
            .expect("bin")
            .args([cmd, "--help"])
            .output()
            .expect("run");
        assert!(out.status.success(), "{cmd} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: jobdir"), "{cmd}: {text}");
        assert!(
            text.lines().next().is_some_and(|l| l.len() > 20),
            "{cmd}: {text}"
        );
    }
}

#[test]
fn demo_passes_and_ignores_the_jobdir_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let users_store = tmp.path().join("users-store");
    let out = Command::cargo_bin("jobdir")
        .expect("bin")
        .args(["demo", "--jobs", "200", "--workers", "2"])
        .env("JOBDIR", &users_store)
        .timeout(Duration::from_secs(300))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("jobs fulfilled        200/200"), "{stdout}");
    assert!(stdout.contains("duplicate results     0"), "{stdout}");
    assert!(
        stdout.contains("notifications         200/200 delivered"),
        "{stdout}"
    );
    assert!(stdout.contains("verdict               OK"), "{stdout}");
    assert!(!users_store.exists(), "demo must not touch $JOBDIR");
}

#[test]
fn demo_with_an_explicit_dir_keeps_its_store() {
    let env = Env::new();
    let out = env
        .cmd(&["demo", "--jobs", "40", "--workers", "2"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("verdict               OK"), "{stdout}");
    let kept = Env {
        tmp: tempfile::tempdir().expect("tempdir"),
        dir: env.dir.join("store"),
    };
    let s: Value = serde_json::from_str(&kept.ok(&["status", "--json"])).expect("json");
    assert_eq!(s["fulfilled"], 40);
    assert_eq!(s["pending"], 0);
    assert_eq!(s["notifications"], 0);
    let records = std::fs::read_dir(env.dir.join("executions"))
        .expect("execution records")
        .count();
    assert_eq!(records, 3, "two workers and the replacement");
    // A non-empty directory is refused.
    env.fails(&["demo", "--jobs", "3"], 2);
}
