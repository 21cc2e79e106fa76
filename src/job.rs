//! What a job is on disk (`job.json`) and what callers are told about it.
//!
//! Invariant kept here: `job.json` is written once, complete, before the job is visible, and is
//! never changed; everything that changes about a job is a separate name in its directory.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::id::JobId;

/// The contents of `job.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    pub id: JobId,
    pub priority: i32,
    /// RFC 3339 UTC, millisecond precision, by the creator's clock.
    pub created_at: String,
    pub request: Value,
}

impl JobRecord {
    pub(crate) fn parse(bytes: &[u8], path: &Path, expected: &JobId) -> Result<JobRecord> {
        let rec: JobRecord = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("not a job record: {e}"),
        })?;
        if rec.id != *expected {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("records id {} in the directory of {expected}", rec.id),
            });
        }
        Ok(rec)
    }

    pub(crate) fn created_time(&self) -> SystemTime {
        humantime::parse_rfc3339(&self.created_at)
            .unwrap_or_else(|_| UNIX_EPOCH + Duration::from_millis(self.id.unix_millis()))
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a worker.
    Pending,
    /// Held by a worker under a lease.
    Running,
    /// Has its result (written once).
    Fulfilled,
}

impl JobState {
    /// The lowercase name used on the command line and in JSON.
    ///
    /// ```
    /// assert_eq!(jobdir::JobState::Running.as_str(), "running");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Fulfilled => "fulfilled",
        }
    }
}

impl std::str::FromStr for JobState {
    type Err = Error;
    fn from_str(s: &str) -> Result<JobState> {
        match s {
            "pending" => Ok(JobState::Pending),
            "running" => Ok(JobState::Running),
            "fulfilled" => Ok(JobState::Fulfilled),
            other => Err(Error::InvalidOption(format!(
                "unknown state {other:?} (pending, running, fulfilled)"
            ))),
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the store knows about one job, as returned by [`Store::get`](crate::Store::get).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct JobInfo {
    /// The job's id.
    pub id: JobId,
    /// Its state.
    pub state: JobState,
    /// The request it was created with.
    pub request: Value,
    /// Its priority (higher is pulled first).
    pub priority: i32,
    /// How many times a worker has claimed it.
    pub attempts: u64,
    /// When it was created (by its creator's clock).
    pub created_at: SystemTime,
    /// Notification targets waiting for delivery.
    pub waiting: Vec<Value>,
    /// The result bytes, once fulfilled.
    pub result: Option<Vec<u8>>,
    /// When the result was written (by the fulfiller's clock), once fulfilled.
    pub fulfilled_at: Option<SystemTime>,
}

/// A job's id and state, as listed by [`Store::list`](crate::Store::list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// The job's id.
    pub id: JobId,
    /// Its state.
    pub state: JobState,
}

/// Per-state counts, as returned by [`Store::counts`](crate::Store::counts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Counts {
    /// Jobs waiting for a worker.
    pub pending: u64,
    /// Jobs held under a lease.
    pub running: u64,
    /// Jobs with a result.
    pub fulfilled: u64,
    /// Fulfilled jobs with notification targets waiting.
    pub notifications: u64,
    /// Items moved to `quarantine/` by recovery.
    pub quarantined: u64,
    /// Age of the oldest pending job, by this machine's clock against the id's timestamp.
    #[serde(skip)]
    pub oldest_pending_age: Option<Duration>,
}

/// Options for [`Store::create_with`](crate::Store::create_with).
///
/// ```
/// let opts = jobdir::CreateOptions::default().priority(5);
/// assert_eq!(opts.get_priority(), 5);
/// ```
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    priority: i32,
}

impl CreateOptions {
    /// Higher priorities are pulled first; FIFO within a priority. Default 0.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The priority set.
    pub fn get_priority(&self) -> i32 {
        self.priority
    }
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
