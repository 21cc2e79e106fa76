//! Model-based test: random sequences of operations are applied to the real store and to a
//! small in-memory model, and the two are compared after every step.
//!
//! Operations: create (with priority), pull, fulfil (fenced), fulfil without a lease, release,
//! fail (under a retry policy of 3 attempts with no backoff, so a failed job is pending again
//! at once, and its third failure finishes it as failed), cancel, retry by hand, queue,
//! unqueue, pull notification, done (any subset), drop a notification, recover, reopen the
//! store (a process restart) — and, with the `fault-injection` feature, a holder that dies (its
//! lease must then be taken over, and counts as a failed attempt).
//!
//! Delays and deadlines, without waiting: a job created to run an hour later (delayed: no pull
//! takes it; it can be cancelled; a manual retry of it is not generated, since its claims
//! would be deferred), and a job created with a deadline already past (expired by the first
//! `get`, and again after each manual retry).
//!
//! Work affinity (FORMAT.md §9.11) too: create for one of two instances (sticky or not), pull
//! as an instance (taking unallocated jobs or not), make an instance unavailable or available
//! again, deallocate a job. No process joins as an instance, so an instance hands its
//! non-sticky jobs over exactly while it is unavailable. Every pull must return the job the
//! model says: own jobs first, then in pull order what that puller may take.
//!
//! Compared after every step, for every job: state, result, final error, the history of failed
//! attempts, attempts, waiting targets, its instance and stickiness; and the store's counts per
//! state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jobdir::{
    Affinity, CreateOptions, Error, Failure, InstanceId, JobId, JobKey, JobState,
    NotificationLease, Removal, RetryPolicy, Store, WorkLease,
};
use proptest::prelude::*;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
enum Op {
    Create(i32),
    Pull,
    Fulfil(usize, u8),
    Release(usize),
    Fail(usize),
    Cancel(usize),
    Retry(usize),
    Die(usize),
    StoreFulfil(usize, u8),
    Queue(usize, u8),
    Unqueue(usize, u8),
    PullNote,
    Done(usize, u8),
    DropNote(usize),
    Recover,
    Reopen,
    /// Priority, instance (0 or 1), sticky.
    CreateFor(i32, u8, bool),
    /// Priority; not pullable for an hour.
    CreateLater(i32),
    /// Priority; its deadline has passed already.
    CreateExpired(i32),
    /// Instance, takes unallocated jobs.
    PullAs(u8, bool),
    Unavailable(u8),
    Available(u8),
    Deallocate(usize),
}

/// The model's instances: `i0` and `i1`.
const INSTANCES: u8 = 2;

fn inst(k: u8) -> InstanceId {
    format!("i{k}").parse().unwrap()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0i32..3).prop_map(Op::Create),
        3 => Just(Op::Pull),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Op::Fulfil(i, v)),
        1 => any::<usize>().prop_map(Op::Release),
        2 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Retry),
        1 => any::<usize>().prop_map(Op::Die),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Op::StoreFulfil(i, v)),
        2 => (any::<usize>(), 0u8..4).prop_map(|(i, t)| Op::Queue(i, t)),
        1 => (any::<usize>(), 0u8..4).prop_map(|(i, t)| Op::Unqueue(i, t)),
        2 => Just(Op::PullNote),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, m)| Op::Done(i, m)),
        1 => any::<usize>().prop_map(Op::DropNote),
        1 => Just(Op::Recover),
        1 => Just(Op::Reopen),
        2 => (0i32..3, 0..INSTANCES, any::<bool>()).prop_map(|(p, k, s)| Op::CreateFor(p, k, s)),
        3 => (0..INSTANCES, any::<bool>()).prop_map(|(k, u)| Op::PullAs(k, u)),
        1 => (0..INSTANCES).prop_map(Op::Unavailable),
        1 => (0..INSTANCES).prop_map(Op::Available),
        1 => any::<usize>().prop_map(Op::Deallocate),
        1 => (0i32..3).prop_map(Op::CreateLater),
        1 => (0i32..3).prop_map(Op::CreateExpired),
    ]
}

/// Attempts allowed per job (between manual retries).
const MAX_ATTEMPTS: u32 = 3;
/// The error a dead holder's expired lease is recorded with.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
const EXPIRED: &str = "lease expired (holder died or stalled)";

#[derive(Debug)]
struct MJob {
    id: JobId,
    priority: i32,
    seq: usize,
    result: Option<Vec<u8>>,
    /// Finished without a result: failed or cancelled, with the final error.
    unfulfilled: Option<(JobState, String)>,
    /// Failed attempts since creation or the last manual retry (expired leases count).
    failures: u32,
    /// Every failed attempt: (attempt, error, certain). An expired lease is uncertain until
    /// it is known to have been taken over (a cancellation may end it first).
    errors: Vec<(u64, String, bool)>,
    attempts: u64,
    held: bool,
    /// Its holder died: the job may be seen as running or (once taken over) pending.
    dead_holder: bool,
    targets: BTreeSet<String>,
    note_held: bool,
    /// Targets queued (again) while the notification was held: `done` must keep them.
    queued_while_held: BTreeSet<String>,
    /// The instance it is allocated to, and whether sticky (gone once it finishes).
    instance: Option<(u8, bool)>,
    /// Created to run an hour later: delayed until then.
    later: bool,
    /// Created with a deadline already past: expired whenever it is unfinished and read.
    past_deadline: bool,
}

/// The deadline of `CreateExpired` jobs, long past, and the error their expiry records.
fn past_deadline() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
}
const EXPIRED_ERROR: &str = "deadline 2001-09-09T01:46:40.000Z passed";

impl MJob {
    fn finished(&self) -> bool {
        self.result.is_some() || self.unfulfilled.is_some()
    }
}

struct World {
    dir: tempfile::TempDir,
    store: Store,
    jobs: Vec<MJob>,
    leases: Vec<WorkLease>,
    /// Leases (job, attempt) ended under their holder by a cancellation.
    lost: BTreeSet<(JobId, u64)>,
    notes: Vec<NotificationLease>,
    /// Which instances are available (none is ever live: no process joins).
    available: [bool; INSTANCES as usize],
}

/// Whether a pull as `who` (instance, takes unallocated; none: a plain pull) may take `j`.
fn may_take(j: &MJob, who: Option<(u8, bool)>, available: &[bool]) -> bool {
    match j.instance {
        None => who.is_none_or(|(_, u)| u),
        Some((x, sticky)) => {
            who.is_some_and(|(y, _)| y == x) || (!sticky && !available[x as usize])
        }
    }
}

/// The first of `jobs` in pull order (highest priority first, then oldest).
fn first_of<'a>(jobs: impl Iterator<Item = &'a MJob>) -> Option<JobId> {
    jobs.min_by_key(|j| (-j.priority, j.seq)).map(|j| j.id)
}

fn target(t: u8) -> Value {
    json!({ "target": t })
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for k in 0..INSTANCES {
            store.available(&inst(k)).unwrap();
        }
        World {
            dir,
            store,
            jobs: Vec::new(),
            leases: Vec::new(),
            lost: BTreeSet::new(),
            notes: Vec::new(),
            available: [true; INSTANCES as usize],
        }
    }

    fn job(&mut self, id: JobId) -> &mut MJob {
        self.jobs.iter_mut().find(|j| j.id == id).unwrap()
    }

    fn apply(&mut self, op: &Op) {
        self.apply_op(op);
        for j in &mut self.jobs {
            // Read after every step (`check`): past its deadline, an unfinished job expires.
            if j.past_deadline && !j.finished() && !j.held {
                j.unfulfilled = Some((JobState::Expired, EXPIRED_ERROR.to_string()));
            }
            // A job's allocation goes when it finishes (a manual retry runs it for no instance).
            if j.finished() {
                j.instance = None;
            }
        }
    }

    /// Takes a job as `who` (none: a plain pull): a hand-over gives it to `who`'s instance if
    /// that is available, else to none.
    fn took(&mut self, id: JobId, who: Option<(u8, bool)>) {
        let available = self.available;
        let j = self.job(id);
        assert!(
            may_take(j, who, &available),
            "{who:?} took a job it may not: {j:?}"
        );
        if let Some((x, _)) = j.instance
            && who.map(|w| w.0) != Some(x)
        {
            j.instance = match who {
                Some((y, _)) if available[y as usize] => Some((y, false)),
                _ => None,
            };
        }
    }

    fn apply_op(&mut self, op: &Op) {
        match *op {
            Op::Create(p) | Op::CreateFor(p, _, _) | Op::CreateLater(p) | Op::CreateExpired(p) => {
                let mut opts = CreateOptions::default().priority(p).retry(
                    RetryPolicy::default()
                        .with_max_attempts(MAX_ATTEMPTS)
                        .with_backoff(Duration::ZERO, Duration::ZERO),
                );
                let mut instance = None;
                let (later, past) = (
                    matches!(op, Op::CreateLater(_)),
                    matches!(op, Op::CreateExpired(_)),
                );
                match *op {
                    Op::CreateFor(_, k, sticky) => {
                        opts = opts.instance(inst(k)).sticky(sticky);
                        instance = Some((k, sticky));
                    }
                    Op::CreateLater(_) => opts = opts.delay(Duration::from_secs(3600)),
                    Op::CreateExpired(_) => opts = opts.deadline(past_deadline()),
                    _ => {}
                }
                let created = self
                    .store
                    .create_with(&json!({"seq": self.jobs.len()}), opts);
                if let Some((k, _)) = instance
                    && !self.available[k as usize]
                {
                    assert!(
                        matches!(created, Err(Error::InvalidOption(_))),
                        "{created:?}"
                    );
                    return;
                }
                let id = created.unwrap();
                let seq = self.jobs.len();
                self.jobs.push(MJob {
                    id,
                    priority: p,
                    seq,
                    result: None,
                    unfulfilled: None,
                    failures: 0,
                    errors: Vec::new(),
                    attempts: 0,
                    held: false,
                    dead_holder: false,
                    targets: BTreeSet::new(),
                    note_held: false,
                    queued_while_held: BTreeSet::new(),
                    instance,
                    later,
                    past_deadline: past,
                });
            }
            Op::Pull | Op::PullAs(_, _) => {
                let who = match *op {
                    Op::PullAs(k, u) => Some((k, u)),
                    _ => None,
                };
                let available = self.available;
                let pending = || {
                    self.jobs
                        .iter()
                        .filter(|j| !j.finished() && !j.held && !j.later)
                };
                let first = match who {
                    None => first_of(pending().filter(|j| may_take(j, None, &available))),
                    // Own jobs first; then, taking unallocated jobs, whatever it may take in
                    // pull order; then the jobs handed over, instance by instance.
                    Some((y, u)) => {
                        first_of(pending().filter(|j| j.instance.is_some_and(|i| i.0 == y)))
                            .or_else(|| {
                                u.then(|| {
                                    first_of(pending().filter(|j| may_take(j, who, &available)))
                                })
                                .flatten()
                            })
                            .or_else(|| {
                                (0..INSTANCES)
                                    .filter(|&x| x != y && !available[x as usize])
                                    .find_map(|x| {
                                        first_of(
                                            pending().filter(|j| j.instance == Some((x, false))),
                                        )
                                    })
                            })
                    }
                };
                let pulled = match who {
                    None => self.store.pull_work().unwrap(),
                    Some((k, u)) => self
                        .store
                        .pull_work_as(&Affinity::new(inst(k)).unallocated(u))
                        .unwrap(),
                };
                match pulled {
                    None => assert_eq!(first, None, "a pending job was not pulled as {who:?}"),
                    Some(lease) => {
                        let id = lease.id();
                        self.took(id, who);
                        let j = self.job(id);
                        assert!(!j.finished());
                        assert!(
                            !j.held || j.dead_holder,
                            "pulled a job held by a live holder"
                        );
                        if !j.dead_holder {
                            assert_eq!(Some(id), first, "not the first in priority/FIFO order");
                        } else if j.held {
                            // The claim took the dead holder's lease over: expired for sure.
                            for e in &mut j.errors {
                                e.2 = true;
                            }
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
                let (id, attempt) = (lease.id(), lease.attempt());
                let res = lease.fulfill([v]);
                if self.lost.remove(&(id, attempt)) {
                    assert!(matches!(res, Err(Error::LeaseLost(_))), "{res:?}");
                    return;
                }
                let j = self.job(id);
                j.held = false;
                if j.finished() {
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
                let (id, attempt) = (lease.id(), lease.attempt());
                let res = lease.release();
                if self.lost.remove(&(id, attempt)) {
                    assert!(matches!(res, Err(Error::LeaseLost(_))), "{res:?}");
                    return;
                }
                res.unwrap();
                self.job(id).held = false;
            }
            Op::Fail(i) => {
                if self.leases.is_empty() {
                    return;
                }
                let lease = self.leases.remove(i % self.leases.len());
                let (id, attempt) = (lease.id(), lease.attempt());
                let error = format!("e{attempt}");
                let res = lease.fail(&error);
                if self.lost.remove(&(id, attempt)) {
                    assert!(matches!(res, Err(Error::LeaseLost(_))), "{res:?}");
                    return;
                }
                let j = self.job(id);
                j.held = false;
                if j.finished() {
                    // Fulfilled without the lease meanwhile: nothing to retry.
                    assert!(matches!(res, Err(Error::AlreadyFulfilled(_))), "{res:?}");
                    return;
                }
                j.failures += 1;
                j.errors.push((attempt, error.clone(), true));
                if j.failures >= MAX_ATTEMPTS {
                    assert_eq!(res.unwrap(), Failure::Failed);
                    j.unfulfilled = Some((JobState::Failed, error));
                } else {
                    assert_eq!(
                        res.unwrap(),
                        Failure::Retrying {
                            after: Duration::ZERO
                        }
                    );
                }
            }
            Op::Cancel(i) => {
                if self.jobs.is_empty() {
                    return;
                }
                let n = self.jobs.len();
                let j = &mut self.jobs[i % n];
                let res = self.store.cancel(&j.id, "why");
                if j.finished() {
                    assert!(matches!(res, Err(Error::WrongState { .. })), "{res:?}");
                    return;
                }
                res.unwrap();
                j.unfulfilled = Some((JobState::Cancelled, "why".to_string()));
                if j.held && !j.dead_holder {
                    self.lost.insert((j.id, j.attempts));
                }
                j.held = false;
                j.dead_holder = false;
            }
            Op::Retry(i) => {
                if self.jobs.is_empty() {
                    return;
                }
                let n = self.jobs.len();
                let j = &mut self.jobs[i % n];
                if j.later {
                    return; // its claims would be deferred (attempts the model does not track)
                }
                let res = self.store.retry(&j.id);
                if j.unfulfilled.is_none() {
                    assert!(matches!(res, Err(Error::WrongState { .. })), "{res:?}");
                    return;
                }
                res.unwrap();
                j.unfulfilled = None;
                j.failures = 0;
            }
            Op::Die(i) => {
                #[cfg(feature = "fault-injection")]
                {
                    if self.leases.is_empty() {
                        return;
                    }
                    let k = i % self.leases.len();
                    let (id, attempt) = (self.leases[k].id(), self.leases[k].attempt());
                    if self.lost.contains(&(id, attempt)) {
                        return;
                    }
                    let j = self.job(id);
                    // The expired lease counts as a failed attempt; keep the model's next claim
                    // clear of "out of attempts" (tests/lifecycle.rs covers that).
                    if j.finished() || j.failures + 1 >= MAX_ATTEMPTS {
                        return;
                    }
                    j.failures += 1;
                    j.errors.push((attempt, EXPIRED.to_string(), false));
                    j.dead_holder = true;
                    let lease = self.leases.remove(k);
                    lease.abandon();
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
                if j.finished() {
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
                    .filter(|j| j.finished() && !j.targets.is_empty() && !j.note_held)
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
                        match &j.unfulfilled {
                            None => {
                                assert_eq!(n.state(), JobState::Fulfilled);
                                assert_eq!(n.value(), j.result.as_deref().unwrap());
                                assert_eq!(n.error(), None);
                            }
                            Some((state, error)) => {
                                assert_eq!(n.state(), *state);
                                assert!(n.value().is_empty());
                                assert_eq!(n.error(), Some(error.as_str()));
                            }
                        }
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
                        for e in &mut j.errors {
                            e.2 = true;
                        }
                    }
                }
            }
            Op::Reopen => {
                for lease in self.leases.drain(..) {
                    let (id, attempt) = (lease.id(), lease.attempt());
                    drop(lease);
                    if !self.lost.remove(&(id, attempt)) {
                        self.jobs.iter_mut().find(|j| j.id == id).unwrap().held = false;
                    }
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
            Op::Unavailable(k) => {
                self.store.unavailable(&inst(k), Removal::Keep).unwrap();
                self.available[k as usize] = false;
            }
            Op::Available(k) => {
                self.store.available(&inst(k)).unwrap();
                self.available[k as usize] = true;
            }
            Op::Deallocate(i) => {
                if self.jobs.is_empty() {
                    return;
                }
                let n = self.jobs.len();
                let j = &mut self.jobs[i % n];
                let freed = self.store.deallocate(&JobKey::from(j.id)).unwrap();
                assert_eq!(freed, j.instance.map(|(k, _)| inst(k)), "{j:?}");
                j.instance = None;
            }
        }
    }

    fn check(&self) {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for j in &self.jobs {
            let info = self.store.get(&j.id).unwrap();
            let want = if j.result.is_some() {
                JobState::Fulfilled
            } else if let Some((state, _)) = &j.unfulfilled {
                *state
            } else if j.held {
                JobState::Running
            } else if j.later {
                JobState::Delayed
            } else {
                JobState::Pending
            };
            if j.dead_holder && !j.finished() {
                assert!(matches!(info.state, JobState::Running | JobState::Pending));
            } else {
                assert_eq!(info.state, want, "{j:?}");
                *counts.entry(want.as_str()).or_default() += 1;
            }
            assert_eq!(info.result, j.result);
            assert_eq!(
                info.error.as_deref(),
                j.unfulfilled.as_ref().map(|u| u.1.as_str()),
                "{j:?}"
            );
            assert_eq!(
                info.run_at.is_some(),
                j.later && !j.finished(),
                "no backoff; an hour for a job created later: {j:?}"
            );
            // The history of failed attempts: every certain one, in order, and nothing else.
            let got: Vec<(u64, &str)> = info
                .errors
                .iter()
                .map(|e| (e.attempt, e.error.as_str()))
                .collect();
            let mut it = got.iter().peekable();
            for (attempt, error, certain) in &j.errors {
                if it.peek() == Some(&&(*attempt, error.as_str())) {
                    it.next();
                } else {
                    assert!(
                        !certain,
                        "missing failed attempt {attempt} in {got:?}: {j:?}"
                    );
                }
            }
            assert!(
                it.next().is_none(),
                "unexpected failed attempts {got:?}: {j:?}"
            );
            assert_eq!(info.attempts, j.attempts, "{j:?}");
            let waiting: BTreeSet<String> = info.waiting.iter().map(|v| v.to_string()).collect();
            assert_eq!(waiting, j.targets);
            assert_eq!(info.instance, j.instance.map(|(k, _)| inst(k)), "{j:?}");
            assert_eq!(info.sticky, j.instance.is_some_and(|(_, s)| s), "{j:?}");
        }
        if self.jobs.iter().all(|j| !j.dead_holder) {
            let c = self.store.counts().unwrap();
            assert_eq!(c.pending, counts.get("pending").copied().unwrap_or(0));
            assert_eq!(c.running, counts.get("running").copied().unwrap_or(0));
            assert_eq!(c.fulfilled, counts.get("fulfilled").copied().unwrap_or(0));
            assert_eq!(c.failed, counts.get("failed").copied().unwrap_or(0));
            assert_eq!(c.cancelled, counts.get("cancelled").copied().unwrap_or(0));
            assert_eq!(c.delayed, counts.get("delayed").copied().unwrap_or(0));
            assert_eq!(c.expired, counts.get("expired").copied().unwrap_or(0));
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
