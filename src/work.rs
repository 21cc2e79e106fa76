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
use crate::job::JobRecord;
use crate::layout::LeaseKind;
use crate::lease::{self, ClaimOutcome, CompromiseReason, LeaseState};
use crate::store::{Inner, Store, notify_key};
use crate::watch::Channel;

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
        let inner = &self.store.inner;
        let st = &self.state;
        st.check_live()?;
        // `held/` is private to its holder until it is renamed to `result/`, so the value is
        // written straight into it: a partial file there is never seen as a result. If the
        // lease was taken over, `held/` is gone and the create fails (ENOENT): lease lost.
        let value_path = st.held.join("value");
        let written = inner
            .fs
            .write_into_private_dir(&value_path, value.as_ref())
            .and_then(|()| inner.fs.sync_dir(&st.held));
        match written {
            Ok(()) => {}
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {
                st.compromise();
                return Err(Error::LeaseLost(st.id));
            }
            Err(e) => return Err(e),
        }
        crate::fault::point("fulfill.before_commit");
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
        self.pull_next(LeaseKind::Work, |key| self.try_work(key))
    }

    fn try_work(&self, key: &str) -> Result<Option<WorkLease>> {
        let inner = &self.inner;
        let Some(id) = split_key(key).and_then(|(_, _, n)| n.parse::<JobId>().ok()) else {
            return Ok(None); // foreign entry: recover quarantines it
        };
        match lease::claim(inner, LeaseKind::Work, &id, key)? {
            ClaimOutcome::Claimed(state) => match inner.read_record(&id) {
                Ok(record) => Ok(Some(WorkLease {
                    store: self.clone(),
                    state,
                    record,
                    key: key.to_string(),
                })),
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
