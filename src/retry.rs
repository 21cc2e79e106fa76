//! Retries: the policy a job is created with, the backoff between attempts, and the count of
//! failed attempts read back from the job's claim epochs.
//!
//! Invariant kept here: the failure count is derived from the disk alone — an epoch whose lease
//! ended as `failed`, `expired` or `timedout` is one failed attempt — so every process agrees on
//! it without shared counters, and a manual retry (`retries/<epoch>`) forgives the attempts up
//! to that epoch.

use std::time::Duration;

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
        let full = self.backoff_for(failures).as_millis() as u64;
        let half = full / 2;
        let spread = full - half;
        let r = u64::from(crate::store::rand_u32());
        Duration::from_millis(half + if spread == 0 { 0 } else { r % (spread + 1) })
    }
}

/// How a claim epoch's lease ended, as far as retries care.
fn failure_of(layout: &Layout, id: &JobId, epoch: u64) -> Result<Option<String>> {
    let dir = layout.epoch_dir(LeaseKind::Work, id, epoch);
    if exists(&dir.join("failed"))? {
        let error = read_file(&dir.join("failed").join("error.json"), 64 * 1024)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| "failed".into());
        return Ok(Some(error));
    }
    if exists(&dir.join("timedout"))? {
        return Ok(Some("run timeout".into()));
    }
    if exists(&dir.join("expired"))? {
        return Ok(Some("lease expired (holder died or stalled)".into()));
    }
    Ok(None)
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
    let mut out = Vec::new();
    if before <= 1 {
        return Ok(out);
    }
    let from = forgiven_upto(layout, id)? + 1;
    for epoch in from..before {
        if let Some(error) = failure_of(layout, id, epoch)? {
            out.push(AttemptError {
                attempt: epoch,
                error,
            });
        }
    }
    Ok(out)
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
        if let Some(error) = failure_of(layout, id, epoch)? {
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
