//! How a job finished: with a result, or failed, cancelled or expired.
//!
//! Invariant kept here: a job finishes once. Every way of finishing — a fulfilment, a failure on
//! the last allowed attempt, a cancellation, an expiry — is the appearance of `result/` by one
//! rename of a complete directory, and a directory rename onto a non-empty `result/` fails, so
//! exactly one finisher wins. A result holds `value`; any other outcome holds `outcome.json`.

use std::fs;
use std::io;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::atomic::read_file;
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::job::{JobState, rfc3339};
use crate::layout::{LeaseKind, parse_epoch};
use crate::store::{Inner, READ_LIMIT};

/// The contents of `result/outcome.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct OutcomeRecord {
    /// `failed`, `cancelled` or `expired`.
    pub state: JobState,
    /// The final error.
    pub error: String,
    /// When it finished, RFC 3339 UTC ms, by the finisher's clock.
    pub at: String,
}

impl OutcomeRecord {
    pub(crate) fn new(state: JobState, error: impl Into<String>) -> OutcomeRecord {
        OutcomeRecord {
            state,
            error: error.into(),
            at: rfc3339(SystemTime::now()),
        }
    }

    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|source| Error::Encode {
            what: "outcome",
            source,
        })
    }

    /// The error a caller asking for the result gets.
    pub(crate) fn to_error(&self, id: &JobId) -> Error {
        Error::Unfulfilled {
            id: *id,
            state: self.state,
            error: self.error.clone(),
        }
    }
}

/// A finished job's outcome as read from `result/`.
pub(crate) enum Finish {
    /// `result/value`, and its mtime (when it was written).
    Fulfilled(Vec<u8>, Option<SystemTime>),
    /// `result/outcome.json`.
    Unfulfilled(OutcomeRecord),
}

/// Reads how the job finished; `None` while it has not (or its `result/` is incomplete, which
/// only a crash of an old version could leave: recover repairs it).
pub(crate) fn read(inner: &Inner, id: &JobId) -> Result<Option<Finish>> {
    let value_path = inner.layout.result_value(id);
    match read_file(&value_path, READ_LIMIT) {
        Ok(v) => {
            let at = fs::symlink_metadata(&value_path)
                .and_then(|m| m.modified())
                .ok();
            return Ok(Some(Finish::Fulfilled(v, at)));
        }
        Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {}
        Err(e) => return Err(e),
    }
    read_outcome(inner, id).map(|o| o.map(Finish::Unfulfilled))
}

/// Reads `result/outcome.json`, if there is one.
pub(crate) fn read_outcome(inner: &Inner, id: &JobId) -> Result<Option<OutcomeRecord>> {
    let path = inner.layout.result_outcome(id);
    match read_file(&path, 64 * 1024) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                reason: format!("not an outcome record: {e}"),
            }),
        Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Finishes a job without holding its lease (cancel, expiry by a waiter or puller): a complete
/// `result/` with `outcome.json` is renamed into place. Returns false if the job had already
/// finished (someone else won).
pub(crate) fn finish_unfenced(inner: &Inner, id: &JobId, outcome: &OutcomeRecord) -> Result<bool> {
    let bytes = outcome.to_bytes()?;
    let staging = inner.fs.temp_dir()?;
    inner
        .fs
        .write_into_private_dir(&staging.path().join("outcome.json"), &bytes)?;
    finish_with(inner, id, staging)
}

/// Renames a complete staging directory (holding `value` or `outcome.json`) to the job's
/// `result/` after fsyncing it, then fsyncs the job directory. False if the job had already
/// finished; `NotFound` if it does not exist.
pub(crate) fn finish_with(inner: &Inner, id: &JobId, staging: tempfile::TempDir) -> Result<bool> {
    inner.fs.sync_dir(staging.path())?;
    let dest = inner.layout.result_dir(id);
    match fs::rename(staging.path(), &dest) {
        Ok(()) => {
            let _ = staging.keep();
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::AlreadyExists | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            return Ok(false);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound(*id)),
        Err(e) => return Err(e).ctx("rename outcome into", &dest),
    }
    inner.fs.sync_parent(&dest)?;
    Ok(true)
}

/// Ends the current work holder's lease, if any, by renaming its `held/` to `reason`
/// (`cancelled`, `deadline`): the holder's heartbeat or next write finds it gone and is told.
pub(crate) fn end_holder(inner: &Inner, id: &JobId, reason: &str) -> Result<()> {
    let layout = &inner.layout;
    let max = crate::atomic::list_names(&layout.claims_dir(LeaseKind::Work, id))?
        .iter()
        .filter_map(|n| parse_epoch(n))
        .max()
        .unwrap_or(0);
    if max == 0 {
        return Ok(());
    }
    let held = layout.held_dir(LeaseKind::Work, id, max);
    match fs::rename(
        &held,
        layout.epoch_dir(LeaseKind::Work, id, max).join(reason),
    ) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("rename", &held),
    }
}
