//! Leases: claim by epoch, heartbeat, takeover, compromise, fencing.
//!
//! Invariants kept here:
//! - **One live holder.** A claim is the atomic rename of a fresh directory holding `held/` to
//!   `claims/<epoch>` where `epoch` is one past the highest epoch present. An epoch name is never
//!   reused while the job exists, so exactly one claimant wins each epoch, and a holder can only
//!   ever lose its *own* epoch.
//! - **Fencing.** Every way a lease ends is a rename of that epoch's `held/`: commit
//!   (`held` → `result`), release (`held` → `released`), takeover (`held` → `expired`). Only one
//!   of them can succeed, so a holder whose lease was taken over cannot commit afterwards.
//! - **Liveness by change.** A lease is judged expired when its lease file's mtime has not
//!   changed for the holder's lease length, timed on the observer's monotonic clock; clocks of
//!   different hosts are never compared. On the holder's own host a free `flock` on the lease
//!   file proves the holder is dead at once (the kernel drops the lock with the process).
//! - **Loss is signalled.** The heartbeat checks `held/` every interval; when it is gone the
//!   compromise callback fires once and `is_compromised()` turns true.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::atomic::{exists, list_names, remove_file_if_exists, touch_file, touch_path};
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::job::rfc3339;
use crate::layout::{LeaseKind, parse_epoch, parse_lease_name};
use crate::store::Inner;

/// Why a lease was lost, as passed to the compromise callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompromiseReason {
    /// The heartbeat stopped for longer than the lease (or the holder was paused) and another
    /// process took the lease over.
    Expired,
    /// The job was removed from the store.
    Removed,
    /// The job was cancelled ([`Store::cancel`](crate::Store::cancel)).
    Cancelled,
    /// The job's time ran out: its run timeout (the attempt counts as failed) or its deadline
    /// (the job expired).
    TimedOut,
}

/// A time limit on a held lease, enforced by the heartbeat thread.
pub(crate) struct TimeLimit {
    pub at: Instant,
    pub kind: LimitKind,
}

/// What happens when a [`TimeLimit`] passes.
pub(crate) enum LimitKind {
    /// The run timeout: the lease ends as `timedout` (a failed attempt).
    Run,
    /// The deadline: the job is finished as expired with this `outcome.json`.
    Deadline {
        outcome: Vec<u8>,
        fs: crate::atomic::AtomicFs,
    },
}

/// The owner record written into a lease file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LeaseMeta {
    pub kind: String,
    pub job: JobId,
    pub epoch: u64,
    pub host: String,
    pub pid: u32,
    pub lease_ms: u64,
    pub acquired_at: String,
    /// The index entry the lease was pulled from, touched after a takeover to wake pullers.
    pub entry: String,
}

type Callback = Box<dyn FnOnce(CompromiseReason) + Send>;

/// A held lease: what the heartbeat keeps alive and what commits are fenced by.
pub(crate) struct LeaseState {
    pub id: JobId,
    pub epoch: u64,
    pub job_dir: PathBuf,
    pub epoch_dir: PathBuf,
    pub held: PathBuf,
    pub lease_path: PathBuf,
    file: Mutex<Option<File>>,
    last_beat: Mutex<Option<SystemTime>>,
    compromised: AtomicBool,
    /// Set while a commit renames `held/`, so the heartbeat does not mistake it for a loss.
    finishing: AtomicBool,
    ended: AtomicBool,
    callback: Mutex<Option<Callback>>,
    limit: Mutex<Option<TimeLimit>>,
    /// Set when this process itself ended the lease for a time limit.
    timed_out: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LeaseState {
    pub(crate) fn is_compromised(&self) -> bool {
        self.compromised.load(Ordering::SeqCst)
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Registers the compromise callback; runs it now if the lease is already lost.
    pub(crate) fn on_compromised(&self, cb: Callback) {
        if self.is_compromised() {
            cb(self.reason());
        } else {
            *lock(&self.callback) = Some(cb);
            // Lost between the check and the store: fire it ourselves (take() makes it once).
            if self.is_compromised()
                && let Some(cb) = lock(&self.callback).take()
            {
                cb(self.reason());
            }
        }
    }

    /// Sets (or clears) the time limit the heartbeat enforces.
    pub(crate) fn set_limit(&self, limit: Option<TimeLimit>) {
        *lock(&self.limit) = limit;
    }

    fn reason(&self) -> CompromiseReason {
        if self.timed_out.load(Ordering::SeqCst) || self.epoch_dir.join("deadline").exists() {
            return CompromiseReason::TimedOut;
        }
        if self.epoch_dir.join("cancelled").exists() {
            return CompromiseReason::Cancelled;
        }
        if self.job_dir.exists() {
            CompromiseReason::Expired
        } else {
            CompromiseReason::Removed
        }
    }

    /// Marks the lease lost and fires the callback, once.
    pub(crate) fn compromise(&self) {
        if !self.compromised.swap(true, Ordering::SeqCst) {
            tracing::warn!(job = %self.id, epoch = self.epoch, "lease lost");
            let cb = lock(&self.callback).take();
            if let Some(cb) = cb {
                cb(self.reason());
            }
        }
    }

    /// One heartbeat: bump the lease file's mtime, then check that `held/` is still ours.
    fn beat(&self) {
        if self.is_ended() || self.is_compromised() {
            return;
        }
        if self.enforce_limit() {
            return;
        }
        if let Some(f) = lock(&self.file).as_ref() {
            let mut last = lock(&self.last_beat);
            match touch_file(f, *last) {
                Ok(t) => *last = Some(t),
                Err(e) => tracing::warn!(job = %self.id, "heartbeat failed: {e}"),
            }
        }
        if !self.finishing.load(Ordering::SeqCst) && !self.is_ended() && !self.held.exists() {
            // Re-check after a moment's race with a commit that just completed.
            if !self.is_ended() && !self.finishing.load(Ordering::SeqCst) {
                self.compromise();
            }
        }
    }

    /// Ends the lease if its time limit has passed; true if it did.
    fn enforce_limit(&self) -> bool {
        let guard = lock(&self.limit);
        let Some(limit) = guard.as_ref() else {
            return false;
        };
        if Instant::now() < limit.at || self.finishing.load(Ordering::SeqCst) {
            return false;
        }
        let ended = match &limit.kind {
            LimitKind::Run => fs::rename(&self.held, self.epoch_dir.join("timedout")).is_ok(),
            LimitKind::Deadline { outcome, fs: afs } => {
                let written = afs
                    .write_into_private_dir(&self.held.join("outcome.json"), outcome)
                    .and_then(|()| afs.sync_dir(&self.held));
                written.is_ok()
                    && fs::rename(&self.held, self.job_dir.join("result")).is_ok()
                    && afs.sync_dir(&self.job_dir).is_ok()
            }
        };
        drop(guard);
        if ended {
            tracing::warn!(job = %self.id, epoch = self.epoch, "time limit passed: lease ended");
            self.timed_out.store(true, Ordering::SeqCst);
            self.finish();
            self.fire();
        }
        ended
    }

    /// Marks the lease lost and fires the callback, once (even after `finish`).
    fn fire(&self) {
        if !self.compromised.swap(true, Ordering::SeqCst) {
            let cb = lock(&self.callback).take();
            if let Some(cb) = cb {
                cb(self.reason());
            }
        }
    }

    /// Fails with `LeaseLost` if the lease is already known to be lost or ended (no I/O).
    pub(crate) fn check_live(&self) -> Result<()> {
        if self.is_compromised() || self.is_ended() {
            return Err(Error::LeaseLost(self.id));
        }
        Ok(())
    }

    /// Fences a write: fails with `LeaseLost` (and signals) if `held/` is gone.
    pub(crate) fn fence(&self) -> Result<()> {
        self.check_live()?;
        if !exists(&self.held)? {
            self.compromise();
            return Err(Error::LeaseLost(self.id));
        }
        Ok(())
    }

    pub(crate) fn set_finishing(&self, v: bool) {
        self.finishing.store(v, Ordering::SeqCst);
    }

    /// Ends the lease by renaming `held/` to `outcome` (`released`, `done`). Fails with
    /// `LeaseLost` if it was already taken over.
    pub(crate) fn end(&self, outcome: &str) -> Result<()> {
        if self.is_ended() {
            return Ok(());
        }
        self.set_finishing(true);
        let res = fs::rename(&self.held, self.epoch_dir.join(outcome));
        match res {
            Ok(()) => {
                crate::fault::point("end.after_rename");
                self.finish();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.set_finishing(false);
                self.compromise();
                self.finish();
                Err(Error::LeaseLost(self.id))
            }
            Err(e) => {
                self.set_finishing(false);
                Err(e).ctx("rename", &self.held)
            }
        }
    }

    /// After `held/` was consumed by this holder: stop the heartbeat, remove the lease file,
    /// drop the lock.
    pub(crate) fn finish(&self) {
        self.ended.store(true, Ordering::SeqCst);
        let f = lock(&self.file).take();
        if f.is_some() {
            // Unlink before closing, so watchers see a removal rather than a holder's death.
            let _ = remove_file_if_exists(&self.lease_path);
        }
        drop(f);
    }
}

impl LeaseState {
    /// Behaves as if the holding process died here: the OS lock is dropped and the heartbeat
    /// stops, but `held/` and the lease file stay for others to judge and take over.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn abandon(&self) {
        self.ended.store(true, Ordering::SeqCst);
        drop(lock(&self.file).take());
    }
}

/// The result of trying to claim a job or notification.
pub(crate) enum ClaimOutcome {
    /// The lease is ours.
    Claimed(Arc<LeaseState>),
    /// Someone else holds it (or won the race for it).
    Busy,
    /// The job already has a result (work claims only).
    Done,
    /// The job does not exist.
    Gone,
}

/// Tries to claim `kind` on job `id`, taking over an expired lease on the way.
pub(crate) fn claim(
    inner: &Inner,
    kind: LeaseKind,
    id: &JobId,
    entry: &str,
) -> Result<ClaimOutcome> {
    let layout = &inner.layout;
    inner.check_shard(id)?;
    if kind == LeaseKind::Work && exists(&layout.result_dir(id))? {
        return Ok(ClaimOutcome::Done); // checked first, so a done job's attempts stay as they are
    }
    // Fast path: a job that was never claimed has no epoch 1, so there is nothing to list or
    // judge. If epoch 1 appears meanwhile, the attempt fails and the full path below decides.
    if !exists(&layout.epoch_dir(kind, id, 1))? {
        match try_epoch(inner, kind, id, entry, 1)? {
            Attempt::Won(state) => return claimed(inner, kind, id, state),
            Attempt::Gone => return Ok(ClaimOutcome::Gone),
            Attempt::Taken => {}
        }
    }
    let job_dir = layout.job_dir(id);
    let names = list_names(&layout.claims_dir(kind, id))?;
    if names.is_empty() && !exists(&job_dir)? {
        return Ok(ClaimOutcome::Gone);
    }
    let max = names
        .iter()
        .filter_map(|n| parse_epoch(n))
        .max()
        .unwrap_or(0);
    if max > 0 && exists(&layout.held_dir(kind, id, max))? {
        let judged = match judge(inner, &layout.lease_file(kind, id, max))? {
            Verdict::Live => return Ok(ClaimOutcome::Busy),
            Verdict::Dead(j) => Some(j),
            Verdict::Missing => None,
        };
        if !takeover(inner, kind, id, max, judged)? {
            return Ok(ClaimOutcome::Busy);
        }
    }
    match try_epoch(inner, kind, id, entry, max + 1)? {
        Attempt::Won(state) => claimed(inner, kind, id, state),
        Attempt::Gone => Ok(ClaimOutcome::Gone),
        Attempt::Taken => Ok(ClaimOutcome::Busy),
    }
}

/// What one attempt at one epoch came to.
enum Attempt {
    Won(Arc<LeaseState>),
    /// The epoch (or its lease file) exists already.
    Taken,
    /// The job does not exist.
    Gone,
}

/// Claims exactly `epoch`: creates its lease file (locked, complete before its name appears),
/// then renames a fresh token directory to `claims/<epoch>`.
fn try_epoch(
    inner: &Inner,
    kind: LeaseKind,
    id: &JobId,
    entry: &str,
    epoch: u64,
) -> Result<Attempt> {
    let layout = &inner.layout;
    let job_dir = layout.job_dir(id);
    let lease_path = layout.lease_file(kind, id, epoch);
    let meta = LeaseMeta {
        kind: kind.prefix().to_string(),
        job: *id,
        epoch,
        host: inner.opts.host_id.clone(),
        pid: std::process::id(),
        lease_ms: inner.opts.lease.as_millis() as u64,
        acquired_at: rfc3339(SystemTime::now()),
        entry: entry.to_string(),
    };
    let bytes = serde_json::to_vec(&meta).map_err(|source| Error::Encode {
        what: "lease",
        source,
    })?;
    let tmp = inner.fs_volatile().locked_temp_file(&bytes)?;
    // A new file's mtime is its creation time: the first heartbeat (an interval later) changes
    // it, which is all observers look for.
    let beat = SystemTime::now();
    let file = match tmp.persist_noclobber(&lease_path) {
        Ok(f) => f,
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(Attempt::Taken),
        Err(e) => return Err(e.error).ctx("create lease file", &lease_path),
    };
    crate::fault::point("claim.after_lease_file");
    let cleanup = |out: Attempt| -> Result<Attempt> {
        remove_file_if_exists(&lease_path)?;
        Ok(out)
    };
    // The token: a fresh directory holding `held/` and an `epoch` marker (so the epoch
    // directory is never empty, even after a commit moves `held/` away: a rename onto an empty
    // directory would succeed and reuse the epoch).
    let token = inner.fs_volatile().temp_dir()?;
    let held_tmp = token.path().join("held");
    inner
        .fs
        .make_dir(&held_tmp)
        .ctx("create directory", &held_tmp)?;
    inner
        .fs_volatile()
        .write_into_private_dir(&token.path().join("epoch"), epoch.to_string().as_bytes())?;
    let epoch_dir = layout.epoch_dir(kind, id, epoch);
    let mut renamed = fs::rename(token.path(), &epoch_dir);
    if matches!(&renamed, Err(e) if e.kind() == io::ErrorKind::NotFound) {
        // No `claims/` yet (notification claims, or a job made by an older version).
        let claims = layout.claims_dir(kind, id);
        if !exists(&job_dir)? {
            return cleanup(Attempt::Gone);
        }
        match inner.fs.make_dir(&claims) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return cleanup(Attempt::Gone),
            Err(e) => return Err(e).ctx("create directory", &claims),
        }
        renamed = fs::rename(token.path(), &epoch_dir);
    }
    match renamed {
        Ok(()) => {
            let _ = token.keep();
            crate::fault::point("claim.after_claim");
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            return cleanup(Attempt::Taken);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return cleanup(Attempt::Gone),
        Err(e) => {
            remove_file_if_exists(&lease_path)?;
            return Err(e).ctx("rename claim into", &epoch_dir);
        }
    }
    Ok(Attempt::Won(Arc::new(LeaseState {
        id: *id,
        epoch,
        job_dir,
        held: epoch_dir.join("held"),
        epoch_dir,
        lease_path,
        file: Mutex::new(Some(file)),
        last_beat: Mutex::new(Some(beat)),
        compromised: AtomicBool::new(false),
        finishing: AtomicBool::new(false),
        ended: AtomicBool::new(false),
        callback: Mutex::new(None),
        limit: Mutex::new(None),
        timed_out: AtomicBool::new(false),
    })))
}

/// A won claim: gives it back if the job turned out to be fulfilled already, else starts its
/// heartbeat.
fn claimed(
    inner: &Inner,
    kind: LeaseKind,
    id: &JobId,
    state: Arc<LeaseState>,
) -> Result<ClaimOutcome> {
    if kind == LeaseKind::Work && exists(&inner.layout.result_dir(id))? {
        // Fulfilled before (or while) we claimed: the claim is harmless, hand it back.
        let _ = state.end("released");
        return Ok(ClaimOutcome::Done);
    }
    inner.keeper.register(&state, inner.opts.heartbeat);
    Ok(ClaimOutcome::Claimed(state))
}

/// What an observer concludes about a lease file.
pub(crate) enum Verdict {
    /// The holder is alive (or has not been observed long enough to say otherwise).
    Live,
    /// The holder is dead: its flock is free on its own host, or its heartbeat has not changed
    /// for a whole lease.
    Dead(Judged),
    /// There is no lease file.
    Missing,
}

/// The lease file judged dead: its inode (so that only that file is ever removed, never a
/// successor's of the same name) and, when proven by `flock`, the lock we now hold on it.
pub(crate) struct Judged {
    ino: u64,
    _lock: Option<File>,
}

impl Judged {
    /// Removes the judged lease file, if the name still points to the judged inode.
    pub(crate) fn remove(&self, path: &Path) -> Result<bool> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.ino() == self.ino => remove_file_if_exists(path),
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("stat", path),
        }
    }
}

/// Heartbeat observations: lease file → (mtime, inode, when this value was first seen).
#[derive(Default)]
pub(crate) struct Observations {
    seen: HashMap<PathBuf, (SystemTime, u64, Instant)>,
    pub last_scan: Option<Instant>,
}

/// Judges whether the holder of a lease file is alive.
pub(crate) fn judge(inner: &Inner, path: &Path) -> Result<Verdict> {
    judge_file(
        path,
        &inner.opts.host_id,
        inner.opts.lease,
        &inner.observations,
    )
}

/// What an observer reads from a heartbeated file's owner record (lease files and instance
/// presence files both carry these fields, among others).
#[derive(Deserialize)]
struct Owner {
    host: String,
    lease_ms: u64,
}

/// Judges the holder of any heartbeated, flocked file (§5 of FORMAT.md): `host` is this
/// observer's host id, `default_lease` the lease used when the file has no readable record,
/// and `observations` the table of (mtime, inode, first seen) this observer keeps for it.
pub(crate) fn judge_file(
    path: &Path,
    host: &str,
    default_lease: Duration,
    observations: &Mutex<Observations>,
) -> Result<Verdict> {
    let mut f = match crate::atomic::open_regular(path, false) {
        Ok(f) => f,
        Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => return Ok(Verdict::Missing),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    let meta: Option<Owner> = match (&mut f).take(64 * 1024).read_to_end(&mut buf) {
        Ok(_) => serde_json::from_slice(&buf).ok(),
        Err(_) => None,
    };
    let st = f.metadata().ctx("stat lease file", path)?;
    if let Some(m) = &meta
        && m.host == host
        && f.try_lock().is_ok()
    {
        // The lock proves death only for the file the name still points to: a holder that
        // just ended unlinks and closes its file, and a successor may own the name now.
        let same = fs::symlink_metadata(path).is_ok_and(|now| now.ino() == st.ino());
        if !same || st.nlink() == 0 {
            return Ok(Verdict::Live);
        }
        return Ok(Verdict::Dead(Judged {
            ino: st.ino(),
            _lock: Some(f),
        }));
    }
    let mtime = st.modified().ctx("stat lease file", path)?;
    let lease = meta
        .map(|m| Duration::from_millis(m.lease_ms))
        .unwrap_or(default_lease);
    let mut obs = lock(observations);
    let now = Instant::now();
    match obs.seen.get(path) {
        Some(&(m, ino, since)) if m == mtime && ino == st.ino() => {
            if now.duration_since(since) >= lease {
                obs.seen.remove(path);
                Ok(Verdict::Dead(Judged {
                    ino: st.ino(),
                    _lock: None,
                }))
            } else {
                Ok(Verdict::Live)
            }
        }
        _ => {
            obs.seen.insert(path.to_path_buf(), (mtime, st.ino(), now));
            Ok(Verdict::Live)
        }
    }
}

/// Ends a dead holder's lease: renames its `held/` to `expired` (one winner), removes its lease
/// file (the judged one only; `None` when there was none) and touches the index entry it was
/// pulled from so pullers notice. Returns false if someone else ended it first.
pub(crate) fn takeover(
    inner: &Inner,
    kind: LeaseKind,
    id: &JobId,
    epoch: u64,
    judged: Option<Judged>,
) -> Result<bool> {
    let layout = &inner.layout;
    let held = layout.held_dir(kind, id, epoch);
    let lease_path = layout.lease_file(kind, id, epoch);
    let entry = read_meta(&lease_path).map(|m| m.entry);
    crate::fault::point("takeover.before_rename");
    match fs::rename(&held, layout.epoch_dir(kind, id, epoch).join("expired")) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).ctx("rename", &held),
    }
    tracing::info!(job = %id, epoch, kind = kind.prefix(), "took over an expired lease");
    crate::fault::point("takeover.after_rename");
    if let Some(j) = &judged {
        j.remove(&lease_path)?;
    }
    drop(judged);
    // The entry comes from a file anyone with access could have written: use it only if it is
    // an index key of this very job (never a path built from arbitrary text).
    let entry = entry.filter(|e| entry_names_job(kind, id, e));
    if let Some(entry) = entry {
        let index = match kind {
            LeaseKind::Work => &inner.work,
            LeaseKind::Notify => &inner.notify,
        };
        let path = index.path(&entry);
        if exists(&path)? {
            let _ = touch_path(&path);
        }
        inner.offer(kind, entry);
    }
    Ok(true)
}

/// True if `entry` is a well-formed index key (`class/bucket/name`) naming job `id`.
fn entry_names_job(kind: LeaseKind, id: &JobId, entry: &str) -> bool {
    let Some((class, bucket, name)) = crate::index::split_key(entry) else {
        return false;
    };
    if crate::layout::parse_priority_class(class).is_none()
        || crate::layout::bucket_end_millis(bucket).is_none()
    {
        return false;
    }
    let named = match kind {
        LeaseKind::Work => name.parse::<JobId>().ok(),
        LeaseKind::Notify => crate::layout::parse_notify_entry(name),
    };
    named == Some(*id) && !name.contains('/')
}

fn read_meta(path: &Path) -> Option<LeaseMeta> {
    let bytes = crate::atomic::read_file(path, 64 * 1024).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a lease scan did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ScanReport {
    /// Dead holders' leases ended.
    pub reclaimed: u64,
    /// Lease files removed whose lease had already ended (or never began).
    pub removed: u64,
    /// Leases of other hosts still being observed (expire only after a lease without change).
    pub observing: u64,
}

/// Looks at lease files (all of them, or the given ones): takes over dead holders' leases and
/// removes lease files whose lease already ended.
pub(crate) fn scan(inner: &Inner, only: Option<Vec<PathBuf>>) -> Result<ScanReport> {
    let layout = &inner.layout;
    let full = only.is_none();
    let paths = match only {
        Some(p) => p,
        None => list_names(&layout.leases)?
            .into_iter()
            .map(|n| layout.leases.join(n))
            .collect(),
    };
    let mut report = ScanReport::default();
    for path in &paths {
        if !fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
            continue; // gone, or not a file: recover quarantines what does not belong
        }
        if let Err(e) = scan_one(inner, path, &mut report) {
            tracing::warn!("lease file {}: {e}", path.display());
        }
    }
    if full {
        let mut obs = lock(&inner.observations);
        obs.seen.retain(|p, _| paths.contains(p));
        obs.last_scan = Some(Instant::now());
    }
    Ok(report)
}

fn scan_one(inner: &Inner, path: &Path, report: &mut ScanReport) -> Result<()> {
    let layout = &inner.layout;
    {
        let Some((kind, id, epoch)) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_lease_name)
        else {
            return Ok(());
        };
        let epoch_dir = layout.epoch_dir(kind, &id, epoch);
        if !exists(&layout.job_dir(&id))? {
            if remove_file_if_exists(path)? {
                report.removed += 1;
            }
            return Ok(());
        }
        if exists(&epoch_dir.join("held"))? {
            let judged = match judge(inner, path)? {
                Verdict::Live => {
                    if read_meta(path).is_some_and(|m| m.host != inner.opts.host_id) {
                        report.observing += 1;
                    }
                    return Ok(());
                }
                Verdict::Dead(j) => Some(j),
                Verdict::Missing => None,
            };
            if takeover(inner, kind, &id, epoch, judged)? {
                report.reclaimed += 1;
            }
        } else if exists(&epoch_dir)? {
            // The lease ended; its holder died before removing the file (or is about to).
            if remove_file_if_exists(path)? {
                report.removed += 1;
            }
        } else {
            // A claim in progress, or a claimant that died before its claim appeared.
            if let Verdict::Dead(j) = judge(inner, path)?
                && j.remove(path)?
            {
                report.removed += 1;
            }
        }
    }
    Ok(())
}

/// The heartbeat thread of one store: beats every held lease each interval.
#[derive(Default)]
pub(crate) struct Keeper {
    shared: Arc<KeeperShared>,
}

#[derive(Default)]
struct KeeperShared {
    state: Mutex<KeeperState>,
    cond: Condvar,
}

#[derive(Default)]
struct KeeperState {
    leases: Vec<Weak<LeaseState>>,
    running: bool,
    stop: bool,
}

impl Keeper {
    /// Adds a lease to the heartbeat, starting the thread if needed.
    pub(crate) fn register(&self, lease: &Arc<LeaseState>, interval: Duration) {
        let mut st = lock(&self.shared.state);
        st.leases.push(Arc::downgrade(lease));
        if !st.running {
            st.running = true;
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("jobdir-heartbeat".into())
                .spawn(move || run_keeper(&shared, interval));
            if let Err(e) = spawned {
                tracing::error!("cannot start the heartbeat thread: {e}");
                st.running = false;
            }
        }
    }
}

impl Keeper {
    /// The jobs whose lease (work or notification) this process holds now.
    pub(crate) fn held(&self) -> std::collections::HashSet<JobId> {
        lock(&self.shared.state)
            .leases
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|l| !l.is_ended())
            .map(|l| l.id)
            .collect()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.cond.notify_all();
    }
}

fn run_keeper(shared: &KeeperShared, interval: Duration) {
    let mut st = lock(&shared.state);
    loop {
        let deadline = Instant::now() + interval;
        while !st.stop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if st.stop {
            return;
        }
        st.leases.retain(|w| {
            w.upgrade()
                .is_some_and(|l| !l.is_ended() && !l.is_compromised())
        });
        let live: Vec<Arc<LeaseState>> = st.leases.iter().filter_map(Weak::upgrade).collect();
        drop(st);
        for l in live {
            l.beat();
        }
        st = lock(&shared.state);
    }
}
