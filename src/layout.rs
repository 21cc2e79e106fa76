//! Where everything lives in the store directory, and the format marker.
//!
//! Invariant kept here: every path the store touches is built by this module from a validated
//! [`JobId`], a number, or a fixed name; no path is ever built from caller text. (Lookup tables
//! and control messages build their own paths below [`LOOKUPS`] and [`CONTROL`], in `lookup` and
//! `control`, from a table name checked against a strict alphabet, a SHA-256 hex digest or a
//! UUID.)
//!
//! ```text
//! DIR/jobdir.json                         format marker {"format":"jobdir","version":1}
//! DIR/tmp/                                temporary files and directories (same filesystem)
//! DIR/jobs/<xx>/<id>/job.json             the job (immutable)
//! DIR/jobs/<xx>/<id>/claims/<epoch>/held/ the live work lease token (renamed away to end it)
//! DIR/jobs/<xx>/<id>/result/value         the result, present once fulfilled
//! DIR/jobs/<xx>/<id>/targets/<sha256>.json  one waiting notification target per file
//! DIR/jobs/<xx>/<id>/nclaims/<epoch>/held/  the live notification lease token
//! DIR/pending/<class>/<bucket>/<id>       work index: jobs without a result
//! DIR/notify/<class>/<bucket>/<id>[.<n>]  notification index: fulfilled jobs with targets
//! DIR/leases/<w|n>.<id>.<epoch>           lease files: flock, heartbeat mtime, owner JSON
//! DIR/quarantine/<ms>-<rand>/             a corrupt or foreign item and its reason.json
//! DIR/lookups/<table>/<sha256>.json       one lookup entry (key, value) per file; made on first use
//! DIR/control/<uuid v7>.json              one broadcast control message per file; made on first use
//! ```

use std::path::{Path, PathBuf};

use crate::id::JobId;

/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// The marker file's name.
pub(crate) const MARKER: &str = "jobdir.json";

/// Every name that belongs at the top of a store directory.
pub(crate) const TOP_LEVEL: [&str; 9] = [
    MARKER,
    "tmp",
    "jobs",
    "pending",
    "notify",
    "leases",
    "quarantine",
    // Optional, made on first use (FORMAT.md §10, §11).
    LOOKUPS,
    CONTROL,
];

/// The directory of lookup tables (optional: made by the first `lookup_set`).
pub(crate) const LOOKUPS: &str = "lookups";

/// The directory of broadcast control messages (optional: made by the first `broadcast`).
pub(crate) const CONTROL: &str = "control";

/// Width of epoch numbers in claim directory names (zero-padded decimal, so names sort).
const EPOCH_WIDTH: usize = 10;

/// Milliseconds are shifted right by this many bits to form a time bucket (~4.1 s per bucket).
const BUCKET_SHIFT: u32 = 12;

/// What a lease protects: a job's work, or the delivery of its notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LeaseKind {
    Work,
    Notify,
}

impl LeaseKind {
    /// The per-job directory holding this kind's claim epochs.
    pub(crate) fn claims_dir(self) -> &'static str {
        match self {
            LeaseKind::Work => "claims",
            LeaseKind::Notify => "nclaims",
        }
    }

    /// The lease file name prefix in `leases/`.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            LeaseKind::Work => "w",
            LeaseKind::Notify => "n",
        }
    }

    pub(crate) fn from_prefix(p: &str) -> Option<LeaseKind> {
        match p {
            "w" => Some(LeaseKind::Work),
            "n" => Some(LeaseKind::Notify),
            _ => None,
        }
    }
}

/// The paths of one store.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub root: PathBuf,
    pub tmp: PathBuf,
    pub jobs: PathBuf,
    pub pending: PathBuf,
    pub notify: PathBuf,
    pub leases: PathBuf,
    pub quarantine: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            jobs: root.join("jobs"),
            pending: root.join("pending"),
            notify: root.join("notify"),
            leases: root.join("leases"),
            quarantine: root.join("quarantine"),
        }
    }

    /// The top-level directories, in creation order.
    pub(crate) fn dirs(&self) -> [&Path; 6] {
        [
            &self.tmp,
            &self.jobs,
            &self.pending,
            &self.notify,
            &self.leases,
            &self.quarantine,
        ]
    }

    pub(crate) fn marker(&self) -> PathBuf {
        self.root.join(MARKER)
    }

    pub(crate) fn shard_dir(&self, id: &JobId) -> PathBuf {
        self.jobs.join(id.shard())
    }

    pub(crate) fn job_dir(&self, id: &JobId) -> PathBuf {
        self.shard_dir(id).join(id.to_string())
    }

    pub(crate) fn job_file(&self, id: &JobId) -> PathBuf {
        self.job_dir(id).join("job.json")
    }

    pub(crate) fn result_dir(&self, id: &JobId) -> PathBuf {
        self.job_dir(id).join("result")
    }

    pub(crate) fn result_value(&self, id: &JobId) -> PathBuf {
        self.result_dir(id).join("value")
    }

    pub(crate) fn targets_dir(&self, id: &JobId) -> PathBuf {
        self.job_dir(id).join("targets")
    }

    pub(crate) fn claims_dir(&self, kind: LeaseKind, id: &JobId) -> PathBuf {
        self.job_dir(id).join(kind.claims_dir())
    }

    pub(crate) fn epoch_dir(&self, kind: LeaseKind, id: &JobId, epoch: u64) -> PathBuf {
        self.claims_dir(kind, id).join(epoch_name(epoch))
    }

    pub(crate) fn held_dir(&self, kind: LeaseKind, id: &JobId, epoch: u64) -> PathBuf {
        self.epoch_dir(kind, id, epoch).join("held")
    }

    pub(crate) fn lease_file(&self, kind: LeaseKind, id: &JobId, epoch: u64) -> PathBuf {
        self.leases.join(lease_name(kind, id, epoch))
    }
}

/// Zero-padded decimal epoch name.
pub(crate) fn epoch_name(epoch: u64) -> String {
    format!("{epoch:0EPOCH_WIDTH$}")
}

/// Parses a claim directory name; `None` for anything that is not an epoch name.
pub(crate) fn parse_epoch(name: &str) -> Option<u64> {
    if name.len() == EPOCH_WIDTH && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// `w.<id>.<epoch>` or `n.<id>.<epoch>`.
pub(crate) fn lease_name(kind: LeaseKind, id: &JobId, epoch: u64) -> String {
    format!("{}.{id}.{}", kind.prefix(), epoch_name(epoch))
}

/// Parses a lease file name.
pub(crate) fn parse_lease_name(name: &str) -> Option<(LeaseKind, JobId, u64)> {
    let mut parts = name.splitn(3, '.');
    let kind = LeaseKind::from_prefix(parts.next()?)?;
    let id = parts.next()?.parse().ok()?;
    let epoch = parse_epoch(parts.next()?)?;
    Some((kind, id, epoch))
}

/// The index class of a priority: `p` and eight hex digits of `i32::MAX - priority`, so that a
/// higher priority sorts first.
pub(crate) fn priority_class(priority: i32) -> String {
    let key = (i64::from(i32::MAX) - i64::from(priority)) as u32;
    format!("p{key:08x}")
}

/// Parses a class name back into its priority.
pub(crate) fn parse_priority_class(name: &str) -> Option<i32> {
    let hex = name.strip_prefix('p')?;
    if hex.len() != 8 {
        return None;
    }
    let key = u32::from_str_radix(hex, 16).ok()?;
    i32::try_from(i64::from(i32::MAX) - i64::from(key)).ok()
}

/// The time bucket of a millisecond timestamp: nine hex digits of `ms >> 12`.
pub(crate) fn bucket(unix_millis: u64) -> String {
    format!("{:09x}", unix_millis >> BUCKET_SHIFT)
}

/// The first millisecond after a bucket ends.
pub(crate) fn bucket_end_millis(name: &str) -> Option<u64> {
    if name.len() != 9 {
        return None;
    }
    let b = u64::from_str_radix(name, 16).ok()?;
    Some((b + 1) << BUCKET_SHIFT)
}

/// Parses a notification-index entry name: `<id>` or `<id>.<nonce>`.
pub(crate) fn parse_notify_entry(name: &str) -> Option<JobId> {
    let id = name.split('.').next()?;
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_classes_sort_highest_first_and_round_trip() {
        let ps = [i32::MIN, -5, 0, 1, 7, i32::MAX];
        let mut classes: Vec<_> = ps.iter().map(|&p| priority_class(p)).collect();
        for (p, c) in ps.iter().zip(&classes) {
            assert_eq!(parse_priority_class(c), Some(*p));
        }
        let sorted = {
            let mut c = classes.clone();
            c.sort();
            c
        };
        classes.reverse();
        assert_eq!(classes, sorted);
    }

    #[test]
    fn lease_names_round_trip() {
        let id = JobId::generate();
        let n = lease_name(LeaseKind::Notify, &id, 42);
        assert_eq!(parse_lease_name(&n), Some((LeaseKind::Notify, id, 42)));
        assert_eq!(parse_lease_name("w.nope.0000000001"), None);
        assert_eq!(parse_epoch("12"), None);
    }
}
