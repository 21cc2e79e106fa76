//! Instances: the named workers that jobs are allocated to (after the Node package atributo),
//! their availability, and whether a live process runs as them.
//!
//! Invariants kept here:
//! - **An instance appears whole.** Its directory is built in `tmp/` with `instance.json`
//!   inside and renamed into place; its record is then only ever replaced atomically (a rename
//!   over it), never edited in place. Removal is one rename of the directory into `tmp/`.
//! - **After `unavailable` returns, no new allocation goes to the instance.** `unavailable`
//!   writes the record, then looks for allocations; an allocator writes its allocation, then
//!   reads the record (see `allocation.rs`). Whichever runs second sees the other's write.
//! - **Liveness as for leases.** A process that joins as an instance holds a `flock` on its
//!   presence file and bumps its mtime every heartbeat. On the holder's host a free flock proves
//!   it dead; elsewhere, an mtime unchanged for the holder's lease length on the observer's
//!   monotonic clock. Clocks of different hosts are never compared.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::atomic::{AtomicFs, list_names, read_file, remove_file_if_exists, touch_file};
use crate::error::{Error, IoContext, Result};
use crate::job::rfc3339;
use crate::lease::{Verdict, judge_file};
use crate::name::{check_name, validated_name};
use crate::store::{Inner, Store, rand_u32};

/// Largest instance record or presence record read back.
const RECORD_LIMIT: u64 = 64 * 1024;

/// The name of an instance: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, the first a letter or
/// a digit. It names a directory, so anything else is refused before a path is built.
///
/// ```
/// use jobdir::InstanceId;
/// let id: InstanceId = "instance0".parse()?;
/// assert_eq!(id.as_str(), "instance0");
/// assert!("../x".parse::<InstanceId>().is_err());
/// assert!(".hidden".parse::<InstanceId>().is_err());
/// # Ok::<(), jobdir::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// Validates `name` as an instance name.
    ///
    /// ```
    /// assert!(jobdir::InstanceId::new("worker-1").is_ok());
    /// assert!(jobdir::InstanceId::new("").is_err());
    /// ```
    pub fn new(name: impl Into<String>) -> Result<InstanceId> {
        check_name("instance name", name.into()).map(InstanceId)
    }
}

validated_name! {
    /// The name as text.
    ///
    /// ```
    /// let id = jobdir::InstanceId::new("w1")?;
    /// assert_eq!(id.as_str(), "w1");
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    InstanceId, new = InstanceId::new, debug = "InstanceId({})", serde
}

/// Whether a process runs as an instance, as this process judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Liveness {
    /// A process has joined as the instance ([`Store::join`]) and heartbeats. Another host's
    /// process is reported live until this process has seen its heartbeat unchanged for a
    /// whole lease (clocks of different hosts are never compared).
    Live,
    /// A process joined as the instance and stopped heartbeating: it died (on this host: its
    /// OS lock is free) or has not heartbeated for a lease length.
    Dead,
    /// No process has joined as the instance (or the last one left).
    Absent,
}

impl Liveness {
    /// `"live"`, `"dead"` or `"absent"`.
    ///
    /// ```
    /// assert_eq!(jobdir::Liveness::Dead.as_str(), "dead");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Live => "live",
            Liveness::Dead => "dead",
            Liveness::Absent => "absent",
        }
    }
}

/// One instance as listed by [`Store::instances`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct InstanceInfo {
    /// Its name.
    pub id: InstanceId,
    /// Whether new jobs may be allocated to it.
    pub available: bool,
    /// Marked by [`Removal::WhenIdle`]: it is removed when its last allocation goes.
    pub remove_when_idle: bool,
    /// Whether a live process runs as it.
    pub liveness: Liveness,
}

/// What [`Store::unavailable`] does besides stopping new allocations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Removal {
    /// Keep the instance (and its allocations); it is listed as unavailable.
    #[default]
    Keep,
    /// Remove the instance once it has no allocations left: now if it has none, else when
    /// [`Store::deallocate`] takes its last one.
    WhenIdle,
    /// Remove the instance and delete its allocations now (atributo's `unavailable(id, true)`).
    Now,
}

/// `instance.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub instance: InstanceId,
    pub available: bool,
    #[serde(default)]
    pub remove_when_idle: bool,
    #[serde(default)]
    pub updated_at: String,
}

/// The owner record of a presence file.
#[derive(Serialize)]
struct PresenceRecord<'a> {
    instance: &'a InstanceId,
    host: &'a str,
    pid: u32,
    lease_ms: u64,
    joined_at: String,
}

/// `lstat`: `true` for a real directory, `false` when missing, `Corrupt` for anything else (a
/// file, or a symlink, which is never followed).
pub(crate) fn real_dir(dir: &Path) -> Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(Error::Corrupt {
            path: dir.to_path_buf(),
            reason: "must be a directory (not a file or a symlink); run recover".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx("stat", dir),
    }
}

/// Makes sure `dir` is a real directory, creating it (one level, the store's mode; its parent
/// fsynced in durable mode) when missing. `NotFound` if the parent is missing.
pub(crate) fn ensure_dir(fs: &AtomicFs, dir: &Path) -> Result<()> {
    if real_dir(dir)? {
        return Ok(());
    }
    match fs.make_dir(dir) {
        Ok(()) => fs.sync_parent(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => real_dir(dir).map(drop),
        Err(e) => Err(e).ctx("create directory", dir),
    }
}

impl Inner {
    /// The record of an instance; `None` when it does not exist.
    pub(crate) fn read_instance(&self, id: &InstanceId) -> Result<Option<InstanceRecord>> {
        let layout = &self.layout;
        if !real_dir(&layout.instances)? || !real_dir(&layout.instance_dir(id.as_str()))? {
            return Ok(None);
        }
        let path = layout.instance_record(id.as_str());
        let bytes = match read_file(&path, RECORD_LIMIT) {
            Ok(b) => b,
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<InstanceRecord>(&bytes) {
            Ok(r) if &r.instance == id => Ok(Some(r)),
            Ok(r) => Err(Error::Corrupt {
                path,
                reason: format!("names instance {}", r.instance),
            }),
            Err(e) => Err(Error::Corrupt {
                path,
                reason: format!("not an instance record: {e}"),
            }),
        }
    }

    /// True if the instance's directory exists (its allocations count).
    pub(crate) fn instance_exists(&self, id: &InstanceId) -> Result<bool> {
        Ok(real_dir(&self.layout.instances)? && real_dir(&self.layout.instance_dir(id.as_str()))?)
    }

    /// Writes an instance's record: replaces it, or makes the instance (built in `tmp/`, renamed
    /// into place) when it does not exist.
    fn write_instance(
        &self,
        id: &InstanceId,
        available: bool,
        remove_when_idle: bool,
    ) -> Result<()> {
        let layout = &self.layout;
        let rec = InstanceRecord {
            instance: id.clone(),
            available,
            remove_when_idle,
            updated_at: rfc3339(SystemTime::now()),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|source| Error::Encode {
            what: "instance",
            source,
        })?;
        ensure_dir(&self.fs, &layout.instances)?;
        let dir = layout.instance_dir(id.as_str());
        let mut last = None;
        for _ in 0..8 {
            if real_dir(&dir)? {
                // Exists: replace the record. ENOENT: removed meanwhile; make it again.
                match self
                    .fs
                    .replace_file(&layout.instance_record(id.as_str()), &bytes)
                {
                    Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => last = Some(e),
                    other => return other,
                }
                continue;
            }
            let staging = self.fs.temp_dir()?;
            self.fs
                .write_into_private_dir(&staging.path().join("instance.json"), &bytes)?;
            self.fs.sync_dir(staging.path())?;
            match fs::rename(staging.path(), &dir) {
                Ok(()) => {
                    let _ = staging.keep();
                    return self.fs.sync_parent(&dir);
                }
                // Made by someone else meanwhile: replace its record.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
                    ) => {}
                Err(e) => return Err(e).ctx("rename instance into", &dir),
            }
        }
        Err(last.unwrap_or_else(|| Error::Corrupt {
            path: dir,
            reason: "the instance kept being removed while its record was written".into(),
        }))
    }

    /// Removes an instance: one rename of its directory into `tmp/`, then deletion. A process
    /// joined as it finds its presence file gone.
    pub(crate) fn remove_instance(&self, id: &InstanceId) -> Result<bool> {
        let dir = self.layout.instance_dir(id.as_str());
        if !real_dir(&self.layout.instances)? {
            return Ok(false);
        }
        let grave = self
            .layout
            .tmp
            .join(format!("removed-instance.{id}.{:08x}", rand_u32()));
        match fs::rename(&dir, &grave) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).ctx("rename", &dir),
        }
        self.fs.sync_parent(&dir)?;
        if let Err(e) = fs::remove_dir_all(&grave) {
            tracing::warn!("leaving {} for recover: {e}", grave.display());
        }
        Ok(true)
    }

    /// Finishes a removal asked for with [`Removal::WhenIdle`] once the instance has no
    /// allocations left. True if it removed the instance.
    pub(crate) fn remove_if_idle(&self, id: &InstanceId) -> Result<bool> {
        match self.read_instance(id)? {
            Some(r) if r.remove_when_idle && !r.available && !self.has_jobs(id)? => {
                self.remove_instance(id)
            }
            _ => Ok(false),
        }
    }

    /// Judges the process joined as an instance.
    pub(crate) fn liveness(&self, id: &InstanceId) -> Result<Liveness> {
        let path = self.layout.presence(id.as_str());
        Ok(
            match judge_file(
                &path,
                &self.opts.host_id,
                self.opts.lease,
                &self.instance_observations,
            )? {
                Verdict::Live => Liveness::Live,
                Verdict::Dead(_) => Liveness::Dead,
                Verdict::Missing => Liveness::Absent,
            },
        )
    }
}

impl Store {
    /// Makes an instance available for new allocations, creating it if needed (atributo's
    /// `available`). Clears a pending [`Removal::WhenIdle`].
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.available(&"instance0".parse()?)?;
    /// assert!(store.instances()?[0].available);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn available(&self, id: &InstanceId) -> Result<()> {
        self.inner.write_instance(id, true, false)
    }

    /// Makes an instance unavailable: no new allocation goes to it once this returns (existing
    /// ones stay, and [`allocate`](Store::allocate) still returns them). With
    /// [`Removal::WhenIdle`] it is removed once it has no allocations left; with
    /// [`Removal::Now`] its allocations are deleted and it is removed at once (atributo's
    /// `unavailable(id, true)`). An unknown instance is created unavailable with
    /// [`Removal::Keep`]; the removals do nothing to it.
    ///
    /// ```
    /// use jobdir::{InstanceId, Removal};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let i0: InstanceId = "instance0".parse()?;
    /// store.available(&i0)?;
    /// store.unavailable(&i0, Removal::Keep)?;
    /// assert!(!store.instances()?[0].available);
    /// store.unavailable(&i0, Removal::Now)?;
    /// assert!(store.instances()?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unavailable(&self, id: &InstanceId, removal: Removal) -> Result<()> {
        let inner = &self.inner;
        let done = self.unavailable_inner(id, removal);
        // Jobs this process's pulls skipped as the instance's may now be handed over.
        inner.allocations_changed();
        done
    }

    fn unavailable_inner(&self, id: &InstanceId, removal: Removal) -> Result<()> {
        let inner = &self.inner;
        match removal {
            Removal::Keep => inner.write_instance(id, false, false),
            Removal::WhenIdle => {
                if !inner.instance_exists(id)? {
                    return Ok(());
                }
                inner.write_instance(id, false, true)?;
                inner.remove_if_idle(id).map(drop)
            }
            Removal::Now => {
                if !inner.instance_exists(id)? {
                    return Ok(());
                }
                // Marked for removal first: a crash part-way leaves an instance that goes when
                // its remaining allocations do (or at the next recover).
                inner.write_instance(id, false, true)?;
                inner.delete_allocations_of(id)?;
                inner.remove_instance(id).map(drop)
            }
        }
    }

    /// Every instance, sorted by name, with its availability and liveness (atributo's
    /// `instances`). Reads each instance's record and judges its presence file; instances whose
    /// record cannot be read are left out with a warning (`recover` quarantines them).
    ///
    /// ```
    /// use jobdir::Liveness;
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.available(&"b".parse()?)?;
    /// store.available(&"a".parse()?)?;
    /// let list = store.instances()?;
    /// assert_eq!(list.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    /// assert_eq!(list[0].liveness, Liveness::Absent); // no process has joined as "a"
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn instances(&self) -> Result<Vec<InstanceInfo>> {
        let inner = &self.inner;
        if !real_dir(&inner.layout.instances)? {
            return Ok(Vec::new());
        }
        let mut names = list_names(&inner.layout.instances)?;
        names.sort_unstable();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Ok(id) = InstanceId::new(name) else {
                continue; // foreign: recover quarantines it
            };
            let rec = match inner.read_instance(&id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("skipping instance {id}: {e}");
                    continue;
                }
            };
            let liveness = match inner.liveness(&id) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("instance {id}: cannot judge its presence: {e}");
                    Liveness::Live
                }
            };
            out.push(InstanceInfo {
                id,
                available: rec.available,
                remove_when_idle: rec.remove_when_idle,
                liveness,
            });
        }
        Ok(out)
    }

    /// Runs this process as an instance: makes it available (as
    /// [`available`](Store::available)) and keeps a presence file for it, locked and
    /// heartbeated by a thread, until the returned [`Presence`] is dropped. Meanwhile
    /// [`instances`](Store::instances) reports it [`Liveness::Live`]; if the process dies or
    /// stalls for a lease, [`Liveness::Dead`]. One live process per instance: a second `join`
    /// fails with [`Error::InstanceInUse`]; a dead one's presence is taken over (on its host at
    /// once; from another host once this process has seen it unchanged for a lease, so retry).
    ///
    /// ```
    /// use jobdir::Liveness;
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let me = store.join(&"worker-1".parse()?)?;
    /// assert_eq!(store.instances()?[0].liveness, Liveness::Live);
    /// assert!(matches!(store.join(me.instance()), Err(jobdir::Error::InstanceInUse(_))));
    /// drop(me);
    /// assert_eq!(store.instances()?[0].liveness, Liveness::Absent);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn join(&self, id: &InstanceId) -> Result<Presence> {
        let inner = &self.inner;
        let path = inner.layout.presence(id.as_str());
        for _ in 0..4 {
            self.available(id)?;
            let rec = PresenceRecord {
                instance: id,
                host: &inner.opts.host_id,
                pid: std::process::id(),
                lease_ms: inner.opts.lease.as_millis() as u64,
                joined_at: rfc3339(SystemTime::now()),
            };
            let bytes = serde_json::to_vec(&rec).map_err(|source| Error::Encode {
                what: "presence",
                source,
            })?;
            // Complete, locked and touched before its name appears, as a lease file.
            let tmp = inner.fs_volatile().locked_temp_file(&bytes)?;
            let beat = touch_file(tmp.as_file(), None).ctx("touch", tmp.path())?;
            match tmp.persist_noclobber(&path) {
                Ok(file) => return Presence::start(id.clone(), path, file, beat, inner),
                Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                    match judge_file(
                        &path,
                        &inner.opts.host_id,
                        inner.opts.lease,
                        &inner.instance_observations,
                    )? {
                        Verdict::Live => return Err(Error::InstanceInUse(id.clone())),
                        Verdict::Dead(judged) => {
                            judged.remove(&path)?;
                        }
                        Verdict::Missing => {}
                    }
                }
                // The instance was removed meanwhile: make it again.
                Err(e) if e.error.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.error).ctx("create presence file", &path),
            }
        }
        Err(Error::InstanceInUse(id.clone()))
    }
}

/// A process's presence as an instance, from [`Store::join`]: a thread heartbeats its presence
/// file until this is dropped (or [`leave`](Presence::leave) is called), which removes the
/// file. Leaving changes neither the instance's availability nor its allocations.
#[must_use = "the process runs as the instance only while the Presence is kept"]
pub struct Presence {
    id: InstanceId,
    shared: Arc<PresenceShared>,
    thread: Option<JoinHandle<()>>,
}

struct PresenceShared {
    path: PathBuf,
    file: File,
    ino: u64,
    lost: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence")
            .field("instance", &self.id)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Presence {
    fn start(
        id: InstanceId,
        path: PathBuf,
        file: File,
        beat: SystemTime,
        inner: &Inner,
    ) -> Result<Presence> {
        let ino = file.metadata().ctx("stat", &path)?.ino();
        let shared = Arc::new(PresenceShared {
            path,
            file,
            ino,
            lost: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let every = inner.opts.heartbeat;
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("jobdir-instance-{id}"))
            .spawn(move || heartbeat(&s2, every, beat))
            .ctx("start heartbeat thread for", &shared.path)?;
        Ok(Presence {
            id,
            shared,
            thread: Some(thread),
        })
    }

    /// The instance this process runs as.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let me = store.join(&"w1".parse()?)?;
    /// assert_eq!(me.instance().as_str(), "w1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn instance(&self) -> &InstanceId {
        &self.id
    }

    /// True once the presence file is no longer this process's: the instance was removed, or
    /// another process took the presence over after judging this one dead (it stalled for a
    /// lease). The heartbeat has stopped then.
    ///
    /// ```
    /// use jobdir::Removal;
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::builder(dir.path())
    ///     .lease(std::time::Duration::from_millis(300))
    ///     .open()?;
    /// let me = store.join(&"w1".parse()?)?;
    /// assert!(!me.is_lost());
    /// store.unavailable(me.instance(), Removal::Now)?;
    /// while !me.is_lost() {
    ///     std::thread::sleep(std::time::Duration::from_millis(10));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// Leaves: stops the heartbeat and removes the presence file (the same as dropping).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.join(&"w1".parse()?)?.leave();
    /// assert_eq!(store.instances()?[0].liveness, jobdir::Liveness::Absent);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn leave(self) {}
}

impl Drop for Presence {
    fn drop(&mut self) {
        *self
            .shared
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.is_lost() && still_ours(&self.shared) {
            // Unlink before the descriptor closes, so no observer mistakes it for a death.
            let _ = remove_file_if_exists(&self.shared.path);
        }
    }
}

/// True if the presence name still points to this holder's file.
fn still_ours(s: &PresenceShared) -> bool {
    fs::symlink_metadata(&s.path).is_ok_and(|m| m.ino() == s.ino)
}

/// The heartbeat of one presence: bump the mtime, check the name is still ours.
fn heartbeat(s: &PresenceShared, every: Duration, first: SystemTime) {
    let mut last = Some(first);
    let mut stop = s.stop.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        stop = s
            .wake
            .wait_timeout_while(stop, every, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if *stop {
            return;
        }
        match touch_file(&s.file, last) {
            Ok(t) => last = Some(t),
            Err(e) => tracing::warn!("heartbeat of {} failed: {e}", s.path.display()),
        }
        if !still_ours(s) {
            tracing::warn!("presence {} lost", s.path.display());
            s.lost.store(true, Ordering::SeqCst);
            return;
        }
    }
}
