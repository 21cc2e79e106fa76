//! Where everything lives in the store directory, and the format marker.
//!
//! Invariant kept here: every path the store touches is built by this module from a validated
//! [`JobId`], a number, or a fixed name; no path is ever built from caller text. (Lookup tables
//! and control messages build their own paths below [`LOOKUPS`] and [`CONTROL`], in `lookup` and
//! `control`, from a table name checked against a strict alphabet, a SHA-256 hex digest or a
//! UUID; keys and groups below [`KEYS`] and [`GROUPS`], in `dedup` and `group`, from a SHA-256
//! hex digest, a record number, a checked group name or a job id.)
//!
//! ```text
//! DIR/jobdir.json                         format marker {"format":"jobdir","version":1}
//! DIR/tmp/                                temporary files and directories (same filesystem)
//! DIR/jobs/<xx>/<id>/job.json             the job (immutable)
//! DIR/jobs/<xx>/<id>/claims/<epoch>/held/ the live work lease token (renamed away to end it)
//! DIR/jobs/<xx>/<id>/result/value         the result, present once fulfilled
//! DIR/jobs/<xx>/<id>/result/outcome.json  instead of `value`: failed, cancelled or expired
//! DIR/jobs/<xx>/<id>/retries/<epoch>/     an outcome set aside by a manual retry
//! DIR/jobs/<xx>/<id>/targets/<sha256>.json  one waiting notification target per file
//! DIR/jobs/<xx>/<id>/nclaims/<epoch>/held/  the live notification lease token
//! DIR/pending/<class>/<bucket>/<id>       work index: jobs without a result
//! DIR/delayed/<bucket>/<due>.<class>.<id>  jobs that become pending at <due> (ms)
//! DIR/notify/<class>/<bucket>/<id>[.<n>]  notification index: fulfilled jobs with targets
//! DIR/leases/<w|n>.<id>.<epoch>           lease files: flock, heartbeat mtime, owner JSON
//! DIR/quarantine/<ms>-<rand>/             a corrupt or foreign item and its reason.json
//! DIR/instances/<name>/instance.json       an instance: availability (made on first use)
//! DIR/instances/<name>/presence            its presence while a process runs as it: flock,
//!                                          heartbeat mtime, owner JSON
//! DIR/instances/<name>/jobs/<key>.<nonce>  index of its allocations (empty files)
//! DIR/allocations/<xx>/<key>               a sticky allocation of a job key to an instance
//! DIR/lookups/<table>/<sha256>.json       one lookup entry (key, value) per file; made on first use
//! DIR/control/<uuid v7>.json              one broadcast control message per file; made on first use
//! DIR/keys/<xx>/<sha256(key)>/<n>          de-duplication key records; made on first use
//! DIR/groups/<group>/<id>                  group membership (empty files); made on first use
//! ```
//!
//! Instance names and job keys are validated ([`is_valid_name`]) before any path is built.

use std::path::{Path, PathBuf};

use crate::id::JobId;

/// The on-disk format version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// The marker file's name.
pub(crate) const MARKER: &str = "jobdir.json";

/// Every name that belongs at the top of a store directory. `instances` and `allocations` are
/// made on first use, not at open (stores made before them keep working, read-only too).
pub(crate) const TOP_LEVEL: [&str; 14] = [
    MARKER,
    "tmp",
    "jobs",
    "pending",
    "notify",
    "leases",
    "quarantine",
    "delayed",
    "instances",
    "allocations",
    // Optional, made on first use (FORMAT.md §10, §11).
    LOOKUPS,
    CONTROL,
    // Optional, made on first use (FORMAT.md §12).
    KEYS,
    GROUPS,
];

/// The directory of de-duplication keys (optional: made by the first create with a key).
pub(crate) const KEYS: &str = "keys";

/// The directory of groups (optional: made by the first create in a group).
pub(crate) const GROUPS: &str = "groups";

/// Longest instance name or job key, in bytes.
pub(crate) const MAX_NAME: usize = 128;

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
    pub delayed: PathBuf,
    pub instances: PathBuf,
    pub allocations: PathBuf,
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
            delayed: root.join("delayed"),
            instances: root.join("instances"),
            allocations: root.join("allocations"),
        }
    }

    /// The top-level directories, in creation order.
    pub(crate) fn dirs(&self) -> [&Path; 7] {
        [
            &self.tmp,
            &self.jobs,
            &self.pending,
            &self.notify,
            &self.leases,
            &self.quarantine,
            &self.delayed,
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

    pub(crate) fn result_outcome(&self, id: &JobId) -> PathBuf {
        self.result_dir(id).join("outcome.json")
    }

    pub(crate) fn retries_dir(&self, id: &JobId) -> PathBuf {
        self.job_dir(id).join("retries")
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

    /// `instances/<name>/`; `name` is a validated instance name.
    pub(crate) fn instance_dir(&self, name: &str) -> PathBuf {
        self.instances.join(name)
    }

    pub(crate) fn instance_record(&self, name: &str) -> PathBuf {
        self.instance_dir(name).join("instance.json")
    }

    pub(crate) fn presence(&self, name: &str) -> PathBuf {
        self.instance_dir(name).join("presence")
    }

    pub(crate) fn instance_jobs(&self, name: &str) -> PathBuf {
        self.instance_dir(name).join("jobs")
    }

    /// `allocations/<xx>/`: the shard of a validated job key.
    pub(crate) fn allocation_shard(&self, key: &str) -> PathBuf {
        self.allocations.join(allocation_shard(key))
    }

    /// `allocations/<xx>/<key>`.
    pub(crate) fn allocation_file(&self, key: &str) -> PathBuf {
        self.allocation_shard(key).join(key)
    }
}

/// True for a valid instance name or job key: 1 to 128 bytes of `A-Z a-z 0-9 . _ -`, the first
/// a letter or a digit (so never `.`, `..`, a hidden or `.nfs*` name, nor an option). A
/// [`JobId`]'s text is one.
pub(crate) fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The allocation shard of a job key: the first byte of SHA-256 of its text, as two lowercase
/// hex digits.
pub(crate) fn allocation_shard(key: &str) -> String {
    use sha2::Digest;
    format!("{:02x}", sha2::Sha256::digest(key.as_bytes())[0])
}

/// An allocation index entry name `<key>.<nonce>` (nonce: 8 lowercase hex digits).
pub(crate) fn allocation_entry(key: &str, nonce: &str) -> String {
    format!("{key}.{nonce}")
}

/// Parses an allocation index entry name into (key, nonce).
pub(crate) fn parse_allocation_entry(name: &str) -> Option<(&str, &str)> {
    let (key, nonce) = name.rsplit_once('.')?;
    (is_valid_name(key) && is_nonce(nonce)).then_some((key, nonce))
}

/// Eight lowercase hex digits.
pub(crate) fn is_nonce(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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

/// A delayed-index entry name: `<due ms, 13 digits>.<class>.<id>` (sorts by due time).
pub(crate) fn delayed_name(due_ms: u64, class: &str, id: &JobId) -> String {
    format!("{due_ms:013}.{class}.{id}")
}

/// Parses a delayed-index entry name into (due ms, priority class, id).
pub(crate) fn parse_delayed_name(name: &str) -> Option<(u64, String, JobId)> {
    let mut parts = name.splitn(3, '.');
    let due = parts.next()?;
    if due.len() != 13 || !due.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let class = parts.next()?;
    parse_priority_class(class)?;
    let id = parts.next()?.parse().ok()?;
    Some((due.parse().ok()?, class.to_string(), id))
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
    fn names_are_checked_before_any_path_is_built() {
        for good in ["instance0", "job0", "a", "A.b_c-9", &"x".repeat(128)] {
            assert!(is_valid_name(good), "{good:?}");
        }
        let id = JobId::generate().to_string();
        assert!(is_valid_name(&id));
        for bad in [
            "",
            ".",
            "..",
            ".nfs0001",
            "-rf",
            "_x",
            "a/b",
            "../x",
            "a b",
            "a\0b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert_eq!(
            parse_allocation_entry("job.0.9f3c0a12"),
            Some(("job.0", "9f3c0a12"))
        );
        assert_eq!(parse_allocation_entry("job0.9F3C0A12"), None);
        assert_eq!(parse_allocation_entry("job0"), None);
        assert_eq!(allocation_shard("job0").len(), 2);
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
