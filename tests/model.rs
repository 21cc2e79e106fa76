//! Model-based test: random sequences of operations are applied to the real store and to a
//! small in-memory model, and the two are compared after every step.
//!
//! Operations: create (with priority), pull, fulfil (fenced), fulfil without a lease, release,
//! queue, unqueue, pull notification, done (any subset), drop a notification, recover, reopen
//! the store (a process restart) — and, with the `fault-injection` feature, a holder that dies
//! (its lease must then be taken over).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jobdir::{Error, JobId, JobState, NotificationLease, Store, WorkLease};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
enum Op {
    Create(i32),
    Pull,
    Fulfil(usize, u8),
    Release(usize),
    Die(usize),
    StoreFulfil(usize, u8),
    Queue(usize, u8),
    Unqueue(usize, u8),
    PullNote,
    Done(usize, u8),
    DropNote(usize),
    Recover,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0i32..3).prop_map(Op::Create),
        3 => Just(Op::Pull),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Op::Fulfil(i, v)),
        1 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Die),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Op::StoreFulfil(i, v)),
        2 => (any::<usize>(), 0u8..4).prop_map(|(i, t)| Op::Queue(i, t)),
        1 => (any::<usize>(), 0u8..4).prop_map(|(i, t)| Op::Unqueue(i, t)),
        2 => Just(Op::PullNote),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, m)| Op::Done(i, m)),
        1 => any::<usize>().prop_map(Op::DropNote),
        1 => Just(Op::Recover),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug)]
struct MJob {
    id: JobId,
    priority: i32,
    seq: usize,
    result: Option<Vec<u8>>,
    attempts: u64,
    held: bool,
    /// Its holder died: the job may be seen as running or (once taken over) pending.
    dead_holder: bool,
    targets: BTreeSet<String>,
    note_held: bool,
    /// Targets queued (again) while the notification was held: `done` must keep them.
    queued_while_held: BTreeSet<String>,
}

struct World {
    dir: tempfile::TempDir,
    store: Store,
    jobs: Vec<MJob>,
    leases: Vec<WorkLease>,
    notes: Vec<NotificationLease>,
}

fn target(t: u8) -> Value {
    json!({ "target": t })
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        World {
            dir,
            store,
            jobs: Vec::new(),
            leases: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn job(&mut self, id: JobId) -> &mut MJob {
        self.jobs.iter_mut().find(|j| j.id == id).unwrap()
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Create(p) => {
                let id = self
                    .store
                    .create_with(
                        &json!({"seq": self.jobs.len()}),
                        jobdir::CreateOptions::default().priority(p),
                    )
                    .unwrap();
                let seq = self.jobs.len();
                self.jobs.push(MJob {
                    id,
                    priority: p,
                    seq,
                    result: None,
                    attempts: 0,
                    held: false,
                    dead_holder: false,
                    targets: BTreeSet::new(),
                    note_held: false,
                    queued_while_held: BTreeSet::new(),
                });
            }
            Op::Pull => {
                let mut pending: Vec<&MJob> = self
                    .jobs
                    .iter()
                    .filter(|j| j.result.is_none() && !j.held)
                    .collect();
                pending.sort_by_key(|j| (-j.priority, j.seq));
                let first = pending.first().map(|j| j.id);
                match self.store.pull_work().unwrap() {
                    None => assert_eq!(first, None, "a pending job was not pulled"),
                    Some(lease) => {
                        let id = lease.id();
                        let j = self.job(id);
                        assert!(j.result.is_none());
                        assert!(
                            !j.held || j.dead_holder,
                            "pulled a job held by a live holder"
                        );
                        if !j.dead_holder {
                            assert_eq!(Some(id), first, "not the first in priority/FIFO order");
                        }
                        j.held = true;
                        j.dead_holder = false;
                        j.attempts += 1;
                        assert_eq!(lease.attempt(), j.attempts);
                        self.leases.push(lease);
                    }
                }
            }
            Op::Fulfil(i, v) => {
                if self.leases.is_empty() {
                    return;
                }
                let lease = self.leases.remove(i % self.leases.len());
                let id = lease.id();
                let res = lease.fulfill([v]);
                let j = self.job(id);
                j.held = false;
                if j.result.is_some() {
                    assert!(matches!(res, Err(Error::AlreadyFulfilled(_))), "{res:?}");
                } else {
                    res.unwrap();
                    j.result = Some(vec![v]);
                }
            }
            Op::Release(i) => {
                if self.leases.is_empty() {
                    return;
                }
                let lease = self.leases.remove(i % self.leases.len());
                let id = lease.id();
                lease.release().unwrap();
                self.job(id).held = false;
            }
            Op::Die(i) => {
                #[cfg(feature = "fault-injection")]
                {
                    if self.leases.is_empty() {
                        return;
                    }
                    let lease = self.leases.remove(i % self.leases.len());
                    let id = lease.id();
                    lease.abandon();
                    self.job(id).dead_holder = true;
                }
                let _ = i;
            }
            Op::StoreFulfil(i, v) => {
                if self.jobs.is_empty() {
                    return;
                }
                let n = self.jobs.len();
                let j = &mut self.jobs[i % n];
                let res = self.store.fulfill(&j.id, [v]);
                if j.result.is_some() {
                    assert!(matches!(res, Err(Error::AlreadyFulfilled(_))), "{res:?}");
                } else {
                    res.unwrap();
                    j.result = Some(vec![v]);
                }
            }
            Op::Queue(i, t) => {
                if self.jobs.is_empty() {
                    return;
                }
                let n = self.jobs.len();
                let j = &mut self.jobs[i % n];
                self.store.queue(&j.id, &target(t)).unwrap();
                j.targets.insert(target(t).to_string());
                if j.note_held {
                    j.queued_while_held.insert(target(t).to_string());
                }
            }
            Op::Unqueue(i, t) => {
                if self.jobs.is_empty() {
                    return;
                }
                let n = self.jobs.len();
                let j = &mut self.jobs[i % n];
                self.store.unqueue(&j.id, &target(t)).unwrap();
                j.targets.remove(&target(t).to_string());
                j.queued_while_held.remove(&target(t).to_string());
            }
            Op::PullNote => {
                let candidates: BTreeSet<JobId> = self
                    .jobs
                    .iter()
                    .filter(|j| j.result.is_some() && !j.targets.is_empty() && !j.note_held)
                    .map(|j| j.id)
                    .collect();
                match self.store.pull_notification().unwrap() {
                    None => assert!(
                        candidates.is_empty(),
                        "notifications not pulled: {candidates:?}"
                    ),
                    Some(n) => {
                        assert!(candidates.contains(&n.id()), "unexpected notification");
                        let waiting: BTreeSet<String> =
                            n.waiting().iter().map(|v| v.to_string()).collect();
                        let j = self.job(n.id());
                        assert_eq!(waiting, j.targets);
                        assert_eq!(n.value(), j.result.as_deref().unwrap());
                        j.note_held = true;
                        self.notes.push(n);
                    }
                }
            }
            Op::Done(i, mask) => {
                if self.notes.is_empty() {
                    return;
                }
                let n = self.notes.remove(i % self.notes.len());
                let delivered: Vec<Value> = n
                    .waiting()
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| mask & (1 << (k % 8)) != 0)
                    .map(|(_, v)| v.clone())
                    .collect();
                let id = n.id();
                n.done(&delivered).unwrap();
                let j = self.job(id);
                j.note_held = false;
                for d in delivered {
                    if !j.queued_while_held.contains(&d.to_string()) {
                        j.targets.remove(&d.to_string());
                    }
                }
                j.queued_while_held.clear();
            }
            Op::DropNote(i) => {
                if self.notes.is_empty() {
                    return;
                }
                let n = self.notes.remove(i % self.notes.len());
                let id = n.id();
                drop(n);
                let j = self.job(id);
                j.note_held = false;
                j.queued_while_held.clear();
            }
            Op::Recover => {
                let report = self.store.recover().unwrap();
                assert!(report.quarantined.is_empty(), "{report:?}");
                let dead = self.jobs.iter().filter(|j| j.held && j.dead_holder).count() as u64;
                assert!(report.leases_reclaimed <= dead);
                for j in &mut self.jobs {
                    if j.dead_holder {
                        j.held = false;
                        j.dead_holder = false;
                    }
                }
            }
            Op::Reopen => {
                for lease in self.leases.drain(..) {
                    let id = lease.id();
                    drop(lease);
                    self.jobs.iter_mut().find(|j| j.id == id).unwrap().held = false;
                }
                for n in self.notes.drain(..) {
                    let id = n.id();
                    drop(n);
                    let j = self.jobs.iter_mut().find(|j| j.id == id).unwrap();
                    j.note_held = false;
                    j.queued_while_held.clear();
                }
                self.store = Store::builder(self.dir.path())
                    .poll_interval(Duration::from_secs(60))
                    .open()
                    .unwrap();
            }
        }
    }

    fn check(&self) {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for j in &self.jobs {
            let info = self.store.get(&j.id).unwrap();
            let want = if j.result.is_some() {
                JobState::Fulfilled
            } else if j.held {
                JobState::Running
            } else {
                JobState::Pending
            };
            if j.dead_holder && j.result.is_none() {
                assert!(matches!(info.state, JobState::Running | JobState::Pending));
            } else {
                assert_eq!(info.state, want, "{j:?}");
                *counts.entry(want.as_str()).or_default() += 1;
            }
            assert_eq!(info.result, j.result);
            assert_eq!(info.attempts, j.attempts, "{j:?}");
            let waiting: BTreeSet<String> = info.waiting.iter().map(|v| v.to_string()).collect();
            assert_eq!(waiting, j.targets);
        }
        if self.jobs.iter().all(|j| !j.dead_holder) {
            let c = self.store.counts().unwrap();
            assert_eq!(c.pending, counts.get("pending").copied().unwrap_or(0));
            assert_eq!(c.running, counts.get("running").copied().unwrap_or(0));
            assert_eq!(c.fulfilled, counts.get("fulfilled").copied().unwrap_or(0));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn the_store_behaves_like_its_model(ops in prop::collection::vec(op(), 1..48)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
            w.check();
        }
    }
}
