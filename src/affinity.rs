//! Work affinity (issue 7, item 3): jobs created for an instance, pulls that take an
//! instance's own jobs first, and the hand-over of a dead instance's jobs (DESIGN.md §3.16,
//! FORMAT.md §9.11).
//!
//! A job's instance is the allocation of its id (`allocations/<xx>/<id>`, §3.11): there is no
//! second record of it, so `deallocate`, `unavailable --remove now` and `instance` mean for a
//! job exactly what they mean for any key.
//!
//! Invariants kept here:
//! - **A pull never takes another instance's job while that instance may run it.** Before a
//!   claim, the puller reads the job's allocation: a job allocated to another instance is
//!   skipped unless the allocation is non-sticky and its instance is dead (or unavailable and
//!   not live). Sticky jobs wait for their instance until deallocated, as atributo specifies.
//! - **A hand-over happens once, and only to a holder.** The puller claims the job first (one
//!   claim wins), then takes the allocation it read away with the compare-and-swap of
//!   `take_allocation` (one rename, checked against the nonce), releasing the claim if the
//!   allocation changed meanwhile. A job still held under its instance's lease is not moved.
//! - **The allocation exists before the job can be pulled.** `create` allocates first and
//!   makes the job's index entry last, so no puller sees a job for an instance without its
//!   allocation.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::allocation::{
    AllocationFlags, AllocationRecord, AllocationRule, Choice, HashRule, JobKey,
};
use crate::atomic::{exists, list_names};
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::index::ClassRange;
use crate::instance::{InstanceId, InstanceInfo, Liveness, real_dir};
use crate::layout::{LeaseKind, allocation_entry, parse_allocation_entry};
use crate::slots::PullFilter;
use crate::store::{Inner, Store, pending_key};
use crate::watch::Channel;
use crate::work::WorkLease;

/// Pulls as an instance: its own jobs (allocated to it) first; then — if
/// [`unallocated`](Self::unallocated) — jobs allocated to no instance; and the non-sticky jobs
/// of instances that hand theirs over (dead, or unavailable with no process joined as them).
/// A pull without an `Affinity` ([`Store::pull_work`]) takes unallocated jobs and the
/// non-sticky jobs of such instances, never a live instance's (FORMAT.md §9.11).
///
/// ```
/// use jobdir::{Affinity, CreateOptions};
/// let dir = tempfile::tempdir()?;
/// let store = jobdir::Store::open(dir.path())?;
/// let (a, b) = ("a".parse()?, "b".parse()?);
/// store.available(&a)?;
/// store.available(&b)?;
/// let free = store.create(&"anyone")?;
/// let for_b = store.create_with(&"b's", CreateOptions::default().instance(b.clone()))?;
/// let for_a = store.create_with(&"a's", CreateOptions::default().instance(a.clone()))?;
/// // a's own job first, though it was created last; never b's.
/// let as_a = Affinity::new(a).unallocated(true);
/// let first = store.pull_work_as(&as_a)?.unwrap();
/// let second = store.pull_work_as(&as_a)?.unwrap();
/// assert_eq!((first.id(), second.id()), (for_a, free));
/// assert!(store.pull_work_as(&as_a)?.is_none());
/// assert!(store.pull_work()?.is_none()); // b is not dead: its job waits for it
/// assert_eq!(store.pull_work_as(&Affinity::new(b))?.unwrap().id(), for_b);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affinity {
    instance: InstanceId,
    unallocated: bool,
}

impl Affinity {
    /// Pulls as `instance`: its own jobs, and the non-sticky jobs of dead instances.
    ///
    /// ```
    /// let me = jobdir::Affinity::new("worker-1".parse()?);
    /// assert_eq!(me.instance().as_str(), "worker-1");
    /// assert!(!me.takes_unallocated());
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn new(instance: InstanceId) -> Affinity {
        Affinity {
            instance,
            unallocated: false,
        }
    }

    /// Also takes jobs allocated to no instance, once it has none of its own to run.
    ///
    /// ```
    /// let me = jobdir::Affinity::new("w".parse()?).unallocated(true);
    /// assert!(me.takes_unallocated());
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn unallocated(mut self, take: bool) -> Affinity {
        self.unallocated = take;
        self
    }

    /// The instance pulled as.
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    /// Whether jobs allocated to no instance are taken too.
    pub fn takes_unallocated(&self) -> bool {
        self.unallocated
    }
}

/// Which instance `create` allocates a new job to (`CreateOptions::instance`/`allocate`).
#[derive(Clone, Debug)]
pub(crate) enum Placement {
    /// This instance, which must exist and be available.
    Instance(InstanceId),
    /// The default rule's choice among the available instances (`Store::allocate`).
    ByRule,
}

/// Each process's view of the instances' own-job lists: the pending key of each allocation
/// entry already read (`None`: not a job of this store), so a pull reads a job record only
/// for an entry it has not seen before.
#[derive(Default)]
pub(crate) struct OwnJobs {
    known: std::sync::Mutex<HashMap<InstanceId, EntryJobs>>,
}

/// Allocation entry name → the job's (pending key, id), `None` for a key that is not a job.
type EntryJobs = HashMap<String, Option<(String, JobId)>>;

/// The rule that chooses one given instance, if it is available (and persists the choice).
struct Only<'a>(&'a InstanceId);

impl AllocationRule for Only<'_> {
    fn choose(&self, _: &JobKey, available: &[InstanceInfo]) -> Option<Choice> {
        available.iter().any(|i| &i.id == self.0).then(|| Choice {
            instance: self.0.clone(),
            persist: true,
        })
    }
}

/// Allocates a job about to be created (before any of its files exist). Returns the key to
/// deallocate if the create does not complete.
pub(crate) fn place(
    store: &Store,
    id: &JobId,
    placement: &Placement,
    sticky: bool,
) -> Result<JobKey> {
    let key = JobKey::from(id);
    let flags = AllocationFlags {
        sticky,
        for_job: true,
    };
    match placement {
        Placement::Instance(want) => {
            match store.inner.read_instance(want)? {
                Some(r) if r.available => {}
                Some(_) => {
                    return Err(Error::InvalidOption(format!(
                        "instance {want} is unavailable: no new jobs are allocated to it"
                    )));
                }
                None => {
                    return Err(Error::InvalidOption(format!(
                        "no instance {want}: make it available first (jobdir instance available {want})"
                    )));
                }
            }
            match store.allocate_flagged(&key, &Only(want), flags) {
                Ok(_) => {}
                // Made unavailable (or removed) since the check above: the same answer.
                Err(Error::NoInstance(_)) => {
                    return Err(Error::InvalidOption(format!(
                        "instance {want} is unavailable: no new jobs are allocated to it"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Placement::ByRule => {
            store.allocate_flagged(&key, &HashRule, flags)?;
        }
    }
    Ok(key)
}

/// Tells the instance's pulls that the job `create` allocated to it is indexed now: touches
/// the allocation's entry in `instances/<name>/jobs/` (its watchers see `IN_ATTRIB`). Best
/// effort: a pull that misses it finds the job at its next look (the poll interval).
pub(crate) fn announce(inner: &Inner, key: &JobKey) {
    let touched = inner.read_allocation(key).and_then(|rec| {
        let Some(rec) = rec else { return Ok(()) };
        let entry = inner
            .layout
            .instance_jobs(rec.instance.as_str())
            .join(allocation_entry(key.as_str(), &rec.nonce));
        let f = crate::atomic::open_regular(&entry, true)?;
        // Both times: the kernel reports a change of both as IN_ATTRIB (of the mtime alone,
        // as IN_MODIFY, which the watch does not ask for).
        let now = std::time::SystemTime::now();
        let times = std::fs::FileTimes::new()
            .set_accessed(now)
            .set_modified(now);
        f.set_times(times).ctx("touch", &entry)?;
        Ok(())
    });
    if let Err(e) = touched {
        tracing::debug!("allocation entry of {key} not touched: {e}");
    }
}

/// What a pull as some instance (or none) may do with a job, by its allocation.
enum Permission {
    No,
    Yes,
    /// Only by handing the job over: its allocation (this record) is another instance's,
    /// which hands its jobs over.
    HandOver(AllocationRecord),
}

/// Whether a pull as `who` (none: a plain pull) may claim job `id`, by its allocation.
fn permission(store: &Store, id: &JobId, who: Option<&Affinity>) -> Result<Permission> {
    let inner = &store.inner;
    let free = match who.is_none_or(|w| w.unallocated) {
        true => Permission::Yes,
        false => Permission::No,
    };
    let rec = match inner.read_allocation(&JobKey::from(id)) {
        Ok(Some(rec)) => rec,
        Ok(None) => return Ok(free),
        // Never taken as unallocated (that would break a sticky allocation): skipped until
        // `recover` quarantines the file.
        Err(e) => {
            tracing::warn!("job {id}: skipped, its allocation cannot be read: {e}");
            return Ok(Permission::No);
        }
    };
    if !inner.instance_exists(&rec.instance)? {
        return Ok(free); // to an instance removed since: gone with it
    }
    if who.is_some_and(|w| w.instance == rec.instance) {
        return Ok(Permission::Yes);
    }
    if rec.sticky || !handed_over(inner, &rec.instance)? {
        return Ok(Permission::No);
    }
    Ok(Permission::HandOver(rec))
}

/// Claims job `id` (index key `key`) for a pull as `who`, if its allocation allows: its own
/// instance's, an unallocated one (a plain pull, or `who` taking unallocated jobs), or one
/// handed over. A hand-over is made only once the claim is held: the allocation read is taken
/// away (checked against its nonce) and given to `who`'s instance (if available; a plain pull
/// leaves the job unallocated). If the allocation changed meanwhile, the claim is released.
pub(crate) fn claim_as(
    store: &Store,
    key: &str,
    id: JobId,
    who: Option<&Affinity>,
) -> Result<Option<WorkLease>> {
    let seen = match permission(store, &id, who)? {
        Permission::No => return Ok(None),
        Permission::Yes => return store.claim_work(key, id),
        Permission::HandOver(rec) => rec,
    };
    let Some(lease) = store.claim_work(key, id)? else {
        return Ok(None);
    };
    let inner = &store.inner;
    let job = JobKey::from(id);
    let Some(taken) = inner.take_allocation(&job, |r| r.nonce == seen.nonce)? else {
        // Deallocated or allocated anew meanwhile: not ours to hand over.
        lease.release()?;
        return Ok(None);
    };
    tracing::info!(
        "job {id}: instance {} is not running; its job is handed over",
        taken.instance
    );
    if let Err(e) = inner.remove_if_idle(&taken.instance) {
        tracing::warn!("instance {}: {e}", taken.instance);
    }
    if let Some(w) = who {
        let flags = AllocationFlags {
            sticky: false,
            for_job: taken.for_job,
        };
        // Best effort: if this instance is not available, the job stays unallocated.
        if let Err(e) = store.allocate_flagged(&job, &Only(&w.instance), flags) {
            tracing::debug!("job {id} left unallocated: {e}");
        }
    }
    Ok(Some(lease))
}

/// Whether an instance's non-sticky jobs go to others: it died (joined, then stopped
/// heartbeating), or it was made unavailable and no process runs as it.
fn handed_over(inner: &Inner, instance: &InstanceId) -> Result<bool> {
    let liveness = inner.liveness(instance)?;
    if liveness == Liveness::Dead {
        return Ok(true);
    }
    Ok(
        liveness == Liveness::Absent
            && inner.read_instance(instance)?.is_some_and(|r| !r.available),
    )
}

/// The jobs allocated to `instance` whose class lies in `range`, as (pending key, id) in pull
/// order (highest priority first, then oldest); whether each is pending now is for the caller
/// to check, lazily. Lists the instance's allocation entries and reads each job's record once
/// per process (the record is immutable).
fn allocated_jobs(
    inner: &Inner,
    instance: &InstanceId,
    range: &ClassRange,
) -> Result<Vec<(String, JobId)>> {
    let dir = inner.layout.instance_jobs(instance.as_str());
    if !real_dir(&dir)? {
        return Ok(Vec::new());
    }
    let names = list_names(&dir)?;
    let mut all = inner
        .own_jobs
        .known
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let known = all.entry(instance.clone()).or_default();
    let listed: HashSet<&String> = names.iter().collect();
    known.retain(|name, _| listed.contains(name));
    for name in &names {
        if known.contains_key(name) {
            continue;
        }
        let Some(id) = parse_allocation_entry(name).and_then(|(k, _)| k.parse::<JobId>().ok())
        else {
            known.insert(name.clone(), None); // an atributo key, not a job of this store
            continue;
        };
        match inner.read_record(&id) {
            Ok(rec) => {
                known.insert(name.clone(), Some((pending_key(&id, rec.priority), id)));
            }
            // Not made yet (create allocates first) or removed: ask again next time.
            Err(Error::NotFound(_)) => {}
            Err(e) => tracing::debug!("allocation entry {name}: {e}"),
        }
    }
    let mut out: Vec<(String, JobId)> = known
        .values()
        .flatten()
        .filter(|(k, _)| range.contains(k))
        .cloned()
        .collect();
    drop(all);
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Claims the first of `candidates` that a pull as `who` may take (`claim_as`, which hands a
/// job over when it must).
/// Jobs whose lease this process holds are skipped without a claim (an instance's own running
/// jobs keep their pending entries), and the pending entry of each is checked only when its
/// turn comes, so a pull that takes the first candidate costs one `stat`.
fn claim_first(
    store: &Store,
    who: Option<&Affinity>,
    candidates: Vec<(String, JobId)>,
) -> Result<Option<WorkLease>> {
    let held = store.inner.keeper.held();
    for (key, id) in candidates {
        if held.contains(&id) {
            continue;
        }
        match exists(&store.inner.work.path(&key)) {
            Ok(true) => {}
            Ok(false) => continue, // delayed, finished, or not indexed yet
            Err(e) => {
                tracing::warn!("skipping {key}: {e}");
                continue;
            }
        }
        match claim_as(store, &key, id, who) {
            Ok(Some(lease)) => return Ok(Some(lease)),
            Ok(None) => {}
            Err(e) => tracing::warn!("skipping {key}: {e}"),
        }
    }
    Ok(None)
}

/// Claims the best job of an instance other than `who`'s that hands its jobs over (dead, or
/// unavailable and absent): instances in name order, each one's jobs in pull order.
fn pull_handed_over(
    store: &Store,
    who: Option<&Affinity>,
    range: &ClassRange,
) -> Result<Option<WorkLease>> {
    let inner = &store.inner;
    if !real_dir(&inner.layout.instances)? {
        return Ok(None);
    }
    let mut names = list_names(&inner.layout.instances)?;
    names.sort_unstable();
    for name in names {
        let Ok(other) = InstanceId::new(name) else {
            continue; // foreign: recover quarantines it
        };
        if who.is_some_and(|w| w.instance == other) {
            continue;
        }
        match handed_over(inner, &other) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!("instance {other}: {e}");
                continue;
            }
        }
        let candidates = match allocated_jobs(inner, &other, range) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("instance {other}: {e}");
                continue;
            }
        };
        if let Some(lease) = claim_first(store, who, candidates)? {
            return Ok(Some(lease));
        }
    }
    Ok(None)
}

/// Removes the allocation `create` made for a job that has finished or is removed, and the
/// instance with it if it was marked to go once idle.
pub(crate) fn release_finished(inner: &Inner, id: &JobId) -> Result<()> {
    if let Some(taken) = inner.take_allocation(&JobKey::from(id), |r| r.for_job)? {
        inner.remove_if_idle(&taken.instance)?;
    }
    Ok(())
}

impl Store {
    /// Claims a job as an instance ([`Affinity`]), or returns `None` at once: the best job
    /// allocated to it; else, with [`Affinity::unallocated`], the best job in pull order that
    /// is allocated to no instance or to an instance that hands its jobs over; else a
    /// non-sticky job of an instance that hands its jobs over (dead, or unavailable with no
    /// process joined as it), which becomes this instance's.
    ///
    /// Cost: a listing of the instance's allocation entries and a `stat` per job allocated to
    /// it; a listing of `instances/` and a liveness check per instance; with `unallocated`, a
    /// pull of the shared index that reads one allocation file per job it meets. Without
    /// `unallocated` the shared index is never read, whatever its backlog.
    ///
    /// ```
    /// use jobdir::{Affinity, CreateOptions};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let me: jobdir::InstanceId = "w1".parse()?;
    /// store.available(&me)?;
    /// store.create(&"free")?;
    /// let mine = store.create_with(&"mine", CreateOptions::default().instance(me.clone()))?;
    /// let job = store.pull_work_as(&Affinity::new(me.clone()))?.unwrap();
    /// assert_eq!(job.id(), mine);
    /// assert!(store.pull_work_as(&Affinity::new(me))?.is_none()); // "free" is unallocated
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work_as(&self, who: &Affinity) -> Result<Option<WorkLease>> {
        self.pull_work_scoped(&ClassRange::all(), Some(who))
    }

    /// Like [`pull_work_as`](Self::pull_work_as), limited to the priorities `filter` passes.
    ///
    /// ```
    /// use jobdir::{Affinity, CreateOptions, PullFilter};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let me: jobdir::InstanceId = "w1".parse()?;
    /// store.available(&me)?;
    /// let opts = CreateOptions::default().instance(me.clone());
    /// store.create_with(&"low", opts.clone().priority(0))?;
    /// let who = Affinity::new(me);
    /// assert!(store.pull_work_as_with(&who, &PullFilter::at_least(1))?.is_none());
    /// assert!(store.pull_work_as_with(&who, &PullFilter::below(1))?.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work_as_with(
        &self,
        who: &Affinity,
        filter: &PullFilter,
    ) -> Result<Option<WorkLease>> {
        self.pull_work_scoped(&filter.classes(), Some(who))
    }

    /// Like [`pull_work_as`](Self::pull_work_as), but waits up to `timeout` for a job, woken
    /// by file events (at worst by the poll interval).
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobdir::{Affinity, CreateOptions};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let me: jobdir::InstanceId = "w1".parse()?;
    /// store.available(&me)?;
    /// let (s2, me2) = (store.clone(), me.clone());
    /// std::thread::spawn(move || s2.create_with(&"later", CreateOptions::default().instance(me2)));
    /// let job = store.pull_work_timeout_as(&Affinity::new(me), Duration::from_secs(10))?;
    /// assert_eq!(job.unwrap().request(), "later");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work_timeout_as(
        &self,
        who: &Affinity,
        timeout: Duration,
    ) -> Result<Option<WorkLease>> {
        self.pull_blocking(Channel::Work, timeout, || self.pull_work_as(who))
    }

    /// A pull limited to `range`, as `who` (or as no instance: the shared index only).
    ///
    /// As an instance: its own jobs (from its allocation entries); then, if it takes
    /// unallocated jobs, the shared index in pull order (unallocated jobs, and jobs of
    /// instances that hand theirs over); then the jobs of instances that hand theirs over,
    /// from their allocation entries — which also finds a job the shared index skipped while
    /// its instance was alive. An instance that takes no unallocated job never reads the
    /// shared index, whatever its backlog.
    pub(crate) fn pull_work_scoped(
        &self,
        range: &ClassRange,
        who: Option<&Affinity>,
    ) -> Result<Option<WorkLease>> {
        let Some(w) = who else {
            return self.pull_next_in(LeaseKind::Work, range, |key| self.try_work(key, None));
        };
        let inner = &self.inner;
        // Due delayed jobs (a failed attempt's backoff) become pending first, as in any pull.
        inner.before_pull(LeaseKind::Work)?;
        // Woken by its own allocation entries (`create` touches the entry once the job is
        // indexed), since a pull that takes no unallocated job watches no index directory.
        let own_dir = inner.layout.instance_jobs(w.instance.as_str());
        if !real_dir(&own_dir).unwrap_or(true) && inner.instance_exists(&w.instance)? {
            // Made by the first allocation otherwise: made now, so that it can be watched.
            if let Err(e) = crate::instance::ensure_dir(&inner.fs, &own_dir) {
                tracing::debug!("cannot make {}: {e}", own_dir.display());
            }
        }
        if real_dir(&own_dir).unwrap_or(false) {
            inner
                .watch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .ensure(&own_dir);
        }
        let own = allocated_jobs(inner, &w.instance, range).unwrap_or_else(|e| {
            tracing::warn!("instance {}: cannot list its jobs: {e}", w.instance);
            Vec::new()
        });
        if let Some(lease) = claim_first(self, who, own)? {
            return Ok(Some(lease));
        }
        if w.unallocated
            && let Some(lease) =
                self.pull_next_in(LeaseKind::Work, range, |key| self.try_work(key, who))?
        {
            return Ok(Some(lease));
        }
        pull_handed_over(self, who, range)
    }
}
