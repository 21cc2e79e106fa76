//! Sticky allocation of jobs to instances (after the Node package atributo): `allocate` returns
//! the instance a job is allocated to, choosing and persisting one the first time.
//!
//! Invariants kept here:
//! - **One allocation per job key, agreed by every process.** An allocation is a file
//!   `allocations/<xx>/<key>` that appears by a no-clobber rename of a complete temporary: of
//!   two processes allocating the same key at once, exactly one rename succeeds, and the other
//!   reads and returns the winner's allocation.
//! - **The allocation file is the truth; the per-instance index is derived.** The index entry
//!   `instances/<name>/jobs/<key>.<nonce>` is made (and fsynced) *before* the allocation file
//!   and removed *after* it, so a crash leaves at worst an extra entry. Listings accept an
//!   entry only if the allocation file names that instance and that nonce; `recover` adds
//!   missing entries and removes stale ones.
//! - **No new allocation to an unavailable instance.** An allocator re-reads the instance's
//!   record after its allocation file appeared, and takes the allocation back if the instance
//!   became unavailable or was removed meanwhile (`unavailable` writes the record first, then
//!   looks at allocations: one of the two sees the other).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, SystemTime};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::atomic::{list_names, older_than, read_file, remove_file_if_exists, visible_names};
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::instance::{InstanceId, InstanceInfo, ensure_dir, real_dir};
use crate::job::rfc3339;
use crate::layout::{allocation_entry, allocation_shard, is_nonce, parse_allocation_entry};
use crate::name::{check_name, validated_name};
use crate::recover::{RecoveryReport, push_q};
use crate::store::{Inner, Store, rand_u32};

/// Largest allocation file read back.
const RECORD_LIMIT: u64 = 64 * 1024;

/// How many times one `allocate` starts over after losing a race (the key was allocated or
/// the chosen instance withdrawn meanwhile) before it gives up with `NoInstance`.
const ATTEMPTS: usize = 16;

/// The key a job is allocated under: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, the first a
/// letter or a digit — atributo's arbitrary job ids (`job0`) as well as the text of a
/// [`JobId`], which converts with `From`. It names a file, so anything else is refused before a
/// path is built.
///
/// ```
/// use jobdir::{JobId, JobKey};
/// let key: JobKey = "job0".parse()?;
/// assert_eq!(key.as_str(), "job0");
/// let id = JobId::generate();
/// assert_eq!(JobKey::from(id).as_str(), id.to_string());
/// assert!("a/b".parse::<JobKey>().is_err());
/// # Ok::<(), jobdir::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobKey(String);

impl JobKey {
    /// Validates `key` as a job key.
    ///
    /// ```
    /// assert!(jobdir::JobKey::new("job-7.retry_2").is_ok());
    /// assert!(jobdir::JobKey::new("..").is_err());
    /// ```
    pub fn new(key: impl Into<String>) -> Result<JobKey> {
        check_name("job key", key.into()).map(JobKey)
    }
}

validated_name! {
    /// The key as text.
    ///
    /// ```
    /// assert_eq!(jobdir::JobKey::new("job0")?.as_str(), "job0");
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    JobKey, new = JobKey::new, debug = "JobKey({})", serde
}

impl From<JobId> for JobKey {
    fn from(id: JobId) -> JobKey {
        JobKey(id.to_string())
    }
}

impl From<&JobId> for JobKey {
    fn from(id: &JobId) -> JobKey {
        JobKey(id.to_string())
    }
}

/// What [`Store::allocate`] returns: atributo's `(instance_id, persisted)`, and whether the
/// allocation existed before the call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Allocation {
    /// The instance the job is (or would be) allocated to.
    pub instance: InstanceId,
    /// True if this call made the allocation and persisted it.
    pub persisted: bool,
    /// True if the job was already allocated (returned as is, even to an unavailable instance).
    /// When both are false, the rule chose an instance but declined to persist the choice.
    pub existing: bool,
}

/// An allocation rule's choice for a job that is not allocated yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The chosen instance; it must be one of the available instances the rule was given.
    pub instance: InstanceId,
    /// Whether to persist the allocation. When false, `allocate` returns the choice without
    /// recording it, and a later `allocate` asks the rule again.
    pub persist: bool,
}

/// How a job that is not allocated yet is given an instance (atributo's `_allocate`). Called
/// only when no allocation exists; `available` is never empty and is sorted by name.
///
/// The atributo README's example, an allocator that persists only allocations to its own
/// instance:
///
/// ```
/// use jobdir::{AllocationRule, Choice, HashRule, InstanceId, InstanceInfo, JobKey};
///
/// struct OnlyMine(InstanceId);
///
/// impl AllocationRule for OnlyMine {
///     fn choose(&self, job: &JobKey, available: &[InstanceInfo]) -> Option<Choice> {
///         let mut choice = HashRule.choose(job, available)?;
///         choice.persist = choice.instance == self.0;
///         Some(choice)
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = jobdir::Store::open(dir.path())?;
/// let (i0, i1): (InstanceId, InstanceId) = ("instance0".parse()?, "instance1".parse()?);
/// store.available(&i0)?;
/// store.available(&i1)?;
/// let job0: JobKey = "job0".parse()?;
/// let a = store.allocate_with(&job0, &OnlyMine(i0.clone()))?;
/// assert_eq!((a.instance.as_str(), a.persisted), ("instance1", false));
/// assert!(store.jobs(&i1)?.is_empty());
/// let a = store.allocate_with(&job0, &OnlyMine(i1.clone()))?;
/// assert_eq!((a.instance.as_str(), a.persisted), ("instance1", true));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait AllocationRule {
    /// Chooses an instance among `available` for `job`; `None` if none will do (then
    /// `allocate` fails with [`Error::NoInstance`]).
    fn choose(&self, job: &JobKey, available: &[InstanceInfo]) -> Option<Choice>;
}

impl<F> AllocationRule for F
where
    F: Fn(&JobKey, &[InstanceInfo]) -> Option<Choice>,
{
    fn choose(&self, job: &JobKey, available: &[InstanceInfo]) -> Option<Choice> {
        self(job, available)
    }
}

/// The default rule, atributo's: MD5 of the job key's bytes, its first four bytes read as a
/// big-endian `u32`, modulo the number of available instances, indexes the available instances
/// sorted by name (byte order). Always persists. The same key and the same set of available
/// instances give the same instance in every process, and the same instance atributo gives.
///
/// ```
/// use jobdir::HashRule;
/// // md5("job0") starts b8 57 e4 95: 0xb857e495 % 2 == 1.
/// assert_eq!(HashRule::index(&"job0".parse()?, 2), 1);
/// assert_eq!(HashRule::index(&"job1".parse()?, 2), 0);
/// # Ok::<(), jobdir::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashRule;

impl HashRule {
    /// The index into `n` sorted available instances that `job` goes to (`n` must be above 0).
    pub fn index(job: &JobKey, n: usize) -> usize {
        let digest = Md5::digest(job.as_str().as_bytes());
        let x = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        (u64::from(x) % n.max(1) as u64) as usize
    }
}

impl AllocationRule for HashRule {
    fn choose(&self, job: &JobKey, available: &[InstanceInfo]) -> Option<Choice> {
        if available.is_empty() {
            return None;
        }
        let mut ids: Vec<&InstanceId> = available.iter().map(|i| &i.id).collect();
        ids.sort_unstable();
        Some(Choice {
            instance: ids[HashRule::index(job, ids.len())].clone(),
            persist: true,
        })
    }
}

/// An allocation file's content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AllocationRecord {
    pub job: JobKey,
    pub instance: InstanceId,
    pub nonce: String,
    #[serde(default)]
    pub allocated_at: String,
    /// Sticky (atributo's meaning, and the default): the job waits for its instance, dead or
    /// not, until deallocated. A non-sticky allocation (a job created for an instance) is
    /// handed to another puller when its instance is dead (FORMAT.md §9.11).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub sticky: bool,
    /// Made by `create` for the job of this id: removed when the job finishes or is removed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub for_job: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How an allocation is recorded: atributo's (sticky, kept until deallocated) unless a job's
/// `create` asks otherwise.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AllocationFlags {
    pub sticky: bool,
    pub for_job: bool,
}

impl Default for AllocationFlags {
    fn default() -> Self {
        AllocationFlags {
            sticky: true,
            for_job: false,
        }
    }
}

impl Inner {
    /// The allocation of a key, as stored (possibly to an instance since removed).
    pub(crate) fn read_allocation(&self, job: &JobKey) -> Result<Option<AllocationRecord>> {
        let layout = &self.layout;
        if !real_dir(&layout.allocations)? || !real_dir(&layout.allocation_shard(job.as_str()))? {
            return Ok(None);
        }
        let path = layout.allocation_file(job.as_str());
        let bytes = match read_file(&path, RECORD_LIMIT) {
            Ok(b) => b,
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        parse_allocation(&bytes, job)
            .map(Some)
            .map_err(|reason| Error::Corrupt {
                path,
                reason: format!("{reason}; run recover"),
            })
    }

    /// Adds the index entry of an allocation about to be made. False if the instance does not
    /// exist (any more).
    fn add_entry(&self, instance: &InstanceId, job: &JobKey, nonce: &str) -> Result<bool> {
        let layout = &self.layout;
        let dir = layout.instance_jobs(instance.as_str());
        let path = dir.join(allocation_entry(job.as_str(), nonce));
        for _ in 0..4 {
            if !self.instance_exists(instance)? {
                return Ok(false);
            }
            if real_dir(&dir)? {
                let res = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(self.fs.file_mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path);
                match res {
                    Ok(f) => {
                        self.fs.fix_file_mode(&f, &path)?;
                        self.fs.sync_dir(&dir)?;
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(true),
                    // The instance was removed meanwhile (or its jobs/ just now).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).ctx("create allocation index entry", &path),
                }
            }
            match ensure_dir(&self.fs, &dir) {
                Ok(()) => {}
                Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Removes an index entry (a missing one is fine).
    fn remove_entry(&self, instance: &InstanceId, job: &JobKey, nonce: &str) -> Result<()> {
        let dir = self.layout.instance_jobs(instance.as_str());
        if !self.instance_exists(instance)? || !real_dir(&dir)? {
            return Ok(());
        }
        remove_file_if_exists(&dir.join(allocation_entry(job.as_str(), nonce))).map(drop)
    }

    /// Takes away the allocation of `job` if `pred` holds for it: renames the file into `tmp/`
    /// (one atomic step), checks that it is the one read (or puts it back), then removes its
    /// index entry. Returns the allocation taken.
    pub(crate) fn take_allocation(
        &self,
        job: &JobKey,
        pred: impl Fn(&AllocationRecord) -> bool,
    ) -> Result<Option<AllocationRecord>> {
        let Some(seen) = self.read_allocation(job)? else {
            return Ok(None);
        };
        if !pred(&seen) {
            return Ok(None);
        }
        let path = self.layout.allocation_file(job.as_str());
        let grave = self.layout.tmp.join(format!("dealloc.{:08x}", rand_u32()));
        match fs::rename(&path, &grave) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("rename", &path),
        }
        self.fs.sync_parent(&path)?;
        let taken = read_file(&grave, RECORD_LIMIT)
            .ok()
            .and_then(|b| parse_allocation(&b, job).ok());
        let taken = match taken {
            Some(t) if t.nonce == seen.nonce => t,
            _ => {
                // Replaced between the read and the rename: not ours to take; put it back.
                if let Err(e) = fs::hard_link(&grave, &path) {
                    tracing::warn!("allocation of {job} replaced while being removed: {e}");
                }
                let _ = fs::remove_file(&grave);
                return Ok(None);
            }
        };
        if let Err(e) = self.remove_entry(&taken.instance, job, &taken.nonce) {
            tracing::warn!("allocation of {job} removed; its index entry stays: {e}");
        }
        let _ = fs::remove_file(&grave);
        Ok(Some(taken))
    }

    /// The keys allocated to an instance: its index entries that its allocation files confirm.
    pub(crate) fn allocated_keys(
        &self,
        instance: &InstanceId,
        first_only: bool,
    ) -> Result<Vec<JobKey>> {
        let dir = self.layout.instance_jobs(instance.as_str());
        if !self.instance_exists(instance)? || !real_dir(&dir)? {
            return Ok(Vec::new());
        }
        let mut names = list_names(&dir)?;
        names.sort_unstable();
        let mut out: Vec<JobKey> = Vec::new();
        for name in names {
            let Some((key, nonce)) = parse_allocation_entry(&name) else {
                continue;
            };
            let Ok(job) = JobKey::new(key) else {
                continue;
            };
            match self.read_allocation(&job) {
                Ok(Some(r)) if &r.instance == instance && r.nonce == nonce => {
                    if out.last() != Some(&job) {
                        out.push(job);
                    }
                    if first_only {
                        break;
                    }
                }
                Ok(_) => {} // stale or in progress
                Err(e) => tracing::warn!("skipping allocation of {job}: {e}"),
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    pub(crate) fn has_jobs(&self, instance: &InstanceId) -> Result<bool> {
        Ok(!self.allocated_keys(instance, true)?.is_empty())
    }

    /// Deletes every allocation of an instance (its removal with `Removal::Now`).
    pub(crate) fn delete_allocations_of(&self, instance: &InstanceId) -> Result<()> {
        let dir = self.layout.instance_jobs(instance.as_str());
        if !self.instance_exists(instance)? || !real_dir(&dir)? {
            return Ok(());
        }
        for name in list_names(&dir)? {
            let Some((key, nonce)) = parse_allocation_entry(&name) else {
                continue;
            };
            let Ok(job) = JobKey::new(key) else {
                continue;
            };
            self.take_allocation(&job, |r| &r.instance == instance && r.nonce == nonce)?;
        }
        Ok(())
    }
}

fn parse_allocation(bytes: &[u8], job: &JobKey) -> std::result::Result<AllocationRecord, String> {
    let r: AllocationRecord =
        serde_json::from_slice(bytes).map_err(|e| format!("not an allocation: {e}"))?;
    if &r.job != job {
        return Err(format!("names job {}", r.job));
    }
    if !is_nonce(&r.nonce) {
        return Err(format!("bad nonce {:?}", r.nonce));
    }
    Ok(r)
}

impl Store {
    /// The instance a job is allocated to, allocating it with the default [`HashRule`] the
    /// first time (atributo's `allocate`). An existing allocation is returned as is, even to an
    /// unavailable instance (`existing`); otherwise one of the available instances is chosen
    /// and persisted (`persisted`). Fails with [`Error::NoInstance`] when none is available.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.available(&"instance0".parse()?)?;
    /// store.available(&"instance1".parse()?)?;
    /// let job0 = "job0".parse()?;
    /// let a = store.allocate(&job0)?;
    /// assert_eq!((a.instance.as_str(), a.persisted), ("instance1", true));
    /// let again = store.allocate(&job0)?;
    /// assert_eq!((again.instance.as_str(), again.persisted, again.existing), ("instance1", false, true));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allocate(&self, job: &JobKey) -> Result<Allocation> {
        self.allocate_with(job, &HashRule)
    }

    /// [`allocate`](Store::allocate) with another rule for new allocations (the rule may
    /// decline to persist its choice). Atomic across processes: of processes allocating the
    /// same key at once, exactly one persists, and all return its instance (those that
    /// persist nothing return their rule's choice).
    ///
    /// ```
    /// use jobdir::{Choice, InstanceInfo, JobKey};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.available(&"a".parse()?)?;
    /// store.available(&"b".parse()?)?;
    /// let last = |_: &JobKey, avail: &[InstanceInfo]| {
    ///     avail.last().map(|i| Choice { instance: i.id.clone(), persist: true })
    /// };
    /// assert_eq!(store.allocate_with(&"j".parse()?, &last)?.instance.as_str(), "b");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allocate_with<R: AllocationRule + ?Sized>(
        &self,
        job: &JobKey,
        rule: &R,
    ) -> Result<Allocation> {
        self.allocate_flagged(job, rule, AllocationFlags::default())
    }

    /// [`allocate_with`](Self::allocate_with), recording a new allocation with `flags`.
    pub(crate) fn allocate_flagged<R: AllocationRule + ?Sized>(
        &self,
        job: &JobKey,
        rule: &R,
        flags: AllocationFlags,
    ) -> Result<Allocation> {
        let inner = &self.inner;
        let layout = &inner.layout;
        for _ in 0..ATTEMPTS {
            if let Some(rec) = inner.read_allocation(job)? {
                if inner.instance_exists(&rec.instance)? {
                    return Ok(Allocation {
                        instance: rec.instance,
                        persisted: false,
                        existing: true,
                    });
                }
                // To an instance removed since: gone with it.
                inner.take_allocation(job, |r| r.nonce == rec.nonce)?;
                continue;
            }
            let available: Vec<InstanceInfo> = self
                .instances()?
                .into_iter()
                .filter(|i| i.available)
                .collect();
            if available.is_empty() {
                return Err(Error::NoInstance(job.clone()));
            }
            let choice = rule
                .choose(job, &available)
                .ok_or_else(|| Error::NoInstance(job.clone()))?;
            if !available.iter().any(|i| i.id == choice.instance) {
                return Err(Error::InvalidOption(format!(
                    "the allocation rule chose {}, which is not an available instance",
                    choice.instance
                )));
            }
            if !choice.persist {
                return Ok(Allocation {
                    instance: choice.instance,
                    persisted: false,
                    existing: false,
                });
            }
            let nonce = format!("{:08x}", rand_u32());
            // The index entry first: a crash leaves an extra entry, never a missing one.
            if !inner.add_entry(&choice.instance, job, &nonce)? {
                continue; // the instance was removed meanwhile: choose again
            }
            let rec = AllocationRecord {
                job: job.clone(),
                instance: choice.instance.clone(),
                nonce: nonce.clone(),
                allocated_at: rfc3339(SystemTime::now()),
                sticky: flags.sticky,
                for_job: flags.for_job,
            };
            let bytes = serde_json::to_vec(&rec).map_err(|source| Error::Encode {
                what: "allocation",
                source,
            })?;
            let written = ensure_dir(&inner.fs, &layout.allocations)
                .and_then(|()| ensure_dir(&inner.fs, &layout.allocation_shard(job.as_str())))
                .and_then(|()| {
                    inner
                        .fs
                        .write_file(&layout.allocation_file(job.as_str()), &bytes)
                });
            match written {
                Ok(()) => {}
                // NFS without a reply cache can report EEXIST for a link that succeeded: the
                // file holding this call's nonce is this call's own allocation.
                Err(e)
                    if e.is_io_kind(io::ErrorKind::AlreadyExists)
                        && inner
                            .read_allocation(job)
                            .ok()
                            .flatten()
                            .is_some_and(|r| r.nonce == nonce) => {}
                Err(e) => {
                    let _ = inner.remove_entry(&choice.instance, job, &nonce);
                    if e.is_io_kind(io::ErrorKind::AlreadyExists) {
                        continue; // another process won: return its allocation
                    }
                    return Err(e);
                }
            }
            // Made unavailable or removed since it was chosen? Then take it back.
            let still = inner
                .read_instance(&choice.instance)
                .ok()
                .flatten()
                .is_some_and(|r| r.available);
            if still {
                return Ok(Allocation {
                    instance: choice.instance,
                    persisted: true,
                    existing: false,
                });
            }
            inner.take_allocation(job, |r| r.nonce == nonce)?;
        }
        Err(Error::NoInstance(job.clone()))
    }

    /// Removes a job's allocation (atributo's `deallocate`), so that the next
    /// [`allocate`](Store::allocate) chooses again. Returns the instance it was allocated to,
    /// `None` if it was not allocated. An instance marked [`Removal::WhenIdle`] is removed when
    /// this takes its last allocation.
    ///
    /// [`Removal::WhenIdle`]: crate::Removal::WhenIdle
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.available(&"i".parse()?)?;
    /// let job = "job".parse()?;
    /// store.allocate(&job)?;
    /// assert_eq!(store.deallocate(&job)?.map(|i| i.to_string()), Some("i".into()));
    /// assert_eq!(store.instance(&job)?, None);
    /// assert_eq!(store.deallocate(&job)?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deallocate(&self, job: &JobKey) -> Result<Option<InstanceId>> {
        let inner = &self.inner;
        let Some(taken) = inner.take_allocation(job, |_| true)? else {
            return Ok(None);
        };
        inner.allocations_changed();
        inner.remove_if_idle(&taken.instance)?;
        Ok(Some(taken.instance))
    }

    /// The job keys allocated to an instance, sorted (atributo's `jobs`); empty for an unknown
    /// instance. Costs one listing and one small read per allocation of the instance.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let i = "i".parse()?;
    /// store.available(&i)?;
    /// store.allocate(&"b".parse()?)?;
    /// store.allocate(&"a".parse()?)?;
    /// let keys: Vec<String> = store.jobs(&i)?.iter().map(|k| k.to_string()).collect();
    /// assert_eq!(keys, ["a", "b"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn jobs(&self, instance: &InstanceId) -> Result<Vec<JobKey>> {
        self.inner.allocated_keys(instance, false)
    }

    /// True if any job is allocated to the instance (atributo's `has_jobs`).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let i = "i".parse()?;
    /// store.available(&i)?;
    /// assert!(!store.has_jobs(&i)?);
    /// store.allocate(&"job".parse()?)?;
    /// assert!(store.has_jobs(&i)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn has_jobs(&self, instance: &InstanceId) -> Result<bool> {
        self.inner.has_jobs(instance)
    }

    /// The instance a job is allocated to, if any (atributo's `instance`). Allocates nothing.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let job = "job".parse()?;
    /// assert_eq!(store.instance(&job)?, None);
    /// store.available(&"i".parse()?)?;
    /// store.allocate(&job)?;
    /// assert_eq!(store.instance(&job)?.unwrap().as_str(), "i");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn instance(&self, job: &JobKey) -> Result<Option<InstanceId>> {
        let inner = &self.inner;
        match inner.read_allocation(job)? {
            Some(r) if inner.instance_exists(&r.instance)? => Ok(Some(r.instance)),
            _ => Ok(None),
        }
    }
}

/// `recover`'s part for instances and allocations: quarantines what does not belong, removes
/// allocations to instances that no longer exist (into quarantine), re-adds missing index
/// entries, removes stale ones older than `grace`, and finishes removals asked for with
/// `Removal::WhenIdle`.
pub(crate) fn recover(inner: &Inner, grace: Duration, report: &mut RecoveryReport) -> Result<()> {
    let layout = &inner.layout;
    // 1. Instances.
    let mut instances: HashSet<InstanceId> = HashSet::new();
    if real_dir(&layout.instances)? {
        for name in visible_names(&layout.instances)? {
            let dir = layout.instances.join(&name);
            let id = match InstanceId::new(name.as_str()) {
                Ok(id) if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) => id,
                _ => {
                    push_q(inner, report, &dir, "not an instance directory")?;
                    continue;
                }
            };
            if let Err(e) = inner.read_instance(&id).and_then(|r| {
                r.ok_or_else(|| Error::Corrupt {
                    path: layout.instance_record(id.as_str()),
                    reason: "missing".into(),
                })
            }) {
                push_q(inner, report, &dir, &format!("unreadable instance: {e}"))?;
                continue;
            }
            for part in visible_names(&dir)? {
                let p = dir.join(&part);
                let ok = match part.as_str() {
                    "instance.json" => true,
                    "presence" => fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()),
                    "jobs" => fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()),
                    _ => false,
                };
                if !ok {
                    push_q(inner, report, &p, "not part of an instance")?;
                }
            }
            let jobs = layout.instance_jobs(id.as_str());
            for entry in visible_names(&jobs)? {
                let p = jobs.join(&entry);
                if parse_allocation_entry(&entry).is_none()
                    || !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file())
                {
                    push_q(inner, report, &p, "not an allocation index entry")?;
                }
            }
            instances.insert(id);
        }
    }
    // 2. Allocations: the truth.
    let mut allocated: HashMap<JobKey, (InstanceId, String)> = HashMap::new();
    if real_dir(&layout.allocations)? {
        for shard in visible_names(&layout.allocations)? {
            let dir = layout.allocations.join(&shard);
            let is_shard = shard.len() == 2
                && shard
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !is_shard || !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                push_q(inner, report, &dir, "not an allocation shard")?;
                continue;
            }
            for name in visible_names(&dir)? {
                let p = dir.join(&name);
                let job = match JobKey::new(name.as_str()) {
                    Ok(k) if allocation_shard(k.as_str()) == shard => k,
                    _ => {
                        push_q(inner, report, &p, "not a job key of this shard")?;
                        continue;
                    }
                };
                let rec = match inner.read_allocation(&job) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        push_q(inner, report, &p, &format!("unreadable allocation: {e}"))?;
                        continue;
                    }
                };
                if !instances.contains(&rec.instance) {
                    push_q(
                        inner,
                        report,
                        &p,
                        "allocation to an instance that does not exist",
                    )?;
                    continue;
                }
                // A job's own allocation (affinity.rs) outlives neither the job nor its end.
                // A young one may belong to a create in progress (allocated first): left.
                if rec.for_job && job_is_over(inner, &job)? && older_than(&p, grace) {
                    if inner
                        .take_allocation(&job, |r| r.nonce == rec.nonce)?
                        .is_some()
                    {
                        report.allocations_released += 1;
                    }
                    continue;
                }
                let entry = layout
                    .instance_jobs(rec.instance.as_str())
                    .join(allocation_entry(job.as_str(), &rec.nonce));
                if !crate::atomic::exists(&entry)?
                    && inner.add_entry(&rec.instance, &job, &rec.nonce)?
                {
                    report.entries_added += 1;
                }
                allocated.insert(job, (rec.instance, rec.nonce));
            }
        }
    }
    // 3. Stale index entries (an allocation in progress has a young one: leave those).
    for id in &instances {
        let jobs = layout.instance_jobs(id.as_str());
        for entry in visible_names(&jobs)? {
            let Some((key, nonce)) = parse_allocation_entry(&entry) else {
                continue;
            };
            let confirmed = JobKey::new(key)
                .ok()
                .and_then(|k| allocated.get(&k))
                .is_some_and(|(i, n)| i == id && n == nonce);
            if confirmed {
                continue;
            }
            let p = jobs.join(&entry);
            if older_than(&p, grace) && remove_file_if_exists(&p)? {
                report.entries_removed += 1;
            }
        }
    }
    // 4. Removals waiting for the last allocation to go.
    for id in &instances {
        if inner.remove_if_idle(id)? {
            report.instances_removed += 1;
        }
    }
    Ok(())
}

/// True if `key` names a job of this store that has finished or does not exist.
fn job_is_over(inner: &Inner, key: &JobKey) -> Result<bool> {
    let Ok(id) = key.as_str().parse::<JobId>() else {
        return Ok(false);
    };
    if inner.check_shard(&id).is_err() {
        return Ok(false);
    }
    Ok(!crate::atomic::exists(&inner.layout.job_dir(&id))?
        || crate::atomic::exists(&inner.layout.result_dir(&id))?)
}
