//! The library's one error type.
//!
//! Invariant kept here: every failure names what was being done and to which path, so a
//! caller (or the CLI's one-line `error:` message) can say exactly what went wrong.

use std::io;
use std::path::PathBuf;

use crate::allocation::JobKey;
use crate::group::GroupId;
use crate::id::JobId;
use crate::instance::InstanceId;

/// Everything that can go wrong in a [`Store`](crate::Store) operation.
///
/// ```
/// use jobdir::{Error, JobId};
/// let err = "../etc/passwd".parse::<JobId>().unwrap_err();
/// assert!(matches!(err, Error::InvalidId(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the store was doing (`"create"`, `"rename"`, `"fsync"`, ...).
        op: &'static str,
        /// The path the call was made on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The text is not an id this store generates (rejected before any path is built).
    #[error("invalid job id {0:?}: expected a lowercase hyphenated UUID v7")]
    InvalidId(String),
    /// No job with this id exists in the store.
    #[error("no such job: {0}")]
    NotFound(JobId),
    /// The job already has a result; results are written once and never change.
    #[error("job {0} is already fulfilled")]
    AlreadyFulfilled(JobId),
    /// The lease on this job or notification was lost (expired and taken over, or the job was
    /// removed); the write it guarded was refused.
    #[error("lease on job {0} was lost; the write was refused")]
    LeaseLost(JobId),
    /// A blocking call gave up after its timeout.
    #[error("timed out")]
    Timeout,
    /// The directory holds a jobdir store of another on-disk format version.
    #[error("{} holds a jobdir store of format version {found}; this build reads version {supported}", path.display())]
    FormatVersion {
        /// The store directory.
        path: PathBuf,
        /// The version found in its marker file.
        found: u64,
        /// The version this build reads and writes.
        supported: u64,
    },
    /// The directory is not empty and is not a jobdir store.
    #[error("{} is not a jobdir store ({reason})", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The request (or result, or target) is larger than the store accepts.
    #[error("{what} is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// What was too large (`"request"`, `"target"`).
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A value could not be turned into JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A file in the store is not what the format says it must be.
    #[error("corrupt {}: {reason}", path.display())]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An option was given a value the store cannot use.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The job finished without a result: it failed on its last allowed attempt, was
    /// cancelled, or expired. Returned by [`Store::result`](crate::Store::result) and
    /// [`Store::wait`](crate::Store::wait).
    #[error("job {id} {state}: {error}")]
    Unfulfilled {
        /// The job.
        id: JobId,
        /// How it finished: [`JobState::Failed`](crate::JobState::Failed),
        /// [`Cancelled`](crate::JobState::Cancelled) or [`Expired`](crate::JobState::Expired).
        state: crate::JobState,
        /// Its final error (why it failed, or who cancelled it and why, or what expired).
        error: String,
    },
    /// The job is in a state the operation does not apply to (retrying a job that has not
    /// failed, cancelling a finished one).
    #[error("job {id} is {state}: {what}")]
    WrongState {
        /// The job.
        id: JobId,
        /// Its state.
        state: crate::JobState,
        /// What could not be done.
        what: &'static str,
    },
    /// A name the store does not accept (an instance name, a job key, a lookup table name or
    /// key), rejected before any path is built.
    #[error("invalid {what} {text:?}: {reason}")]
    InvalidName {
        /// What the text was meant to be (`"instance name"`, `"job key"`, `"lookup key"`).
        what: &'static str,
        /// The text as given (cut short if long).
        text: String,
        /// What a valid one looks like.
        reason: &'static str,
    },
    /// No available instance would take a new allocation of this job (none is available, or
    /// the allocation rule chose none).
    #[error("no available instance for job {0}")]
    NoInstance(JobKey),
    /// Another live process already runs as this instance ([`Store::join`](crate::Store::join)).
    #[error("instance {0} is already joined by a live process")]
    InstanceInUse(InstanceId),
    /// No job was ever created in this group (or recover removed it, empty).
    #[error("no such group: {0}")]
    GroupNotFound(GroupId),
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the operation and path to an [`io::Error`].
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.into(),
            source,
        })
    }
}

impl Error {
    /// True when the error is an I/O error of this kind (`NotFound`, `AlreadyExists`, ...).
    pub(crate) fn is_io_kind(&self, kind: io::ErrorKind) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == kind)
    }
}
