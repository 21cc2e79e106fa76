//! De-duplication keys and groups (FORMAT.md §12), across real processes: this test binary
//! re-executes itself as creator and worker processes (the `helper` test, active only when
//! `JOBDIR_TEST_ROLE` is set), and drives the `jobdir` binary for the command line. No timing
//! assertions: every wait is for an event, bounded only by a generous liveness limit.

mod common;
use common::child::{self, say, spawn};
use common::wait::PATIENCE;
use common::{jobdir, ok};

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobdir::{
    CreateOptions, DedupKey, Error, Failure, GroupId, JobId, JobState, RecoverOptions, RetryPolicy,
    Store,
};
use serde_json::{Value, json};

/// Keys each creator process creates in the race.
const KEYS: usize = 25;
/// Creator processes racing.
const CREATORS: usize = 4;

fn open(dir: &Path) -> Store {
    common::store::polling(dir, 100).open().expect("open store")
}

fn key(k: &str) -> DedupKey {
    DedupKey::new(k).unwrap()
}

fn group(g: &str) -> GroupId {
    GroupId::new(g).unwrap()
}

/// Waits until `path` exists (a signal from another process).
fn await_file(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < PATIENCE,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The child side. Does nothing unless this binary was started as a helper process.
#[test]
fn helper() {
    let Some(role) = child::role() else {
        return;
    };
    let dir = child::dir();
    let store = open(&dir);
    match role.as_str() {
        // Wait for the start file, then create one job per key (all creators use the same
        // keys, so they race on every one); print what each create returned.
        "creator" => {
            let prefix = std::env::var("KEY_PREFIX").unwrap();
            await_file(&dir.join("../start"));
            for k in 0..KEYS {
                let opts = CreateOptions::default()
                    .key(key(&format!("{prefix}-{k}")))
                    .keep_key_for(Duration::from_secs(3600))
                    .group(group("racers"));
                let made = store
                    .create_keyed(&json!({ "k": k, "pid": std::process::id() }), opts)
                    .expect("create");
                say!("created {prefix}-{k} {} {}", made.id, made.existing);
            }
        }
        // Finish the group's jobs one way each: A fulfilled at once; then, once the parent has
        // seen A (the `go` file), B failed on its only attempt and C cancelled.
        "group-worker" => {
            let id = |v: &str| -> JobId { std::env::var(v).unwrap().parse().unwrap() };
            let (a, b, c) = (id("JOB_A"), id("JOB_B"), id("JOB_C"));
            let job = store
                .pull_work_timeout(PATIENCE)
                .expect("pull")
                .expect("job A");
            assert_eq!(job.id(), a, "A has the highest priority");
            job.fulfill(b"42").expect("fulfil A");
            say!("fulfilled A");
            await_file(&dir.join("../go"));
            let job = store
                .pull_work_timeout(PATIENCE)
                .expect("pull")
                .expect("job B");
            assert_eq!(job.id(), b);
            assert_eq!(job.fail("boom").expect("fail B"), Failure::Failed);
            say!("failed B");
            store.cancel(&c, "not needed").expect("cancel C");
            say!("cancelled C");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Starts `CREATORS` creator processes on keys `<prefix>-0..KEYS`, lets them go at once, and
/// checks that for each key every process got the same id and exactly one made the job.
/// Returns key → id.
fn race(tmp: &Path, dir: &Path, prefix: &str) -> HashMap<String, JobId> {
    let _ = fs::remove_file(tmp.join("start"));
    let helpers: Vec<_> = (0..CREATORS)
        .map(|_| spawn("creator", dir, &[("KEY_PREFIX", prefix)]))
        .collect();
    fs::write(tmp.join("start"), b"").unwrap();
    let mut by_key: HashMap<String, Vec<(JobId, bool)>> = HashMap::new();
    for h in helpers {
        for line in h.finish() {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts[0], "created", "{line}");
            by_key
                .entry(parts[1].to_string())
                .or_default()
                .push((parts[2].parse().unwrap(), parts[3] == "true"));
        }
    }
    assert_eq!(by_key.len(), KEYS);
    let store = open(dir);
    let mut out = HashMap::new();
    for (k, got) in &by_key {
        assert_eq!(got.len(), CREATORS, "{k}");
        let first = got[0].0;
        assert!(got.iter().all(|(id, _)| *id == first), "{k}: {got:?}");
        let made = got.iter().filter(|(_, existing)| !existing).count();
        assert_eq!(made, 1, "{k}: exactly one creator made the job: {got:?}");
        assert_eq!(store.job_for_key(&key(k)).unwrap(), Some(first));
        assert_eq!(store.get(&first).unwrap().key.as_deref(), Some(k.as_str()));
        out.insert(k.clone(), first);
    }
    out
}

#[test]
fn creators_racing_in_several_processes_make_one_job_per_key_and_share_its_result() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = open(&dir);
    let by_key = race(tmp.path(), &dir, "race");
    let ids: HashSet<JobId> = by_key.values().copied().collect();
    let all: HashSet<JobId> = store.list().unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(all, ids, "one job per key, and no other job");
    assert_eq!(store.group_members(&group("racers")).unwrap().len(), KEYS);
    // Fulfil them all; the keys are kept for an hour, so creating again shares the results.
    while let Some(job) = store.pull_work().unwrap() {
        let k = job.request()["k"].as_u64().unwrap();
        job.fulfill(format!("result {k}")).unwrap();
    }
    for k in 0..KEYS {
        let opts = CreateOptions::default()
            .key(key(&format!("race-{k}")))
            .keep_key_for(Duration::from_secs(3600));
        let again = store.create_keyed(&json!("again"), opts).unwrap();
        assert!(again.existing);
        assert_eq!(
            store.result(&again.id).unwrap().unwrap(),
            format!("result {k}").into_bytes()
        );
        assert_eq!(again.id, by_key[&format!("race-{k}")]);
    }
    assert_eq!(store.list().unwrap().len(), KEYS);
    assert!(store.pull_work().unwrap().is_none());
}

#[test]
fn creators_racing_to_replace_finished_keys_make_one_new_job_per_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = open(&dir);
    let mut old = HashSet::new();
    for k in 0..KEYS {
        let opts = CreateOptions::default().key(key(&format!("stale-{k}")));
        let id = store.create_with(&k, opts).unwrap();
        store.cancel(&id, "make room").unwrap();
        old.insert(id);
    }
    let by_key = race(tmp.path(), &dir, "stale");
    let new: HashSet<JobId> = by_key.values().copied().collect();
    assert!(new.is_disjoint(&old));
    let all: HashSet<JobId> = store.list().unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(all, old.union(&new).copied().collect());
}

#[test]
fn a_finished_key_is_free_again_and_a_ttl_keeps_it_until_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let k = CreateOptions::default().key(key("nightly"));
    // Pending, then running: the same job.
    let a = store.create_keyed(&1, k.clone()).unwrap();
    assert!(!a.existing);
    assert_eq!(store.create_keyed(&2, k.clone()).unwrap().id, a.id);
    let job = store.pull_work().unwrap().unwrap();
    assert_eq!(store.create_keyed(&3, k.clone()).unwrap().id, a.id);
    job.fulfill(b"a").unwrap();
    // Fulfilled, no TTL: free.
    let b = store.create_keyed(&4, k.clone()).unwrap();
    assert!(!b.existing && b.id != a.id);
    assert_eq!(store.get(&b.id).unwrap().request, json!(4));
    // Cancelled while running: free.
    let job = store.pull_work().unwrap().unwrap();
    assert_eq!(job.id(), b.id);
    store.cancel(&b.id, "stop").unwrap();
    drop(job);
    // Failed on its last attempt: free.
    let c = store
        .create_keyed(
            &5,
            k.clone().retry(RetryPolicy::default().with_max_attempts(1)),
        )
        .unwrap();
    assert!(!c.existing);
    let job = store.pull_work().unwrap().unwrap();
    assert_eq!(job.fail("bad").unwrap(), Failure::Failed);
    assert_eq!(store.job_for_key(&key("nightly")).unwrap(), None);
    // A TTL keeps the key after the job finished: the finished job and its result are shared.
    let keep = k.clone().keep_key_for(Duration::from_secs(3600));
    let d = store.create_keyed(&6, keep.clone()).unwrap();
    assert!(!d.existing);
    store.fulfill(&d.id, b"kept").unwrap();
    let again = store.create_keyed(&7, keep).unwrap();
    assert_eq!((again.id, again.existing), (d.id, true));
    assert_eq!(store.result(&again.id).unwrap().unwrap(), b"kept");
    // ... until the TTL has passed.
    let short = CreateOptions::default()
        .key(key("short"))
        .keep_key_for(Duration::from_millis(20));
    let e = store.create_keyed(&8, short.clone()).unwrap();
    store.fulfill(&e.id, b"e").unwrap();
    std::thread::sleep(Duration::from_millis(60));
    let f = store.create_keyed(&9, short).unwrap();
    assert!(!f.existing && f.id != e.id);
    // The same for a delayed job: the key is taken while it waits.
    let later = CreateOptions::default()
        .key(key("later"))
        .delay(Duration::from_secs(3600));
    let g = store.create_keyed(&10, later.clone()).unwrap();
    assert_eq!(store.get(&g.id).unwrap().state, JobState::Delayed);
    assert_eq!(store.create_keyed(&11, later).unwrap().id, g.id);
    // keep_key_for without a key is refused.
    assert!(matches!(
        store.create_with(
            &0,
            CreateOptions::default().keep_key_for(Duration::from_secs(1))
        ),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn a_keyed_create_that_finds_a_job_adds_it_to_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store
        .create_with(
            &1,
            CreateOptions::default().key(key("k")).group(group("g1")),
        )
        .unwrap();
    let again = store
        .create_keyed(
            &1,
            CreateOptions::default().key(key("k")).group(group("g2")),
        )
        .unwrap();
    assert!(again.existing);
    assert_eq!(store.group_members(&group("g1")).unwrap(), [a]);
    assert_eq!(store.group_members(&group("g2")).unwrap(), [a]);
    assert_eq!(store.get(&a).unwrap().group, Some(group("g1")));
    assert_eq!(store.groups().unwrap(), [group("g1"), group("g2")]);
}

#[test]
fn wait_group_streams_each_item_as_another_process_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = open(&dir);
    let g = group("batch");
    let in_group = |p: i32| CreateOptions::default().group(g.clone()).priority(p);
    let a = store.create_with(&"a", in_group(3)).unwrap();
    let b = store
        .create_with(
            &"b",
            in_group(2).retry(RetryPolicy::default().with_max_attempts(1)),
        )
        .unwrap();
    let c = store.create_with(&"c", in_group(1)).unwrap();
    let worker = spawn(
        "group-worker",
        &dir,
        &[
            ("JOB_A", &a.to_string()),
            ("JOB_B", &b.to_string()),
            ("JOB_C", &c.to_string()),
        ],
    );
    let go = tmp.path().join("go");
    let mut items = Vec::new();
    store
        .wait_group_each(&g, PATIENCE, |info| {
            if items.is_empty() {
                // Reported before B and C can finish: they wait for this file.
                assert_eq!(info.id, a);
                fs::write(&go, b"").unwrap();
            }
            items.push(info);
            ControlFlow::Continue(())
        })
        .unwrap();
    worker.finish();
    let states: Vec<_> = items.iter().map(|i| (i.id, i.state)).collect();
    assert_eq!(
        states,
        [
            (a, JobState::Fulfilled),
            (b, JobState::Failed),
            (c, JobState::Cancelled)
        ]
    );
    assert_eq!(items[0].result.as_deref(), Some(&b"42"[..]));
    assert_eq!(items[1].error.as_deref(), Some("boom"));
    assert_eq!(items[2].error.as_deref(), Some("not needed"));
    // Everything is finished now: wait_group returns at once, in creation order.
    let all = store.wait_group(&g, Duration::ZERO).unwrap();
    assert_eq!(all.iter().map(|i| i.id).collect::<Vec<_>>(), [a, b, c]);
    // Unknown group; a timeout while a member is pending.
    assert!(matches!(
        store.wait_group(&group("nope"), Duration::ZERO),
        Err(Error::GroupNotFound(_))
    ));
    store
        .create_with(&"d", CreateOptions::default().group(group("open")))
        .unwrap();
    assert!(matches!(
        store.wait_group(&group("open"), Duration::from_millis(10)),
        Err(Error::Timeout)
    ));
}

#[test]
fn wait_group_sees_members_added_while_it_waits_and_skips_removed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let g = group("g");
    let a = store
        .create_with(&1, CreateOptions::default().group(g.clone()))
        .unwrap();
    let gone = store
        .create_with(&2, CreateOptions::default().group(g.clone()))
        .unwrap();
    store.remove(&gone).unwrap();
    let s2 = store.clone();
    let g2 = g.clone();
    let t = std::thread::spawn(move || {
        let b = s2
            .create_with(&3, CreateOptions::default().group(g2))
            .unwrap();
        s2.fulfill(&a, b"a").unwrap();
        s2.fulfill(&b, b"b").unwrap();
        b
    });
    let mut seen = Vec::new();
    store
        .wait_group_each(&g, PATIENCE, |info| {
            seen.push(info.id);
            ControlFlow::Continue(())
        })
        .unwrap();
    let b = t.join().unwrap();
    // `b` joined the group before `a` finished, so the wait cannot end without it.
    assert_eq!(seen, [a, b]);
    assert_eq!(store.group_members(&g).unwrap(), [a, b]);
}

/// A job directory copied from `from` under a new id, with `edit` applied to its `job.json`
/// and no index entry: what a create that crashed between its rename and its key claim
/// leaves.
fn plant_unindexed(store: &Store, from: JobId, edit: impl FnOnce(&mut Value)) -> JobId {
    let id = JobId::generate();
    let shard = &id.to_string()[34..36];
    let src = store
        .dir()
        .join("jobs")
        .join(&from.to_string()[34..36])
        .join(from.to_string());
    let dest = store.dir().join("jobs").join(shard).join(id.to_string());
    fs::create_dir_all(dest.join("claims")).unwrap();
    let mut rec: Value = serde_json::from_slice(&fs::read(src.join("job.json")).unwrap()).unwrap();
    rec["id"] = json!(id.to_string());
    edit(&mut rec);
    fs::write(dest.join("job.json"), serde_json::to_vec(&rec).unwrap()).unwrap();
    id
}

fn pending_entry(store: &Store, id: &JobId) -> PathBuf {
    let mut found = None;
    for class in fs::read_dir(store.dir().join("pending")).unwrap() {
        for bucket in fs::read_dir(class.unwrap().path()).unwrap() {
            let p = bucket.unwrap().path().join(id.to_string());
            if p.exists() {
                found = Some(p);
            }
        }
    }
    found.expect("a pending entry")
}

#[test]
fn recover_indexes_a_keyed_job_only_if_its_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let holder = store
        .create_with(&"h", CreateOptions::default().key(key("k")))
        .unwrap();
    // Lost the race for "k" and crashed before taking itself back out.
    let loser = plant_unindexed(&store, holder, |_| {});
    // Crashed before claiming "never": nobody holds it.
    let unclaimed = plant_unindexed(&store, holder, |r| r["key"] = json!("never"));
    // Claimed its key, crashed before its index entry: it is the key's job, so it runs.
    let claimed = store
        .create_with(
            &"c",
            CreateOptions::default()
                .key(key("claimed"))
                .group(group("g")),
        )
        .unwrap();
    fs::remove_file(pending_entry(&store, &claimed)).unwrap();
    fs::remove_file(store.dir().join("groups/g").join(claimed.to_string())).unwrap();
    // With the default grace, young ones are left alone (a creator may be about to claim).
    let report = store.recover().unwrap();
    assert!(report.quarantined.is_empty(), "{report:?}");
    assert!(store.get(&loser).is_ok() && store.get(&unclaimed).is_ok());
    let report = store
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .unwrap();
    let moved: HashSet<String> = report
        .quarantined
        .iter()
        .map(|q| q.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        moved,
        HashSet::from([loser.to_string(), unclaimed.to_string()])
    );
    assert!(matches!(store.get(&loser), Err(Error::NotFound(_))));
    assert_eq!(store.group_members(&group("g")).unwrap(), [claimed]);
    let mut pulled = HashSet::new();
    while let Some(job) = store.pull_work().unwrap() {
        pulled.insert(job.id());
        job.fulfill(b"ok").unwrap();
    }
    assert_eq!(pulled, HashSet::from([holder, claimed]));
}

#[test]
fn recover_sweeps_stale_keys_and_members_and_quarantines_foreign_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let grace0 = RecoverOptions::default().temp_grace(Duration::ZERO);
    let done = store
        .create_with(&1, CreateOptions::default().key(key("done")))
        .unwrap();
    store.fulfill(&done, b"x").unwrap();
    let live = store
        .create_with(&2, CreateOptions::default().key(key("live")))
        .unwrap();
    let removed = store
        .create_with(&3, CreateOptions::default().group(group("g")))
        .unwrap();
    let kept = store
        .create_with(&4, CreateOptions::default().group(group("g")))
        .unwrap();
    store.remove(&removed).unwrap();
    fs::write(dir.path().join("groups/g/not-an-id"), b"").unwrap();
    fs::create_dir_all(dir.path().join("keys/zz")).unwrap();
    let report = store.recover_with(&grace0).unwrap();
    assert_eq!(report.keys_removed, 1, "{report:?}");
    assert_eq!(report.quarantined.len(), 2, "{report:?}");
    assert_eq!(store.job_for_key(&key("live")).unwrap(), Some(live));
    assert_eq!(store.job_for_key(&key("done")).unwrap(), None);
    let shards: usize = fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|s| fs::read_dir(s.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(shards, 1, "only the live key's directory is left");
    let members: Vec<_> = fs::read_dir(dir.path().join("groups/g"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(members, [kept.to_string()]);
    // A key used again after the sweep works as new.
    let again = store
        .create_keyed(&5, CreateOptions::default().key(key("done")))
        .unwrap();
    assert!(!again.existing);
    // A symlink in place of keys/ is refused, never followed.
    let outside = tempfile::tempdir().unwrap();
    fs::rename(dir.path().join("keys"), outside.path().join("old")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("keys")).unwrap();
    assert!(matches!(
        store.create_with(&6, CreateOptions::default().key(key("x"))),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    // The same for a group directory; the create that could not join made no job.
    let before = store.list().unwrap().len();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("groups/evil")).unwrap();
    assert!(matches!(
        store.create_with(&7, CreateOptions::default().group(group("evil"))),
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(
        store.wait_group(&group("evil"), Duration::ZERO),
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(store.list().unwrap().len(), before);
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
}

// The command line.

fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let err = common::exits(dir, args, code);
    assert!(err.starts_with("error:"), "{err}");
    err
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn cli_create_with_a_key_prints_the_same_id_and_bad_input_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    // Bad input: exit 2, and no store is made.
    fails(&dir, &["create", "--keep-key", "10m", "1"], 2);
    fails(&dir, &["create", "--key", "a\nb", "1"], 2);
    fails(&dir, &["create", "--group", "../g", "1"], 2);
    assert!(!dir.exists());
    let id = ok(&dir, &["create", "--key", "user 42: sync", "1"]);
    let id = id.trim();
    assert_eq!(
        ok(&dir, &["create", "--key", "user 42: sync", "2"]).trim(),
        id
    );
    let j: Value = serde_json::from_str(&ok(
        &dir,
        &["create", "--key", "user 42: sync", "--json", "3"],
    ))
    .unwrap();
    assert_eq!(j, json!({"id": id, "existing": true}));
    let j: Value = serde_json::from_str(&ok(&dir, &["create", "--json", "4"])).unwrap();
    assert_eq!(j["existing"], json!(false));
    let info: Value = serde_json::from_str(&ok(&dir, &["get", id])).unwrap();
    assert_eq!(info["key"], json!("user 42: sync"));
    assert_eq!(info["request"], json!(1));
    // Kept after it finished, with --keep-key.
    let k = ok(&dir, &["create", "--key", "k2", "--keep-key", "1h", "5"]);
    ok(&dir, &["cancel", k.trim()]);
    assert_eq!(ok(&dir, &["create", "--key", "k2", "6"]).trim(), k.trim());
}

#[test]
fn cli_wait_group_prints_a_line_per_job_as_it_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    fails(&dir, &["wait-group", "g", "--timeout", "0"], 3);
    fails(&dir, &["group", "ls", "g"], 3);
    assert!(!dir.exists());
    let a = ok(&dir, &["create", "--group", "g", "\"a\""])
        .trim()
        .to_string();
    let b = ok(&dir, &["create", "--group", "g", "\"b\""])
        .trim()
        .to_string();
    assert_eq!(ok(&dir, &["group", "ls"]), "g\n");
    assert_eq!(
        ok(&dir, &["group", "ls", "g"]),
        format!("{a} pending\n{b} pending\n")
    );
    let out = jobdir(&dir, &["wait-group", "g", "--timeout", "0.2"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(out.stdout.is_empty());
    fails(&dir, &["wait-group", "other", "--timeout", "0"], 3);
    // A waiting process prints each job's line when that job finishes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobdir"))
        .arg("--dir")
        .arg(&dir)
        .args(["wait-group", "g"])
        .env_remove("JOBDIR")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let store = open(&dir);
    store.fulfill(&a.parse().unwrap(), b"\"A\"").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["id"], json!(a));
    assert_eq!(first["state"], json!("fulfilled"));
    assert_eq!(first["result"], json!("\"A\""));
    assert!(first["finished_at"].is_string());
    ok(&dir, &["cancel", &b, "--reason", "enough"]);
    line.clear();
    out.read_line(&mut line).unwrap();
    let second: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&second["id"], &second["state"], &second["error"]),
        (&json!(b), &json!("cancelled"), &json!("enough"))
    );
    assert!(child.wait().unwrap().success());
    // Finished: printed at once, exit 0.
    let all = lines(&ok(&dir, &["wait-group", "g"]));
    assert_eq!(all.len(), 2);
    let listed = lines(&ok(&dir, &["group", "ls", "g", "--json"]));
    assert_eq!(listed[0]["group"], json!("g"));
    assert_eq!(listed[1]["state"], json!("cancelled"));
}
