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
//! - **A hand-over happens once.** The puller takes the allocation it read away with the
//!   compare-and-swap of `take_allocation` (one rename, checked against the nonce): of two
//!   pullers handing over the same job, one wins and the other skips the job.
//! - **The allocation exists before the job can be pulled.** `create` allocates first and
//!   makes the job's index entry last, so no puller sees a job for an instance without its
//!   allocation.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::allocation::{AllocationFlags, Choice, HashRule, JobKey};
use crate::atomic::{exists, list_names};
use crate::error::{Error, Result};
use crate::id::JobId;
use crate::index::ClassRange;
use crate::instance::{InstanceId, InstanceInfo, Liveness, real_dir};
use crate::layout::{LeaseKind, parse_allocation_entry};
use crate::slots::PullFilter;
use crate::store::{Inner, Store, pending_key};
use crate::watch::Channel;
use crate::work::WorkLease;

/// Pulls as an instance: its own jobs (allocated to it) first, then the jobs of dead
/// instances that are not sticky, and — if [`unallocated`](Self::unallocated) — jobs
/// allocated to no instance. A pull without an `Affinity` ([`Store::pull_work`]) takes
/// unallocated jobs and the non-sticky jobs of dead instances, never a live instance's.
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
    known: std::sync::Mutex<HashMap<InstanceId, HashMap<String, Option<String>>>>,
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
            let only = |_: &JobKey, avail: &[InstanceInfo]| {
                avail.iter().find(|i| &i.id == want).map(|i| Choice {
                    instance: i.id.clone(),
                    persist: true,
                })
            };
            store.allocate_flagged(&key, &only, flags)?;
        }
        Placement::ByRule => {
            store.allocate_flagged(&key, &HashRule, flags)?;
        }
    }
    Ok(key)
}

/// Whether a pull as `who` (none: a plain pull) may claim job `id`, by its allocation. Hands a
/// dead instance's non-sticky job over on the way: its allocation is taken away, and given to
/// `who`'s instance when there is one.
pub(crate) fn may_take(store: &Store, id: &JobId, who: Option<&Affinity>) -> Result<bool> {
    let inner = &store.inner;
    let key = JobKey::from(id);
    let free = who.is_none_or(|w| w.unallocated);
    let Some(rec) = inner.read_allocation(&key)? else {
        return Ok(free);
    };
    if !inner.instance_exists(&rec.instance)? {
        return Ok(free); // to an instance removed since: gone with it
    }
    if who.is_some_and(|w| w.instance == rec.instance) {
        return Ok(true);
    }
    if rec.sticky || !handed_over(inner, &rec.instance)? {
        return Ok(false);
    }
    let Some(taken) = inner.take_allocation(&key, |r| r.nonce == rec.nonce)? else {
        return Ok(false); // another puller handed it over first (or it was deallocated)
    };
    tracing::info!(
        "job {id}: instance {} is not running; its job is handed over",
        taken.instance
    );
    if let Err(e) = inner.remove_if_idle(&taken.instance) {
        tracing::warn!("instance {}: {e}", taken.instance);
    }
    if let Some(w) = who {
        let me = |_: &JobKey, avail: &[InstanceInfo]| {
            avail.iter().find(|i| i.id == w.instance).map(|i| Choice {
                instance: i.id.clone(),
                persist: true,
            })
        };
        let flags = AllocationFlags {
            sticky: false,
            for_job: taken.for_job,
        };
        // Best effort: if this instance is not available, the job stays unallocated.
        if let Err(e) = store.allocate_flagged(&key, &me, flags) {
            tracing::debug!("job {id} left unallocated: {e}");
        }
    }
    Ok(true)
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

/// Claims the best job allocated to `who`'s instance whose class lies in `range`, if any:
/// its allocation entries, in pull order (highest priority first, then oldest).
fn pull_own(store: &Store, who: &Affinity, range: &ClassRange) -> Result<Option<WorkLease>> {
    let inner = &store.inner;
    let dir = inner.layout.instance_jobs(who.instance.as_str());
    if !real_dir(&dir)? {
        return Ok(None);
    }
    let names = list_names(&dir)?;
    let mut candidates: Vec<(String, String)> = {
        let mut all = inner
            .own_jobs
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = all.entry(who.instance.clone()).or_default();
        let listed: HashSet<&String> = names.iter().collect();
        known.retain(|name, _| listed.contains(name));
        for name in &names {
            if known.contains_key(name) {
                continue;
            }
            let Some((key, nonce)) = parse_allocation_entry(name) else {
                known.insert(name.clone(), None);
                continue;
            };
            let Ok(id) = key.parse::<JobId>() else {
                known.insert(name.clone(), None); // an atributo key, not a job of this store
                continue;
            };
            match inner.read_record(&id) {
                Ok(rec) => {
                    known.insert(name.clone(), Some(pending_key(&id, rec.priority)));
                }
                // Not made yet (create allocates first) or removed: ask again next time.
                Err(Error::NotFound(_)) => {}
                Err(e) => tracing::debug!("allocation entry {name} ({nonce}): {e}"),
            }
        }
        known
            .iter()
            .filter_map(|(name, key)| key.clone().map(|k| (k, name.clone())))
            .filter(|(k, _)| range.contains(k))
            .collect()
    };
    candidates.sort();
    for (key, _) in candidates {
        if !exists(&inner.work.path(&key))? {
            continue; // delayed, finished, or not indexed yet
        }
        let Some(id) = crate::index::split_key(&key).and_then(|(_, _, n)| n.parse::<JobId>().ok())
        else {
            continue;
        };
        // The entry is a cache: the allocation must still name this instance.
        match inner.read_allocation(&JobKey::from(&id)) {
            Ok(Some(r)) if r.instance == who.instance => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("skipping job {id}: {e}");
                continue;
            }
        }
        match store.claim_work(&key, id) {
            Ok(Some(lease)) => return Ok(Some(lease)),
            Ok(None) => {}
            Err(e) => tracing::warn!("skipping {key}: {e}"),
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
    /// Claims a job as an instance ([`Affinity`]): the best job allocated to it, else the
    /// best job it may take in pull order (a dead instance's non-sticky job; with
    /// [`Affinity::unallocated`], a job allocated to no instance), or `None` at once.
    ///
    /// Cost: one listing of the instance's allocation entries and one `stat` per job allocated
    /// to it, plus the read of one allocation file per job met in pull order.
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

    /// A pull limited to `range`, as `who` (or as no instance).
    pub(crate) fn pull_work_scoped(
        &self,
        range: &ClassRange,
        who: Option<&Affinity>,
    ) -> Result<Option<WorkLease>> {
        if let Some(w) = who
            && let Some(lease) = pull_own(self, w, range)?
        {
            return Ok(Some(lease));
        }
        self.pull_next_in(LeaseKind::Work, range, |key| self.try_work(key, who))
    }
}
