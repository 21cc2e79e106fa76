//! Pulling notifications and completing them: [`NotificationLease`].
//!
//! Invariants kept here: a notification is held under its own lease (separate from the job's
//! work lease); `done` removes exactly the delivered targets (one unlink each, never a rewrite
//! of a shared list), so a target queued while the notification is held stays for the next
//! pull; a target is never re-delivered after its `done`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::atomic::{FileStamp, exists, list_names, read_file, remove_file_if_exists, touch_path};
use crate::error::{IoContext, Result};
use crate::id::JobId;
use crate::index::split_key;
use crate::job::JobState;
use crate::layout::{LeaseKind, parse_notify_entry};
use crate::lease::{self, ClaimOutcome, CompromiseReason, LeaseState};
use crate::outcome::OutcomeRecord;
use crate::store::{READ_LIMIT, Store, canonical_json, rand_u32, target_name};
use crate::watch::Channel;

/// A fulfilled job's notification, held under a lease by this process. Dropping it without
/// [`done`](Self::done) releases it with every target still queued.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let store = jobdir::Store::open(dir.path())?;
/// let id = store.create(&"job")?;
/// store.queue(&id, &"a")?;
/// store.fulfill(&id, b"value")?;
/// store.queue(&id, &"b")?;
/// let note = store.pull_notification()?.unwrap();
/// assert_eq!(note.id(), id);
/// assert_eq!(note.waiting().len(), 2);
/// note.done(&[serde_json::json!("a")])?;   // "b" failed: it stays queued
/// assert_eq!(store.get(&id)?.waiting, vec![serde_json::json!("b")]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct NotificationLease {
    store: Store,
    state: Arc<LeaseState>,
    value: Vec<u8>,
    /// Set when the job finished without a result.
    outcome: Option<OutcomeRecord>,
    waiting: Vec<Value>,
    /// Target file name → which file it was, as pulled.
    snapshot: HashMap<String, FileStamp>,
    /// The pulled target files, held open (see `PIN_LIMIT`).
    _pinned: Vec<fs::File>,
    key: String,
}

impl fmt::Debug for NotificationLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationLease")
            .field("id", &self.state.id)
            .field("waiting", &self.waiting.len())
            .field("compromised", &self.state.is_compromised())
            .finish()
    }
}

/// At most this many pulled target files are held open per notification; beyond it, a target
/// is told apart by inode number and mtime alone.
const PIN_LIMIT: usize = 256;

impl NotificationLease {
    /// The job whose result is being delivered.
    pub fn id(&self) -> JobId {
        self.state.id
    }

    /// The job's result (empty when it finished without one: see [`state`](Self::state)).
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// How the job finished: [`JobState::Fulfilled`], or failed, cancelled or expired — the
    /// waiting parties are told of those too.
    pub fn state(&self) -> JobState {
        self.outcome
            .as_ref()
            .map_or(JobState::Fulfilled, |o| o.state)
    }

    /// The final error of a job that finished without a result.
    pub fn error(&self) -> Option<&str> {
        self.outcome.as_ref().map(|o| o.error.as_str())
    }

    /// The targets waiting when the notification was pulled.
    pub fn waiting(&self) -> &[Value] {
        &self.waiting
    }

    /// Registers a callback run once, from the heartbeat thread, when the lease is lost.
    pub fn on_compromised(&self, callback: impl FnOnce(CompromiseReason) + Send + 'static) {
        self.state.on_compromised(Box::new(callback));
    }

    /// True once the lease is known to be lost.
    pub fn is_compromised(&self) -> bool {
        self.state.is_compromised()
    }

    /// Removes exactly the `delivered` targets and releases the notification. Targets not
    /// delivered, and any queued meanwhile, stay queued. Refused with [`Error::LeaseLost`](crate::Error::LeaseLost) if
    /// the lease was lost before it started.
    pub fn done(self, delivered: &[Value]) -> Result<()> {
        let inner = &self.store.inner;
        let st = &self.state;
        st.fence()?;
        let dir = inner.layout.targets_dir(&st.id);
        for t in delivered {
            let name = target_name(&canonical_json(t, "target")?);
            self.unqueue_delivered(&dir, &name)?;
        }
        inner.fs.sync_dir(&dir)?;
        crate::fault::point("done.after_unqueue");
        let remaining: Vec<String> = list_names(&dir)?
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .collect();
        if remaining.is_empty() {
            inner.notify.remove(&self.key)?;
        }
        crate::fault::point("done.after_index");
        st.end("done")?;
        if !remaining.is_empty() {
            // Targets not delivered, or queued meanwhile: pullable again at once.
            self.reoffer();
        }
        Ok(())
    }

    /// Removes a delivered target, unless it was queued again while we held the notification
    /// (a new inode under the same name): that one stays for the next pull.
    fn unqueue_delivered(&self, dir: &Path, name: &str) -> Result<()> {
        let path = dir.join(name);
        let Some(&stamp) = self.snapshot.get(name) else {
            // Not among the targets pulled: a plain unqueue.
            remove_file_if_exists(&path)?;
            return Ok(());
        };
        let inner = &self.store.inner;
        let grave = inner.layout.tmp.join(format!("gone.{:08x}", rand_u32()));
        match fs::rename(&path, &grave) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("rename", &path),
        }
        let same = fs::symlink_metadata(&grave)
            .map(|m| FileStamp::of(&m) == stamp)
            .unwrap_or(true);
        if !same {
            match fs::hard_link(&grave, &path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx("put back", &path),
            }
        }
        remove_file_if_exists(&grave)?;
        Ok(())
    }

    /// Makes the notification's entry visible to pullers again (here and, through a touch,
    /// in other processes, whose frontiers dropped it while it was held).
    fn reoffer(&self) {
        let inner = &self.store.inner;
        let path = inner.notify.path(&self.key);
        if exists(&path).unwrap_or(false) {
            let _ = touch_path(&path);
        }
        inner.offer(LeaseKind::Notify, self.key.clone());
    }
}

impl Drop for NotificationLease {
    fn drop(&mut self) {
        if !self.state.is_ended() && self.state.end("released").is_ok() {
            self.reoffer();
        }
    }
}

impl Store {
    /// Claims the next fulfilled job with targets waiting, or `None` at once if there is none.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// assert!(store.pull_notification()?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_notification(&self) -> Result<Option<NotificationLease>> {
        self.pull_next(LeaseKind::Notify, |key| self.try_notification(key))
    }

    fn try_notification(&self, key: &str) -> Result<Option<NotificationLease>> {
        let inner = &self.inner;
        let Some(id) = split_key(key).and_then(|(_, _, n)| parse_notify_entry(n)) else {
            return Ok(None);
        };
        let state = match lease::claim(inner, LeaseKind::Notify, &id, key)? {
            ClaimOutcome::Claimed(s) => s,
            ClaimOutcome::Busy => return Ok(None),
            ClaimOutcome::Gone | ClaimOutcome::Done => {
                inner.notify.remove(key)?;
                return Ok(None);
            }
        };
        let mut outcome = None;
        let value = match read_file(&inner.layout.result_value(&id), READ_LIMIT) {
            Ok(v) => v,
            Err(e)
                if e.is_io_kind(io::ErrorKind::NotFound)
                    && let Some(o) = crate::outcome::read_outcome(inner, &id)? =>
            {
                outcome = Some(o);
                Vec::new()
            }
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {
                // Not fulfilled (a foreign entry) or removed meanwhile.
                let _ = state.end("done");
                inner.notify.remove(key)?;
                return Ok(None);
            }
            Err(e) => {
                let _ = state.end("released");
                return Err(e);
            }
        };
        let files = match self.waiting_files(&id) {
            Ok(f) => f,
            Err(e) => {
                let _ = state.end("released");
                return Err(e);
            }
        };
        if files.is_empty() {
            inner.notify.remove(key)?;
            let _ = state.end("done");
            return Ok(None);
        }
        let snapshot = files.iter().map(|t| (t.name.clone(), t.stamp)).collect();
        let waiting = files.iter().map(|t| t.value.clone()).collect();
        // Holding the pulled files open keeps their inode numbers from being reused by a target
        // queued again meanwhile, so `done` tells them apart exactly (bounded: file descriptors).
        let pinned = files.into_iter().take(PIN_LIMIT).map(|t| t.file).collect();
        Ok(Some(NotificationLease {
            store: self.clone(),
            state,
            value,
            outcome,
            waiting,
            snapshot,
            _pinned: pinned,
            key: key.to_string(),
        }))
    }

    /// Like [`pull_notification`](Self::pull_notification), but waits up to `timeout`, woken by
    /// file events.
    pub fn pull_notification_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Option<NotificationLease>> {
        self.pull_blocking(Channel::Notify, timeout, || self.pull_notification())
    }
}
