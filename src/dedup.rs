//! De-duplication keys (FORMAT.md §12.1–12.4): a create with a key makes no job while a job
//! created with that key has not finished (or finished less than its TTL ago), and returns that
//! job's id instead, to every process.
//!
//! Invariants kept here:
//! - **One live job per key, agreed by every process.** A key is a directory
//!   `keys/<xx>/<sha256(key)>/` of numbered records; each names a job. The newest record is the
//!   key's state. A creator that finds the newest record *stale* (its job finished past its TTL,
//!   or gone) claims the next number with a no-clobber rename of a complete file: of creators
//!   racing for a number exactly one wins, and the others read the winner's record. Numbers are
//!   never reused while the directory exists, so no claim is ever replaced or removed under a
//!   creator (only `recover` prunes, with the limits of FORMAT.md §12.6).
//! - **The record never names a job that does not exist yet.** The job directory is renamed
//!   into place (with no index entry, so no puller sees it) *before* its record is claimed; a
//!   creator that loses takes its job back out, and indexes nothing.
//! - **A key is live only while its job is unfinished** (or within its TTL): nothing needs to
//!   run when a job finishes, so every way of finishing (fulfil, fail, cancel, expire) frees it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::atomic::{exists, is_real_dir, list_names, older_than, read_file, visible_names};
use crate::error::{Error, IoContext, Result};
use crate::group::GroupId;
use crate::id::JobId;
use crate::instance::{ensure_dir, real_dir};
use crate::job::{CreateOptions, JobRecord, rfc3339};
use crate::layout::{KEYS, epoch_name, parse_epoch};
use crate::name::validated_name;
use crate::recover::{RecoveryReport, push_q};
use crate::store::{Inner, Store, rand_u32};

/// Longest key, in bytes.
const KEY_MAX: usize = 1024;

/// Largest key record read back.
const RECORD_LIMIT: u64 = 64 * 1024;

/// How many times one create starts its claim over (the newest record changed under it, or the
/// key directory was swept) before it gives up.
const ATTEMPTS: usize = 32;

const KEY_RULE: &str = "use 1 to 1024 bytes of text without control characters";

/// A de-duplication key ([`CreateOptions::key`]): any text of 1 to 1024 bytes without control
/// characters (BullMQ's job ids, proletariat's `_key`). It is hashed (SHA-256) to name its
/// directory, so any such text is safe; anything else is refused before the store is touched.
///
/// ```
/// use jobdir::DedupKey;
/// let key: DedupKey = "email:ann@example.com/welcome".parse()?;
/// assert_eq!(key.as_str(), "email:ann@example.com/welcome");
/// assert!(DedupKey::new("").is_err());
/// assert!(DedupKey::new("a\nb").is_err());
/// # Ok::<(), jobdir::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DedupKey(String);

impl DedupKey {
    /// Checks `key` as a de-duplication key.
    ///
    /// ```
    /// assert!(jobdir::DedupKey::new("user 42: nightly report").is_ok());
    /// assert!(jobdir::DedupKey::new("x".repeat(1025)).is_err());
    /// ```
    pub fn new(key: impl Into<String>) -> Result<DedupKey> {
        let key = key.into();
        if key.is_empty() || key.len() > KEY_MAX || key.chars().any(char::is_control) {
            return Err(Error::InvalidName {
                what: "de-duplication key",
                text: key.chars().take(80).collect(),
                reason: KEY_RULE,
            });
        }
        Ok(DedupKey(key))
    }

    /// 64 lowercase hex digits of SHA-256 of the key's bytes: the key directory's name.
    fn hash(&self) -> String {
        hex(&Sha256::digest(self.0.as_bytes()))
    }
}

// No serde: a key is only ever written inside a key record, as its text.
validated_name! {
    /// The key as text.
    ///
    /// ```
    /// assert_eq!(jobdir::DedupKey::new("k")?.as_str(), "k");
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    DedupKey, new = DedupKey::new, debug = "DedupKey({:?})"
}

/// What [`Store::create_keyed`] returns: the job's id, and whether it existed before the call.
///
/// ```
/// use jobdir::CreateOptions;
/// let dir = tempfile::tempdir()?;
/// let store = jobdir::Store::open(dir.path())?;
/// let made = store.create_keyed(&1, CreateOptions::default())?;
/// assert!(!made.existing);
/// assert_eq!(store.get(&made.id)?.request, serde_json::json!(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Created {
    /// The job: a new one, or the unfinished job that holds the key.
    pub id: JobId,
    /// True if no job was made: a job created with the same key had not finished (or finished
    /// within its TTL), and this is its id.
    pub existing: bool,
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A key record: `keys/<xx>/<hash>/<n>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyRecord {
    /// When it was claimed, by the creator's clock (informational).
    #[serde(default)]
    created_at: String,
    /// The job holding the key.
    job: JobId,
    /// The key itself (its hash must be the directory's name).
    key: String,
    /// How long the key stays taken after the job has finished; absent or 0: not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
}

fn keys_root(inner: &Inner) -> PathBuf {
    inner.layout.root.join(KEYS)
}

/// `keys/<xx>/<hash>`.
fn key_dir(inner: &Inner, key: &DedupKey) -> PathBuf {
    let h = key.hash();
    keys_root(inner).join(&h[..2]).join(h)
}

/// Reads a key record and checks that it belongs to the directory it is in.
fn read_record(path: &Path, hash: &str) -> Result<KeyRecord> {
    let bytes = read_file(path, RECORD_LIMIT)?;
    let rec: KeyRecord = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not a key record: {e}"),
    })?;
    if hex(&Sha256::digest(rec.key.as_bytes())) != hash {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: "its key does not hash to its directory's name".into(),
        });
    }
    Ok(rec)
}

/// The newest record of a key directory: (its number, what reading it gave). `None` if the
/// directory is missing or holds no record.
fn newest(dir: &Path, hash: &str) -> Result<Option<(u64, Result<KeyRecord>)>> {
    let Some(n) = list_names(dir)?.iter().filter_map(|n| parse_epoch(n)).max() else {
        return Ok(None);
    };
    Ok(Some((n, read_record(&dir.join(epoch_name(n)), hash))))
}

/// True for a read error that makes a record unusable but is no reason to fail a create: a
/// planted directory, symlink or corrupt file is skipped over as stale (recover reports it).
fn unusable(e: &Error) -> bool {
    matches!(e, Error::Corrupt { .. })
        || matches!(e, Error::Io { source, .. }
            if source.kind() == io::ErrorKind::IsADirectory
                || source.raw_os_error() == Some(libc::ELOOP))
}

/// Whether a key record still holds its key: its job exists and has not finished, or finished
/// less than `ttl_ms` ago (by this process's clock against the finish time).
fn is_live(inner: &Inner, rec: &KeyRecord, now: SystemTime) -> Result<bool> {
    let id = &rec.job;
    if inner.check_shard(id).is_err() {
        return Ok(true); // unreachable until recover: never make a second job meanwhile
    }
    let layout = &inner.layout;
    if !exists(&layout.job_dir(id))? {
        return Ok(false);
    }
    let result = layout.result_dir(id);
    if !exists(&result)? {
        return Ok(true);
    }
    let ttl = Duration::from_millis(rec.ttl_ms.unwrap_or(0));
    if ttl.is_zero() {
        // A `result/` with neither file is only left by a power loss in fast mode; recover
        // makes the job pending again, so it counts as unfinished.
        return Ok(!exists(&layout.result_value(id))? && !exists(&layout.result_outcome(id))?);
    }
    let finished = match finished_at(inner, id)? {
        Some(t) => t,
        None => return Ok(true),
    };
    Ok(now < finished + ttl)
}

/// When a finished job finished: its value's mtime, or its outcome's `at`.
fn finished_at(inner: &Inner, id: &JobId) -> Result<Option<SystemTime>> {
    let layout = &inner.layout;
    match fs::symlink_metadata(layout.result_value(id)) {
        Ok(m) => return Ok(m.modified().ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).ctx("stat", layout.result_value(id)),
    }
    Ok(crate::outcome::read_outcome(inner, id)?.and_then(|o| humantime::parse_rfc3339(&o.at).ok()))
}

/// The live job holding `key`, if any (reads only).
fn holder(inner: &Inner, key: &DedupKey) -> Result<Option<JobId>> {
    let root = keys_root(inner);
    let dir = key_dir(inner, key);
    let shard = dir.parent().unwrap_or(&root);
    if !real_dir(&root)? || !real_dir(shard)? || !real_dir(&dir)? {
        return Ok(None);
    }
    let now = SystemTime::now();
    for _ in 0..ATTEMPTS {
        match newest(&dir, &key.hash())? {
            None => return Ok(None),
            Some((_, Ok(rec))) => {
                return Ok(is_live(inner, &rec, now)?.then_some(rec.job));
            }
            Some((_, Err(e))) if e.is_io_kind(io::ErrorKind::NotFound) => continue, // pruned
            Some((_, Err(e))) if unusable(&e) => {
                tracing::warn!("key {key}: skipping an unusable record: {e}");
                return Ok(None);
            }
            Some((_, Err(e))) => return Err(e),
        }
    }
    Ok(None)
}

/// How a claim ended.
enum Claim {
    /// The key's newest record is now ours.
    Won,
    /// A live job holds the key.
    Held(JobId),
}

/// Claims `key` for job `id` (whose directory is in place): the next record number after a
/// stale newest record, by a no-clobber rename of a complete file.
fn claim(inner: &Inner, key: &DedupKey, id: &JobId, ttl: Option<Duration>) -> Result<Claim> {
    let root = keys_root(inner);
    let dir = key_dir(inner, key);
    let hash = key.hash();
    let rec = KeyRecord {
        created_at: rfc3339(SystemTime::now()),
        job: *id,
        key: key.as_str().to_string(),
        ttl_ms: ttl
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
            .filter(|&ms| ms > 0),
    };
    let bytes = serde_json::to_vec(&rec).map_err(|source| Error::Encode {
        what: "key record",
        source,
    })?;
    'attempt: for _ in 0..ATTEMPTS {
        for d in [&root, dir.parent().unwrap_or(&root), &dir] {
            match ensure_dir(&inner.fs, d) {
                Ok(()) => {}
                // Swept by recover between two levels: start over.
                Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => continue 'attempt,
                Err(e) => return Err(e),
            }
        }
        let next = match newest(&dir, &hash)? {
            None => 1,
            Some((n, Ok(found))) => {
                if found.job == *id {
                    // Our own record: a link reported as failed after it succeeded (NFS).
                    return Ok(Claim::Won);
                }
                if is_live(inner, &found, SystemTime::now())? {
                    return Ok(Claim::Held(found.job));
                }
                n + 1
            }
            Some((_, Err(e))) if e.is_io_kind(io::ErrorKind::NotFound) => continue,
            Some((n, Err(e))) if unusable(&e) => {
                tracing::warn!("key {key}: skipping an unusable record: {e}");
                n + 1
            }
            Some((_, Err(e))) => return Err(e),
        };
        let path = dir.join(epoch_name(next));
        match inner.fs.write_file(&path, &bytes) {
            Ok(()) => return Ok(Claim::Won),
            // Another creator took this number (read it next round), or recover swept the
            // directory meanwhile (make it again).
            Err(e)
                if e.is_io_kind(io::ErrorKind::AlreadyExists)
                    || e.is_io_kind(io::ErrorKind::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Err(Error::Io {
        op: "claim key",
        path: dir,
        source: io::Error::new(
            io::ErrorKind::ResourceBusy,
            "its record kept changing; try again",
        ),
    })
}

/// Takes a job that was renamed into place but never indexed back out (it was acknowledged to
/// nobody). Best effort: a job left behind is found by recover.
fn unmake(inner: &Inner, id: &JobId) {
    let grave = inner
        .layout
        .tmp
        .join(format!("unmade.{id}.{:08x}", rand_u32()));
    if fs::rename(inner.layout.job_dir(id), &grave).is_ok() {
        let _ = fs::remove_dir_all(&grave);
    }
}

/// Create, before anything is written: checks the options, and returns the job holding the key
/// if there is one (the common duplicate costs a few reads, no write).
pub(crate) fn before_create(store: &Store, opts: &CreateOptions) -> Result<Option<Created>> {
    if opts.keep_key.is_some() && opts.key.is_none() {
        return Err(Error::InvalidOption(
            "keep_key_for needs a key (CreateOptions::key)".into(),
        ));
    }
    let Some(key) = &opts.key else {
        return Ok(None);
    };
    let Some(id) = holder(&store.inner, key)? else {
        return Ok(None);
    };
    if let Some(g) = &opts.group {
        crate::group::join(&store.inner, g, &id)?;
    }
    Ok(Some(Created { id, existing: true }))
}

/// Create, after the job directory was renamed into place and before any index entry: claims
/// the key and joins the group. `Some` when another job holds the key (ours was taken back
/// out). On an error the job is taken back out.
pub(crate) fn after_rename(
    store: &Store,
    rec: &JobRecord,
    opts: &CreateOptions,
) -> Result<Option<Created>> {
    let inner = &store.inner;
    let id = rec.id;
    if let Some(key) = &opts.key {
        match claim(inner, key, &id, opts.keep_key) {
            Ok(Claim::Won) => {}
            Ok(Claim::Held(other)) => {
                unmake(inner, &id);
                if let Some(g) = &opts.group {
                    crate::group::join(inner, g, &other)?;
                }
                return Ok(Some(Created {
                    id: other,
                    existing: true,
                }));
            }
            Err(e) => {
                unmake(inner, &id);
                return Err(e);
            }
        }
    }
    if let Some(g) = &opts.group
        && let Err(e) = crate::group::join(inner, g, &id)
    {
        unmake(inner, &id);
        return Err(e);
    }
    Ok(None)
}

/// Create, when indexing failed and the job is about to be taken back out: leaves its group (a
/// key record naming it becomes stale with the job).
pub(crate) fn undo(inner: &Inner, rec: &JobRecord) {
    if let Some(g) = rec.group.as_deref().and_then(|g| GroupId::new(g).ok()) {
        crate::group::leave(inner, &g, &rec.id);
    }
}

/// What recover does with a job that has no index entry and has not finished.
pub(crate) enum Unindexed {
    /// Index it (it has no key, or its key's newest record names it).
    Index,
    /// Leave it alone for now: a creator may be about to claim its key.
    Leave,
    /// It was moved to quarantine: its key names another job, so it never was acknowledged.
    Quarantined,
}

/// Recover's decision for an unfinished job without an index entry (FORMAT.md §12.6).
pub(crate) fn recover_unindexed(
    inner: &Inner,
    rec: &JobRecord,
    grace: Duration,
    report: &mut RecoveryReport,
) -> Result<Unindexed> {
    let Some(text) = rec.key.as_deref() else {
        return Ok(Unindexed::Index);
    };
    let Ok(key) = DedupKey::new(text) else {
        tracing::warn!("job {}: invalid key {text:?} ignored", rec.id);
        return Ok(Unindexed::Index);
    };
    let dir = key_dir(inner, &key);
    let named = if real_dir(&keys_root(inner))?
        && real_dir(dir.parent().unwrap_or(&dir))?
        && real_dir(&dir)?
    {
        matches!(newest(&dir, &key.hash())?, Some((_, Ok(r))) if r.job == rec.id)
    } else {
        false
    };
    if named {
        return Ok(Unindexed::Index);
    }
    let job_file = inner.layout.job_file(&rec.id);
    if !older_than(&job_file, grace) {
        return Ok(Unindexed::Leave);
    }
    push_q(
        inner,
        report,
        &inner.layout.job_dir(&rec.id),
        "a keyed job whose key never named it (a create that lost, or crashed before claiming)",
    )?;
    Ok(Unindexed::Quarantined)
}

/// Recover's part below `keys/` (FORMAT.md §12.6): quarantine what does not belong, prune
/// superseded records, and remove the directories of keys whose newest record is stale.
/// Returns the number of key directories removed.
pub(crate) fn recover(inner: &Inner, grace: Duration, report: &mut RecoveryReport) -> Result<u64> {
    let root = keys_root(inner);
    match fs::symlink_metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            push_q(inner, report, &root, "keys must be a directory")?;
            return Ok(0);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).ctx("stat", &root),
    }
    let mut removed = 0;
    for shard in visible_names(&root)? {
        let shard_dir = root.join(&shard);
        if !is_hex(&shard, 2) || !is_real_dir(&shard_dir) {
            push_q(inner, report, &shard_dir, "not a key shard directory")?;
            continue;
        }
        for hash in visible_names(&shard_dir)? {
            let dir = shard_dir.join(&hash);
            if !is_hex(&hash, 64) || !hash.starts_with(&shard) || !is_real_dir(&dir) {
                push_q(inner, report, &dir, "not a key directory of this shard")?;
                continue;
            }
            if sweep_key(inner, &dir, &hash, grace, report)? {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// One key directory: returns true if it was removed.
fn sweep_key(
    inner: &Inner,
    dir: &Path,
    hash: &str,
    grace: Duration,
    report: &mut RecoveryReport,
) -> Result<bool> {
    let mut numbers = Vec::new();
    for name in visible_names(dir)? {
        match parse_epoch(&name) {
            Some(n) => numbers.push(n),
            None => push_q(inner, report, &dir.join(&name), "not a key record name")?,
        }
    }
    numbers.sort_unstable();
    let Some(&top) = numbers.last() else {
        // A creator that died between making the directory and claiming in it (or one about
        // to claim, if young: it gets ENOENT and makes it again).
        if older_than(dir, grace) && fs::remove_dir(dir).is_ok() {
            return Ok(true);
        }
        return Ok(false);
    };
    // Prune superseded records. A record is removed only once a newer one is `grace` old, so a
    // creator would have to pause that long between reading the directory and claiming for a
    // number to be claimed twice.
    for pair in numbers.windows(2) {
        let (old, newer) = (dir.join(epoch_name(pair[0])), dir.join(epoch_name(pair[1])));
        if !older_than(&newer, grace) {
            continue;
        }
        match fs::symlink_metadata(&old) {
            Ok(m) if m.is_file() => {
                crate::atomic::remove_file_if_exists(&old)?;
            }
            Ok(_) => push_q(inner, report, &old, "a key record must be a plain file")?,
            Err(_) => {}
        }
    }
    let top_path = dir.join(epoch_name(top));
    let stale = match read_record(&top_path, hash) {
        Ok(rec) => !is_live(inner, &rec, SystemTime::now())?,
        Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => return Ok(false),
        Err(e) if unusable(&e) => {
            // Never moved: the newest number must stay taken. Creators skip over it.
            tracing::warn!("key record {} is unusable: {e}", top_path.display());
            true
        }
        Err(e) => return Err(e),
    };
    if !stale || !older_than(&top_path, grace) {
        return Ok(false);
    }
    // The whole directory goes, checked after the move: if a record was added meanwhile, it is
    // put back.
    let grave = inner.layout.tmp.join(format!("keygone.{:08x}", rand_u32()));
    match fs::rename(dir, &grave) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).ctx("rename", dir),
    }
    let still = list_names(&grave)?
        .iter()
        .filter_map(|n| parse_epoch(n))
        .max();
    if still != Some(top) {
        if let Err(e) = fs::rename(&grave, dir) {
            tracing::warn!(
                "key directory {} changed while being removed and cannot be put back: {e}",
                dir.display()
            );
            let _ = fs::remove_dir_all(&grave);
        }
        return Ok(false);
    }
    inner.fs.sync_parent(dir)?;
    if let Err(e) = fs::remove_dir_all(&grave) {
        tracing::warn!("leaving {} for the tmp sweep: {e}", grave.display());
    }
    Ok(true)
}

impl Store {
    /// Creates a job, like [`create_with`](Self::create_with), and tells whether it was made.
    /// With a [`key`](CreateOptions::key), while a job created with that key has not finished
    /// (or finished within its [`keep_key_for`](CreateOptions::keep_key_for) TTL), no job is
    /// made: its id is returned with `existing: true`. Atomic across processes: of creators
    /// racing with one key, exactly one makes the job. Everyone who got the id shares its
    /// result.
    ///
    /// ```
    /// use jobdir::{CreateOptions, DedupKey};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let opts = CreateOptions::default().key(DedupKey::new("sync:user-42")?);
    /// let first = store.create_keyed(&"sync", opts.clone())?;
    /// let second = store.create_keyed(&"sync", opts.clone())?;
    /// assert_eq!((first.existing, second.existing), (false, true));
    /// assert_eq!(first.id, second.id);
    /// store.pull_work()?.unwrap().fulfill(b"ok")?;
    /// // Finished: the key is free again, and the next create makes a new job.
    /// let third = store.create_keyed(&"sync", opts)?;
    /// assert!(!third.existing && third.id != first.id);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_keyed<T: Serialize + ?Sized>(
        &self,
        request: &T,
        opts: CreateOptions,
    ) -> Result<Created> {
        let request: Value = serde_json::to_value(request).map_err(|source| Error::Encode {
            what: "request",
            source,
        })?;
        self.create_inner(request, opts)
    }

    /// The job that holds `key` now: the unfinished job created with it (or one that finished
    /// within its TTL). `None` if the key is free.
    ///
    /// ```
    /// use jobdir::{CreateOptions, DedupKey};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let key = DedupKey::new("k")?;
    /// assert_eq!(store.job_for_key(&key)?, None);
    /// let id = store.create_with(&1, CreateOptions::default().key(key.clone()))?;
    /// assert_eq!(store.job_for_key(&key)?, Some(id));
    /// store.cancel(&id, "no")?;
    /// assert_eq!(store.job_for_key(&key)?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn job_for_key(&self, key: &DedupKey) -> Result<Option<JobId>> {
        holder(&self.inner, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_hashed() {
        for good in ["a", "../x", "with space", "ünï", &"k".repeat(1024)] {
            assert!(DedupKey::new(good).is_ok(), "{good}");
        }
        for bad in ["", "a\nb", "tab\there", "nul\0", &"k".repeat(1025)] {
            assert!(DedupKey::new(bad).is_err(), "{bad:?}");
        }
        let h = DedupKey::new("k").unwrap().hash();
        assert!(is_hex(&h, 64));
    }
}
