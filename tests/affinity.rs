//! Work affinity (issue 7, item 3) across real processes: jobs created for an instance are run
//! by that instance's worker first and by no other worker while it runs; when its worker is
//! killed with `kill -9`, its non-sticky jobs are handed over (each run once), its sticky jobs
//! wait until deallocated. The workers are `jobdir work` processes; the test process checks
//! with the library what a plain puller may take.

mod common;
use common::wait::{PATIENCE, eventually as wait_for};
use common::{exits, ok};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use jobdir::{
    Affinity, CreateOptions, InstanceId, JobId, JobKey, JobState, Liveness, RecoverOptions,
    Removal, Store,
};
use serde_json::Value;

fn open(dir: &Path) -> Store {
    common::store::polling(dir, 200).open().expect("open store")
}

fn iid(s: &str) -> InstanceId {
    s.parse().expect("instance name")
}

fn get(dir: &Path, id: &str) -> Value {
    serde_json::from_str(&ok(dir, &["get", id])).expect("get prints JSON")
}

fn create(dir: &Path, request: &str, extra: &[&str]) -> String {
    let mut args = vec!["create"];
    args.extend_from_slice(extra);
    args.push(request);
    ok(dir, &args).trim().to_string()
}

/// Lines of a file written by PROGRAMs (empty if it does not exist yet).
fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A `jobdir work` process in its own process group, so `kill -9` reaches its PROGRAM too.
struct Worker(Child);

impl Worker {
    fn spawn(dir: &Path, args: &[&str]) -> Worker {
        let child = common::jobdir_command(dir, &["work"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn jobdir work");
        Worker(child)
    }

    /// `kill -9` of the whole process group, and reaped: it is dead when this returns.
    fn kill9(mut self) {
        // SAFETY: kill(2) on the process group of a child we own.
        let rc = unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9");
        self.0.wait().expect("reap the worker");
    }

    fn wait_ok(mut self) {
        let status = self.0.wait().expect("wait for the worker");
        assert!(status.success(), "worker exited with {status}");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: as in kill9.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

/// A PROGRAM that records its job, then blocks until killed.
fn blocking_program(log: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo \"$JOBDIR_JOB_ID\" >> '{}'; exec sleep 600",
            log.display()
        ),
    ]
}

/// Starts `jobdir work --instance NAME` whose PROGRAM blocks, and waits until it holds a job.
fn holding_worker(dir: &Path, instance: &str, log: &Path) -> Worker {
    let program = blocking_program(log);
    let mut args = vec!["--instance", instance, "--"];
    args.extend(program.iter().map(String::as_str));
    let worker = Worker::spawn(dir, &args);
    wait_for("the worker to start a job", || !lines(log).is_empty());
    worker
}

#[test]
fn own_jobs_first_and_never_another_live_instances() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(dir, &["instance", "available", "a"]);
    ok(dir, &["instance", "available", "b"]);
    let free = create(dir, "\"free\"", &[]);
    let a1 = create(dir, "\"a1\"", &["--instance", "a"]);
    let b1 = create(dir, "\"b1\"", &["--instance", "b", "--sticky"]);
    let a2 = create(dir, "\"a2\"", &["--instance", "a"]);
    let job = get(dir, &a1);
    assert_eq!(
        (&job["instance"], &job["sticky"]),
        (&"a".into(), &false.into())
    );
    assert_eq!(get(dir, &b1)["sticky"], true);
    assert!(get(dir, &free).get("instance").is_none());

    // a's worker takes a's two jobs, though "free" is older; PROGRAM learns its instance.
    let echo = r#"printf %s "$JOBDIR_INSTANCE""#;
    ok(
        dir,
        &[
            "work",
            "--instance",
            "a",
            "--max-jobs",
            "2",
            "--",
            "sh",
            "-c",
            echo,
        ],
    );
    for id in [&a1, &a2] {
        assert_eq!(get(dir, id)["result"], "a", "job {id}");
    }
    assert_eq!(get(dir, &free)["state"], "pending");
    assert_eq!(get(dir, &b1)["state"], "pending");

    // A plain puller takes the free job, never b's (b is available and not dead).
    let store = open(dir);
    let held = store.pull_work().unwrap().expect("the free job");
    assert_eq!(held.id().to_string(), free);
    assert!(store.pull_work().unwrap().is_none(), "b's job is b's");
    // Another instance, even taking unallocated jobs, does not take it either.
    let c = Affinity::new(iid("c")).unallocated(true);
    store.available(c.instance()).unwrap();
    assert!(store.pull_work_as(&c).unwrap().is_none());
    drop(held);

    // b's worker, taking unallocated jobs too, runs its own job first.
    ok(
        dir,
        &[
            "work",
            "--instance",
            "b",
            "--unallocated",
            "--max-jobs",
            "1",
            "--",
            "sh",
            "-c",
            echo,
        ],
    );
    assert_eq!(get(dir, &b1)["result"], "b");
    assert_eq!(get(dir, &free)["state"], "pending");
    // A finished job's allocation has served: it is gone, and `instance jobs` lists nothing.
    assert_eq!(ok(dir, &["instance", "jobs", "a"]), "");
    assert_eq!(ok(dir, &["instance", "jobs", "b"]), "");
    assert!(get(dir, &a1).get("instance").is_none());
}

#[test]
fn a_killed_instance_hands_over_its_non_sticky_jobs_and_keeps_its_sticky_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = dir.join("started.log");
    let done = dir.join("done.log");
    ok(dir, &["instance", "available", "x"]);
    let loose: Vec<String> = (0..3)
        .map(|i| create(dir, &format!("\"n{i}\""), &["--instance", "x"]))
        .collect();
    let sticky = create(dir, "\"s\"", &["--instance", "x", "--sticky"]);

    let worker = holding_worker(dir, "x", &started);
    let store = open(dir);
    let x = || {
        store
            .instances()
            .unwrap()
            .into_iter()
            .find(|i| i.id.as_str() == "x")
            .unwrap()
    };
    assert_eq!(x().liveness, Liveness::Live);
    assert!(
        store.pull_work().unwrap().is_none(),
        "x is live: all its jobs wait for it"
    );

    worker.kill9();
    assert_eq!(x().liveness, Liveness::Dead);
    // A plain worker now runs x's three non-sticky jobs (the one x held comes back at once).
    let record = format!("echo \"$JOBDIR_JOB_ID\" >> '{}'; cat", done.display());
    ok(dir, &["work", "--max-jobs", "3", "--", "sh", "-c", &record]);
    let mut ran = lines(&done);
    ran.sort();
    let mut want = loose.clone();
    want.sort();
    assert_eq!(ran, want, "each non-sticky job ran once");
    let held_by_x = &lines(&started)[0];
    assert!(loose.contains(held_by_x) || held_by_x == &sticky);

    // The sticky job waits for x, dead or not, whoever pulls.
    let job = get(dir, &sticky);
    assert_eq!(
        (&job["state"], &job["instance"]),
        (&"pending".into(), &"x".into())
    );
    assert!(store.pull_work().unwrap().is_none());
    store.available(&iid("y")).unwrap();
    let y = Affinity::new(iid("y")).unallocated(true);
    assert!(store.pull_work_as(&y).unwrap().is_none());
    // ... until it is deallocated: then any worker runs it.
    ok(dir, &["deallocate", &sticky]);
    ok(dir, &["work", "--max-jobs", "1", "--", "sh", "-c", &record]);
    assert_eq!(get(dir, &sticky)["result"], "\"s\"");
    let ran = lines(&done);
    assert_eq!(ran.len(), 4);
    assert_eq!(ran.iter().filter(|r| **r == sticky).count(), 1);
}

#[test]
fn two_workers_handing_over_one_dead_instance_run_each_job_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = dir.join("started.log");
    let log = dir.join("runs.log");
    for name in ["x", "y", "z"] {
        ok(dir, &["instance", "available", name]);
    }
    let store = open(dir);
    let x = iid("x");
    let ids: Vec<JobId> = (0..30)
        .map(|i| {
            store
                .create_with(&i, CreateOptions::default().instance(x.clone()))
                .unwrap()
        })
        .collect();
    holding_worker(dir, "x", &started).kill9();

    let record = format!(
        "echo \"$JOBDIR_INSTANCE $JOBDIR_JOB_ID\" >> '{}'; cat",
        log.display()
    );
    let workers: Vec<Worker> = ["y", "z"]
        .iter()
        .map(|name| {
            Worker::spawn(
                dir,
                &[
                    "--instance",
                    name,
                    "--until-empty",
                    "--",
                    "sh",
                    "-c",
                    &record,
                ],
            )
        })
        .collect();
    for w in workers {
        w.wait_ok();
    }
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines(&log) {
        let (who, id) = line.split_once(' ').expect("instance and id");
        runs.entry(id.to_string())
            .or_default()
            .push(who.to_string());
    }
    for id in &ids {
        let who = runs.get(&id.to_string()).cloned().unwrap_or_default();
        assert_eq!(who.len(), 1, "job {id} ran {who:?}");
        assert!(who[0] == "y" || who[0] == "z");
        assert_eq!(store.get(id).unwrap().state, JobState::Fulfilled);
    }
    // Every allocation made for these jobs went with them.
    for name in ["x", "y", "z"] {
        assert!(store.jobs(&iid(name)).unwrap().is_empty(), "{name}");
    }
}

#[test]
fn an_unavailable_instance_nobody_runs_hands_over_only_its_non_sticky_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let w = iid("w");
    store.available(&w).unwrap();
    let opts = CreateOptions::default().instance(w.clone());
    let loose = store.create_with(&"loose", opts.clone()).unwrap();
    let sticky = store.create_with(&"sticky", opts.sticky(true)).unwrap();
    // Absent but available: w may still start; its jobs wait.
    assert!(store.pull_work().unwrap().is_none());
    store.unavailable(&w, Removal::Keep).unwrap();
    let job = store
        .pull_work()
        .unwrap()
        .expect("the loose job is handed over");
    assert_eq!(job.id(), loose);
    assert_eq!(store.instance(&JobKey::from(loose)).unwrap(), None);
    assert!(store.pull_work().unwrap().is_none(), "the sticky job stays");
    job.fulfill(b"ok").unwrap();
    // An instance puller takes a handed-over job as its own.
    let v = iid("v");
    store.available(&v).unwrap();
    let again = store
        .create_with(&"again", CreateOptions::default().instance(v.clone()))
        .unwrap();
    store.unavailable(&v, Removal::Keep).unwrap();
    store.available(&iid("u")).unwrap();
    let u = Affinity::new(iid("u"));
    let lease = store.pull_work_as(&u).unwrap().expect("handed to u");
    assert_eq!(lease.id(), again);
    assert_eq!(
        store.instance(&JobKey::from(again)).unwrap(),
        Some(iid("u"))
    );
    drop(lease);
    assert_eq!(store.get(&sticky).unwrap().instance, Some(w));
}

#[test]
fn creating_for_an_instance_checks_it_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = exits(dir, &["create", "--instance", "nobody", "1"], 2);
    assert!(err.contains("no instance nobody"), "{err}");
    let err = exits(dir, &["create", "--instance", "bad/name", "1"], 2);
    assert!(err.contains("bad/name"), "{err}");
    let err = exits(dir, &["create", "--sticky", "1"], 2);
    assert!(err.contains("--sticky"), "{err}");
    let err = exits(dir, &["create", "--allocate", "1"], 1);
    assert!(err.contains("no available instance"), "{err}");
    ok(dir, &["instance", "available", "gone"]);
    ok(dir, &["instance", "unavailable", "gone"]);
    let err = exits(dir, &["create", "--instance", "gone", "1"], 2);
    assert!(err.contains("unavailable"), "{err}");
    assert_eq!(ok(dir, &["ls"]), "", "no job was made");
    assert_eq!(ok(dir, &["instance", "jobs", "gone"]), "");
    // --allocate uses the default rule, as `jobdir allocate` would for the same key.
    ok(dir, &["instance", "available", "p"]);
    ok(dir, &["instance", "available", "q"]);
    let id = create(dir, "1", &["--allocate"]);
    let chosen = get(dir, &id)["instance"].as_str().unwrap().to_string();
    assert!(chosen == "p" || chosen == "q");
    assert_eq!(ok(dir, &["allocation", &id]).trim(), chosen);
}

#[test]
fn recover_releases_the_allocation_of_a_job_that_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let w = iid("w");
    store.available(&w).unwrap();
    let id = store
        .create_with(&1, CreateOptions::default().instance(w.clone()))
        .unwrap();
    let kept = store.create_with(&2, CreateOptions::default().instance(w.clone()));
    let kept = kept.unwrap();
    // A crash that lost the job but not its allocation (the job directory vanished).
    let text = id.to_string();
    let shard = &text[text.len() - 2..]; // the last byte of the id (FORMAT.md §4.4)
    let job_dir: PathBuf = tmp.path().join("jobs").join(shard).join(&text);
    assert!(job_dir.is_dir(), "{}", job_dir.display());
    fs::remove_dir_all(&job_dir).unwrap();
    let report = store
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap();
    assert_eq!(report.allocations_released, 1);
    assert_eq!(store.jobs(&w).unwrap(), [JobKey::from(kept)]);
}

#[test]
fn a_failed_attempt_comes_back_to_its_instance_after_the_backoff() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let w = iid("w");
    store.available(&w).unwrap();
    let policy = jobdir::RetryPolicy::default()
        .with_max_attempts(3)
        .with_backoff(Duration::from_millis(50), Duration::from_millis(50));
    let id = store
        .create_with(
            &"flaky",
            CreateOptions::default().instance(w.clone()).retry(policy),
        )
        .unwrap();
    // An instance that takes no unallocated job never reads the shared index: the delayed
    // retry must still be promoted by its pulls.
    let who = Affinity::new(w);
    let first = store.pull_work_as(&who).unwrap().expect("its job");
    assert!(matches!(
        first.fail("flaky").unwrap(),
        jobdir::Failure::Retrying { .. }
    ));
    let again = store
        .pull_work_timeout_as(&who, PATIENCE)
        .unwrap()
        .expect("back after the backoff");
    assert_eq!((again.id(), again.attempt()), (id, 2));
    again.fulfill(b"ok").unwrap();
    assert_eq!(
        store.get(&id).unwrap().instance,
        None,
        "released with the job"
    );
}

/// A pull as an instance that takes no unallocated job, waiting, gets a job created for it by
/// another handle meanwhile. (How soon is measured, not asserted:
/// `bench/compare/run latency 200 1 instance`, docs/PERFORMANCE.md.)
#[test]
fn a_waiting_instance_pull_gets_a_job_created_for_it_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let puller = open(tmp.path());
    let creator = open(tmp.path());
    let w = iid("w");
    creator.available(&w).unwrap();
    let who = Affinity::new(w.clone()); // takes no unallocated job: reads no shared index
    assert!(puller.pull_work_as(&who).unwrap().is_none());
    let made = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200)); // let the pull start waiting
        creator
            .create_with(&"wake", CreateOptions::default().instance(w))
            .unwrap()
    });
    let job = puller
        .pull_work_timeout_as(&who, PATIENCE)
        .unwrap()
        .expect("the job created meanwhile");
    assert_eq!(job.id(), made.join().unwrap());
}

#[test]
fn an_unreadable_allocation_skips_its_job_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let w = iid("w");
    store.available(&w).unwrap();
    let kept = store
        .create_with(&"kept", CreateOptions::default().instance(w.clone()))
        .unwrap();
    let free = store.create(&"free").unwrap();
    // The allocation file of the kept job is replaced by garbage.
    let text = kept.to_string();
    let shard = tmp.path().join("allocations");
    let file = fs::read_dir(&shard)
        .unwrap()
        .map(|e| e.unwrap().path().join(&text))
        .find(|p| p.exists())
        .expect("the allocation file");
    fs::write(&file, b"not json").unwrap();
    // A plain pull skips it (never as unallocated) and takes the free job; nothing fails.
    let job = store.pull_work().unwrap().expect("the free job");
    assert_eq!(job.id(), free);
    assert!(store.pull_work().unwrap().is_none());
    assert!(
        store
            .pull_work_as(&Affinity::new(w.clone()))
            .unwrap()
            .is_none()
    );
    // The job stays readable; recover moves the bad file aside, and the job is free again.
    assert_eq!(store.get(&kept).unwrap().state, JobState::Pending);
    let report = store
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap();
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    drop(job);
    let again = open(tmp.path());
    let mut got = Vec::new();
    while let Some(l) = again.pull_work().unwrap() {
        got.push(l);
    }
    let mut ids: Vec<JobId> = got.iter().map(|l| l.id()).collect();
    ids.sort();
    let mut want = vec![kept, free];
    want.sort();
    assert_eq!(ids, want);
}
