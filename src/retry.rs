//! Retries: the policy a job is created with, the backoff between attempts, and the count of
//! failed attempts read back from the job's claim epochs.
//!
//! Invariant kept here: the failure count is derived from the disk alone — an epoch whose lease
//! ended as `failed`, `expired` or `timedout` is one failed attempt — so every process agrees on
//! it without shared counters, and a manual retry (`retries/<epoch>`) forgives the attempts up
//! to that epoch.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::atomic::{exists, list_names, read_file};
use crate::error::Result;
use crate::id::JobId;
use crate::job::AttemptError;
use crate::layout::{Layout, LeaseKind, epoch_name, parse_epoch};

/// How a job's failed attempts are retried: up to `max_attempts` attempts in all, the n-th
/// retry after a backoff of `backoff × 2^(n-1)` (at most `max_backoff`), of which a random
/// part is taken ("full jitter" between half and all of it).
///
/// ```
/// use std::time::Duration;
/// let p = jobdir::RetryPolicy::default();
/// assert_eq!(p.max_attempts(), 5);
/// let p = p.with_max_attempts(3).with_backoff(Duration::from_millis(10), Duration::from_secs(1));
/// assert_eq!(p.backoff_for(1), Duration::from_millis(10));
/// assert_eq!(p.backoff_for(3), Duration::from_millis(40));
/// assert_eq!(p.backoff_for(30), Duration::from_secs(1));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff_ms: u64,
    max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    /// 5 attempts, backoff 1 s doubling up to 1 h.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff_ms: 1000,
            max_backoff_ms: 3_600_000,
        }
    }
}

impl RetryPolicy {
    /// At most `n` attempts in all (at least 1: `0` is taken as 1).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The first retry's backoff and the largest one.
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff_ms = first.as_millis() as u64;
        self.max_backoff_ms = (max.as_millis() as u64).max(self.backoff_ms);
        self
    }

    /// The number of attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The backoff before the retry that follows the `failures`-th failure, without jitter.
    pub fn backoff_for(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(40);
        let ms = self
            .backoff_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_backoff_ms.max(self.backoff_ms));
        Duration::from_millis(ms)
    }

    /// [`backoff_for`](Self::backoff_for) with jitter: a random point between half of it and
    /// all of it, so that jobs failing together do not come back together.
    pub(crate) fn jittered(&self, failures: u32) -> Duration {
        self.jittered_by(failures, u64::from(crate::store::rand_u32()))
    }

    /// [`jittered`](Self::jittered) with the random number given.
    pub(crate) fn jittered_by(&self, failures: u32, r: u64) -> Duration {
        let full = self.backoff_for(failures).as_millis() as u64;
        let half = full / 2;
        let spread = full - half;
        Duration::from_millis(half + if spread == 0 { 0 } else { r % (spread + 1) })
    }
}

/// How a counted failed attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The worker gave up (`failed`); its `error.json` may say when the job may run again.
    Failed,
    /// The run timeout ended it (`timedout`).
    TimedOut,
    /// Its holder died or stalled and it was taken over (`expired`).
    Expired,
}

/// How a claim epoch's lease ended, as far as retries care.
fn failure_of(layout: &Layout, id: &JobId, epoch: u64) -> Result<Option<(String, Ended)>> {
    let dir = layout.epoch_dir(LeaseKind::Work, id, epoch);
    if exists(&dir.join("failed"))? {
        let error = read_note(layout, id, epoch)
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| "failed".into());
        return Ok(Some((error, Ended::Failed)));
    }
    if exists(&dir.join("timedout"))? {
        return Ok(Some(("run timeout".into(), Ended::TimedOut)));
    }
    if exists(&dir.join("expired"))? {
        return Ok(Some((
            "lease expired (holder died or stalled)".into(),
            Ended::Expired,
        )));
    }
    Ok(None)
}

/// The `error.json` of a failed epoch, if it is readable.
fn read_note(layout: &Layout, id: &JobId, epoch: u64) -> Option<serde_json::Value> {
    let path = layout
        .epoch_dir(LeaseKind::Work, id, epoch)
        .join("failed")
        .join("error.json");
    read_file(&path, 64 * 1024)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
}

/// The last epoch forgiven by a manual retry (0 if none).
pub(crate) fn forgiven_upto(layout: &Layout, id: &JobId) -> Result<u64> {
    Ok(list_names(&layout.retries_dir(id))?
        .iter()
        .filter_map(|n| n.split('.').next().and_then(parse_epoch))
        .max()
        .unwrap_or(0))
}

/// The failed attempts among epochs `1..before` that count (after the last manual retry).
pub(crate) fn failures(layout: &Layout, id: &JobId, before: u64) -> Result<Vec<AttemptError>> {
    Ok(counted(layout, id, before)?
        .into_iter()
        .map(|(e, _)| e)
        .collect())
}

/// [`failures`], each with how it ended.
pub(crate) fn counted(
    layout: &Layout,
    id: &JobId,
    before: u64,
) -> Result<Vec<(AttemptError, Ended)>> {
    let mut out = Vec::new();
    if before <= 1 {
        return Ok(out);
    }
    let from = forgiven_upto(layout, id)? + 1;
    for epoch in from..before {
        if let Some((error, ended)) = failure_of(layout, id, epoch)? {
            out.push((
                AttemptError {
                    attempt: epoch,
                    error,
                },
                ended,
            ));
        }
    }
    Ok(out)
}

/// When the job may run again after its counted failed attempts (`counted`, oldest first, as
/// returned by [`counted`]): nothing before the last one ended; after a `failed` attempt, the
/// `retry_at` its holder recorded; after a run timeout or an expired lease, the time the
/// attempt ended (the mtime of its epoch directory, which the rename of `held` set and nothing
/// changes afterwards) plus the policy's backoff for that many failures, jittered by a value
/// derived from the job and the epoch — so every process computes the same time, and a claim
/// deferred to it runs when it comes instead of drawing a new time. `None` when nothing is
/// known (no failure, an unreadable note, a missing directory): the job is not held back.
pub(crate) fn retry_due(
    layout: &Layout,
    id: &JobId,
    policy: &RetryPolicy,
    counted: &[(AttemptError, Ended)],
) -> Option<SystemTime> {
    let (last, ended) = counted.last()?;
    match ended {
        Ended::Failed => read_note(layout, id, last.attempt)?
            .get("retry_at")?
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok()),
        Ended::TimedOut | Ended::Expired => {
            let dir = layout.epoch_dir(LeaseKind::Work, id, last.attempt);
            let ended_at = std::fs::symlink_metadata(dir).ok()?.modified().ok()?;
            let seed = seed_of(id, last.attempt);
            Some(ended_at + policy.jittered_by(counted.len() as u32, seed))
        }
    }
}

/// A fixed pseudo-random number for one attempt of one job (FNV-1a of the id's text and the
/// epoch, then a splitmix64 finaliser): the same in every process and build.
fn seed_of(id: &JobId, epoch: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in id.to_string().bytes().chain(epoch.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Every failed attempt in the job's history (also those forgiven by manual retries).
pub(crate) fn history(layout: &Layout, id: &JobId) -> Result<Vec<AttemptError>> {
    let mut epochs: Vec<u64> = list_names(&layout.claims_dir(LeaseKind::Work, id))?
        .iter()
        .filter_map(|n| parse_epoch(n))
        .collect();
    epochs.sort_unstable();
    let mut out = Vec::new();
    for epoch in epochs {
        if let Some((error, _)) = failure_of(layout, id, epoch)? {
            out.push(AttemptError {
                attempt: epoch,
                error,
            });
        }
    }
    // The last attempt of a job that failed was committed as its outcome (`held/` became
    // `result/`), and a manual retry set that outcome aside in `retries/<epoch>.<nonce>`: it
    // is still one of the job's failed attempts.
    for slot in list_names(&layout.retries_dir(id))? {
        let Some(epoch) = slot.split('.').next().and_then(parse_epoch) else {
            continue;
        };
        let path = layout.retries_dir(id).join(&slot).join("outcome.json");
        if let Ok(bytes) = read_file(&path, 64 * 1024)
            && let Ok(o) = serde_json::from_slice::<crate::outcome::OutcomeRecord>(&bytes)
            && o.state == crate::job::JobState::Failed
            && !out.iter().any(|e| e.attempt == epoch)
        {
            out.push(AttemptError {
                attempt: epoch,
                error: o.error,
            });
        }
    }
    out.sort_by_key(|e| e.attempt);
    Ok(out)
}

/// The name a manual retry gives the outcome it sets aside (`retries/<epoch>`).
pub(crate) fn retry_slot(epoch: u64) -> String {
    epoch_name(epoch)
}

/// When an unfinished job may run, as far as its record and counted failures say: the later of
/// its `not_before` and [`retry_due`]. May be past.
pub(crate) fn run_at(
    layout: &Layout,
    id: &JobId,
    rec: &crate::job::JobRecord,
    counted: &[(AttemptError, Ended)],
) -> Option<SystemTime> {
    let due = retry_due(layout, id, &rec.retry_policy(), counted);
    match (rec.not_before_time(), due) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// After a finish's index work (the pending entry unlinked): if the job is unfinished again —
/// a manual retry set the outcome aside in between and added the entry, which the unlink then
/// took — adds the pending entry back. The same check as a pull's on **Done** (FORMAT.md
/// §6.11).
pub(crate) fn reindex_if_retried(
    inner: &crate::store::Inner,
    id: &JobId,
    priority: i32,
) -> Result<()> {
    if !exists(&inner.layout.result_dir(id))? && exists(&inner.layout.job_dir(id))? {
        let key = crate::store::pending_key(id, priority);
        inner.work.add(&inner.fs, &key)?;
        inner.offer(LeaseKind::Work, key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::fault::on_pause;
    use crate::store::pending_key;
    use crate::{JobState, Store};

    fn pending_exists(store: &Store, id: &crate::JobId) -> bool {
        store.inner.work.path(&pending_key(id, 0)).exists()
    }

    /// Gap 15: `recover`'s second pass found the pending entry of a cancelled job stale; a
    /// manual retry then set the outcome aside and (re)made the entry before recover's unlink.
    #[test]
    fn recover_racing_a_manual_retry_keeps_the_retried_jobs_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.create(&"x").unwrap();
        store.cancel(&id, "").unwrap();
        // The stale entry a crash after the outcome (`cancel.after_outcome`) leaves.
        store
            .inner
            .work
            .add(&store.inner.fs, &pending_key(&id, 0))
            .unwrap();
        let s2 = store.clone();
        on_pause("recover.before_unlink", move || s2.retry(&id).unwrap());
        store.recover().unwrap();
        assert_eq!(store.get(&id).unwrap().state, JobState::Pending);
        assert!(
            pending_exists(&store, &id),
            "the retried job lost its entry"
        );
        let job = store.pull_work().unwrap().expect("the retried job");
        assert_eq!(job.id(), id);
    }

    /// Gap 15: a `retry` between a cancel's outcome and its unlink of the pending entry.
    #[test]
    fn cancel_racing_a_manual_retry_leaves_the_retried_job_pullable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.create(&"x").unwrap();
        let s2 = store.clone();
        on_pause("cancel.after_outcome", move || s2.retry(&id).unwrap());
        store.cancel(&id, "why").unwrap();
        assert_eq!(store.get(&id).unwrap().state, JobState::Pending);
        assert!(
            pending_exists(&store, &id),
            "the retried job lost its entry"
        );
        let job = store.pull_work().unwrap().expect("the retried job");
        assert_eq!(job.id(), id);
    }
}
