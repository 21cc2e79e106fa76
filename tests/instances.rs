//! Instances and sticky allocation (issue 7, after the Node package atributo), across real
//! processes: this test binary re-executes itself as agent, racer and joiner processes (the
//! `helper` test, active only when `JOBDIR_TEST_ROLE` is set). Also: crash states and foreign
//! files repaired by `recover`, planted symlinks, and the `jobdir` commands, including the
//! README's walkthrough, replayed and compared with its pasted output.

mod common;
use common::child::{self, Helper, say};
use common::store::open;
use common::wait::PATIENCE;
use common::{jobdir, ok};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use jobdir::{
    AllocationRule, Choice, Error, HashRule, InstanceId, InstanceInfo, JobKey, Liveness,
    RecoverOptions, Removal, Store,
};
use serde_json::{Value, json};

fn iid(s: &str) -> InstanceId {
    s.parse().expect("instance name")
}

fn key(s: &str) -> JobKey {
    s.parse().expect("job key")
}

/// atributo's README example allocator: the default choice, persisted only for our instance.
struct OnlyMine(InstanceId);

impl AllocationRule for OnlyMine {
    fn choose(&self, job: &JobKey, available: &[InstanceInfo]) -> Option<Choice> {
        let mut choice = HashRule.choose(job, available)?;
        choice.persist = choice.instance == self.0;
        Some(choice)
    }
}

/// A rule that always wants one instance (so racing processes disagree until the store
/// arbitrates).
struct Prefer(InstanceId);

impl AllocationRule for Prefer {
    fn choose(&self, _: &JobKey, available: &[InstanceInfo]) -> Option<Choice> {
        available.iter().find(|i| i.id == self.0).map(|i| Choice {
            instance: i.id.clone(),
            persist: true,
        })
    }
}

/// Runs one agent command (a JSON array of strings) against the store.
fn agent_call(
    store: &Store,
    mine: &mut Option<InstanceId>,
    example: bool,
    cmd: &[String],
) -> Value {
    let arg = |i: usize| cmd.get(i).map(String::as_str).unwrap_or_default();
    let result: Result<Value, Error> = (|| {
        Ok(match arg(0) {
            "available" => {
                // atributo's ExampleAtributo remembers its own instance here.
                *mine = Some(iid(arg(1)));
                store.available(&iid(arg(1)))?;
                Value::Null
            }
            "unavailable" => {
                let removal = match arg(2) {
                    "now" => Removal::Now,
                    "when-idle" => Removal::WhenIdle,
                    _ => Removal::Keep,
                };
                store.unavailable(&iid(arg(1)), removal)?;
                Value::Null
            }
            "instances" => json!(
                store
                    .instances()?
                    .iter()
                    .map(|i| json!({"id": i.id.as_str(), "available": i.available}))
                    .collect::<Vec<_>>()
            ),
            "allocate" => {
                let a = match (example, mine.as_ref()) {
                    (true, Some(me)) => store.allocate_with(&key(arg(1)), &OnlyMine(me.clone()))?,
                    _ => store.allocate(&key(arg(1)))?,
                };
                json!([a.instance.as_str(), a.persisted])
            }
            "deallocate" => json!(store.deallocate(&key(arg(1)))?.map(|i| i.to_string())),
            "jobs" => json!(
                store
                    .jobs(&iid(arg(1)))?
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
            ),
            "has_jobs" => json!(store.has_jobs(&iid(arg(1)))?),
            "instance" => json!(store.instance(&key(arg(1)))?.map(|i| i.to_string())),
            other => panic!("unknown agent command {other}"),
        })
    })();
    result.unwrap_or_else(|e| json!({"error": e.to_string()}))
}

/// The child side. Does nothing unless this binary was started as a helper process.
#[test]
fn helper() {
    let Some(role) = child::role() else {
        return;
    };
    let store = child::open_store();
    let stdin = std::io::stdin();
    match role.as_str() {
        // One command per stdin line (a JSON array), one `@ <JSON>` answer per command.
        "agent" | "example" => {
            let mut mine = None;
            for line in stdin.lock().lines() {
                let cmd: Vec<String> = serde_json::from_str(&line.expect("stdin")).expect("cmd");
                let answer = agent_call(&store, &mut mine, role == "example", &cmd);
                say!("{answer}");
            }
        }
        // Waits for `go`, then allocates every key preferring its own instance; one line each.
        "racer" => {
            let prefer = Prefer(iid(&std::env::var("JOBDIR_TEST_PREFER").unwrap()));
            let keys: usize = std::env::var("JOBDIR_TEST_KEYS").unwrap().parse().unwrap();
            say!("ready");
            let mut go = String::new();
            stdin.lock().read_line(&mut go).expect("go");
            for k in 0..keys {
                let a = store
                    .allocate_with(&key(&format!("job{k}")), &prefer)
                    .expect("allocate");
                say!("job{k} {} {} {}", a.instance, a.persisted, a.existing);
            }
        }
        // Allocates every key with the default rule; says `started` after the first 20.
        "allocator" => {
            let keys: usize = std::env::var("JOBDIR_TEST_KEYS").unwrap().parse().unwrap();
            for k in 0..keys {
                match store.allocate(&key(&format!("job{k}"))) {
                    Ok(_) | Err(Error::NoInstance(_)) => {}
                    Err(e) => panic!("allocate job{k}: {e}"),
                }
                if k == 20 {
                    say!("started");
                }
            }
        }
        // Joins as an instance and stays until stdin closes (or it is killed).
        "joiner" => {
            let me = iid(&std::env::var("JOBDIR_TEST_INSTANCE").unwrap());
            match store.join(&me) {
                Ok(presence) => {
                    say!("joined");
                    let mut rest = String::new();
                    let _ = std::io::Read::read_to_string(&mut stdin.lock(), &mut rest);
                    drop(presence);
                    say!("left");
                }
                Err(e) => say!("refused {e}"),
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// A helper process reading from a pipe on its stdin (agents take their commands there).
fn spawn(role: &str, dir: &Path, env: &[(&str, &str)]) -> Helper {
    let mut cmd = child::command(role, dir);
    cmd.stdin(Stdio::piped()).envs(env.iter().copied());
    Helper::start(cmd)
}

impl Helper {
    /// Sends an agent command, returns its JSON answer.
    fn call(&mut self, cmd: &[&str]) -> Value {
        self.send(&serde_json::to_string(cmd).unwrap());
        serde_json::from_str(&self.line()).expect("JSON answer")
    }
}

fn sorted_instances(v: Value) -> Value {
    let mut list = v.as_array().expect("a list").clone();
    list.sort_by_key(|i| i["id"].as_str().unwrap_or_default().to_string());
    Value::Array(list)
}

/// The atributo README's first example, every step in one of two processes in turn.
#[test]
fn atributo_readme_example_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = [
        spawn("agent", dir.path(), &[]),
        spawn("agent", dir.path(), &[]),
    ];
    // Make instances available
    assert_eq!(p[0].call(&["available", "instance0"]), Value::Null);
    assert_eq!(p[1].call(&["available", "instance1"]), Value::Null);
    // List instances
    assert_eq!(
        sorted_instances(p[0].call(&["instances"])),
        json!([
            {"id": "instance0", "available": true},
            {"id": "instance1", "available": true}
        ])
    );
    // Allocate jobs (persisted: new allocations)
    assert_eq!(p[1].call(&["allocate", "job0"]), json!(["instance1", true]));
    assert_eq!(p[0].call(&["allocate", "job1"]), json!(["instance0", true]));
    // List jobs for each instance
    assert_eq!(p[1].call(&["jobs", "instance0"]), json!(["job1"]));
    assert_eq!(p[0].call(&["jobs", "instance1"]), json!(["job0"]));
    // Check if instance has jobs
    assert_eq!(p[1].call(&["has_jobs", "instance0"]), json!(true));
    // Get instance for job
    assert_eq!(p[0].call(&["instance", "job1"]), json!("instance0"));
    // Make instance unavailable but don't remove it
    assert_eq!(
        p[1].call(&["unavailable", "instance0", "keep"]),
        Value::Null
    );
    // Check instance is unavailable
    assert_eq!(
        sorted_instances(p[0].call(&["instances"])),
        json!([
            {"id": "instance0", "available": false},
            {"id": "instance1", "available": true}
        ])
    );
    // Check existing allocation to unavailable instance (not persisted: it existed)
    assert_eq!(
        p[0].call(&["allocate", "job1"]),
        json!(["instance0", false])
    );
    // Deallocate existing allocation
    assert_eq!(p[1].call(&["deallocate", "job1"]), json!("instance0"));
    // Re-allocate job
    assert_eq!(p[0].call(&["allocate", "job1"]), json!(["instance1", true]));
    // Remove instance and its allocated jobs
    assert_eq!(p[1].call(&["unavailable", "instance0", "now"]), Value::Null);
    // Check instance has been removed
    assert_eq!(
        p[0].call(&["instances"]),
        json!([{"id": "instance1", "available": true}])
    );
    assert_eq!(p[1].call(&["jobs", "instance1"]), json!(["job0", "job1"]));
    for h in p {
        h.finish();
    }
    let store = open(dir.path(), 30_000);
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
    let report = store
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap();
    assert!(report.quarantined.is_empty(), "{report:#?}");
    assert_eq!((report.entries_added, report.entries_removed), (0, 0));
}

/// The atributo README's second example: two processes, each persisting only allocations to
/// its own instance.
#[test]
fn atributo_persist_only_my_own_allocations_across_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut ao0 = spawn("example", dir.path(), &[]);
    let mut ao1 = spawn("example", dir.path(), &[]);
    // Make instances available
    ao0.call(&["available", "instance0"]);
    ao1.call(&["available", "instance1"]);
    // List instances on both
    let both = json!([
        {"id": "instance0", "available": true},
        {"id": "instance1", "available": true}
    ]);
    assert_eq!(sorted_instances(ao0.call(&["instances"])), both);
    assert_eq!(sorted_instances(ao1.call(&["instances"])), both);
    // Job allocated on instance0 to instance1 should not be persisted
    assert_eq!(ao0.call(&["allocate", "job0"]), json!(["instance1", false]));
    assert_eq!(ao1.call(&["jobs", "instance1"]), json!([]));
    // Job allocated on instance1 to instance1 should be persisted
    assert_eq!(ao1.call(&["allocate", "job0"]), json!(["instance1", true]));
    assert_eq!(ao1.call(&["jobs", "instance1"]), json!(["job0"]));
    // Job allocated on instance1 to instance0 should not be persisted
    assert_eq!(ao1.call(&["allocate", "job1"]), json!(["instance0", false]));
    assert_eq!(ao1.call(&["jobs", "instance0"]), json!([]));
    // Job allocated on instance0 to instance0 should be persisted
    assert_eq!(ao0.call(&["allocate", "job1"]), json!(["instance0", true]));
    assert_eq!(ao1.call(&["jobs", "instance0"]), json!(["job1"]));
    // Jobs should only be persisted once
    assert_eq!(ao1.call(&["allocate", "job0"]), json!(["instance1", false]));
    assert_eq!(ao0.call(&["allocate", "job1"]), json!(["instance0", false]));
    ao0.finish();
    ao1.finish();
}

/// Four processes allocate the same 150 keys at once, each with a rule that wants its own
/// instance: every key gets exactly one allocation file, exactly one process persisted it, and
/// all four return that instance.
#[test]
fn concurrent_allocations_agree_and_persist_once() {
    const KEYS: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    for i in 0..4 {
        store.available(&iid(&format!("instance{i}"))).unwrap();
    }
    let mut racers: Vec<Helper> = (0..4)
        .map(|i| {
            spawn(
                "racer",
                dir.path(),
                &[
                    ("JOBDIR_TEST_PREFER", &format!("instance{i}")),
                    ("JOBDIR_TEST_KEYS", &KEYS.to_string()),
                ],
            )
        })
        .collect();
    for r in &racers {
        assert_eq!(r.line(), "ready");
    }
    for r in &mut racers {
        r.send("go");
    }
    // key -> [(instance, persisted, existing)] over the four processes
    let mut seen: BTreeMap<String, Vec<(String, bool, bool)>> = BTreeMap::new();
    for r in racers {
        for line in r.finish() {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts.len(), 4, "{line}");
            seen.entry(parts[0].to_string()).or_default().push((
                parts[1].to_string(),
                parts[2] == "true",
                parts[3] == "true",
            ));
        }
    }
    assert_eq!(seen.len(), KEYS);
    let mut per_instance: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (k, answers) in &seen {
        assert_eq!(answers.len(), 4, "{k}: {answers:?}");
        let instances: BTreeSet<_> = answers.iter().map(|a| a.0.clone()).collect();
        assert_eq!(instances.len(), 1, "{k}: processes disagree: {answers:?}");
        let persisted = answers.iter().filter(|a| a.1).count();
        assert_eq!(persisted, 1, "{k}: {answers:?}");
        assert!(answers.iter().all(|a| a.1 != a.2), "{k}: {answers:?}");
        let winner = answers[0].0.clone();
        assert_eq!(
            store.instance(&key(k)).unwrap().map(|i| i.to_string()),
            Some(winner.clone())
        );
        per_instance.entry(winner).or_default().insert(k.clone());
    }
    // Exactly one file per key, and the per-instance lists partition the keys.
    let mut files = 0;
    for shard in fs::read_dir(dir.path().join("allocations")).unwrap() {
        files += fs::read_dir(shard.unwrap().path()).unwrap().count();
    }
    assert_eq!(files, KEYS);
    let mut listed = 0;
    let mut entries = 0;
    for i in 0..4 {
        let name = format!("instance{i}");
        let jobs: BTreeSet<String> = store
            .jobs(&iid(&name))
            .unwrap()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(jobs, per_instance.remove(&name).unwrap_or_default());
        listed += jobs.len();
        let jobs_dir = dir.path().join("instances").join(&name).join("jobs");
        entries += fs::read_dir(&jobs_dir).map(|d| d.count()).unwrap_or(0);
    }
    assert_eq!(listed, KEYS);
    assert_eq!(entries, KEYS, "losers must take their index entries back");
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// The keys whose allocation file names `instance`.
fn allocated_to(dir: &Path, instance: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(shards) = fs::read_dir(dir.join("allocations")) else {
        return out;
    };
    for shard in shards {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            let f = f.unwrap();
            let v: Value = serde_json::from_slice(&fs::read(f.path()).unwrap()).unwrap();
            if v["instance"] == instance {
                out.insert(f.file_name().into_string().unwrap());
            }
        }
    }
    out
}

/// Instances withdrawn while three processes allocate: once `unavailable` returns, no new
/// allocation to the instance survives; one removed with `Removal::Now` keeps no allocation;
/// and the index is left exactly consistent with the allocation files.
#[test]
fn withdrawing_instances_while_processes_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    for name in ["a", "b", "x", "y"] {
        store.available(&iid(name)).unwrap();
    }
    let env = [("JOBDIR_TEST_KEYS", "300")];
    let procs: Vec<Helper> = (0..3)
        .map(|_| spawn("allocator", dir.path(), &env))
        .collect();
    for p in &procs {
        assert_eq!(p.line(), "started");
    }
    store.unavailable(&iid("x"), Removal::Keep).unwrap();
    let before = allocated_to(dir.path(), "x");
    store.unavailable(&iid("y"), Removal::Now).unwrap();
    assert!(allocated_to(dir.path(), "y").is_empty());
    for p in procs {
        p.finish();
    }
    let after = allocated_to(dir.path(), "x");
    assert!(
        after.is_subset(&before),
        "allocated to x after it was made unavailable: {:?}",
        after.difference(&before).collect::<Vec<_>>()
    );
    assert!(allocated_to(dir.path(), "y").is_empty(), "y was removed");
    let names: Vec<String> = store
        .instances()
        .unwrap()
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(names, ["a", "b", "x"]);
    // The index agrees with the files (keys of y were deallocated with it).
    for n in ["a", "b", "x"] {
        let listed: BTreeSet<String> = store
            .jobs(&iid(n))
            .unwrap()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(listed, allocated_to(dir.path(), n), "{n}");
    }
    let report = recover_now(&store);
    assert!(report.quarantined.is_empty(), "{report:#?}");
    assert_eq!(
        (report.entries_added, report.entries_removed),
        (0, 0),
        "{report:#?}"
    );
    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// A process that joined as an instance and died is reported dead: at once on its host, and
/// by another host after a lease of unchanged heartbeat. Its presence is then taken over.
#[test]
fn an_instance_whose_process_died_is_reported_dead() {
    let dir = tempfile::tempdir().unwrap();
    let lease = ("JOBDIR_TEST_LEASE_MS", "400");
    let name = ("JOBDIR_TEST_INSTANCE", "w1");
    let store = open(dir.path(), 400);
    let other_host = Store::builder(dir.path())
        .lease(Duration::from_millis(400))
        .host_id("another-host")
        .open()
        .unwrap();
    let liveness = |s: &Store| -> Liveness {
        let list = s.instances().unwrap();
        assert_eq!(list.len(), 1);
        list[0].liveness
    };

    // Joined and left cleanly: absent.
    let h = spawn("joiner", dir.path(), &[lease, name]);
    assert_eq!(h.line(), "joined");
    assert_eq!(liveness(&store), Liveness::Live);
    assert_eq!(liveness(&other_host), Liveness::Live);
    // One live process per instance.
    let second = spawn("joiner", dir.path(), &[lease, name]);
    assert!(
        second.line().starts_with("refused "),
        "a second process joined"
    );
    second.finish();
    assert!(matches!(
        store.join(&iid("w1")),
        Err(Error::InstanceInUse(_))
    ));
    let lines = h.finish();
    assert_eq!(lines, ["left"]);
    assert_eq!(liveness(&store), Liveness::Absent);

    // Killed: dead at once on this host; another host sees it after a lease unchanged.
    let h = spawn("joiner", dir.path(), &[lease, name]);
    assert_eq!(h.line(), "joined");
    assert_eq!(liveness(&other_host), Liveness::Live);
    h.kill();
    assert_eq!(liveness(&store), Liveness::Dead);
    let deadline = Instant::now() + PATIENCE;
    while liveness(&other_host) != Liveness::Dead {
        assert!(Instant::now() < deadline, "another host never saw it dead");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The instance stays available: dead is reported, not acted on.
    assert!(store.instances().unwrap()[0].available);

    // A new process takes the dead presence over.
    let h = spawn("joiner", dir.path(), &[lease, name]);
    assert_eq!(h.line(), "joined");
    assert_eq!(liveness(&store), Liveness::Live);
    assert_eq!(h.finish(), ["left"]);
    assert_eq!(liveness(&store), Liveness::Absent);
}

#[test]
fn removal_when_idle_waits_for_the_last_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 30_000);
    let (a, b) = (iid("a"), iid("b"));
    store.available(&a).unwrap();
    let k1 = key("k1");
    let k2 = key("k2");
    store.allocate(&k1).unwrap();
    store.allocate(&k2).unwrap();
    store.available(&b).unwrap();
    store.unavailable(&a, Removal::WhenIdle).unwrap();
    let list = store.instances().unwrap();
    assert!(!list[0].available && list[0].remove_when_idle, "{list:?}");
    // Its allocations stay and are still returned; new ones go elsewhere.
    assert_eq!(store.allocate(&k1).unwrap().instance, a);
    assert_eq!(store.allocate(&key("k3")).unwrap().instance, b);
    store.deallocate(&k1).unwrap();
    assert_eq!(store.instances().unwrap().len(), 2);
    assert_eq!(store.deallocate(&k2).unwrap(), Some(a.clone()));
    let names: Vec<String> = store
        .instances()
        .unwrap()
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(names, ["b"]);
    // Unknown instances: unavailable creates one with Keep; the removals do nothing.
    store.unavailable(&iid("ghost"), Removal::Now).unwrap();
    store.unavailable(&iid("ghost"), Removal::WhenIdle).unwrap();
    assert_eq!(store.instances().unwrap().len(), 1);
    store.unavailable(&iid("ghost"), Removal::Keep).unwrap();
    assert_eq!(store.instances().unwrap().len(), 2);
    // Nothing available: no allocation.
    store.unavailable(&b, Removal::Keep).unwrap();
    assert!(matches!(
        store.allocate(&key("k4")),
        Err(Error::NoInstance(_))
    ));
    assert_eq!(store.allocate(&key("k3")).unwrap().instance, b);
}

/// A process that is removed (or taken over) while joined learns it: `is_lost`.
#[test]
fn a_joined_process_learns_that_its_instance_was_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 300);
    let me = store.join(&iid("w")).unwrap();
    store.allocate(&key("j")).unwrap();
    store.unavailable(&iid("w"), Removal::Now).unwrap();
    assert!(store.instances().unwrap().is_empty());
    assert_eq!(store.instance(&key("j")).unwrap(), None);
    let deadline = Instant::now() + PATIENCE;
    while !me.is_lost() {
        assert!(Instant::now() < deadline, "never learnt it was removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(me);
    assert!(
        store.instances().unwrap().is_empty(),
        "leaving recreated it"
    );
}

fn entry_names(dir: &Path, instance: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir.join("instances").join(instance).join("jobs"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn allocation_path(dir: &Path, job: &str) -> PathBuf {
    for shard in fs::read_dir(dir.join("allocations")).unwrap() {
        let p = shard.unwrap().path().join(job);
        if p.exists() {
            return p;
        }
    }
    panic!("no allocation file for {job}");
}

fn recover_now(store: &Store) -> jobdir::RecoveryReport {
    store
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap()
}

/// What a crash at each step of allocate, deallocate or unavailable can leave, and how it is
/// read before and repaired by `recover`.
#[test]
fn crash_states_are_tolerated_and_repaired_by_recover() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(root, 30_000);
    let i = iid("i");
    store.available(&i).unwrap();
    store.allocate(&key("kept")).unwrap();

    // A crash after the index entry, before the allocation file: an extra entry. Listings
    // ignore it; allocate makes the allocation; recover removes it (only once old).
    fs::write(root.join("instances/i/jobs/orphan.0badc0de"), b"").unwrap();
    assert_eq!(store.jobs(&i).unwrap(), [key("kept")]);
    let report = store.recover().unwrap();
    assert_eq!(
        report.entries_removed, 0,
        "a young entry may be an allocation in progress"
    );
    let report = recover_now(&store);
    assert_eq!(report.entries_removed, 1);
    assert_eq!(entry_names(root, "i").len(), 1);

    // An allocation whose entry is missing (lost): listings miss it, recover re-adds it.
    fs::remove_file(
        root.join("instances/i/jobs")
            .join(&entry_names(root, "i")[0]),
    )
    .unwrap();
    assert!(store.jobs(&i).unwrap().is_empty());
    assert_eq!(store.instance(&key("kept")).unwrap(), Some(i.clone()));
    let report = recover_now(&store);
    assert_eq!(report.entries_added, 1);
    assert_eq!(store.jobs(&i).unwrap(), [key("kept")]);

    // A crash in deallocate after the rename: the allocation is gone, its entry stays.
    store.allocate(&key("gone")).unwrap();
    let before = entry_names(root, "i");
    fs::rename(
        allocation_path(root, "gone"),
        root.join("tmp/dealloc.00000000"),
    )
    .unwrap();
    assert_eq!(store.jobs(&i).unwrap(), [key("kept")]);
    assert_eq!(store.instance(&key("gone")).unwrap(), None);
    assert_eq!(entry_names(root, "i"), before);
    let report = recover_now(&store);
    assert_eq!((report.entries_removed, report.temp_removed), (1, 1));

    // An allocation to an instance removed meanwhile: ignored, re-allocated, or quarantined.
    store.available(&iid("x")).unwrap();
    // The default rule sends this key to "x", the second of the sorted ["i", "x"].
    let x_job = (0..)
        .map(|n| key(&format!("x{n}")))
        .find(|k| HashRule::index(k, 2) == 1)
        .unwrap();
    assert_eq!(store.allocate(&x_job).unwrap().instance, iid("x"));
    let file = allocation_path(root, x_job.as_str());
    assert_eq!(
        file,
        root.join("allocations")
            .join(shard_of(x_job.as_str()))
            .join(x_job.as_str())
    );
    let saved = fs::read(&file).unwrap();
    store.unavailable(&iid("x"), Removal::Now).unwrap();
    assert!(!file.exists());
    fs::write(&file, &saved).unwrap();
    assert_eq!(store.instance(&x_job).unwrap(), None);
    let report = recover_now(&store);
    let reasons: Vec<&str> = report
        .quarantined
        .iter()
        .map(|q| q.reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        ["allocation to an instance that does not exist"],
        "{report:#?}"
    );
    fs::write(&file, &saved).unwrap();
    let again = store.allocate(&x_job).unwrap();
    assert!(again.persisted && again.instance == i, "{again:?}");

    // A removal asked for when idle whose last deallocate crashed: recover finishes it.
    store.available(&iid("y")).unwrap();
    fs::write(
        root.join("instances/y/instance.json"),
        br#"{"instance":"y","available":false,"remove_when_idle":true}"#,
    )
    .unwrap();
    let report = recover_now(&store);
    assert_eq!(report.instances_removed, 1);
    assert!(!root.join("instances/y").exists());

    // Nothing else changed; a second recover finds nothing to do.
    let report = recover_now(&store);
    assert!(report.quarantined.is_empty(), "{report:#?}");
    assert_eq!((report.entries_added, report.entries_removed), (0, 0));
    assert_eq!(store.jobs(&i).unwrap().len(), 2);
}

/// The shard rule of FORMAT.md §9, written out independently of the library: the first byte of
/// SHA-256 of the key, in lowercase hex.
fn shard_of(key: &str) -> String {
    use sha2::Digest;
    format!("{:02x}", sha2::Sha256::digest(key.as_bytes())[0])
}

#[test]
fn foreign_files_are_quarantined_and_an_old_store_gains_the_new_directories_lazily() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(root, 30_000);
    // Opening (a store made before instances existed, or any) creates neither directory.
    assert!(!root.join("instances").exists() && !root.join("allocations").exists());
    assert!(store.instances().unwrap().is_empty());
    assert_eq!(store.instance(&key("j")).unwrap(), None);
    assert!(store.jobs(&iid("i")).unwrap().is_empty());
    assert_eq!(store.deallocate(&key("j")).unwrap(), None);
    assert!(!root.join("instances").exists() && !root.join("allocations").exists());

    store.available(&iid("i")).unwrap();
    store.allocate(&key("j")).unwrap();
    let report = recover_now(&store);
    assert!(report.quarantined.is_empty(), "{report:#?}");

    let shard = fs::read_dir(root.join("allocations"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let other_shard = if shard == "00" { "01" } else { "00" };
    fs::create_dir_all(root.join("allocations").join(other_shard)).unwrap();
    // (relative path, expected reason)
    let planted: Vec<(String, &str)> = vec![
        ("instances/junk file".into(), "not an instance directory"),
        (".hidden-name".into(), "not part of the store layout"),
        ("instances/i/extra".into(), "not part of an instance"),
        (
            "instances/i/jobs/garbage".into(),
            "not an allocation index entry",
        ),
        ("allocations/zz".into(), "not an allocation shard"),
        (
            format!("allocations/{other_shard}/j"),
            "not a job key of this shard",
        ),
        (format!("allocations/{shard}/j"), "unreadable allocation"),
    ];
    let real = fs::read(root.join("allocations").join(&shard).join("j")).unwrap();
    for (rel, _) in &planted {
        fs::write(root.join(rel), b"{\"foreign\": true}").unwrap();
    }
    fs::create_dir(root.join("instances/not a name")).unwrap();
    fs::create_dir(root.join("instances/half")).unwrap(); // no instance.json
    // Readers skip the foreign names (the planted allocation reads as corrupt, clearly).
    assert_eq!(store.instances().unwrap().len(), 1);
    assert!(matches!(
        store.instance(&key("j")),
        Err(Error::Corrupt { .. })
    ));
    let report = recover_now(&store);
    let got: BTreeMap<String, String> = report
        .quarantined
        .iter()
        .map(|q| (q.path.to_string_lossy().into_owned(), q.reason.clone()))
        .collect();
    for (rel, why) in &planted {
        let reason = got
            .get(rel)
            .unwrap_or_else(|| panic!("{rel} not quarantined: {got:#?}"));
        assert!(reason.starts_with(why), "{rel}: {reason}");
    }
    assert!(got["instances/not a name"].starts_with("not an instance directory"));
    assert!(got["instances/half"].starts_with("unreadable instance"));
    assert_eq!(got.len(), planted.len() + 2, "{got:#?}");
    // The quarantined allocation's entry is stale now; the job can be allocated again.
    fs::write(root.join("allocations").join(&shard).join("j"), &real).unwrap();
    assert_eq!(store.allocate(&key("j")).unwrap().instance, iid("i"));
    let report = recover_now(&store);
    assert!(report.quarantined.is_empty(), "{report:#?}");
}

#[test]
fn planted_symlinks_are_refused_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = open(root, 30_000);
    symlink(outside.path(), root.join("instances")).unwrap();
    assert!(matches!(
        store.available(&iid("i")),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(store.instances(), Err(Error::Corrupt { .. })));
    assert!(matches!(store.join(&iid("i")), Err(Error::Corrupt { .. })));
    assert!(matches!(store.recover(), Err(Error::Corrupt { .. })));
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    fs::remove_file(root.join("instances")).unwrap();

    store.available(&iid("i")).unwrap();
    let k = key("job0");
    let shard = shard_of(k.as_str());
    fs::create_dir(root.join("allocations")).unwrap();
    symlink(outside.path(), root.join("allocations").join(&shard)).unwrap();
    assert!(matches!(store.allocate(&k), Err(Error::Corrupt { .. })));
    assert!(matches!(store.instance(&k), Err(Error::Corrupt { .. })));
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    // An instance's jobs/ planted as a link.
    fs::remove_file(root.join("allocations").join(&shard)).unwrap();
    symlink(outside.path(), root.join("instances/i/jobs")).unwrap();
    assert!(matches!(store.allocate(&k), Err(Error::Corrupt { .. })));
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    let report = recover_now(&store);
    assert_eq!(report.quarantined.len(), 1, "{report:#?}");
    assert_eq!(store.allocate(&k).unwrap().instance, iid("i"));
}

#[test]
fn names_are_validated_before_any_path_is_built() {
    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        ".nfs123",
        "-x",
        "a b",
        "é",
        &"x".repeat(129),
    ] {
        assert!(
            matches!(bad.parse::<InstanceId>(), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(bad.parse::<JobKey>(), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
    }
    let id = jobdir::JobId::generate();
    assert_eq!(JobKey::from(id).as_str(), id.to_string());
    let bad: Result<Vec<InstanceId>, _> = serde_json::from_str(r#"["ok", "../x"]"#);
    assert!(bad.is_err());
}

#[test]
fn group_shared_modes_cover_instances_and_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    let store = Store::builder(&root).group_shared(true).open().unwrap();
    let _me = store.join(&iid("i")).unwrap();
    store.allocate(&key("j")).unwrap();
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    for d in [
        "instances",
        "instances/i",
        "instances/i/jobs",
        "allocations",
    ] {
        assert_eq!(mode(&root.join(d)), 0o770, "{d}");
    }
    assert_eq!(mode(allocation_path(&root, "j").parent().unwrap()), 0o770);
    assert_eq!(mode(&allocation_path(&root, "j")), 0o660);
    assert_eq!(mode(&root.join("instances/i/instance.json")), 0o660);
    assert_eq!(mode(&root.join("instances/i/presence")), 0o660);
    let entry = &entry_names(&root, "i")[0];
    assert_eq!(mode(&root.join("instances/i/jobs").join(entry)), 0o660);
}

// ---------------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------------

fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let stderr = common::exits(dir, args, code);
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    stderr
}

/// Replays the README's "Instances and sticky allocation" transcript and compares every
/// command's output with the one pasted there.
#[test]
fn readme_cli_walkthrough_is_reproduced_exactly() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("## Instances and sticky allocation")
        .expect("the README section");
    let block = readme[start..]
        .split("```console\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a console block");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut commands = 0;
    let mut lines = block.lines().peekable();
    while let Some(line) = lines.next() {
        let cmd = line.strip_prefix("$ jobdir ").expect("a `$ jobdir` line");
        let (cmd, want_code) = match cmd.split_once("; echo $?") {
            Some((c, _)) => (c, true),
            None => (cmd, false),
        };
        let mut expected = String::new();
        while let Some(next) = lines.peek()
            && !next.starts_with("$ ")
        {
            expected.push_str(lines.next().unwrap());
            expected.push('\n');
        }
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let out = jobdir(&store, &args);
        let mut got = String::from_utf8(out.stdout).unwrap();
        got.push_str(&String::from_utf8(out.stderr).unwrap());
        if want_code {
            got.push_str(&format!("{}\n", out.status.code().unwrap()));
        } else {
            assert!(out.status.success(), "{cmd}: {got}");
        }
        assert_eq!(got, expected, "output of `jobdir {cmd}`");
        commands += 1;
    }
    assert!(
        commands >= 15,
        "only {commands} commands in the README block"
    );
}

#[test]
fn cli_commands_exit_codes_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("store");
    // Reading commands on a missing store create nothing.
    assert_eq!(ok(&d, &["instance", "ls"]), "");
    assert_eq!(ok(&d, &["instance", "jobs", "i"]), "");
    fails(&d, &["allocation", "job0"], 3);
    fails(&d, &["deallocate", "job0"], 3);
    assert!(!d.exists());
    // Bad names: exit 2, nothing created.
    for args in [
        &["instance", "available", "../x"][..],
        &["instance", "unavailable", "a/b"],
        &["allocate", "..", "--json"],
        &["allocate", "job0", "--only-for", "-x"],
        &["allocation", "a b"],
        &[
            "instance",
            "unavailable",
            "i",
            "--remove",
            "--remove-when-idle",
        ],
    ] {
        let out = jobdir(&d, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert!(!d.exists());
    // No instance: exit 1.
    let e = fails(&d, &["allocate", "job0"], 1);
    assert!(e.contains("no available instance"), "{e}");
    ok(&d, &["instance", "available", "instance0"]);
    ok(&d, &["instance", "available", "instance1"]);
    let json: Value = serde_json::from_str(&ok(&d, &["allocate", "job0", "--json"])).expect("JSON");
    assert_eq!(
        json,
        json!({"job": "job0", "instance": "instance1", "persisted": true, "existing": false})
    );
    assert_eq!(
        ok(&d, &["allocate", "job1", "--only-for", "instance1"]),
        "instance0 not-persisted\n"
    );
    fails(&d, &["allocation", "job1"], 3);
    assert_eq!(
        ok(&d, &["allocate", "job1", "--only-for", "instance0"]),
        "instance0 persisted\n"
    );
    let lines: Vec<Value> = ok(&d, &["instance", "ls", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        json!({"id": "instance0", "available": true, "remove_when_idle": false, "liveness": "absent"})
    );
    ok(
        &d,
        &["instance", "unavailable", "instance0", "--remove-when-idle"],
    );
    assert_eq!(
        ok(&d, &["instance", "ls"]),
        "instance0 removing absent\ninstance1 available absent\n"
    );
    ok(&d, &["deallocate", "job1"]);
    assert_eq!(ok(&d, &["instance", "ls"]), "instance1 available absent\n");

    // join: live while PROGRAM runs (it sees itself), its status passed on, absent after.
    let bin = env!("CARGO_BIN_EXE_jobdir");
    let script = format!(
        "\"{bin}\" --dir \"$JOBDIR_DIR\" instance ls; echo \"I am $JOBDIR_INSTANCE\"; exit 3"
    );
    let out = jobdir(&d, &["instance", "join", "w1", "--", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "instance1 available absent\nw1 available live\nI am w1\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: sh ended with exit 3"));
    assert_eq!(
        ok(&d, &["instance", "ls"]),
        "instance1 available absent\nw1 available absent\n"
    );
    fails(&d, &["instance", "join", "w1", "--", "/no/such/program"], 2);
}
