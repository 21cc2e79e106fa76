//! # jobdir — a resilient job store in one shared directory
//!
//! No server, no database: jobs, results and notification queues are files in one directory,
//! written atomically (temp file, fsync, rename), and claimed under leases that are heartbeated
//! and fenced. Any number of processes — on one host, or on several hosts over a shared
//! filesystem — create jobs, pull work, fulfil jobs, pull notifications, and carry on after any
//! of them crashes.
//!
//! The three workflows (after the Node.js package `fs-job-store`):
//!
//! ```
//! use std::time::Duration;
//! use jobdir::Store;
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path())?;
//!
//! // Job creation: durable when `create` returns.
//! let id = store.create(&serde_json::json!({"calculate": "3+3"}))?;
//! store.queue(&id, &serde_json::json!({"email": "ann@example.com"}))?;
//!
//! // Fulfilment loop: pull under an exclusive lease, fulfil (fenced by the lease).
//! while let Some(job) = store.pull_work_timeout(Duration::from_millis(10))? {
//!     job.on_compromised(|_| eprintln!("lease lost: stop"));
//!     job.fulfill(b"6")?;
//! }
//!
//! // Notification loop: deliver the result to each waiting target, mark the delivered ones.
//! while let Some(note) = store.pull_notification()? {
//!     let delivered: Vec<_> = note.waiting().to_vec(); // deliver note.value() to each
//!     note.done(&delivered)?;
//! }
//! assert_eq!(store.wait(&id, Duration::from_secs(1))?, b"6");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Jobs can also be allocated, sticky, to named worker instances (after the Node package
//! atributo): [`Store::available`], [`Store::unavailable`], [`Store::instances`],
//! [`Store::join`], [`Store::allocate`], [`Store::deallocate`], [`Store::jobs`],
//! [`Store::has_jobs`] and [`Store::instance`].
//!
//! A worker can reserve capacity for priority ranges ([`PrioritySlots`], pulled with
//! [`Store::pull_work_with`] and a [`PullFilter`]), a holder can report progress
//! ([`WorkLease::progress`], read by [`Store::progress`] and [`Store::get`]), and
//! [`Store::events`] follows every job's state changes as they happen.
//! A create can carry a de-duplication key ([`CreateOptions::key`], [`Store::create_keyed`]):
//! while a job created with that key has not finished, creates with it return that job. Jobs
//! created in a group ([`CreateOptions::group`]) are waited on together: [`Store::wait_group`],
//! [`Store::wait_group_each`].
//!
//! The on-disk protocol is specified in `docs/FORMAT.md`; the design and its reasons in
//! `docs/DESIGN.md`.

#![warn(missing_docs)]

mod affinity;
mod allocation;
mod atomic;
mod control;
mod dedup;
mod delayed;
mod error;
mod events;
mod fault;
mod group;
mod id;
mod index;
mod instance;
mod job;
mod layout;
mod lease;
mod lookup;
mod name;
mod notification;
mod outcome;
mod recover;
mod retry;
mod slots;
mod store;
mod watch;
mod work;

pub use affinity::Affinity;
pub use allocation::{Allocation, AllocationRule, Choice, HashRule, JobKey};
pub use atomic::Durability;
pub use control::{CONTROL_TTL, Control, ControlListener, ControlMessage};
pub use dedup::{Created, DedupKey};
pub use error::{Error, Result};
pub use events::{EventKind, EventStream, JobEvent};
pub use group::GroupId;
pub use id::JobId;
pub use instance::{InstanceId, InstanceInfo, Liveness, Presence, Removal};
pub use job::{AttemptError, Counts, CreateOptions, JobInfo, JobState, JobSummary};
pub use layout::FORMAT_VERSION;
pub use lease::CompromiseReason;
pub use notification::NotificationLease;
pub use recover::{Quarantined, RecoverOptions, RecoveryReport};
pub use retry::RetryPolicy;
pub use slots::{PrioritySlots, PullFilter};
pub use store::{Store, StoreBuilder};
pub use work::{Failure, WorkLease};

/// The README's Rust example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
