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
use crate::retry::RetryPolicy;

/// The contents of `job.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JobRecord {
    pub id: JobId,
    pub priority: i32,
    /// RFC 3339 UTC, millisecond precision, by the creator's clock.
    pub created_at: String,
    pub request: Value,
    /// Not pullable before this time (RFC 3339 UTC, ms), for `create` with a delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// The retry policy; absent means the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The longest one attempt may hold the job, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_timeout_ms: Option<u64>,
    /// Past this time (RFC 3339 UTC, ms) the job expires wherever it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// A job not pulled within this many milliseconds of its creation (or of `not_before`)
    /// expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup_timeout_ms: Option<u64>,
    /// The de-duplication key it was created with (FORMAT.md §12); kept as text, checked on use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The group it was created in (FORMAT.md §12); kept as text, checked on use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
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

    /// The retry policy in force (the default one when the record has none).
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone().unwrap_or_default()
    }

    pub(crate) fn not_before_time(&self) -> Option<SystemTime> {
        self.not_before
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    }

    pub(crate) fn deadline_time(&self) -> Option<SystemTime> {
        self.deadline
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    }

    /// Why the job has expired at `now`, if it has: past its deadline, or (when it was never
    /// claimed) past its pickup timeout.
    pub(crate) fn expiry_reason(&self, now: SystemTime, claimed: bool) -> Option<String> {
        if let Some(d) = self.deadline_time()
            && now >= d
        {
            return Some(format!("deadline {} passed", rfc3339(d)));
        }
        if !claimed && let Some(ms) = self.pickup_timeout_ms {
            let start = self
                .not_before_time()
                .unwrap_or_else(|| self.created_time());
            if now >= start + Duration::from_millis(ms) {
                return Some(format!("not picked up within {ms} ms"));
            }
        }
        None
    }

    /// When the job expires if nothing happens (the earlier of deadline and pickup limit).
    pub(crate) fn expires_at(&self, claimed: bool) -> Option<SystemTime> {
        let pickup = (!claimed)
            .then_some(())
            .and(self.pickup_timeout_ms)
            .map(|ms| {
                self.not_before_time()
                    .unwrap_or_else(|| self.created_time())
                    + Duration::from_millis(ms)
            });
        match (self.deadline_time(), pickup) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a worker.
    Pending,
    /// Created with a delay, and not due yet. (A job waiting out a retry's backoff is
    /// [`Pending`](JobState::Pending), with [`JobInfo::run_at`] saying when it is pullable.)
    Delayed,
    /// Held by a worker under a lease.
    Running,
    /// Has its result (written once).
    Fulfilled,
    /// Failed on its last allowed attempt; [`Store::retry`](crate::Store::retry) runs it again.
    Failed,
    /// Cancelled by [`Store::cancel`](crate::Store::cancel).
    Cancelled,
    /// Past its deadline or pickup timeout before it was done.
    Expired,
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
            JobState::Delayed => "delayed",
            JobState::Running => "running",
            JobState::Fulfilled => "fulfilled",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }

    /// True for the states a job never leaves by itself (fulfilled, failed, cancelled,
    /// expired).
    ///
    /// ```
    /// assert!(jobdir::JobState::Cancelled.is_finished());
    /// assert!(!jobdir::JobState::Delayed.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobState::Fulfilled | JobState::Failed | JobState::Cancelled | JobState::Expired
        )
    }
}

impl std::str::FromStr for JobState {
    type Err = Error;
    fn from_str(s: &str) -> Result<JobState> {
        match s {
            "pending" => Ok(JobState::Pending),
            "delayed" => Ok(JobState::Delayed),
            "running" => Ok(JobState::Running),
            "fulfilled" => Ok(JobState::Fulfilled),
            "failed" => Ok(JobState::Failed),
            "cancelled" => Ok(JobState::Cancelled),
            "expired" => Ok(JobState::Expired),
            other => Err(Error::InvalidOption(format!(
                "unknown state {other:?} (pending, delayed, running, fulfilled, failed, \
                 cancelled, expired)"
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
    /// When it finished (fulfilled, failed, cancelled or expired), by the finisher's clock.
    pub finished_at: Option<SystemTime>,
    /// Why it failed, was cancelled or expired (its final error).
    pub error: Option<String>,
    /// The errors of its failed attempts, oldest first (a lease that expired counts).
    pub errors: Vec<AttemptError>,
    /// When a delayed job, or one waiting out a retry's backoff, becomes pullable (by the
    /// clock of the process that set it).
    pub run_at: Option<SystemTime>,
    /// The latest progress its holder reported
    /// ([`WorkLease::progress`](crate::WorkLease::progress)), while it is running.
    pub progress: Option<Value>,
    /// The de-duplication key it was created with ([`CreateOptions::key`]).
    pub key: Option<String>,
    /// The group it was created in ([`CreateOptions::group`]); other groups may list it too
    /// (a keyed create that returned it as an existing job).
    pub group: Option<crate::GroupId>,
    /// The instance it is allocated to ([`CreateOptions::instance`]), if any.
    pub instance: Option<crate::InstanceId>,
    /// Whether that allocation is sticky ([`CreateOptions::sticky`]); false without one.
    pub sticky: bool,
}

/// One failed attempt, as kept in a job's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AttemptError {
    /// The attempt (claim epoch) that failed.
    pub attempt: u64,
    /// What went wrong: the worker's error, `lease expired`, or `run timeout`.
    pub error: String,
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
    /// Jobs waiting for their time (a delay, or a retry's backoff).
    pub delayed: u64,
    /// Jobs that failed on their last allowed attempt.
    pub failed: u64,
    /// Cancelled jobs.
    pub cancelled: u64,
    /// Jobs past their deadline or pickup timeout.
    pub expired: u64,
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
    pub(crate) run_at: Option<SystemTime>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) run_timeout: Option<Duration>,
    pub(crate) deadline: Option<SystemTime>,
    pub(crate) pickup_timeout: Option<Duration>,
    pub(crate) key: Option<crate::DedupKey>,
    pub(crate) keep_key: Option<Duration>,
    pub(crate) group: Option<crate::GroupId>,
    pub(crate) placement: Option<crate::affinity::Placement>,
    pub(crate) sticky: bool,
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

    /// Not pullable until `delay` from now; a worker blocked in a pull wakes when it is due.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let opts = jobdir::CreateOptions::default().delay(Duration::from_millis(200));
    /// let id = store.create_with(&"later", opts)?;
    /// assert_eq!(store.get(&id)?.state, jobdir::JobState::Delayed);
    /// assert!(store.pull_work()?.is_none());
    /// let job = store.pull_work_timeout(Duration::from_secs(10))?.unwrap();
    /// assert_eq!(job.id(), id);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at = Some(SystemTime::now() + delay);
        self
    }

    /// Not pullable before `at` (a time in the past means at once).
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self
    }

    /// How failures are retried (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The longest one attempt may run: past it the holder's lease is not renewed, the holder
    /// is told ([`CompromiseReason::TimedOut`](crate::CompromiseReason::TimedOut)) and the
    /// attempt counts as failed.
    pub fn run_timeout(mut self, limit: Duration) -> Self {
        self.run_timeout = Some(limit);
        self
    }

    /// Past this time the job expires wherever it is: pending, delayed or running.
    pub fn deadline(mut self, at: SystemTime) -> Self {
        self.deadline = Some(at);
        self
    }

    /// A job that no worker has pulled within `limit` of becoming pullable expires.
    pub fn pickup_timeout(mut self, limit: Duration) -> Self {
        self.pickup_timeout = Some(limit);
        self
    }

    /// De-duplication (FORMAT.md §12): while a job created with this key has not finished, a
    /// create with the same key, from any process, makes no job and returns that job's id
    /// ([`Store::create_keyed`](crate::Store::create_keyed) tells which happened). Once the job
    /// has finished the key is free again, unless [`keep_key_for`](Self::keep_key_for) keeps it.
    ///
    /// ```
    /// use jobdir::{CreateOptions, DedupKey};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let key = DedupKey::new("resize:/img/a.png")?;
    /// let a = store.create_with(&"a", CreateOptions::default().key(key.clone()))?;
    /// let b = store.create_with(&"b", CreateOptions::default().key(key))?;
    /// assert_eq!(a, b);
    /// assert_eq!(store.list()?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key(mut self, key: crate::DedupKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Keeps the [`key`](Self::key) taken for `ttl` after the job has finished (by the
    /// finisher's clock): creates with the key meanwhile return the finished job, and share its
    /// result. Needs a key.
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobdir::{CreateOptions, DedupKey};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let opts = CreateOptions::default()
    ///     .key(DedupKey::new("report-2026-11")?)
    ///     .keep_key_for(Duration::from_secs(600));
    /// let id = store.create_with(&"x", opts.clone())?;
    /// store.fulfill(&id, b"done")?;
    /// let again = store.create_keyed(&"x", opts)?;
    /// assert!(again.existing);
    /// assert_eq!(store.result(&again.id)?.unwrap(), b"done");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keep_key_for(mut self, ttl: Duration) -> Self {
        self.keep_key = Some(ttl);
        self
    }

    /// Creates the job as a member of `group` (FORMAT.md §12), which
    /// [`Store::wait_group`](crate::Store::wait_group) waits on. With a [`key`](Self::key),
    /// an existing job returned instead is made a member.
    ///
    /// ```
    /// use jobdir::{CreateOptions, GroupId};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let g = GroupId::new("batch-7")?;
    /// let a = store.create_with(&1, CreateOptions::default().group(g.clone()))?;
    /// let b = store.create_with(&2, CreateOptions::default().group(g.clone()))?;
    /// assert_eq!(store.group_members(&g)?, [a, b]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn group(mut self, group: crate::GroupId) -> Self {
        self.group = Some(group);
        self
    }

    /// Creates the job for `instance` (DESIGN.md §3.16): the job is allocated to it before it
    /// can be pulled, [`Store::pull_work_as`](crate::Store::pull_work_as) as that instance
    /// takes it first, and no other puller takes it while the instance runs. Unless
    /// [`sticky`](Self::sticky), the job is handed to another puller once the instance is dead
    /// (or unavailable and not running). The instance must exist and be available
    /// ([`Store::available`](crate::Store::available)), else the create fails.
    ///
    /// ```
    /// use jobdir::CreateOptions;
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let w = "w1".parse()?;
    /// store.available(&w)?;
    /// let id = store.create_with(&"x", CreateOptions::default().instance(w.clone()))?;
    /// assert_eq!(store.get(&id)?.instance, Some(w));
    /// assert!(store.pull_work()?.is_none()); // kept for w1, which is not dead
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn instance(mut self, instance: crate::InstanceId) -> Self {
        self.placement = Some(crate::affinity::Placement::Instance(instance));
        self
    }

    /// Allocates the job on creation with the default rule
    /// ([`Store::allocate`](crate::Store::allocate): the hash of its id indexes the sorted
    /// available instances), then as [`instance`](Self::instance). Fails with
    /// [`Error::NoInstance`](crate::Error::NoInstance) when no instance is available.
    ///
    /// ```
    /// use jobdir::{CreateOptions, JobKey};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.available(&"a".parse()?)?;
    /// store.available(&"b".parse()?)?;
    /// let id = store.create_with(&"x", CreateOptions::default().allocate())?;
    /// assert_eq!(store.get(&id)?.instance, store.instance(&JobKey::from(id))?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allocate(mut self) -> Self {
        self.placement = Some(crate::affinity::Placement::ByRule);
        self
    }

    /// With [`instance`](Self::instance) or [`allocate`](Self::allocate): the job waits for its
    /// instance, dead or not, until it is deallocated
    /// ([`Store::deallocate`](crate::Store::deallocate)) — atributo's sticky allocation.
    /// Default false.
    ///
    /// ```
    /// use jobdir::{CreateOptions, JobKey};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let w = "w1".parse()?;
    /// store.available(&w)?;
    /// let id = store.create_with(&"x", CreateOptions::default().instance(w).sticky(true))?;
    /// assert!(store.get(&id)?.sticky);
    /// store.deallocate(&JobKey::from(id))?; // now anyone may run it
    /// assert_eq!(store.pull_work()?.unwrap().id(), id);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sticky(mut self, sticky: bool) -> Self {
        self.sticky = sticky;
        self
    }
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
