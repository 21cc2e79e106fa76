//! Opening a store the way the tests do: polling often (tests wait for other processes), and
//! often with a short lease (so that a stopped holder loses its job within a test).

use std::path::Path;
use std::time::Duration;

use jobdir::{Store, StoreBuilder};

/// `Store::builder(dir)`, polling every `poll_ms`.
pub fn polling(dir: &Path, poll_ms: u64) -> StoreBuilder {
    Store::builder(dir).poll_interval(Duration::from_millis(poll_ms))
}

/// `Store::builder(dir)` with leases of `lease_ms`, polling every `poll_ms`.
pub fn builder(dir: &Path, lease_ms: u64, poll_ms: u64) -> StoreBuilder {
    polling(dir, poll_ms).lease(Duration::from_millis(lease_ms))
}

/// The store in `dir` with leases of `lease_ms`, polling every 200 ms.
pub fn open(dir: &Path, lease_ms: u64) -> Store {
    builder(dir, lease_ms, 200).open().expect("open store")
}
