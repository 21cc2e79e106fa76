//! Pulling work and holding it: [`WorkLease`], `Store::pull_work` and its blocking form.
//!
//! Invariant kept here: a pull returns a job only under a lease it won (see `lease`); index
//! entries that no longer apply (the job was fulfilled or removed) are removed when met, and an
//! entry that cannot be claimed is skipped, so one bad entry never stalls the queue.

use std::fmt;
use std::fs;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::atomic::{exists, touch_path};
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::index::split_key;
use crate::job::{JobRecord, JobState};
use crate::layout::LeaseKind;
use crate::lease::{self, ClaimOutcome, CompromiseReason, LeaseState, LimitKind, TimeLimit};
use crate::outcome::OutcomeRecord;
use crate::store::{Inner, Store, notify_key};
use crate::watch::Channel;

/// What [`WorkLease::fail`] did with the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// It will be pending again after this backoff.
    Retrying {
        /// The backoff (with jitter) before it is pullable again.
        after: Duration,
    },
    /// That was its last allowed attempt: it is finished as failed.
    Failed,
}

/// A job held under a lease by this process. The lease is heartbeated in the background while
/// the value lives; dropping it releases the job back to pending.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let store = jobdir::Store::open(dir.path())?;
/// store.create(&serde_json::json!({"calculate": "3+3"}))?;
/// let job = store.pull_work()?.unwrap();
/// job.on_compromised(|reason| eprintln!("lost the lease: {reason:?}; stop working"));
/// assert_eq!(job.attempt(), 1);
/// assert!(!job.is_compromised());
/// job.fulfill(b"6")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WorkLease {
    store: Store,
    state: Arc<LeaseState>,
    record: JobRecord,
    key: String,
}

impl fmt::Debug for WorkLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkLease")
            .field("id", &self.record.id)
            .field("attempt", &self.state.epoch)
            .field("compromised", &self.state.is_compromised())
            .finish()
    }
}

impl WorkLease {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.record.id
    }

    /// The job's request.
    pub fn request(&self) -> &Value {
        &self.record.request
    }

    /// The job's priority.
    pub fn priority(&self) -> i32 {
        self.record.priority
    }

    /// Which claim of this job this is: 1 for the first, 2 after one release or expiry, ...
    pub fn attempt(&self) -> u64 {
        self.state.epoch
    }

    /// Registers a callback run once, from the heartbeat thread, when the lease is lost. Stop
    /// working when it fires: a later [`fulfill`](Self::fulfill) will be refused. Runs at once
    /// if the lease is already lost. Keep it short; it must not block.
    pub fn on_compromised(&self, callback: impl FnOnce(CompromiseReason) + Send + 'static) {
        self.state.on_compromised(Box::new(callback));
    }

    /// True once the lease is known to be lost.
    pub fn is_compromised(&self) -> bool {
        self.state.is_compromised()
    }

    /// Stores the result and ends the lease, in one atomic rename that is fenced by the lease:
    /// refused with [`Error::LeaseLost`] if the lease was taken over, with
    /// [`Error::AlreadyFulfilled`] if the job was fulfilled by someone else.
    pub fn fulfill(self, value: impl AsRef<[u8]>) -> Result<()> {
        let st = &self.state;
        st.check_live()?;
        // `held/` is private to its holder until it is renamed to `result/`, so the value is
        // written straight into it: a partial file there is never seen as a result. If the
        // lease was taken over, `held/` is gone and the create fails (ENOENT): lease lost.
        self.write_held("value", value.as_ref())?;
        crate::fault::point("fulfill.before_commit");
        self.commit()
    }

    /// Writes a file into this lease's `held/` (fsynced with `held/` in durable mode). `held/`
    /// gone (taken over, cancelled) → the lease is compromised and `LeaseLost` returned.
    fn write_held(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let inner = &self.store.inner;
        let st = &self.state;
        let written = inner
            .fs
            .write_into_private_dir(&st.held.join(name), bytes)
            .and_then(|()| inner.fs.sync_dir(&st.held));
        match written {
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {
                st.compromise();
                Err(Error::LeaseLost(st.id))
            }
            other => other,
        }
    }

    /// The commit: `held/` → `result/` (fenced), then the job directory's fsync and the index
    /// work that follows a finish.
    fn commit(self) -> Result<()> {
        let inner = &self.store.inner;
        let st = &self.state;
        st.set_finishing(true);
        let result_dir = inner.layout.result_dir(&st.id);
        match fs::rename(&st.held, &result_dir) {
            Ok(()) => st.finish(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                st.set_finishing(false);
                st.compromise();
                return Err(Error::LeaseLost(st.id));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
                ) =>
            {
                st.set_finishing(false);
                let _ = st.end("released");
                return Err(Error::AlreadyFulfilled(st.id));
            }
            Err(e) => {
                st.set_finishing(false);
                return Err(e).ctx("rename result into", &result_dir);
            }
        }
        // The new name `result` must be durable; the old one's removal need not be: a `held/`
        // that reappears after a power loss beside a durable result is ignored (claims see
        // Done) and taken over harmlessly, so no fsync of the epoch directory.
        inner.fs.sync_dir(&st.job_dir)?;
        inner.after_fulfilled(&st.id, self.record.priority)
    }

    /// Records this attempt as failed with `error`. Under the job's [`RetryPolicy`](crate::RetryPolicy)
    /// (default: 5 attempts, backoff from 1 s doubling, with jitter) the job becomes delayed
    /// and pending again after the backoff ([`Failure::Retrying`]); on its last allowed attempt
    /// it is finished as [`JobState::Failed`](crate::JobState::Failed) with `error` as its final error
    /// ([`Failure::Failed`]), and [`Store::retry`](crate::Store::retry) can run it again. Fenced like
    /// [`fulfill`](Self::fulfill).
    ///
    /// ```
    /// use jobdir::{CreateOptions, Failure, JobState, RetryPolicy};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create_with(&"x", CreateOptions::default()
    ///     .retry(RetryPolicy::default().with_max_attempts(1)))?;
    /// let job = store.pull_work()?.unwrap();
    /// assert_eq!(job.fail("disk full")?, Failure::Failed);
    /// let info = store.get(&id)?;
    /// assert_eq!(info.state, JobState::Failed);
    /// assert_eq!(info.error.as_deref(), Some("disk full"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fail(self, error: &str) -> Result<Failure> {
        let inner = &self.store.inner;
        let st = &self.state;
        st.check_live()?;
        let id = st.id;
        if exists(&inner.layout.result_dir(&id))? {
            // Finished meanwhile without this lease (fulfilled, cancelled or expired): nothing
            // to retry. As a fenced fulfilment would: release (`LeaseLost` if the lease is gone
            // too, as after a cancellation), and say so.
            st.end("released")?;
            return Err(Error::AlreadyFulfilled(id));
        }
        let policy = self.record.retry_policy();
        let failures = crate::retry::failures(&inner.layout, &id, st.epoch)?.len() as u32 + 1;
        let now = std::time::SystemTime::now();
        if failures >= policy.max_attempts() {
            let outcome = OutcomeRecord::new(JobState::Failed, error);
            self.commit_outcome(&outcome)?;
            return Ok(Failure::Failed);
        }
        let backoff = policy.jittered(failures);
        let due = crate::delayed::ms_of(now + backoff);
        let note = serde_json::json!({
            "error": error,
            "at": crate::job::rfc3339(now),
            "retry_at": crate::job::rfc3339(now + backoff),
        });
        let written = inner
            .fs
            .write_into_private_dir(&st.held.join("error.json"), note.to_string().as_bytes());
        match written {
            Ok(()) => {}
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {
                st.compromise();
                return Err(Error::LeaseLost(id));
            }
            Err(e) => return Err(e),
        }
        self.park(due, "failed", || crate::fault::point("fail.after_delayed"))?;
        Ok(Failure::Retrying { after: backoff })
    }

    /// Finishes the job with a non-result outcome under the lease: `outcome.json` into `held/`,
    /// then `held/` → `result/`, as a fenced fulfilment does.
    fn commit_outcome(self, outcome: &OutcomeRecord) -> Result<()> {
        self.write_held("outcome.json", &outcome.to_bytes()?)?;
        let (store, id, priority) = (self.store.clone(), self.record.id, self.record.priority);
        self.commit()?;
        // A manual retry between the commit and its unlink of the pending entry needs the
        // entry back.
        crate::retry::reindex_if_retried(&store.inner, &id, priority)
    }

    /// Gives the job back: it is pending again at once (its attempt count stays). Fails with
    /// [`Error::LeaseLost`] if the lease was already lost.
    pub fn release(self) -> Result<()> {
        self.release_inner()
    }

    /// Test support (feature `fault-injection`): drops the lease as a `kill -9` of this
    /// process would — OS lock gone, heartbeat stopped, nothing renamed — so that others must
    /// judge it dead and take it over.
    #[cfg(feature = "fault-injection")]
    pub fn abandon(self) {
        self.state.abandon();
    }

    /// Applies the job's limits to a fresh claim: a job past its deadline or pickup timeout is
    /// finished as expired, a job out of attempts (expired leases and run timeouts count) as
    /// failed — both under this lease, then the pull goes on. A job that is not pullable now
    /// (its run-at time is ahead: `not_before`, the backoff after a failure, run timeout or
    /// expired lease; or its pending entry is gone and a delayed entry holds it) is deferred:
    /// see [`defer`](Self::defer). Otherwise arms the run timeout and deadline on the heartbeat
    /// and hands the job out.
    fn admit(self) -> Result<Option<WorkLease>> {
        let inner = &self.store.inner;
        let rec = &self.record;
        let now = std::time::SystemTime::now();
        if let Some(reason) = rec.expiry_reason(now, self.state.epoch > 1) {
            let outcome = OutcomeRecord::new(JobState::Expired, reason);
            self.commit_outcome(&outcome)?;
            return Ok(None);
        }
        let counted = crate::retry::counted(&inner.layout, &rec.id, self.state.epoch)?;
        if self.state.epoch > 1 {
            let policy = rec.retry_policy();
            if counted.len() as u32 >= policy.max_attempts() {
                let last = counted
                    .last()
                    .map(|(f, _)| f.error.as_str())
                    .unwrap_or("failed");
                let outcome = OutcomeRecord::new(
                    JobState::Failed,
                    format!(
                        "{last} (attempt {} of {})",
                        counted.len(),
                        policy.max_attempts()
                    ),
                );
                self.commit_outcome(&outcome)?;
                return Ok(None);
            }
        }
        // Pullable now? The key this claim came from may be stale: another process's frontier
        // can hold it after a failing holder removed the entry (§6.19), a stale delayed entry
        // may have been promoted, a run timeout or an expired lease leaves the entry in place.
        let pending = exists(&inner.work.path(&self.key))?;
        let run_at = crate::retry::run_at(&inner.layout, &rec.id, rec, &counted);
        if let Some(at) = run_at.filter(|t| *t > now) {
            return self.defer(crate::delayed::ms_of(at).max(crate::delayed::now_ms() + 1));
        }
        if !pending {
            // Due, but without its pending entry (a delayed entry not promoted yet, or the
            // window of `fail`'s re-add): it runs now, and keeps an entry should it be
            // released or its holder die.
            inner.work.add(&inner.fs, &self.key)?;
        }
        let run = rec.run_timeout_ms.map(|ms| {
            (
                std::time::Instant::now() + Duration::from_millis(ms),
                LimitKind::Run,
            )
        });
        let deadline = match rec.deadline_time() {
            Some(d) => {
                let left = d.duration_since(now).unwrap_or_default();
                let outcome = OutcomeRecord::new(
                    JobState::Expired,
                    format!("deadline {} passed while running", crate::job::rfc3339(d)),
                );
                Some((
                    std::time::Instant::now() + left,
                    LimitKind::Deadline {
                        outcome: outcome.to_bytes()?,
                        fs: inner.fs.clone(),
                    },
                ))
            }
            None => None,
        };
        let limit = match (run, deadline) {
            (Some(r), Some(d)) => Some(if r.0 <= d.0 { r } else { d }),
            (r, d) => r.or(d),
        };
        if let Some((at, kind)) = limit {
            self.state.set_limit(Some(TimeLimit { at, kind }));
        }
        Ok(Some(self))
    }

    /// Ends a claim of a job that is not pullable before `due` (ms) without running it, and
    /// makes sure the job waits for `due` in the delayed index: the delayed entry is added
    /// (durable), then the pending entry removed, then the lease ended as `released` (not a
    /// failed attempt), then — as [`fail`](Self::fail) does — the pending entry is put back if
    /// a puller promoted the delayed entry in between. Never leaves the job without an entry.
    fn defer(self, due: u64) -> Result<Option<WorkLease>> {
        tracing::debug!(
            "job {} is not due before {due} ms: claim {} deferred",
            self.state.id,
            self.state.epoch
        );
        match self.park(due, "released", || {}) {
            // Cancelled meanwhile: the pull goes on.
            Ok(()) | Err(Error::LeaseLost(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves the job from the pending index to the delayed index until `due` (ms) and ends the
    /// lease as `end` (`fail`'s backoff, a deferred claim). The delayed entry first (durable),
    /// then the pending entry goes, then the lease ends: the job is never pullable before
    /// `due`, and never without an entry. A puller that promoted the delayed entry (due
    /// already) between the add and the removal made no new pending entry (it existed) and the
    /// removal took it: the delayed entry is then gone, and the pending entry is put back (the
    /// promoter checks the other way round, `Delayed::promote_due`). The lease's end is
    /// reported last, after the index is right.
    fn park(&self, due: u64, end: &str, after_delayed: impl FnOnce()) -> Result<()> {
        let inner = &self.store.inner;
        let id = self.state.id;
        let class = crate::layout::priority_class(self.record.priority);
        inner.delayed.add(&inner.fs, due, &class, &id)?;
        after_delayed();
        inner.work.remove(&self.key)?;
        let ended = self.state.end(end);
        if !exists(&inner.delayed.entry_path(due, &class, &id))? {
            inner.work.add(&inner.fs, &self.key)?;
            inner.offer(LeaseKind::Work, self.key.clone());
        }
        inner.note_due(due);
        ended
    }

    fn release_inner(&self) -> Result<()> {
        if self.state.is_ended() {
            return Ok(());
        }
        self.state.end("released")?;
        let inner = &self.store.inner;
        let path = inner.work.path(&self.key);
        if exists(&path)? {
            // Wakes pullers in other processes (their frontier dropped this key as busy).
            let _ = touch_path(&path);
        }
        inner.offer(LeaseKind::Work, self.key.clone());
        Ok(())
    }
}

impl Drop for WorkLease {
    fn drop(&mut self) {
        if !self.state.is_ended() {
            let _ = self.release_inner();
        }
    }
}

impl Store {
    /// Claims the next pending job (highest priority first, FIFO within a priority), or `None`
    /// at once if there is none. Costs the same at 10 and at 1 M pending jobs.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// assert!(store.pull_work()?.is_none());
    /// let id = store.create(&"job")?;
    /// let job = store.pull_work()?.unwrap();
    /// assert_eq!(job.id(), id);
    /// assert!(store.pull_work()?.is_none()); // held
    /// drop(job);                             // released
    /// assert_eq!(store.pull_work()?.unwrap().attempt(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work(&self) -> Result<Option<WorkLease>> {
        self.pull_next(LeaseKind::Work, |key| self.try_work(key, None))
    }

    /// Tries the job of one index key, for a puller as `who` (none: a plain pull): skipped if
    /// its allocation keeps it for another instance (`affinity.rs`), else claimed.
    pub(crate) fn try_work(
        &self,
        key: &str,
        who: Option<&crate::affinity::Affinity>,
    ) -> Result<Option<WorkLease>> {
        let Some(id) = split_key(key).and_then(|(_, _, n)| n.parse::<JobId>().ok()) else {
            return Ok(None); // foreign entry: recover quarantines it
        };
        crate::affinity::claim_as(self, key, id, who)
    }

    /// Claims the job `id` of index key `key` and admits it (or tidies what the claim found).
    pub(crate) fn claim_work(&self, key: &str, id: JobId) -> Result<Option<WorkLease>> {
        let inner = &self.inner;
        match lease::claim(inner, LeaseKind::Work, &id, key)? {
            ClaimOutcome::Claimed(state) => match inner.read_record(&id) {
                Ok(record) => {
                    let lease = WorkLease {
                        store: self.clone(),
                        state,
                        record,
                        key: key.to_string(),
                    };
                    match lease.admit() {
                        Err(Error::AlreadyFulfilled(_)) => Ok(None),
                        other => other,
                    }
                }
                Err(Error::Corrupt { path, reason }) => {
                    state.finish();
                    crate::recover::quarantine(inner, &inner.layout.job_dir(&id), &reason)?;
                    inner.work.remove(key)?;
                    tracing::warn!("quarantined job {id}: {} {reason}", path.display());
                    Ok(None)
                }
                Err(Error::NotFound(_)) => {
                    state.finish();
                    inner.work.remove(key)?;
                    Ok(None)
                }
                Err(e) => {
                    let _ = state.end("released");
                    Err(e)
                }
            },
            ClaimOutcome::Done => {
                // A fulfilment crashed before tidying its index entries: finish its work.
                repair_fulfilled(inner, &id)?;
                inner.work.remove(key)?;
                // A manual retry may have set the outcome aside and added this very entry
                // since the claim saw `result/`: then the entry is needed again.
                if !exists(&inner.layout.result_dir(&id))? && exists(&inner.layout.job_dir(&id))? {
                    inner.work.add(&inner.fs, key)?;
                }
                Ok(None)
            }
            ClaimOutcome::Gone => {
                inner.work.remove(key)?;
                Ok(None)
            }
            ClaimOutcome::Busy => Ok(None),
        }
    }

    /// Like [`pull_work`](Self::pull_work), but waits up to `timeout` for a job, woken by file
    /// events (and at worst by the poll interval) rather than a sleep loop.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let s2 = store.clone();
    /// std::thread::spawn(move || s2.create(&"later"));
    /// let job = store.pull_work_timeout(Duration::from_secs(10))?;
    /// assert_eq!(job.unwrap().request(), "later");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work_timeout(&self, timeout: Duration) -> Result<Option<WorkLease>> {
        self.pull_blocking(Channel::Work, timeout, || self.pull_work())
    }
}

// ---- Progress (issue 6 item 8; FORMAT.md §13.1) -------------------------------------------

/// The largest progress record [`WorkLease::progress`] writes (its compact JSON).
pub(crate) const PROGRESS_LIMIT: usize = 64 * 1024;

impl WorkLease {
    /// Reports progress: `value` (as compact JSON, at most 64 KiB) replaces the job's progress
    /// record, shown by [`Store::get`] in [`JobInfo::progress`](crate::JobInfo::progress) while
    /// the job runs. Written as a temporary in `tmp/` renamed into this lease's `held/` (no
    /// fsync: progress does not outlive its holder), so it is fenced like
    /// [`fulfill`](Self::fulfill): refused with [`Error::LeaseLost`] once the lease is lost.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&"long job")?;
    /// let job = store.pull_work()?.unwrap();
    /// job.progress(&serde_json::json!({"pct": 50}))?;
    /// assert_eq!(store.get(&id)?.progress, Some(serde_json::json!({"pct": 50})));
    /// job.fulfill(b"done")?;
    /// assert_eq!(store.get(&id)?.progress, None); // shown only while running
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn progress<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode {
            what: "progress",
            source,
        })?;
        if bytes.len() > PROGRESS_LIMIT {
            return Err(Error::TooLarge {
                what: "progress",
                size: bytes.len(),
                limit: PROGRESS_LIMIT,
            });
        }
        let st = &self.state;
        st.check_live()?;
        let tmp = self.store.inner.fs_volatile().temp_file(&bytes)?;
        let dest = st.held.join(PROGRESS_FILE);
        match tmp.persist(&dest) {
            Ok(_) => Ok(()),
            Err(e) if e.error.kind() == io::ErrorKind::NotFound => {
                st.compromise();
                Err(Error::LeaseLost(st.id))
            }
            Err(e) => Err(e.error).ctx("rename progress into", &dest),
        }
    }
}

/// The progress record's name inside `held/`.
pub(crate) const PROGRESS_FILE: &str = "progress.json";

impl Store {
    /// The latest progress reported for the job's current attempt while it runs (`None` when it
    /// is not running, or its holder reported none). Reads one small file; changes nothing.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&"x")?;
    /// assert_eq!(store.progress(&id)?, None);
    /// let job = store.pull_work()?.unwrap();
    /// job.progress(&[1, 10])?;
    /// assert_eq!(store.progress(&id)?, Some(serde_json::json!([1, 10])));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn progress(&self, id: &JobId) -> Result<Option<Value>> {
        let inner = &self.inner;
        inner.read_record(id)?; // NotFound, and a bad shard, as for `get`
        let epoch = max_epoch(inner, id)?;
        if epoch == 0 || !exists(&inner.layout.held_dir(LeaseKind::Work, id, epoch))? {
            return Ok(None);
        }
        Ok(read_progress(inner, id, epoch))
    }
}

/// The highest work epoch of a job (its attempts; 0 if it was never claimed).
pub(crate) fn max_epoch(inner: &Inner, id: &JobId) -> Result<u64> {
    Ok(
        crate::atomic::list_names(&inner.layout.claims_dir(LeaseKind::Work, id))?
            .iter()
            .filter_map(|n| crate::layout::parse_epoch(n))
            .max()
            .unwrap_or(0),
    )
}

/// The progress record of a running job's current attempt, if it has a readable one.
pub(crate) fn read_progress(inner: &Inner, id: &JobId, epoch: u64) -> Option<Value> {
    let path = inner
        .layout
        .held_dir(LeaseKind::Work, id, epoch)
        .join(PROGRESS_FILE);
    let bytes = crate::atomic::read_file(&path, PROGRESS_LIMIT as u64).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Makes sure a fulfilled job's waiting targets are indexed for notification.
pub(crate) fn repair_fulfilled(inner: &Inner, id: &JobId) -> Result<()> {
    if inner.has_targets(id)? {
        let priority = inner.read_record(id).map(|r| r.priority).unwrap_or(0);
        let key = notify_key(id, priority, None);
        inner.notify.add(&inner.fs, &key)?;
        inner.offer(LeaseKind::Notify, key);
    }
    Ok(())
}
