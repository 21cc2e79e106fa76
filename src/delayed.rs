//! The delayed index: jobs that become pending at a given time (a delayed create, a retry's
//! backoff), and their promotion to the pending index when due.
//!
//! Invariant kept here: a delayed job is never pullable early and never lost. Its entry
//! `delayed/<bucket>/<due>.<class>.<id>` stays until the pending entry it becomes is durable,
//! so promotion is idempotent: any number of processes may promote the same entry, and a crash
//! between the two steps leaves both entries, which is harmless (a pending entry of a job
//! already running or finished is skipped by claims).

use std::io;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::atomic::{AtomicFs, exists, list_names, remove_file_if_exists};
use crate::error::Result;
use crate::id::JobId;
use crate::layout::{bucket, bucket_end_millis, delayed_name, parse_delayed_name};
use crate::watch::Watch;

/// Milliseconds since the Unix epoch by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch of a time.
pub(crate) fn ms_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Empty bucket directories are removed only once their bucket ended this long ago (by the
/// local clock), as in the pending index: a bucket still current may be receiving an entry.
const EMPTY_BUCKET_GRACE_MS: u64 = 60_000;

/// The `delayed/` directory.
pub(crate) struct Delayed {
    pub root: PathBuf,
}

/// What one promotion pass did.
#[derive(Default)]
pub(crate) struct Promotion {
    /// Pending keys made (`class/bucket/id`).
    pub keys: Vec<String>,
    /// The earliest due time still waiting, if any.
    pub next_due: Option<u64>,
}

impl Delayed {
    /// The path of an entry.
    pub(crate) fn entry_path(&self, due_ms: u64, class: &str, id: &JobId) -> PathBuf {
        self.root
            .join(bucket(due_ms))
            .join(delayed_name(due_ms, class, id))
    }

    /// Adds an entry (durable in durable mode before it returns).
    pub(crate) fn add(&self, fs: &AtomicFs, due_ms: u64, class: &str, id: &JobId) -> Result<()> {
        let dir = self.root.join(bucket(due_ms));
        let path = dir.join(delayed_name(due_ms, class, id));
        fs.create_entry(&path, &dir)?;
        match fs.sync_dir(&dir) {
            // A puller promoted the entry (its pending entry durable first) and removed the
            // emptied bucket before this fsync: nothing is left to make durable here.
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => Ok(()),
            other => other,
        }
    }

    /// Moves every entry due at `now` to the pending index (pending entry first, durable, then
    /// the delayed entry is unlinked), removes emptied bucket directories, watches the buckets
    /// it reads, and reports the earliest due time left.
    pub(crate) fn promote_due(
        &self,
        fs: &AtomicFs,
        pending: &crate::index::Index,
        now: u64,
        watch: &mut Watch,
    ) -> Result<Promotion> {
        let mut out = Promotion::default();
        let mut buckets: Vec<(u64, String)> = list_names(&self.root)?
            .into_iter()
            .filter_map(|b| bucket_end_millis(&b).map(|end| (end, b)))
            .collect();
        buckets.sort();
        for (end, name) in buckets {
            let dir = self.root.join(&name);
            watch.ensure(&dir);
            let mut entries: Vec<(u64, String, JobId, String)> = list_names(&dir)?
                .into_iter()
                .filter_map(|n| parse_delayed_name(&n).map(|(due, c, id)| (due, c, id, n)))
                .collect();
            entries.sort_by_key(|e| e.0);
            let mut left = false;
            for (due, class, id, file) in entries {
                if due > now {
                    out.next_due = Some(out.next_due.map_or(due, |d| d.min(due)));
                    left = true;
                    break;
                }
                let key = format!("{class}/{}/{id}", bucket(id.unix_millis()));
                pending.add(fs, &key)?;
                crate::fault::point("promote.after_pending");
                remove_file_if_exists(&dir.join(&file))?;
                // A failing holder (`WorkLease::fail`) adds this entry, then removes the job's
                // pending entry, which has this very name: if that removal fell between our
                // add (a no-op on the existing entry) and our unlink, the job would be left
                // with neither. Put it back; `fail` checks the other way round.
                if !exists(&pending.path(&key))? {
                    pending.add(fs, &key)?;
                }
                out.keys.push(key);
            }
            if !left && end + EMPTY_BUCKET_GRACE_MS <= now {
                // Empty now (or holding only foreign names, which recover quarantines), and
                // its time long past, so no `add` is making an entry in it: an `add` with a
                // due time in the current bucket would otherwise lose its fresh directory to
                // this removal between its `mkdir` and its `open`, again and again.
                if std::fs::remove_dir(&dir).is_ok() {
                    watch.forget(&dir);
                }
            }
            if out.next_due.is_some() {
                break; // later entries and buckets hold only later times
            }
        }
        Ok(out)
    }

    /// Every entry, as (due ms, class, id, path) — for counts and recovery.
    pub(crate) fn all(&self) -> Result<Vec<(u64, String, JobId, PathBuf)>> {
        let mut out = Vec::new();
        for b in list_names(&self.root)? {
            let dir = self.root.join(&b);
            for n in list_names(&dir)? {
                if let Some((due, class, id)) = parse_delayed_name(&n) {
                    out.push((due, class, id, dir.join(n)));
                }
            }
        }
        Ok(out)
    }
}
