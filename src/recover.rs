//! Recovery: reclaim dead holders' leases, remove abandoned temporaries, quarantine what does
//! not belong, and rebuild the indexes from the jobs themselves.
//!
//! Invariant kept here: recovery only ever moves a foreign or corrupt item aside (into
//! `quarantine/`, with its reason), never deletes data; the jobs are the truth and the indexes
//! are rebuilt from them, so running it at any time, concurrently with workers, is safe.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::atomic::{exists, read_file, remove_file_if_exists, visible_names};
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::index::{all_keys, split_key};
use crate::job::{JobRecord, rfc3339};
use crate::layout::{
    TOP_LEVEL, bucket_end_millis, parse_epoch, parse_lease_name, parse_notify_entry,
    parse_priority_class,
};
use crate::lease;
use crate::store::{Inner, READ_LIMIT, Store, notify_key, pending_key, rand_u32};

/// Options for [`Store::recover_with`].
///
/// ```
/// let opts = jobdir::RecoverOptions::default().temp_grace(std::time::Duration::ZERO);
/// # let _ = opts;
/// ```
#[derive(Clone, Debug)]
pub struct RecoverOptions {
    temp_grace: Duration,
}

impl Default for RecoverOptions {
    fn default() -> Self {
        RecoverOptions {
            temp_grace: Duration::from_secs(3600),
        }
    }
}

impl RecoverOptions {
    /// Temporary files younger than this are left alone (a live writer may be using them).
    /// Default one hour; zero when no other process uses the store.
    pub fn temp_grace(mut self, grace: Duration) -> Self {
        self.temp_grace = grace;
        self
    }
}

/// One item moved to `quarantine/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// Where it was, relative to the store directory.
    pub path: PathBuf,
    /// Why it was moved.
    pub reason: String,
    /// Where it is now (`quarantine/<ms>-<rand>/item`).
    pub now_at: PathBuf,
}

/// What [`Store::recover`] did.
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Leases of dead holders that were ended (their jobs are pending again).
    pub leases_reclaimed: u64,
    /// Lease files removed whose lease had already ended.
    pub lease_files_removed: u64,
    /// Leases of other hosts that look alive, or that need a lease length of observation before
    /// they can be judged (clocks of other hosts are never compared).
    pub leases_of_other_hosts: u64,
    /// Abandoned temporary files and directories removed.
    pub temp_removed: u64,
    /// Index entries added for jobs that had none.
    pub entries_added: u64,
    /// Index entries removed because their job is finished or gone.
    pub entries_removed: u64,
    /// Items moved to quarantine.
    pub quarantined: Vec<Quarantined>,
    /// Instances removed because they were marked to go once idle and had no allocations left.
    pub instances_removed: u64,
    /// Control messages older than [`CONTROL_TTL`](crate::CONTROL_TTL) removed.
    pub control_pruned: u64,
    /// De-duplication keys whose job had finished (or was gone) removed (FORMAT.md §12.6).
    pub keys_removed: u64,
    /// Allocations made by `create` for a job (FORMAT.md §9.11) whose job has finished or is
    /// gone, removed.
    pub allocations_released: u64,
}

impl Store {
    /// [`recover_with`](Self::recover_with) default options.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// std::fs::write(dir.path().join("jobs/00/garbage"), b"?")?;
    /// let report = store.recover()?;
    /// assert_eq!(report.quarantined.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recover(&self) -> Result<RecoveryReport> {
        self.recover_with(&RecoverOptions::default())
    }

    /// Reclaims dead holders' leases now (on this host at once; other hosts' after a lease
    /// without a heartbeat, as observed by this process), removes abandoned temporaries,
    /// quarantines corrupt or foreign files with a reason, and re-indexes every job. Reads the
    /// whole store: run it at start-up or from cron, not per operation.
    pub fn recover_with(&self, opts: &RecoverOptions) -> Result<RecoveryReport> {
        let inner = &self.inner;
        let mut report = RecoveryReport::default();
        sweep_foreign_top(inner, &mut report)?;
        let leases = lease::scan(inner, None)?;
        report.leases_reclaimed = leases.reclaimed;
        report.lease_files_removed = leases.removed;
        report.leases_of_other_hosts = leases.observing;
        for name in visible_names(&inner.layout.leases)? {
            let p = inner.layout.leases.join(&name);
            if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                push_q(inner, &mut report, &p, "a lease must be a plain file")?;
                continue;
            }
            if parse_lease_name(&name).is_none() {
                let p = inner.layout.leases.join(&name);
                push_q(inner, &mut report, &p, "not a lease file name")?;
            }
        }
        sweep_temp(inner, opts, &mut report)?;
        let notified = sweep_index(inner, true, &mut report)?;
        sweep_jobs(self, &notified, opts.temp_grace, &mut report)?;
        sweep_index(inner, false, &mut report)?;
        crate::allocation::recover(inner, opts.temp_grace, &mut report)?;
        // Keys and groups (FORMAT.md §12.6).
        report.keys_removed = crate::dedup::recover(inner, opts.temp_grace, &mut report)?;
        crate::group::recover(inner, opts.temp_grace, &mut report)?;
        // Lookup tables and control messages (FORMAT.md §10, §11).
        let (pruned, foreign) = crate::control::recover(self)?;
        report.control_pruned = pruned;
        for (path, reason) in foreign.into_iter().chain(crate::lookup::foreign(inner)?) {
            push_q(inner, &mut report, &path, &reason)?;
        }
        // Entries this process skipped as busy or bad may be pullable now.
        inner.refresh_frontiers();
        Ok(report)
    }
}

/// Quarantines `path` and records it in the report.
pub(crate) fn push_q(
    inner: &Inner,
    report: &mut RecoveryReport,
    path: &Path,
    reason: &str,
) -> Result<()> {
    let now_at = quarantine(inner, path, reason)?;
    report.quarantined.push(Quarantined {
        path: path
            .strip_prefix(&inner.layout.root)
            .unwrap_or(path)
            .to_path_buf(),
        reason: reason.to_string(),
        now_at,
    });
    Ok(())
}

/// Moves `path` to `quarantine/<ms>-<rand>/item`, beside a `reason.json`.
pub(crate) fn quarantine(inner: &Inner, path: &Path, reason: &str) -> Result<PathBuf> {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = inner
        .layout
        .quarantine
        .join(format!("{ms}-{:08x}", rand_u32()));
    inner.fs.create_dir_all(&dir)?;
    let rel = path.strip_prefix(&inner.layout.root).unwrap_or(path);
    let body = serde_json::json!({
        "path": rel.to_string_lossy(),
        "reason": reason,
        "at": rfc3339(SystemTime::now()),
    });
    let dest = dir.join("item");
    let moved = inner
        .fs
        .write_file(&dir.join("reason.json"), body.to_string().as_bytes())
        .and_then(|()| fs::rename(path, &dest).ctx("move to quarantine", path));
    if let Err(e) = moved {
        // Leave no half-made slot behind (a full disk, say).
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    inner.fs.sync_parent(path)?;
    tracing::warn!("quarantined {}: {reason}", rel.display());
    Ok(dest)
}

fn sweep_foreign_top(inner: &Inner, report: &mut RecoveryReport) -> Result<()> {
    let known = TOP_LEVEL;
    for name in visible_names(&inner.layout.root)? {
        if known.contains(&name.as_str()) {
            continue;
        }
        let p = inner.layout.root.join(&name);
        push_q(inner, report, &p, "not part of the store layout")?;
    }
    for dir in inner.layout.dirs() {
        let m = fs::symlink_metadata(dir).ctx("stat", dir)?;
        if !m.is_dir() {
            return Err(Error::Corrupt {
                path: dir.to_path_buf(),
                reason: "must be a directory (not a file or symlink)".into(),
            });
        }
    }
    Ok(())
}

fn sweep_temp(inner: &Inner, opts: &RecoverOptions, report: &mut RecoveryReport) -> Result<()> {
    let now = SystemTime::now();
    for name in visible_names(&inner.layout.tmp)? {
        let p = inner.layout.tmp.join(&name);
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let age = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or(Duration::ZERO);
        if age < opts.temp_grace {
            continue;
        }
        let res = if m.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        match res {
            Ok(()) => report.temp_removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove", &p),
        }
    }
    Ok(())
}

/// Checks an index: quarantines malformed names; on the second pass (`first == false`) removes
/// entries whose job is gone or done. Returns the ids the notification index names.
fn sweep_index(inner: &Inner, first: bool, report: &mut RecoveryReport) -> Result<HashSet<JobId>> {
    let mut notified = HashSet::new();
    for (index, is_work) in [(&inner.work, true), (&inner.notify, false)] {
        for key in all_keys(index)? {
            if key
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with(".nfs"))
            {
                continue;
            }
            let path = index.path(&key);
            let parsed = split_key(&key).and_then(|(c, b, n)| {
                parse_priority_class(c)?;
                bucket_end_millis(b)?;
                if is_work {
                    n.parse::<JobId>().ok()
                } else {
                    parse_notify_entry(n)
                }
            });
            let Some(id) = parsed else {
                if first {
                    push_q(inner, report, &path, "not an index entry name")?;
                }
                continue;
            };
            if fs::symlink_metadata(&path)
                .map(|m| !m.is_file())
                .unwrap_or(false)
            {
                if first {
                    push_q(inner, report, &path, "index entries must be plain files")?;
                }
                continue;
            }
            if !is_work {
                notified.insert(id);
            }
            if first {
                continue;
            }
            let job_gone = !exists(&inner.layout.job_dir(&id))?;
            let stale = if is_work {
                job_gone || exists(&inner.layout.result_dir(&id))?
            } else {
                job_gone || !inner.has_targets(&id)?
            };
            if stale {
                crate::fault::pause("recover.before_unlink");
                let removed = remove_file_if_exists(&path)?;
                // A manual retry (FORMAT.md §6.23) may have set the outcome aside and added
                // this very entry since the check above: then the entry is needed again, as a
                // pull finds in the same race (§6.11 Done).
                if is_work
                    && !exists(&inner.layout.result_dir(&id))?
                    && exists(&inner.layout.job_dir(&id))?
                {
                    inner.work.add(&inner.fs, &key)?;
                } else if removed {
                    report.entries_removed += 1;
                }
            }
        }
    }
    Ok(notified)
}

fn sweep_jobs(
    store: &Store,
    notified: &HashSet<JobId>,
    grace: Duration,
    report: &mut RecoveryReport,
) -> Result<()> {
    let inner = &store.inner;
    let layout = &inner.layout;
    let delayed = sweep_delayed(inner, report)?;
    for shard in visible_names(&layout.jobs)? {
        let shard_dir = layout.jobs.join(&shard);
        let is_shard = shard.len() == 2
            && shard
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !is_shard || !fs::symlink_metadata(&shard_dir).is_ok_and(|m| m.is_dir()) {
            push_q(inner, report, &shard_dir, "not a shard directory")?;
            if is_shard {
                inner.fs.create_dir_all(&shard_dir)?;
                inner
                    .bad_shards
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&shard);
            }
            continue;
        }
        for name in visible_names(&shard_dir)? {
            let path = shard_dir.join(&name);
            let id = match name.parse::<JobId>() {
                Ok(id) if id.shard() == shard => id,
                _ => {
                    push_q(inner, report, &path, "not a job id of this shard")?;
                    continue;
                }
            };
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                push_q(inner, report, &path, "a job must be a directory")?;
                continue;
            }
            let job_file = layout.job_file(&id);
            let rec = match read_file(&job_file, READ_LIMIT)
                .and_then(|b| JobRecord::parse(&b, &job_file, &id))
            {
                Ok(r) => r,
                Err(e) => {
                    push_q(inner, report, &path, &format!("unreadable job: {e}"))?;
                    continue;
                }
            };
            check_job_parts(inner, &id, report)?;
            let fulfilled = exists(&layout.result_dir(&id))?;
            let mut fulfilled = fulfilled;
            if fulfilled
                && !exists(&layout.result_value(&id))?
                && !exists(&layout.result_outcome(&id))?
            {
                // Only a power loss in fast mode (no fsync) leaves this: the result was never
                // durable, so the job is pending again.
                let dir = layout.result_dir(&id);
                fs::remove_dir_all(&dir).ctx("remove", &dir)?;
                tracing::warn!("job {id}: result lost before it was durable; pending again");
                fulfilled = false;
            }
            if fulfilled {
                if inner.has_targets(&id)? && !notified.contains(&id) {
                    inner
                        .notify
                        .add(&inner.fs, &notify_key(&id, rec.priority, None))?;
                    report.entries_added += 1;
                }
            } else if !delayed.contains(&id) {
                let key = pending_key(&id, rec.priority);
                if !exists(&inner.work.path(&key))? {
                    // A keyed job is indexed only if its key names it (FORMAT.md §12.6).
                    match crate::dedup::recover_unindexed(inner, &rec, grace, report)? {
                        crate::dedup::Unindexed::Index => {}
                        crate::dedup::Unindexed::Leave | crate::dedup::Unindexed::Quarantined => {
                            continue;
                        }
                    }
                    // A job still waiting for its time (`not_before`, or the `retry_at` of its
                    // last failed attempt) is delayed again, not made pullable early.
                    let (attempts, _) = store.epoch_state(crate::layout::LeaseKind::Work, &id)?;
                    match store.run_at(&id, &rec, attempts)? {
                        Some(at) => inner.delayed.add(
                            &inner.fs,
                            crate::delayed::ms_of(at),
                            &crate::layout::priority_class(rec.priority),
                            &id,
                        )?,
                        None => inner.work.add(&inner.fs, &key)?,
                    }
                    report.entries_added += 1;
                }
            }
            crate::group::recover_member(inner, &rec, report)?;
        }
    }
    Ok(())
}

/// Quarantines foreign names in `delayed/` and drops entries whose job is gone or finished;
/// returns the jobs that are waiting there (they get no pending entry).
fn sweep_delayed(inner: &Inner, report: &mut RecoveryReport) -> Result<HashSet<JobId>> {
    let layout = &inner.layout;
    let mut waiting = HashSet::new();
    for b in visible_names(&layout.delayed)? {
        let dir = layout.delayed.join(&b);
        if bucket_end_millis(&b).is_none() || !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
        {
            push_q(inner, report, &dir, "not a delayed-index bucket directory")?;
            continue;
        }
        for n in visible_names(&dir)? {
            let path = dir.join(&n);
            match crate::layout::parse_delayed_name(&n) {
                Some((_, _, id)) if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) => {
                    if !exists(&layout.job_dir(&id))? || exists(&layout.result_dir(&id))? {
                        crate::atomic::remove_file_if_exists(&path)?;
                        report.entries_removed += 1;
                    } else {
                        waiting.insert(id);
                    }
                }
                _ => push_q(inner, report, &path, "not a delayed-index entry")?,
            }
        }
    }
    Ok(waiting)
}

/// Quarantines foreign names inside a job directory and corrupt targets.
fn check_job_parts(inner: &Inner, id: &JobId, report: &mut RecoveryReport) -> Result<()> {
    let layout = &inner.layout;
    let dir = layout.job_dir(id);
    for name in visible_names(&dir)? {
        let known = [
            "job.json", "result", "targets", "claims", "nclaims", "retries",
        ];
        if !known.contains(&name.as_str()) {
            push_q(inner, report, &dir.join(&name), "not part of a job")?;
        }
    }
    for claims in ["claims", "nclaims"] {
        for name in visible_names(&dir.join(claims))? {
            if parse_epoch(&name).is_none() {
                push_q(
                    inner,
                    report,
                    &dir.join(claims).join(&name),
                    "not a claim epoch",
                )?;
            }
        }
    }
    let tdir = layout.targets_dir(id);
    for name in visible_names(&tdir)? {
        let p = tdir.join(&name);
        let ok = name.len() == 69
            && name.ends_with(".json")
            && read_file(&p, READ_LIMIT)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| {
                    crate::store::canonical_json(&v, "target")
                        .map(|c| crate::store::target_name(&c) == name)
                        .unwrap_or(false)
                });
        if !ok {
            push_q(
                inner,
                report,
                &p,
                "not a target file (name must be the SHA-256 of its canonical JSON)",
            )?;
        }
    }
    Ok(())
}
