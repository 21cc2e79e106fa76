//! The [`Store`] facade: opening a directory, options, and the operations on jobs that are not
//! about leases (create, get, list, counts, fulfil without a lease, queue, wait, remove).
//!
//! Invariant kept here: a job is written whole (in a private temporary directory, fsynced) and
//! becomes visible by one rename; its index entry is added only after that, and removed only
//! after the state that makes it unnecessary is durable. A crash therefore leaves at worst an
//! extra index entry or an unindexed job that `recover` re-indexes, never a half-written job.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::atomic::{AtomicFs, Durability, exists, list_names, read_file, read_file_ino};
use crate::delayed::{Delayed, ms_of, now_ms};
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::index::{ClassRange, Frontiers, Index};
use crate::job::{Counts, CreateOptions, JobInfo, JobRecord, JobState, JobSummary, rfc3339};
use crate::layout::{
    FORMAT_VERSION, Layout, LeaseKind, MARKER, bucket, parse_epoch, parse_lease_name,
    parse_notify_entry, priority_class,
};
use crate::lease::{self, Keeper, Observations};
use crate::outcome::{self, Finish, OutcomeRecord};
use crate::watch::{Channel, Signals, Watch};

/// Largest `job.json` or result file the store reads back (a corrupt giant is refused).
pub(crate) const READ_LIMIT: u64 = 1 << 30;

/// Options of a store, set through [`StoreBuilder`].
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub lease: Duration,
    pub heartbeat: Duration,
    pub durability: Durability,
    pub poll_interval: Duration,
    pub host_id: String,
    pub max_request_bytes: usize,
    pub group_shared: bool,
    pub file_events: bool,
}

/// Builds a [`Store`] with non-default options.
///
/// ```
/// use std::time::Duration;
/// use jobdir::{Durability, Store};
/// let dir = tempfile::tempdir()?;
/// let store = Store::builder(dir.path())
///     .lease(Duration::from_secs(10))
///     .durability(Durability::Fast)
///     .poll_interval(Duration::from_millis(500))
///     .host_id("worker-a")
///     .open()?;
/// assert_eq!(store.lease(), Duration::from_secs(10));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct StoreBuilder {
    dir: PathBuf,
    lease: Duration,
    heartbeat: Option<Duration>,
    durability: Durability,
    poll_interval: Duration,
    host_id: Option<String>,
    max_request_bytes: usize,
    group_shared: bool,
    file_events: bool,
}

impl StoreBuilder {
    /// How long a lease lasts without a heartbeat before others may take it over. Default 30 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often a held lease is renewed and checked. Default: a third of the lease.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// [`Durability::Durable`] (default: fsync file and directory) or [`Durability::Fast`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The longest a blocked pull or wait sleeps without an event before it looks at the disk
    /// again (the fallback for changes that file events cannot see, such as other NFS clients).
    /// Default 1 s.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// This process's host identity, recorded in its leases. A free OS lock proves a holder dead
    /// only when it recorded this same host. Default: `JOBDIR_HOST_ID` from the environment,
    /// else the machine's host name and machine id.
    pub fn host_id(mut self, host: impl Into<String>) -> Self {
        self.host_id = Some(host.into());
        self
    }

    /// Largest request or notification target accepted, in bytes of JSON. Default 1 MiB.
    pub fn max_request_bytes(mut self, limit: usize) -> Self {
        self.max_request_bytes = limit;
        self
    }

    /// Create files 0660 and directories 0770 (instead of 0600 and 0700) so that several users
    /// of one group can share the store.
    pub fn group_shared(mut self, shared: bool) -> Self {
        self.group_shared = shared;
        self
    }

    /// Use file events (inotify) to wake pullers and waiters at once (default `true`). With
    /// `false` the store polls: each pull with nothing known looks at the disk, and blocked
    /// calls look again every poll interval. inotify sees only this host's changes, so on a
    /// shared filesystem other hosts' changes are always found by polling.
    pub fn file_events(mut self, enabled: bool) -> Self {
        self.file_events = enabled;
        self
    }

    /// Opens (creating on first use) the store.
    pub fn open(self) -> Result<Store> {
        if self.lease < Duration::from_millis(100) {
            return Err(Error::InvalidOption("lease must be at least 100 ms".into()));
        }
        let heartbeat = self.heartbeat.unwrap_or(self.lease / 3);
        if heartbeat.is_zero() || heartbeat >= self.lease {
            return Err(Error::InvalidOption(
                "heartbeat must be above zero and shorter than the lease".into(),
            ));
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(Error::InvalidOption(
                "poll interval must be at least 1 ms".into(),
            ));
        }
        let host_id = match self.host_id {
            Some(h) => h,
            None => default_host_id(),
        };
        if host_id.is_empty() {
            return Err(Error::InvalidOption("host id must not be empty".into()));
        }
        let opts = Options {
            lease: self.lease,
            heartbeat,
            durability: self.durability,
            poll_interval: self.poll_interval,
            host_id,
            max_request_bytes: self.max_request_bytes,
            group_shared: self.group_shared,
            file_events: self.file_events,
        };
        Store::open_with(&self.dir, opts)
    }
}

/// This machine's identity: `JOBDIR_HOST_ID`, else host name plus the start of the machine id.
fn default_host_id() -> String {
    if let Ok(h) = std::env::var("JOBDIR_HOST_ID")
        && !h.is_empty()
    {
        return h;
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    match fs::read_to_string("/etc/machine-id") {
        Ok(m) if m.trim().len() >= 12 => format!("{host}-{}", &m.trim()[..12]),
        _ => host,
    }
}

pub(crate) struct Inner {
    pub layout: Layout,
    pub opts: Options,
    pub fs: AtomicFs,
    fs_volatile: AtomicFs,
    pub work: Index,
    pub notify: Index,
    pub delayed: Delayed,
    /// The earliest due time in `delayed/` this process knows of (ms); `None` if none, and
    /// `delayed_stale` asks the next pull to re-read the head of `delayed/`.
    next_due: Mutex<Option<u64>>,
    delayed_stale: AtomicBool,
    /// When the head of `delayed/` was last read: it is read again at least once per poll
    /// interval, for entries that file events do not report (other NFS clients, no watcher).
    delayed_read: Mutex<Instant>,
    pub signals: Arc<Signals>,
    pub watch: Mutex<Watch>,
    work_frontier: Mutex<FrontierState>,
    notify_frontier: Mutex<FrontierState>,
    pub observations: Mutex<Observations>,
    /// Heartbeat observations of instance presence files (kept apart: the lease scan prunes
    /// its table to the files in `leases/`).
    pub instance_observations: Mutex<Observations>,
    /// What this process has read of instances' allocation entries (`affinity.rs`).
    pub own_jobs: crate::affinity::OwnJobs,
    pub keeper: Keeper,
    /// Shards found not to be real directories at open (see `init_layout`).
    pub bad_shards: Mutex<HashSet<String>>,
}

struct FrontierState {
    frontier: Frontiers,
    last_refresh: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// The writer for files that need no durability (lease files, claim tokens): leases do
    /// not survive power loss anyway, since no holder does.
    pub(crate) fn fs_volatile(&self) -> &AtomicFs {
        &self.fs_volatile
    }

    fn frontier(&self, kind: LeaseKind) -> &Mutex<FrontierState> {
        match kind {
            LeaseKind::Work => &self.work_frontier,
            LeaseKind::Notify => &self.notify_frontier,
        }
    }

    pub(crate) fn index(&self, kind: LeaseKind) -> &Index {
        match kind {
            LeaseKind::Work => &self.work,
            LeaseKind::Notify => &self.notify,
        }
    }

    /// Tells this process about a delayed entry it made (events tell other processes).
    pub(crate) fn note_due(&self, due: u64) {
        let mut next = lock(&self.next_due);
        *next = Some(next.map_or(due, |d| d.min(due)));
        drop(next);
        self.signals.bump(Channel::Work);
    }

    /// Time until the earliest known delayed job is due (zero if the head must be re-read).
    pub(crate) fn until_due(&self) -> Option<Duration> {
        if self.delayed_stale.load(Ordering::SeqCst) {
            return Some(Duration::ZERO);
        }
        lock(&self.next_due).map(|due| Duration::from_millis(due.saturating_sub(now_ms())))
    }

    /// Promotes delayed jobs that are due (or re-reads the head of `delayed/` after a change).
    fn promote_delayed(&self) -> Result<()> {
        let changed = std::mem::take(&mut self.signals.lock().delayed_changed);
        let now = now_ms();
        let polled = lock(&self.delayed_read).elapsed() >= self.opts.poll_interval;
        let stale = self.delayed_stale.swap(false, Ordering::SeqCst) || changed || polled;
        let due = lock(&self.next_due).is_some_and(|d| d <= now);
        if !stale && !due {
            return Ok(());
        }
        *lock(&self.delayed_read) = Instant::now();
        let promoted = {
            let mut watch = lock(&self.watch);
            match self
                .delayed
                .promote_due(&self.fs, &self.work, now, &mut watch)
            {
                Ok(p) => p,
                Err(e) => {
                    // Try again after a poll interval, not at once.
                    let later = now + self.opts.poll_interval.as_millis() as u64;
                    *lock(&self.next_due) = Some(later);
                    return Err(e);
                }
            }
        };
        *lock(&self.next_due) = promoted.next_due;
        for key in promoted.keys {
            self.offer(LeaseKind::Work, key);
        }
        Ok(())
    }

    /// Tells this process's frontier about an entry (events do this for other processes).
    pub(crate) fn offer(&self, kind: LeaseKind, key: String) {
        lock(self.frontier(kind)).frontier.offer(key);
        self.signals.bump(match kind {
            LeaseKind::Work => Channel::Work,
            LeaseKind::Notify => Channel::Notify,
        });
    }

    /// The next index key to try, in pull order: applies pending file events, re-reads the
    /// disk once per poll interval (or whenever events are unavailable and nothing is known),
    /// and handles lease files whose holder closed them (ended or died). `refreshed` is owned
    /// by one pull: the disk is re-read at most once per pull, so a pull whose every candidate
    /// is busy ends instead of meeting the same candidates again.
    /// Only keys whose priority class lies in `range` are returned (FORMAT.md §13.4).
    pub(crate) fn next_key(
        &self,
        kind: LeaseKind,
        refreshed: &mut bool,
        range: &ClassRange,
    ) -> Result<Option<String>> {
        let inbox = {
            let mut st = self.signals.lock();
            match kind {
                LeaseKind::Work => std::mem::take(&mut st.work),
                LeaseKind::Notify => std::mem::take(&mut st.notify),
            }
        };
        self.before_pull(kind)?;
        let index = self.index(kind);
        let mut fr = lock(self.frontier(kind));
        let mut watch = lock(&self.watch);
        fr.frontier.absorb(index, inbox, &mut watch)?;
        if !*refreshed && fr.last_refresh.elapsed() >= self.opts.poll_interval {
            fr.frontier.refresh();
            fr.last_refresh = Instant::now();
            *refreshed = true;
        }
        let next = fr.frontier.next_in(index, &mut watch, range)?;
        if next.is_none() && !watch.active() && !*refreshed {
            // Without file events, an empty frontier says nothing: look at the disk.
            fr.frontier.refresh();
            fr.last_refresh = Instant::now();
            *refreshed = true;
            return fr.frontier.next_in(index, &mut watch, range);
        }
        Ok(next)
    }

    /// What every pull does first: handles lease files whose holder closed them, observes
    /// every lease file once per heartbeat interval, and (for work) promotes due delayed jobs.
    pub(crate) fn before_pull(&self, kind: LeaseKind) -> Result<()> {
        let closed = std::mem::take(&mut self.signals.lock().leases_closed);
        if !closed.is_empty() {
            lease::scan(self, Some(closed))?;
        }
        self.maybe_scan_leases()?;
        if kind == LeaseKind::Work
            && let Err(e) = self.promote_delayed()
        {
            tracing::warn!("cannot promote delayed jobs: {e}");
        }
        Ok(())
    }

    /// Observes every lease file once per heartbeat interval, so expired leases are found.
    fn maybe_scan_leases(&self) -> Result<()> {
        let due = lock(&self.observations)
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.opts.heartbeat);
        if due {
            lease::scan(self, None)?;
        }
        Ok(())
    }

    /// Refuses a job whose shard is not a real directory (never followed).
    pub(crate) fn check_shard(&self, id: &JobId) -> Result<()> {
        let shard = id.shard();
        if lock(&self.bad_shards).contains(&shard) {
            return Err(Error::Corrupt {
                path: self.layout.jobs.join(shard),
                reason: "a shard must be a directory, not a file or symlink; run recover".into(),
            });
        }
        Ok(())
    }

    /// After this process changed who may run which job (a deallocation, an instance made
    /// unavailable): its pulls look at the jobs they skipped again, at once. Other processes
    /// see the change when they next re-read the index (within a poll interval).
    pub(crate) fn allocations_changed(&self) {
        lock(&self.work_frontier).frontier.refresh();
        self.signals.bump(Channel::Work);
    }

    /// Forgets what this process knows of the indexes; the next pull re-reads the disk.
    pub(crate) fn refresh_frontiers(&self) {
        for kind in [LeaseKind::Work, LeaseKind::Notify] {
            lock(self.frontier(kind)).frontier.refresh();
        }
    }

    pub(crate) fn read_record(&self, id: &JobId) -> Result<JobRecord> {
        self.check_shard(id)?;
        let path = self.layout.job_file(id);
        let bytes = read_file(&path, READ_LIMIT).map_err(|e| {
            if e.is_io_kind(io::ErrorKind::NotFound) {
                Error::NotFound(*id)
            } else {
                e
            }
        })?;
        JobRecord::parse(&bytes, &path, id)
    }

    /// After a result became durable: index the notification if targets wait, then drop the
    /// work-index entry (in that order, so a crash between leaves an extra entry only).
    pub(crate) fn after_fulfilled(&self, id: &JobId, priority: i32) -> Result<()> {
        crate::fault::point("fulfill.after_result");
        if self.has_targets(id)? {
            let key = notify_key(id, priority, None);
            self.notify.add(&self.fs, &key)?;
            self.offer(LeaseKind::Notify, key);
        }
        crate::fault::point("fulfill.after_notify_index");
        // The result is committed: a stale entry is harmless (pullers and recover remove it),
        // so failing to remove it must not make the fulfilment look failed.
        if let Err(e) = self.work.remove(&pending_key(id, priority)) {
            tracing::warn!("job {id} fulfilled; its index entry stays: {e}");
        }
        // The allocation `create` made for it has served (recover removes it after a crash).
        if let Err(e) = crate::affinity::release_finished(self, id) {
            tracing::warn!("job {id} finished; its allocation stays: {e}");
        }
        Ok(())
    }

    pub(crate) fn has_targets(&self, id: &JobId) -> Result<bool> {
        Ok(list_names(&self.layout.targets_dir(id))?
            .iter()
            .any(|n| n.ends_with(".json")))
    }
}

impl Store {
    /// Tries index keys in pull order until `try_one` takes one. An error on one candidate is
    /// logged and skipped (one bad entry never stalls the queue); it is returned only if no
    /// candidate could be taken at all, so a store-wide failure (read-only, say) is reported.
    pub(crate) fn pull_next<T>(
        &self,
        kind: LeaseKind,
        try_one: impl FnMut(&str) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        self.pull_next_in(kind, &ClassRange::all(), try_one)
    }

    /// [`pull_next`](Self::pull_next) limited to the index keys whose class lies in `range`.
    pub(crate) fn pull_next_in<T>(
        &self,
        kind: LeaseKind,
        range: &ClassRange,
        mut try_one: impl FnMut(&str) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let mut last_err = None;
        let mut refreshed = false;
        loop {
            let Some(key) = self.inner.next_key(kind, &mut refreshed, range)? else {
                return match last_err {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            };
            match try_one(&key) {
                Ok(Some(taken)) => return Ok(Some(taken)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("skipping {key}: {e}");
                    last_err = Some(e);
                }
            }
        }
    }

    /// Repeats `pull` until it takes something or `timeout` passes, sleeping between tries
    /// until a file event on `ch` (or the poll interval, or a heartbeat interval for lease
    /// scans) — never a fixed sleep loop.
    pub(crate) fn pull_blocking<T>(
        &self,
        ch: Channel,
        timeout: Duration,
        mut pull: impl FnMut() -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        loop {
            let seen = inner.signals.seq(ch);
            if let Some(taken) = pull()? {
                return Ok(Some(taken));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut nap = (deadline - now)
                .min(inner.opts.poll_interval)
                .min(inner.opts.heartbeat);
            if ch == Channel::Work
                && let Some(due) = inner.until_due()
            {
                nap = nap.min(due.max(Duration::from_millis(1)));
            }
            inner.signals.wait(ch, seen, nap);
        }
    }
}

/// A waiting target as read: its file name, value, which file it was, and that file, open.
pub(crate) struct TargetFile {
    pub name: String,
    pub value: Value,
    pub stamp: crate::atomic::FileStamp,
    pub file: fs::File,
}

/// The work-index key of a job.
pub(crate) fn pending_key(id: &JobId, priority: i32) -> String {
    format!(
        "{}/{}/{id}",
        priority_class(priority),
        bucket(id.unix_millis())
    )
}

/// A notification-index key: bucketed by now; a nonce when queued after fulfilment, so that an
/// entry made while a notification is held is never the one its holder removes.
pub(crate) fn notify_key(id: &JobId, priority: i32, nonce: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let class = priority_class(priority);
    match nonce {
        Some(n) => format!("{class}/{}/{id}.{n}", bucket(now)),
        None => format!("{class}/{}/{id}", bucket(now)),
    }
}

/// The file name of a notification target: SHA-256 of its canonical JSON.
pub(crate) fn target_name(canonical: &[u8]) -> String {
    let digest = Sha256::digest(canonical);
    let mut s = String::with_capacity(69);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s.push_str(".json");
    s
}

/// Canonical JSON of a target: keys sorted, no whitespace.
pub(crate) fn canonical_json<T: Serialize + ?Sized>(
    value: &T,
    what: &'static str,
) -> Result<Vec<u8>> {
    let v = serde_json::to_value(value).map_err(|source| Error::Encode { what, source })?;
    serde_json::to_vec(&v).map_err(|source| Error::Encode { what, source })
}

/// A job store in one directory. Cheap to clone (an `Arc` inside); `Send + Sync`.
///
/// The three workflows of the store, in one process (each is usually its own process):
///
/// ```
/// use jobdir::Store;
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
///
/// // 1. job creation
/// let id = store.create(&serde_json::json!({"calculate": "3+3"}))?;
/// store.queue(&id, &"mailto:ann@example.com")?;
///
/// // 2. fulfilment
/// let job = store.pull_work()?.expect("a job is pending");
/// assert_eq!(job.request()["calculate"], "3+3");
/// job.fulfill(b"6")?;
///
/// // 3. notification
/// let note = store.pull_notification()?.expect("a notification is waiting");
/// assert_eq!(note.value(), b"6");
/// let delivered = note.waiting().to_vec();
/// note.done(&delivered)?;
/// assert!(store.pull_notification()?.is_none());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.layout.root)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store in `dir` with default options, creating the directory and its layout on
    /// first use. Refuses a non-empty directory that is not a store, and a store of another
    /// format version.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path().join("jobs"))?;
    /// assert!(store.dir().join("jobdir.json").exists());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Store::builder(dir).open()
    }

    /// A builder for a store with non-default options.
    pub fn builder(dir: impl AsRef<Path>) -> StoreBuilder {
        StoreBuilder {
            dir: dir.as_ref().to_path_buf(),
            lease: Duration::from_secs(30),
            heartbeat: None,
            durability: Durability::Durable,
            poll_interval: Duration::from_secs(1),
            host_id: None,
            max_request_bytes: 1 << 20,
            group_shared: false,
            file_events: true,
        }
    }

    fn open_with(dir: &Path, opts: Options) -> Result<Store> {
        let (file_mode, dir_mode) = if opts.group_shared {
            (0o660, 0o770)
        } else {
            (0o600, 0o700)
        };
        let dir = std::path::absolute(dir).ctx("resolve", dir)?;
        let layout = Layout::new(&dir);
        let fs = AtomicFs {
            tmp: layout.tmp.clone(),
            durability: opts.durability,
            file_mode,
            dir_mode,
        };
        let fs_volatile = AtomicFs {
            durability: Durability::Fast,
            ..fs.clone()
        };
        let bad_shards = init_layout(&layout, &fs)?;
        let signals = Arc::new(Signals::default());
        let watch = Watch::start(&layout, &signals, opts.file_events);
        let now = Instant::now();
        let inner = Inner {
            work: Index {
                root: layout.pending.clone(),
            },
            notify: Index {
                root: layout.notify.clone(),
            },
            delayed: Delayed {
                root: layout.delayed.clone(),
            },
            next_due: Mutex::new(None),
            delayed_stale: AtomicBool::new(true),
            delayed_read: Mutex::new(Instant::now()),
            layout,
            opts,
            fs,
            fs_volatile,
            signals,
            watch: Mutex::new(watch),
            work_frontier: Mutex::new(FrontierState {
                frontier: Frontiers::default(),
                last_refresh: now,
            }),
            notify_frontier: Mutex::new(FrontierState {
                frontier: Frontiers::default(),
                last_refresh: now,
            }),
            observations: Mutex::new(Observations::default()),
            instance_observations: Mutex::new(Observations::default()),
            own_jobs: crate::affinity::OwnJobs::default(),
            bad_shards: Mutex::new(bad_shards),
            keeper: Keeper::default(),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.layout.root
    }

    /// The lease length this store's leases are taken with.
    pub fn lease(&self) -> Duration {
        self.inner.opts.lease
    }

    /// The host identity this store records in its leases.
    pub fn host_id(&self) -> &str {
        &self.inner.opts.host_id
    }

    /// Creates a job from any JSON-serializable request, with default options (priority 0).
    /// When this returns, the job is durable (in [`Durability::Durable`] mode) and pullable.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&serde_json::json!({"n": 1}))?;
    /// assert_eq!(store.get(&id)?.state, jobdir::JobState::Pending);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create<T: Serialize + ?Sized>(&self, request: &T) -> Result<JobId> {
        self.create_with(request, CreateOptions::default())
    }

    /// Creates a job with options (priority: higher first, FIFO within a priority).
    ///
    /// ```
    /// use jobdir::{CreateOptions, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let low = store.create(&"low")?;
    /// let high = store.create_with(&"high", CreateOptions::default().priority(10))?;
    /// assert_eq!(store.pull_work()?.unwrap().id(), high);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_with<T: Serialize + ?Sized>(
        &self,
        request: &T,
        opts: CreateOptions,
    ) -> Result<JobId> {
        let request = serde_json::to_value(request).map_err(|source| Error::Encode {
            what: "request",
            source,
        })?;
        self.create_inner(request, opts).map(|c| c.id)
    }

    /// The body of `create_with` and `create_keyed` (keys and groups: `dedup.rs`, FORMAT.md §12).
    pub(crate) fn create_inner(
        &self,
        request: Value,
        opts: CreateOptions,
    ) -> Result<crate::dedup::Created> {
        let inner = &self.inner;
        let size = serde_json::to_vec(&request)
            .map_err(|source| Error::Encode {
                what: "request",
                source,
            })?
            .len();
        if size > inner.opts.max_request_bytes {
            return Err(Error::TooLarge {
                what: "request",
                size,
                limit: inner.opts.max_request_bytes,
            });
        }
        // A key held by an unfinished job: return it, write nothing (FORMAT.md §12.4 step 1a).
        if let Some(held) = crate::dedup::before_create(self, &opts)? {
            return Ok(held);
        }
        let mut id = JobId::generate();
        while inner.check_shard(&id).is_err() {
            id = JobId::generate(); // never write behind a planted link
        }
        if opts.sticky && opts.placement.is_none() {
            return Err(Error::InvalidOption(
                "sticky needs an instance: CreateOptions::instance or allocate".into(),
            ));
        }
        // A job for an instance is allocated before any of its files exist (affinity.rs).
        let placed = match &opts.placement {
            Some(p) => Some(crate::affinity::place(self, &id, p, opts.sticky)?),
            None => None,
        };
        let made = self.create_job(id, request, &opts);
        if let Some(key) = placed {
            if matches!(&made, Ok(c) if c.id == id) {
                crate::affinity::announce(inner, &key);
            } else if let Err(e) = inner.take_allocation(&key, |r| r.for_job) {
                // Not made (or a keyed create returned another job): the allocation goes too.
                tracing::warn!("allocation of {key} left for recover: {e}");
            }
        }
        made
    }

    /// Writes and indexes a new job `id` (the rest of `create_inner`).
    fn create_job(
        &self,
        id: JobId,
        request: Value,
        opts: &CreateOptions,
    ) -> Result<crate::dedup::Created> {
        let inner = &self.inner;
        let now = SystemTime::now();
        let run_at = opts.run_at.filter(|t| *t > now);
        let rec = JobRecord {
            id,
            priority: opts.get_priority(),
            created_at: rfc3339(now),
            request,
            not_before: run_at.map(rfc3339),
            retry: opts.retry.clone(),
            run_timeout_ms: opts.run_timeout.map(|d| d.as_millis() as u64),
            deadline: opts.deadline.map(rfc3339),
            pickup_timeout_ms: opts.pickup_timeout.map(|d| d.as_millis() as u64),
            key: opts.key.as_ref().map(|k| k.as_str().to_string()),
            group: opts.group.as_ref().map(|g| g.as_str().to_string()),
        };
        let bytes = serde_json::to_vec(&rec).map_err(|source| Error::Encode {
            what: "job",
            source,
        })?;
        let staging = inner.fs.temp_dir()?;
        // `claims/` is made now, inside the staging directory, so that the first claim is one
        // rename (a job made by an older version without it still works: claims make it).
        let claims = staging.path().join(LeaseKind::Work.claims_dir());
        inner
            .fs
            .make_dir(&claims)
            .ctx("create directory", &claims)?;
        inner
            .fs
            .write_into_private_dir(&staging.path().join("job.json"), &bytes)?;
        inner.fs.sync_dir(staging.path())?;
        crate::fault::point("create.after_temp_write");
        let dest = inner.layout.job_dir(&id);
        if let Err(e) = fs::rename(staging.path(), &dest) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e).ctx("rename job into", &dest);
            }
            // The shard was quarantined by recover: make it again.
            inner.fs.create_dir_all(&inner.layout.shard_dir(&id))?;
            fs::rename(staging.path(), &dest).ctx("rename job into", &dest)?;
        }
        let _ = staging.keep();
        crate::fault::point("create.after_rename");
        // Claim the key and join the group before any index entry (FORMAT.md §12.4 steps 6a-6b).
        if let Some(held) = crate::dedup::after_rename(self, &rec, opts)? {
            return Ok(held);
        }
        if let Some(at) = run_at {
            // A delayed job: its only index entry is in `delayed/` until it is due.
            let due = ms_of(at);
            let class = priority_class(rec.priority);
            let indexed = inner.fs.sync_parent(&dest).and_then(|()| {
                crate::fault::point("create.after_dir_fsync");
                inner.delayed.add(&inner.fs, due, &class, &id)
            });
            if let Err(e) = indexed {
                unmake(inner, &rec, &dest);
                return Err(e);
            }
            inner.note_due(due);
            return Ok(crate::dedup::Created {
                id,
                existing: false,
            });
        }
        let key = pending_key(&id, rec.priority);
        // Both new names (the job directory, its index entry) are made first and their two
        // directories fsynced after: on a journaling filesystem the first fsync commits both,
        // and the second finds nothing left to do. Until both fsyncs return, the job is not
        // acknowledged; an entry whose job did not survive a crash is dropped by pullers.
        let indexed = inner.work.add_unsynced(&inner.fs, &key).and_then(|bucket| {
            crate::fault::point("create.after_index_entry");
            inner.fs.sync_parent(&dest)?;
            crate::fault::point("create.after_dir_fsync");
            inner.fs.sync_dir(&bucket)
        });
        if let Err(e) = indexed {
            // Not acknowledged: take the job back out, so a caller that retries makes no twin.
            let _ = inner.work.remove(&key);
            unmake(inner, &rec, &dest);
            return Err(e);
        }
        crate::fault::point("create.after_index");
        inner.offer(LeaseKind::Work, key);
        Ok(crate::dedup::Created {
            id,
            existing: false,
        })
    }

    /// Fulfils a job without holding its lease (as the seed's `store.fulfill`). Results are
    /// written once: the first fulfilment wins atomically; a later one fails with
    /// [`Error::AlreadyFulfilled`] and the stored value never changes.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&1)?;
    /// store.fulfill(&id, b"first")?;
    /// assert!(matches!(store.fulfill(&id, b"second"), Err(jobdir::Error::AlreadyFulfilled(_))));
    /// assert_eq!(store.result(&id)?.unwrap(), b"first");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fulfill(&self, id: &JobId, value: impl AsRef<[u8]>) -> Result<()> {
        let inner = &self.inner;
        let rec = inner.read_record(id)?;
        let staging = inner.fs.temp_dir()?;
        inner
            .fs
            .write_into_private_dir(&staging.path().join("value"), value.as_ref())?;
        if !outcome::finish_with(inner, id, staging)? {
            return Err(Error::AlreadyFulfilled(*id));
        }
        inner.after_fulfilled(id, rec.priority)
    }

    /// The job's result, if it is fulfilled; `None` while it is not finished. A job that
    /// finished without a result (failed, cancelled, expired) gives [`Error::Unfulfilled`].
    pub fn result(&self, id: &JobId) -> Result<Option<Vec<u8>>> {
        self.inner.check_shard(id)?;
        match outcome::read(&self.inner, id)? {
            Some(Finish::Fulfilled(v, _)) => Ok(Some(v)),
            Some(Finish::Unfulfilled(o)) => Err(o.to_error(id)),
            None => {
                if exists(&self.inner.layout.job_dir(id))? {
                    Ok(None)
                } else {
                    Err(Error::NotFound(*id))
                }
            }
        }
    }

    /// Blocks until the job is fulfilled and returns its result, woken by file events (and at
    /// worst by the poll interval); [`Error::Timeout`] after `timeout`. A job that finishes
    /// without a result gives [`Error::Unfulfilled`]; a job that reaches its deadline (or
    /// pickup timeout) while waited on is expired by the waiter.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&"x")?;
    /// let s2 = store.clone();
    /// std::thread::spawn(move || s2.fulfill(&id, b"done"));
    /// assert_eq!(store.wait(&id, Duration::from_secs(10))?, b"done");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&self, id: &JobId, timeout: Duration) -> Result<Vec<u8>> {
        let inner = &self.inner;
        let job_dir = inner.layout.job_dir(id);
        lock(&inner.watch).hold_job(&job_dir);
        struct Unhold<'a>(&'a Inner, PathBuf);
        impl Drop for Unhold<'_> {
            fn drop(&mut self) {
                lock(&self.0.watch).release_job(&self.1);
            }
        }
        let _unhold = Unhold(inner, job_dir);
        let deadline = Instant::now() + timeout;
        let rec = inner.read_record(id)?;
        loop {
            let seen = inner.signals.seq(Channel::Result);
            if let Some(v) = self.result(id)? {
                return Ok(v);
            }
            // A job past its deadline (or never picked up in time) expires here, at the latest.
            let claimed = self.epoch_state(LeaseKind::Work, id)?.0 > 0;
            let mut nap = inner.opts.poll_interval;
            if let Some(at) = rec.expires_at(claimed) {
                match at.duration_since(SystemTime::now()) {
                    Ok(left) => nap = nap.min(left),
                    Err(_) => {
                        self.expire(id, &rec, claimed)?;
                        continue;
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout);
            }
            let nap = (deadline - now).min(nap).max(Duration::from_millis(1));
            inner.signals.wait(Channel::Result, seen, nap);
        }
    }

    /// Everything known about a job.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&serde_json::json!([1, 2]))?;
    /// store.queue(&id, &"t")?;
    /// let info = store.get(&id)?;
    /// assert_eq!(info.request, serde_json::json!([1, 2]));
    /// assert_eq!(info.waiting, vec![serde_json::json!("t")]);
    /// assert_eq!(info.attempts, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, id: &JobId) -> Result<JobInfo> {
        let inner = &self.inner;
        let rec = inner.read_record(id)?;
        let (attempts, held) = self.epoch_state(LeaseKind::Work, id)?;
        let mut finish = outcome::read(inner, id)?;
        if finish.is_none() && !held && rec.expiry_reason(SystemTime::now(), attempts > 0).is_some()
        {
            // Past its time: expire it now rather than report a state it no longer has.
            self.expire(id, &rec, attempts > 0)?;
            finish = outcome::read(inner, id)?;
        }
        let mut errors = crate::retry::history(&inner.layout, id)?;
        let (state, result, fulfilled_at, finished_at, error) = match finish {
            Some(Finish::Fulfilled(v, at)) => (JobState::Fulfilled, Some(v), at, at, None),
            Some(Finish::Unfulfilled(o)) => {
                if o.state == JobState::Failed {
                    errors.push(crate::job::AttemptError {
                        attempt: attempts,
                        error: o.error.clone(),
                    });
                }
                let at = humantime::parse_rfc3339(&o.at).ok();
                (o.state, None, None, at, Some(o.error))
            }
            None if held => (JobState::Running, None, None, None, None),
            None => (JobState::Pending, None, None, None, None),
        };
        let run_at = if state == JobState::Pending {
            self.run_at(id, &rec, attempts)?
        } else {
            None
        };
        // Delayed is a job created to run later; one waiting out a retry's backoff stays
        // pending (with `run_at` saying when it is pullable again), as a released job is.
        let state = match (run_at, rec.not_before_time()) {
            (Some(at), Some(nb)) if nb >= at => JobState::Delayed,
            _ => state,
        };
        // An unreadable allocation file (recover quarantines it) does not make the job
        // unreadable: it is reported without an instance.
        let allocation = inner
            .read_allocation(&crate::JobKey::from(id))
            .ok()
            .flatten()
            .filter(|a| inner.instance_exists(&a.instance).unwrap_or(false));
        Ok(JobInfo {
            id: *id,
            state,
            created_at: rec.created_time(),
            request: rec.request,
            priority: rec.priority,
            attempts,
            waiting: self.waiting(id)?,
            result,
            fulfilled_at,
            finished_at,
            error,
            errors,
            run_at,
            // Progress (FORMAT.md §13.1): only the current attempt's, only while it runs.
            progress: if state == JobState::Running {
                crate::work::read_progress(inner, id, attempts)
            } else {
                None
            },
            group: rec.group.as_deref().and_then(|g| g.parse().ok()),
            key: rec.key,
            instance: allocation.as_ref().map(|a| a.instance.clone()),
            sticky: allocation.is_some_and(|a| a.sticky),
        })
    }

    /// When a job that is neither held nor finished becomes pullable, if that is still ahead:
    /// its `not_before`, or the time its last counted failed attempt allows the next one (the
    /// `retry_at` a failing holder recorded; after a run timeout or an expired lease, the end
    /// of that attempt plus the backoff). A claim before that time defers the job to it
    /// (FORMAT.md §6.21), whether or not a pending entry names it.
    pub(crate) fn run_at(
        &self,
        id: &JobId,
        rec: &JobRecord,
        attempts: u64,
    ) -> Result<Option<SystemTime>> {
        let layout = &self.inner.layout;
        let counted = crate::retry::counted(layout, id, attempts + 1)?;
        let at = crate::retry::run_at(layout, id, rec, &counted);
        Ok(at.filter(|t| *t > SystemTime::now()))
    }

    /// Finishes a job as expired (if it has not finished otherwise), ends its holder and does
    /// the index work of a finish.
    fn expire(&self, id: &JobId, rec: &JobRecord, claimed: bool) -> Result<()> {
        let reason = rec
            .expiry_reason(SystemTime::now(), claimed)
            .unwrap_or_else(|| "expired".into());
        let outcome = OutcomeRecord::new(JobState::Expired, reason);
        if outcome::finish_unfenced(&self.inner, id, &outcome)? {
            outcome::end_holder(&self.inner, id, "deadline")?;
            self.inner.after_fulfilled(id, rec.priority)?;
            crate::retry::reindex_if_retried(&self.inner, id, rec.priority)?;
        }
        Ok(())
    }

    /// Cancels a job that has not finished: it is [`JobState::Cancelled`] at once, its holder
    /// (if one is running it) is told through its compromise callback
    /// ([`CompromiseReason::Cancelled`](crate::CompromiseReason::Cancelled)) and its writes are
    /// refused, and waiters get [`Error::Unfulfilled`]. A finished job gives
    /// [`Error::WrongState`].
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&"x")?;
    /// store.cancel(&id, "not needed")?;
    /// assert_eq!(store.get(&id)?.state, jobdir::JobState::Cancelled);
    /// assert!(store.pull_work()?.is_none());
    /// assert!(matches!(store.result(&id), Err(jobdir::Error::Unfulfilled { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&self, id: &JobId, reason: &str) -> Result<()> {
        let inner = &self.inner;
        let rec = inner.read_record(id)?;
        let error = if reason.is_empty() {
            "cancelled".to_string()
        } else {
            reason.to_string()
        };
        let outcome = OutcomeRecord::new(JobState::Cancelled, error);
        if !outcome::finish_unfenced(inner, id, &outcome)? {
            return Err(Error::WrongState {
                id: *id,
                state: self.get(id)?.state,
                what: "only a job that has not finished can be cancelled",
            });
        }
        crate::fault::point("cancel.after_outcome");
        crate::fault::pause("cancel.after_outcome");
        outcome::end_holder(inner, id, "cancelled")?;
        inner.after_fulfilled(id, rec.priority)?;
        // A manual retry between the outcome and the unlink above needs its entry back.
        crate::retry::reindex_if_retried(inner, id, rec.priority)
    }

    /// Runs a failed, cancelled or expired job again, with a fresh attempt budget: its outcome
    /// is set aside (kept in its history) and it is pending at once. A job that has not
    /// finished, or is fulfilled, gives [`Error::WrongState`].
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&"x")?;
    /// store.cancel(&id, "")?;
    /// store.retry(&id)?;
    /// assert_eq!(store.get(&id)?.state, jobdir::JobState::Pending);
    /// store.pull_work()?.unwrap().fulfill(b"ok")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry(&self, id: &JobId) -> Result<()> {
        let inner = &self.inner;
        let layout = &inner.layout;
        let rec = inner.read_record(id)?;
        match outcome::read(inner, id)? {
            Some(Finish::Unfulfilled(_)) => {}
            _ => {
                return Err(Error::WrongState {
                    id: *id,
                    state: self.get(id)?.state,
                    what: "only a failed, cancelled or expired job can be retried",
                });
            }
        }
        let (epoch, _) = self.epoch_state(LeaseKind::Work, id)?;
        let dir = layout.retries_dir(id);
        match inner.fs.make_dir(&dir) {
            Ok(()) => inner.fs.sync_parent(&dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).ctx("create directory", &dir),
        }
        let slot = dir.join(format!(
            "{}.{:08x}",
            crate::retry::retry_slot(epoch),
            rand_u32()
        ));
        let result = layout.result_dir(id);
        match fs::rename(&result, &slot) {
            Ok(()) => {}
            // Another retry won.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).ctx("rename", &result),
        }
        inner.fs.sync_dir(&dir)?;
        inner.fs.sync_dir(&layout.job_dir(id))?;
        crate::fault::point("retry.after_rename");
        let key = pending_key(id, rec.priority);
        inner.work.add(&inner.fs, &key)?;
        inner.offer(LeaseKind::Work, key);
        Ok(())
    }

    /// (highest epoch, whether it is held).
    pub(crate) fn epoch_state(&self, kind: LeaseKind, id: &JobId) -> Result<(u64, bool)> {
        let layout = &self.inner.layout;
        let max = list_names(&layout.claims_dir(kind, id))?
            .iter()
            .filter_map(|n| parse_epoch(n))
            .max()
            .unwrap_or(0);
        let held = max > 0 && exists(&layout.held_dir(kind, id, max))?;
        Ok((max, held))
    }

    /// The targets waiting for notification, in file-name order.
    pub(crate) fn waiting(&self, id: &JobId) -> Result<Vec<Value>> {
        Ok(self
            .waiting_files(id)?
            .into_iter()
            .map(|t| t.value)
            .collect())
    }

    /// Each waiting target, in file-name order; unreadable files are skipped (recover
    /// quarantines them).
    pub(crate) fn waiting_files(&self, id: &JobId) -> Result<Vec<TargetFile>> {
        let dir = self.inner.layout.targets_dir(id);
        let mut names = list_names(&dir)?;
        names.sort_unstable();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if !name.ends_with(".json") || name.len() != 69 {
                continue;
            }
            let path = dir.join(&name);
            let (bytes, stamp, file) = match read_file_ino(&path, READ_LIMIT) {
                Ok(b) => b,
                Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => continue,
                Err(e) => {
                    tracing::warn!("skipping unreadable target: {e}");
                    continue;
                }
            };
            match serde_json::from_slice(&bytes) {
                Ok(value) => out.push(TargetFile {
                    name,
                    value,
                    stamp,
                    file,
                }),
                Err(e) => tracing::warn!("skipping corrupt target {}: {e}", path.display()),
            }
        }
        Ok(out)
    }

    /// Every job's id and state, in creation order. Reads names and metadata only, not file
    /// contents.
    pub fn list(&self) -> Result<Vec<JobSummary>> {
        let layout = &self.inner.layout;
        let mut out = Vec::new();
        for id in self.all_ids()? {
            let state = if exists(&layout.result_dir(&id))? {
                self.finished_state(&id)?
            } else if self.epoch_state(LeaseKind::Work, &id)?.1 {
                JobState::Running
            } else {
                match self.inner.read_record(&id) {
                    Ok(rec) => {
                        let attempts = self.epoch_state(LeaseKind::Work, &id)?.0;
                        match (self.run_at(&id, &rec, attempts)?, rec.not_before_time()) {
                            (Some(at), Some(nb)) if nb >= at => JobState::Delayed,
                            _ => JobState::Pending,
                        }
                    }
                    Err(_) => JobState::Pending,
                }
            };
            out.push(JobSummary { id, state });
        }
        out.sort_by_key(|s| s.id);
        Ok(out)
    }

    /// Every job id in the store (bad shards left out).
    fn all_ids(&self) -> Result<Vec<JobId>> {
        let layout = &self.inner.layout;
        let bad = lock(&self.inner.bad_shards).clone();
        let mut out = Vec::new();
        for shard in list_names(&layout.jobs)? {
            if bad.contains(&shard) {
                continue;
            }
            for name in list_names(&layout.jobs.join(&shard))? {
                if let Ok(id) = name.parse::<JobId>()
                    && id.shard() == shard
                {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// How a job with a `result/` finished (fulfilled unless it holds an outcome record).
    fn finished_state(&self, id: &JobId) -> Result<JobState> {
        if exists(&self.inner.layout.result_value(id))? {
            return Ok(JobState::Fulfilled);
        }
        Ok(outcome::read_outcome(&self.inner, id)?
            .map(|o| o.state)
            .unwrap_or(JobState::Fulfilled))
    }

    /// Counts per state, from the indexes and lease files, plus one look at each finished job.
    pub fn counts(&self) -> Result<Counts> {
        let inner = &self.inner;
        let layout = &inner.layout;
        let ids = self.all_ids()?;
        let mut unfinished = HashSet::new();
        let mut oldest: Option<u64> = None;
        for key in crate::index::all_keys(&inner.work)? {
            let Some((_, _, name)) = crate::index::split_key(&key) else {
                continue;
            };
            let Ok(id) = name.parse::<JobId>() else {
                continue;
            };
            if exists(&layout.result_dir(&id))? || !exists(&layout.job_dir(&id))? {
                continue; // stale: pullers remove it
            }
            if unfinished.insert(id) {
                oldest = Some(oldest.map_or(id.unix_millis(), |o| o.min(id.unix_millis())));
            }
        }
        let mut delayed = HashSet::new();
        let now = now_ms();
        for (due, _, id, _) in inner.delayed.all()? {
            if !unfinished.contains(&id)
                && exists(&layout.job_dir(&id))?
                && !exists(&layout.result_dir(&id))?
            {
                if due <= now || exists(&layout.epoch_dir(LeaseKind::Work, &id, 1))? {
                    // Due (the next pull promotes it), or waiting out a retry's backoff (a job
                    // that ran before): pending, as `get` and `list` say.
                    delayed.remove(&id);
                    unfinished.insert(id);
                    oldest = Some(oldest.map_or(id.unix_millis(), |o| o.min(id.unix_millis())));
                } else {
                    delayed.insert(id);
                }
            }
        }
        let mut running = 0u64;
        for name in list_names(&layout.leases)? {
            if let Some((LeaseKind::Work, id, epoch)) = parse_lease_name(&name)
                && exists(&layout.held_dir(LeaseKind::Work, &id, epoch))?
                && !exists(&layout.result_dir(&id))?
            {
                running += 1;
            }
        }
        let mut c = Counts::default();
        for id in &ids {
            if unfinished.contains(id) || delayed.contains(id) {
                continue;
            }
            if !exists(&layout.result_dir(id))? {
                continue; // neither indexed nor finished: recover re-indexes it
            }
            match self.finished_state(id)? {
                JobState::Failed => c.failed += 1,
                JobState::Cancelled => c.cancelled += 1,
                JobState::Expired => c.expired += 1,
                _ => c.fulfilled += 1,
            }
        }
        let mut notified = HashSet::new();
        for key in crate::index::all_keys(&inner.notify)? {
            if let Some(id) =
                crate::index::split_key(&key).and_then(|(_, _, n)| parse_notify_entry(n))
            {
                notified.insert(id);
            }
        }
        let unfinished = unfinished.len() as u64;
        let running = running.min(unfinished);
        let now_ms = now_ms();
        c.pending = unfinished - running;
        c.running = running;
        c.delayed = delayed.len() as u64;
        c.notifications = notified.len() as u64;
        c.quarantined = list_names(&layout.quarantine)?.len() as u64;
        c.oldest_pending_age = if unfinished > running {
            oldest.map(|o| Duration::from_millis(now_ms.saturating_sub(o)))
        } else {
            None
        };
        Ok(c)
    }

    /// Queues a notification target (any JSON value) on a job, before or after fulfilment.
    /// Set semantics: queueing an equal target again keeps one.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&0)?;
    /// store.queue(&id, &serde_json::json!({"b": 1, "a": 2}))?;
    /// store.queue(&id, &serde_json::json!({"a": 2, "b": 1}))?;
    /// assert_eq!(store.get(&id)?.waiting.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queue<T: Serialize + ?Sized>(&self, id: &JobId, target: &T) -> Result<()> {
        let inner = &self.inner;
        let canon = canonical_json(target, "target")?;
        if canon.len() > inner.opts.max_request_bytes {
            return Err(Error::TooLarge {
                what: "target",
                size: canon.len(),
                limit: inner.opts.max_request_bytes,
            });
        }
        let rec = inner.read_record(id)?;
        let dir = inner.layout.targets_dir(id);
        match inner.fs.make_dir(&dir) {
            Ok(()) => inner.fs.sync_parent(&dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound(*id)),
            Err(e) => return Err(e).ctx("create directory", &dir),
        }
        let result_dir = inner.layout.result_dir(id);
        // Already fulfilled: index first, so a crash after the target is written still leaves
        // an entry that leads to it.
        if exists(&result_dir)? {
            self.add_notify_entry(id, rec.priority)?;
        }
        // Replacing (not keeping) an equal target gives it a new inode: a notification holding
        // the old one then knows it was queued again and must stay (see `done`).
        let path = dir.join(target_name(&canon));
        match inner.fs.replace_file(&path, &canon) {
            Ok(()) => {}
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => return Err(Error::NotFound(*id)),
            Err(e) => return Err(e),
        }
        crate::fault::point("queue.after_target");
        // Fulfilled now: index (again), for a fulfilment that raced this call or a notifier that
        // consumed the first entry before the target existed.
        if exists(&result_dir)? {
            self.add_notify_entry(id, rec.priority)?;
        }
        Ok(())
    }

    fn add_notify_entry(&self, id: &JobId, priority: i32) -> Result<()> {
        let inner = &self.inner;
        let nonce = format!("{:08x}", rand_u32());
        let key = notify_key(id, priority, Some(&nonce));
        inner.notify.add(&inner.fs, &key)?;
        inner.offer(LeaseKind::Notify, key);
        Ok(())
    }

    /// Removes a waiting target (a no-op if it is not queued).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&0)?;
    /// store.queue(&id, &"a")?;
    /// store.unqueue(&id, &"a")?;
    /// assert!(store.get(&id)?.waiting.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unqueue<T: Serialize + ?Sized>(&self, id: &JobId, target: &T) -> Result<()> {
        self.unqueue_all(
            id,
            std::slice::from_ref(&serde_json::to_value(target).map_err(|source| {
                Error::Encode {
                    what: "target",
                    source,
                }
            })?),
        )
    }

    /// Removes several waiting targets; each removal is one atomic unlink.
    pub fn unqueue_all(&self, id: &JobId, targets: &[Value]) -> Result<()> {
        let inner = &self.inner;
        inner.check_shard(id)?;
        if !exists(&inner.layout.job_dir(id))? {
            return Err(Error::NotFound(*id));
        }
        let dir = inner.layout.targets_dir(id);
        let mut removed = false;
        for t in targets {
            let canon = canonical_json(t, "target")?;
            removed |= crate::atomic::remove_file_if_exists(&dir.join(target_name(&canon)))?;
        }
        if removed {
            inner.fs.sync_dir(&dir)?;
        }
        Ok(())
    }

    /// Deletes a job in any state, with its result and waiting targets. A holder of its lease
    /// is told (compromise reason [`CompromiseReason::Removed`](crate::CompromiseReason)).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let id = store.create(&0)?;
    /// store.remove(&id)?;
    /// assert!(matches!(store.get(&id), Err(jobdir::Error::NotFound(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn remove(&self, id: &JobId) -> Result<()> {
        let inner = &self.inner;
        inner.check_shard(id)?;
        let priority = inner.read_record(id).ok().map(|r| r.priority);
        let dir = inner.layout.job_dir(id);
        let grave = inner
            .layout
            .tmp
            .join(format!("removed.{id}.{:08x}", rand_u32()));
        match fs::rename(&dir, &grave) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::NotFound(*id)),
            Err(e) => return Err(e).ctx("rename", &dir),
        }
        inner.fs.sync_parent(&dir)?;
        crate::fault::point("remove.after_rename");
        if let Some(p) = priority {
            inner.work.remove(&pending_key(id, p))?;
        }
        // The job is gone: a failure here leaves its allocation to recover, not an error.
        if let Err(e) = crate::affinity::release_finished(inner, id) {
            tracing::warn!("job {id} removed; its allocation stays: {e}");
        }
        if let Err(e) = fs::remove_dir_all(&grave) {
            tracing::warn!("leaving {} for recover: {e}", grave.display());
        }
        Ok(())
    }
}

/// A random 32-bit number for unique names.
/// Takes an unacknowledged job back out after its create failed (best effort, not fsynced): a
/// caller that retries then makes no twin.
fn unmake(inner: &Inner, rec: &JobRecord, dest: &Path) {
    crate::dedup::undo(inner, rec);
    let grave = inner
        .layout
        .tmp
        .join(format!("unmade.{}.{:08x}", rec.id, rand_u32()));
    if fs::rename(dest, &grave).is_ok() {
        let _ = fs::remove_dir_all(&grave);
    }
}

pub(crate) fn rand_u32() -> u32 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Creates the directory layout on first use; checks the format marker otherwise.
/// Returns the shards that are not real directories (a planted file or symlink): jobs in them
/// are refused, never reached through the link, until `recover` moves the impostor aside.
fn init_layout(layout: &Layout, fs: &AtomicFs) -> Result<HashSet<String>> {
    let root = &layout.root;
    if !ensure_real_dir(fs, root)? {
        return Err(Error::NotAStore {
            path: root.clone(),
            reason: "not a directory".into(),
        });
    }
    let marker = layout.marker();
    if !exists(&marker)? {
        let known = crate::layout::TOP_LEVEL;
        if let Some(other) = list_names(root)?
            .into_iter()
            .find(|n| !known.contains(&n.as_str()))
        {
            return Err(Error::NotAStore {
                path: root.clone(),
                reason: format!("it is not empty (holds {other:?}) and has no {MARKER}"),
            });
        }
        for dir in layout.dirs() {
            fs.create_dir_all(dir)?;
        }
        let body = serde_json::json!({"format": "jobdir", "version": FORMAT_VERSION});
        match fs.write_file(&marker, body.to_string().as_bytes()) {
            Ok(()) => {}
            Err(e) if e.is_io_kind(io::ErrorKind::AlreadyExists) => {}
            Err(e) => return Err(e),
        }
    }
    check_marker(layout)?;
    // Planted symlinks are refused, never followed: every path is built below these.
    for dir in layout.dirs() {
        if !ensure_real_dir(fs, dir)? {
            return Err(Error::Corrupt {
                path: dir.to_path_buf(),
                reason: "must be a directory (not a file or a symlink)".into(),
            });
        }
    }
    let mut bad = HashSet::new();
    for shard in 0..=255u8 {
        let name = format!("{shard:02x}");
        let path = layout.jobs.join(&name);
        if !ensure_real_dir(fs, &path)? {
            tracing::warn!(
                "{} is not a directory: unusable until recover",
                path.display()
            );
            bad.insert(name);
        }
    }
    Ok(bad)
}

/// Creates `dir` if it is missing. False if something that is not a real directory (a file,
/// or a symlink, never followed) stands in its place.
pub(crate) fn ensure_real_dir(fs: &AtomicFs, dir: &Path) -> Result<bool> {
    match fs::symlink_metadata(dir) {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs.create_dir_all(dir).map(|()| true),
        Err(e) => Err(e).ctx("stat", dir),
    }
}

fn check_marker(layout: &Layout) -> Result<()> {
    let path = layout.marker();
    let bytes = read_file(&path, 64 * 1024)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::NotAStore {
        path: layout.root.clone(),
        reason: format!("{MARKER} is not JSON: {e}"),
    })?;
    if v.get("format").and_then(Value::as_str) != Some("jobdir") {
        return Err(Error::NotAStore {
            path: layout.root.clone(),
            reason: format!("{MARKER} does not say \"format\": \"jobdir\""),
        });
    }
    match v.get("version").and_then(Value::as_u64) {
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(Error::FormatVersion {
            path: layout.root.clone(),
            found,
            supported: FORMAT_VERSION,
        }),
        None => Err(Error::NotAStore {
            path: layout.root.clone(),
            reason: format!("{MARKER} has no version"),
        }),
    }
}
