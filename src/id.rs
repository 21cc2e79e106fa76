//! Job ids: UUID v7, so that names sort in creation order (FIFO) and carry their creation time.
//!
//! Invariant kept here: a [`JobId`] can only hold the canonical text of a UUID v7 (36 lowercase
//! characters), so no path is ever built from `../`, an absolute path, a NUL byte or any other
//! text the store did not generate.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::error::Error;

/// The id of a job: a UUID v7 in its lowercase hyphenated form.
///
/// Ids sort by creation time (millisecond resolution), which is what makes the queue FIFO within
/// a priority. Parsing rejects anything else, before any path is built:
///
/// ```
/// use jobdir::JobId;
/// let id = JobId::generate();
/// let again: JobId = id.to_string().parse().unwrap();
/// assert_eq!(id, again);
/// assert!("../x".parse::<JobId>().is_err());
/// assert!("/etc/passwd".parse::<JobId>().is_err());
/// assert!("".parse::<JobId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh id: time-ordered, with 74 random bits.
    pub fn generate() -> JobId {
        JobId(Uuid::now_v7())
    }

    /// Milliseconds since the Unix epoch at which the id was generated (by its creator's clock).
    ///
    /// ```
    /// let id = jobdir::JobId::generate();
    /// assert!(id.unix_millis() > 1_600_000_000_000);
    /// ```
    pub fn unix_millis(&self) -> u64 {
        let b = self.0.as_bytes();
        b[..6]
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    }

    /// The two lowercase hex characters that pick the job's shard directory (random bits, so
    /// shards fill evenly).
    pub(crate) fn shard(&self) -> String {
        format!("{:02x}", self.0.as_bytes()[15])
    }
}

impl FromStr for JobId {
    type Err = Error;

    fn from_str(s: &str) -> Result<JobId, Error> {
        let invalid = || Error::InvalidId(s.chars().take(80).collect());
        if s.len() != 36 {
            return Err(invalid());
        }
        let uuid = Uuid::try_parse(s).map_err(|_| invalid())?;
        if uuid.get_version_num() != 7 || uuid.hyphenated().to_string() != s {
            return Err(invalid());
        }
        Ok(JobId(uuid))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0.hyphenated())
    }
}

impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JobId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_the_store_never_generates() {
        let good = JobId::generate().to_string();
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "/absolute",
            "a\0b",
            &good.to_uppercase(),
            &good.replace('-', ""),
            "00000000-0000-4000-8000-000000000000", // v4, not v7
            &format!("{good}/.."),
        ] {
            assert!(bad.parse::<JobId>().is_err(), "accepted {bad:?}");
        }
        assert_eq!(good.parse::<JobId>().unwrap().to_string(), good);
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }
}
