//! The event stream: one [`JobEvent`] per job state change seen, driven by file events
//! (`Store::events`, `jobdir events`; FORMAT.md §13.3).
//!
//! Invariants kept here:
//! - The stream only observes: it reads names and small files, and never changes the store.
//! - It never blocks past its caller's timeout, and its memory is bounded: one watch per index
//!   directory, one name per live lease, and a bounded set of reported events.
//! - Best effort, stated as such: events come from inotify, which sees only changes made
//!   through this kernel; a periodic re-scan of `leases/` (every poll interval) adds what
//!   other hosts do to running jobs. An event is reported at most once per job, kind and
//!   attempt (within the last 65 536 reported), and may be reported after its state has moved
//!   on (each is judged from the store when its file event is read).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use inotify::{EventMask, Inotify, WatchMask, Watches};

use crate::atomic::{exists, is_real_dir, list_names};
use crate::error::Result;
use crate::id::JobId;
use crate::job::JobState;
use crate::layout::{LeaseKind, parse_delayed_name, parse_lease_name};
use crate::store::{Inner, Store};
use crate::work::max_epoch;

/// What happened to a job, as reported by an [`EventStream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// It was created (pending at once, or delayed: then [`Delayed`](EventKind::Delayed)
    /// follows).
    Created,
    /// It is pending again: a delay or a retry's backoff ended, or it was retried.
    Pending,
    /// It waits for its time: created with a delay, or an attempt failed and it waits out the
    /// backoff before the next one (`attempt` is the failed one).
    Delayed,
    /// A worker claimed it (`attempt` is the claim's).
    Running,
    /// It has its result.
    Fulfilled,
    /// It failed on its last allowed attempt.
    Failed,
    /// It was cancelled.
    Cancelled,
    /// It passed its deadline or pickup timeout.
    Expired,
    /// Its holder gave it back; it is pending again.
    Released,
    /// Its holder lost the lease: it died (seen at once on this host), was taken over after
    /// its lease lapsed, or ran past its run timeout. The job is pending again.
    Lost,
}

impl EventKind {
    /// The lowercase name used in `jobdir events` lines.
    ///
    /// ```
    /// assert_eq!(jobdir::EventKind::Running.as_str(), "running");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Pending => "pending",
            EventKind::Delayed => "delayed",
            EventKind::Running => "running",
            EventKind::Fulfilled => "fulfilled",
            EventKind::Failed => "failed",
            EventKind::Cancelled => "cancelled",
            EventKind::Expired => "expired",
            EventKind::Released => "released",
            EventKind::Lost => "lost",
        }
    }

    /// True for the kinds that end a job (fulfilled, failed, cancelled, expired).
    ///
    /// ```
    /// assert!(jobdir::EventKind::Cancelled.is_finish());
    /// assert!(!jobdir::EventKind::Lost.is_finish());
    /// ```
    pub fn is_finish(&self) -> bool {
        matches!(
            self,
            EventKind::Fulfilled | EventKind::Failed | EventKind::Cancelled | EventKind::Expired
        )
    }

    fn of_finish(state: JobState) -> EventKind {
        match state {
            JobState::Failed => EventKind::Failed,
            JobState::Cancelled => EventKind::Cancelled,
            JobState::Expired => EventKind::Expired,
            _ => EventKind::Fulfilled,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobEvent {
    /// The job.
    pub id: JobId,
    /// What happened.
    pub event: EventKind,
    /// The attempt it concerns: the claim's epoch for running, released and lost; the failed
    /// attempt for a delayed retry; 0 for created; otherwise how many claims the job had when
    /// the event was read (0 before its first; for an event read late, such as a pending read
    /// after the job was claimed again, that count includes the later claims).
    pub attempt: u64,
    /// When this process saw it (its own clock).
    pub at: SystemTime,
}

/// How many reported (job, kind, attempt) triples are remembered to drop repeats.
const SEEN_CAP: usize = 65_536;
/// How often a claim whose lease file appeared is checked for its epoch directory, until the
/// claim is made or given up.
const CLAIM_RECHECK: Duration = Duration::from_millis(5);
/// How long a lease file may wait for its claim before it is no longer checked (a claim that
/// lost its race removes its lease file).
const CLAIM_PATIENCE: Duration = Duration::from_secs(2);
/// How many recent creations are remembered, and for how long (see `EventStream::recent`).
const RECENT_CAP: usize = 4096;
const RECENT_FOR: Duration = Duration::from_secs(60);

/// The kinds of directories watched, each with its own mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// `pending/` and its class directories: new subdirectories only.
    PendingTree,
    /// `pending/<class>/<bucket>/`: entries made or removed.
    PendingBucket,
    /// `delayed/`: new bucket directories.
    DelayedRoot,
    /// `delayed/<bucket>/`: entries made.
    DelayedBucket,
    /// `leases/`: lease files appearing, removed, or closed by a holder that died.
    Leases,
    /// `jobs/<xx>/`: job directories appearing (a job is created by that rename).
    Shard,
}

impl Dir {
    fn mask(self) -> WatchMask {
        match self {
            Dir::PendingTree | Dir::DelayedRoot => {
                WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR
            }
            Dir::PendingBucket => {
                WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::DELETE | WatchMask::ONLYDIR
            }
            Dir::DelayedBucket | Dir::Shard => {
                WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR
            }
            Dir::Leases => {
                WatchMask::CREATE
                    | WatchMask::MOVED_TO
                    | WatchMask::DELETE
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::EXCL_UNLINK
                    | WatchMask::ONLYDIR
            }
        }
    }

    /// The kind of a new subdirectory of a directory of this kind.
    fn child(self, depth_in_pending: usize) -> Option<Dir> {
        match self {
            Dir::PendingTree if depth_in_pending == 1 => Some(Dir::PendingTree),
            Dir::PendingTree => Some(Dir::PendingBucket),
            Dir::DelayedRoot => Some(Dir::DelayedBucket),
            _ => None,
        }
    }
}

/// inotify and the directories it watches.
struct Kernel {
    inotify: Inotify,
    watches: Watches,
    dirs: HashMap<i32, (PathBuf, Dir)>,
    buf: Vec<u8>,
}

/// A raw event read from inotify, owned.
struct Raw {
    wd: i32,
    mask: EventMask,
    name: Option<OsString>,
}

/// The job events of a store, as they happen: created, pending, delayed, running, fulfilled,
/// failed, cancelled, expired, released, lost. Made by [`Store::events`]; read with
/// [`next_timeout`](Self::next_timeout), or as a blocking iterator.
///
/// Best effort: file events (inotify) see the changes made through this kernel, at once; other
/// NFS clients' claims and lease ends (running, released, lost, and the finish of a running
/// job) are found by a re-scan of `leases/` every poll interval, and their other changes are
/// not seen. Without inotify (disabled by [`StoreBuilder::file_events`](crate::StoreBuilder::file_events),
/// or unavailable) only that re-scan runs. An event is judged from the store when its file
/// event is read, so it may be reported after the job has moved on, and in a burst of changes
/// an intermediate state may be skipped or repeated state reported once (FORMAT.md §13.3).
///
/// ```
/// use std::time::Duration;
/// use jobdir::EventKind;
/// let dir = tempfile::tempdir()?;
/// let store = jobdir::Store::open(dir.path())?;
/// let mut events = store.events()?;
/// let id = store.create(&"x")?;
/// let ev = events.next_timeout(Duration::from_secs(10))?.unwrap();
/// assert_eq!((ev.id, ev.event, ev.attempt), (id, EventKind::Created, 0));
/// store.pull_work()?.unwrap().fulfill(b"ok")?;
/// let ev = events.next_timeout(Duration::from_secs(10))?.unwrap();
/// assert_eq!((ev.event, ev.attempt), (EventKind::Running, 1));
/// let ev = events.next_timeout(Duration::from_secs(10))?.unwrap();
/// assert_eq!((ev.event, ev.attempt), (EventKind::Fulfilled, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EventStream {
    store: Store,
    kernel: Option<Kernel>,
    queue: VecDeque<JobEvent>,
    seen: HashSet<(JobId, EventKind, u64)>,
    seen_order: VecDeque<(JobId, EventKind, u64)>,
    /// Work lease file names in `leases/` as last seen.
    leases: HashSet<String>,
    /// Claims whose lease file appeared before their epoch directory: (id, epoch, give up at).
    unverified: Vec<(JobId, u64, Instant)>,
    /// Jobs created lately, with the bucket directory of their pending entry: a bucket made
    /// for a new job is watched only once its creation is read, and the job may have finished
    /// (cancelled, say) and its entry gone before that.
    recent: VecDeque<(JobId, PathBuf, Instant)>,
    next_scan: Instant,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("dir", &self.store.dir())
            .field("file_events", &self.kernel.is_some())
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl Store {
    /// Starts an [`EventStream`]: every job state change from now on (existing jobs are not
    /// reported as they are).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let mut events = store.events()?;
    /// assert!(events.next_timeout(std::time::Duration::ZERO)?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn events(&self) -> Result<EventStream> {
        let inner = &self.inner;
        let kernel = if inner.opts.file_events {
            match Inotify::init() {
                Ok(inotify) => Some(Kernel {
                    watches: inotify.watches(),
                    inotify,
                    dirs: HashMap::new(),
                    buf: vec![0u8; 64 * 1024],
                }),
                Err(e) => {
                    tracing::warn!("file events unavailable ({e}); events by polling only");
                    None
                }
            }
        } else {
            None
        };
        let mut stream = EventStream {
            store: self.clone(),
            kernel,
            queue: VecDeque::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            leases: HashSet::new(),
            unverified: Vec::new(),
            recent: VecDeque::new(),
            next_scan: Instant::now() + inner.opts.poll_interval,
        };
        stream.watch_all(false)?;
        // After the watch on `leases/`, so no lease file falls between the two.
        stream.leases = work_lease_names(inner)?;
        Ok(stream)
    }
}

impl EventStream {
    /// True when file events (inotify) drive the stream; false when it only re-scans.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::builder(dir.path()).file_events(false).open()?;
    /// assert!(!store.events()?.file_events());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn file_events(&self) -> bool {
        self.kernel.is_some()
    }

    /// The next event, waiting up to `timeout` for one (`None` if none came).
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let mut events = store.events()?;
    /// let id = store.create(&"x")?;
    /// store.cancel(&id, "not needed")?;
    /// let kinds: Vec<_> = std::iter::from_fn(|| events.next_timeout(Duration::from_secs(5)).ok()?)
    ///     .take(2)
    ///     .map(|e| e.event.as_str())
    ///     .collect();
    /// assert_eq!(kinds, ["created", "cancelled"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<JobEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.verify_claims(None)?;
            if let Some(ev) = self.queue.pop_front() {
                return Ok(Some(ev));
            }
            let now = Instant::now();
            if now >= self.next_scan {
                self.next_scan = now + self.store.inner.opts.poll_interval;
                self.scan_leases()?;
                continue;
            }
            if now >= deadline {
                return Ok(None);
            }
            let mut wait = (deadline - now).min(self.next_scan - now);
            if !self.unverified.is_empty() {
                wait = wait.min(CLAIM_RECHECK);
            }
            self.read(wait)?;
        }
    }

    /// Waits up to `wait` for file events and handles them (sleeps when there are none).
    fn read(&mut self, wait: Duration) -> Result<()> {
        let Some(k) = self.kernel.as_mut() else {
            std::thread::sleep(wait);
            return Ok(());
        };
        let mut fds = [libc::pollfd {
            fd: k.inotify.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = if wait.is_zero() {
            0
        } else {
            wait.as_millis().clamp(1, i32::MAX as u128) as i32
        };
        // SAFETY: `fds` is a valid array of one initialised pollfd that outlives the call, and
        // its length is passed alongside.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                self.lose_kernel(&e);
            }
            return Ok(());
        }
        if r == 0 {
            return Ok(());
        }
        let raws: Vec<Raw> = match k.inotify.read_events(&mut k.buf) {
            Ok(events) => events
                .map(|ev| Raw {
                    wd: ev.wd.get_watch_descriptor_id(),
                    mask: ev.mask,
                    name: ev.name.map(|n| n.to_os_string()),
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => {
                self.lose_kernel(&e);
                return Ok(());
            }
        };
        for raw in raws {
            self.handle(raw)?;
        }
        Ok(())
    }

    /// inotify failed: carry on with the re-scan only.
    fn lose_kernel(&mut self, e: &io::Error) {
        tracing::warn!("file events stopped ({e}); events by polling only");
        self.kernel = None;
    }

    /// Watches `pending/`, `delayed/` and `leases/` and every class and bucket directory in
    /// them. With `report`, entries found in directories not watched before are reported (a
    /// directory that appeared may already hold entries made before its watch).
    fn watch_all(&mut self, report: bool) -> Result<()> {
        let layout = self.store.inner.layout.clone();
        self.watch(&layout.leases, Dir::Leases, false)?;
        for shard in 0..=255u8 {
            self.watch(&layout.jobs.join(format!("{shard:02x}")), Dir::Shard, false)?;
        }
        self.watch(&layout.pending, Dir::PendingTree, report)?;
        self.watch(&layout.delayed, Dir::DelayedRoot, report)
    }

    /// Watches a directory (and, for the index trees, what it holds), reporting the entries
    /// of newly watched buckets when `report` is set.
    fn watch(&mut self, dir: &Path, kind: Dir, report: bool) -> Result<()> {
        let Some(k) = self.kernel.as_mut() else {
            return Ok(());
        };
        if !is_real_dir(dir) {
            return Ok(());
        }
        let new = match k.watches.add(dir, kind.mask()) {
            Ok(wd) => k
                .dirs
                .insert(wd.get_watch_descriptor_id(), (dir.to_path_buf(), kind))
                .is_none(),
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}", dir.display());
                return Ok(());
            }
        };
        let depth = dir
            .strip_prefix(&self.store.inner.layout.pending)
            .map(|r| r.components().count())
            .unwrap_or(0);
        match kind {
            Dir::PendingTree | Dir::DelayedRoot => {
                for name in list_names(dir)? {
                    if let Some(child) = kind.child(depth + 1) {
                        self.watch(&dir.join(name), child, report)?;
                    }
                }
            }
            Dir::PendingBucket | Dir::DelayedBucket if report && new => {
                let names = list_names(dir)?;
                for name in &names {
                    self.on_entry(kind, dir, name)?;
                }
                if kind == Dir::PendingBucket {
                    // Recent jobs whose entry belongs here but is gone already: finished?
                    let missed: Vec<JobId> = self
                        .recent
                        .iter()
                        .filter(|(id, bucket, _)| {
                            bucket == dir && !names.iter().any(|n| *n == id.to_string())
                        })
                        .map(|(id, _, _)| *id)
                        .collect();
                    for id in missed {
                        self.report_finish(&id)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn handle(&mut self, raw: Raw) -> Result<()> {
        if raw.mask.contains(EventMask::Q_OVERFLOW) {
            // Events were lost: watch what appeared meanwhile and re-scan the leases now.
            self.watch_all(true)?;
            self.next_scan = Instant::now();
            return Ok(());
        }
        let Some(k) = self.kernel.as_mut() else {
            return Ok(());
        };
        if raw.mask.contains(EventMask::IGNORED) {
            k.dirs.remove(&raw.wd);
            return Ok(());
        }
        let Some((dir, kind)) = k.dirs.get(&raw.wd).cloned() else {
            return Ok(());
        };
        let Some(name) = raw
            .name
            .as_ref()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            return Ok(());
        };
        let appeared = raw.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
        if raw.mask.contains(EventMask::ISDIR) {
            if appeared && kind == Dir::Shard {
                if let Ok(id) = name.parse::<JobId>() {
                    self.on_created(id)?;
                }
                return Ok(());
            }
            if appeared {
                let depth = dir
                    .strip_prefix(&self.store.inner.layout.pending)
                    .map(|r| r.components().count())
                    .unwrap_or(0);
                if let Some(child) = kind.child(depth + 1) {
                    self.watch(&dir.join(&name), child, true)?;
                }
            }
            return Ok(());
        }
        match kind {
            Dir::PendingBucket | Dir::DelayedBucket if appeared => self.on_entry(kind, &dir, &name),
            Dir::PendingBucket if raw.mask.contains(EventMask::DELETE) => {
                if let Ok(id) = name.parse::<JobId>() {
                    self.report_finish(&id)?;
                }
                Ok(())
            }
            Dir::Leases => {
                let Some((LeaseKind::Work, id, epoch)) = parse_lease_name(&name) else {
                    return Ok(());
                };
                if appeared {
                    self.leases.insert(name);
                    self.on_claim(id, epoch)
                } else if raw.mask.contains(EventMask::CLOSE_WRITE) {
                    // Closed while still linked: its holder died (holders unlink first).
                    self.push(id, EventKind::Lost, epoch);
                    Ok(())
                } else if raw.mask.contains(EventMask::DELETE) {
                    self.leases.remove(&name);
                    self.on_lease_end(id, epoch)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// A job directory appeared in its shard: the job was created.
    fn on_created(&mut self, id: JobId) -> Result<()> {
        let store = self.store.clone();
        let inner = &store.inner;
        let Ok(record) = inner.read_record(&id) else {
            return Ok(()); // gone again (a create that failed and took it back), or foreign
        };
        self.push(id, EventKind::Created, 0);
        let key = crate::store::pending_key(&id, record.priority);
        let bucket = inner.work.path(&key).parent().map(Path::to_path_buf);
        if let Some(bucket) = bucket {
            let now = Instant::now();
            while self.recent.front().is_some_and(|r| {
                self.recent.len() >= RECENT_CAP || now.saturating_duration_since(r.2) > RECENT_FOR
            }) {
                self.recent.pop_front();
            }
            self.recent.push_back((id, bucket, now));
        }
        self.report_finish(&id)?;
        Ok(())
    }

    /// An entry appeared in a pending or delayed bucket.
    fn on_entry(&mut self, kind: Dir, dir: &Path, name: &str) -> Result<()> {
        let store = self.store.clone();
        let inner = &store.inner;
        let id = match kind {
            Dir::PendingBucket => name.parse::<JobId>().ok(),
            _ => parse_delayed_name(name).map(|(_, _, id)| id),
        };
        let Some(id) = id else {
            return Ok(());
        };
        let attempts = max_epoch(inner, &id)?;
        // A job with no failed attempt and no retry gets its first entry when it is created
        // (reported from its shard; here again in case that event was missed).
        let fresh = is_fresh(inner, &id, attempts)?;
        // A job that has finished: either this event is read late (the job ran and finished
        // since, and its entry is gone: report it all the same), or the entry was made after
        // the finish (a cancelled delayed job falling due: its entry is still there, and it is
        // not pending). Only the finish is reported for the latter.
        let finished = finish_of(inner, &id)?.is_some();
        let real = !finished || !exists(&dir.join(name))?;
        match kind {
            Dir::PendingBucket => {
                let not_before = inner.read_record(&id).ok().and_then(|r| r.not_before);
                if fresh && not_before.is_none() {
                    self.push(id, EventKind::Created, 0);
                } else if real {
                    self.push(id, EventKind::Pending, attempts);
                }
            }
            _ => {
                // A delayed create; a retry's backoff is reported, with its exact attempt,
                // when the failed attempt's lease ends (`on_lease_end`).
                if fresh && attempts == 0 {
                    self.push(id, EventKind::Created, 0);
                    if real {
                        self.push(id, EventKind::Delayed, 0);
                    }
                }
            }
        }
        if finished {
            self.report_finish(&id)?;
        }
        Ok(())
    }

    /// A work lease file appeared: running once its epoch directory exists (the lease file is
    /// made first; a claim that loses its race removes it).
    fn on_claim(&mut self, id: JobId, epoch: u64) -> Result<()> {
        if self.claim_made(&id, epoch)? {
            self.push(id, EventKind::Running, epoch);
        } else if !self.unverified.iter().any(|u| u.0 == id && u.1 == epoch) {
            self.unverified
                .push((id, epoch, Instant::now() + CLAIM_PATIENCE));
        }
        Ok(())
    }

    /// Whether a work claim's epoch directory exists: the claim won its race (its lease file is
    /// made first, and removed by a claim that loses).
    fn claim_made(&self, id: &JobId, epoch: u64) -> Result<bool> {
        exists(
            &self
                .store
                .inner
                .layout
                .epoch_dir(LeaseKind::Work, id, epoch),
        )
    }

    /// Reports the claims (of one job, or all) whose epoch directory has appeared since.
    fn verify_claims(&mut self, only: Option<&JobId>) -> Result<()> {
        if self.unverified.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let pending = std::mem::take(&mut self.unverified);
        for (id, epoch, until) in pending {
            if only.is_some_and(|o| *o != id) {
                self.unverified.push((id, epoch, until));
                continue;
            }
            if self.claim_made(&id, epoch)? {
                self.push(id, EventKind::Running, epoch);
            } else if now < until {
                self.unverified.push((id, epoch, until));
            }
        }
        Ok(())
    }

    /// A work lease file was removed: how did epoch `epoch` end?
    fn on_lease_end(&mut self, id: JobId, epoch: u64) -> Result<()> {
        self.verify_claims(Some(&id))?;
        let dir = self
            .store
            .inner
            .layout
            .epoch_dir(LeaseKind::Work, &id, epoch);
        if !exists(&dir)? || exists(&dir.join("held"))? {
            return Ok(()); // a claim that lost its race, or a lease file removed as an orphan
        }
        if exists(&dir.join("released"))? {
            self.push(id, EventKind::Released, epoch);
        } else if exists(&dir.join("expired"))? || exists(&dir.join("timedout"))? {
            self.push(id, EventKind::Lost, epoch);
        } else if exists(&dir.join("failed"))? {
            self.push(id, EventKind::Delayed, epoch);
        } else {
            self.report_finish(&id)?;
        }
        Ok(())
    }

    /// Reports the job's finish if it has finished; true if it has.
    fn report_finish(&mut self, id: &JobId) -> Result<bool> {
        let inner = &self.store.inner;
        let Some(kind) = finish_of(inner, id)? else {
            return Ok(false);
        };
        self.verify_claims(Some(id))?;
        let attempts = max_epoch(&self.store.inner, id)?;
        self.push(*id, kind, attempts);
        Ok(true)
    }

    /// Re-lists `leases/`: new work lease files are claims, vanished ones ended (this is how
    /// other hosts' claims and lease ends are seen, and what covers lost file events).
    fn scan_leases(&mut self) -> Result<()> {
        let now = work_lease_names(&self.store.inner)?;
        let gone: Vec<String> = self.leases.difference(&now).cloned().collect();
        let new: Vec<String> = now.difference(&self.leases).cloned().collect();
        self.leases = now;
        for name in new {
            if let Some((_, id, epoch)) = parse_lease_name(&name) {
                self.on_claim(id, epoch)?;
            }
        }
        for name in gone {
            if let Some((_, id, epoch)) = parse_lease_name(&name) {
                self.on_lease_end(id, epoch)?;
            }
        }
        Ok(())
    }

    /// Queues an event unless this (job, kind, attempt) was reported already. A claim of the
    /// job whose epoch directory has appeared meanwhile is reported first, so that its running
    /// comes before what followed it.
    fn push(&mut self, id: JobId, event: EventKind, attempt: u64) {
        if event != EventKind::Running
            && self.unverified.iter().any(|u| u.0 == id)
            && let Err(e) = self.verify_claims(Some(&id))
        {
            tracing::debug!("cannot check the claims of {id}: {e}");
        }
        let key = (id, event, attempt);
        if !self.seen.insert(key) {
            return;
        }
        self.seen_order.push_back(key);
        if self.seen_order.len() > SEEN_CAP
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.queue.push_back(JobEvent {
            id,
            event,
            attempt,
            at: SystemTime::now(),
        });
    }
}

impl Iterator for EventStream {
    type Item = Result<JobEvent>;

    /// Blocks until the next event (or an error).
    fn next(&mut self) -> Option<Result<JobEvent>> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(ev)) => return Some(Ok(ev)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The work lease file names in `leases/`.
fn work_lease_names(inner: &Inner) -> Result<HashSet<String>> {
    Ok(list_names(&inner.layout.leases)?
        .into_iter()
        .filter(|n| matches!(parse_lease_name(n), Some((LeaseKind::Work, _, _))))
        .collect())
}

/// True for a job that has never failed an attempt nor been retried: its first entry is its
/// creation.
fn is_fresh(inner: &Inner, id: &JobId, attempts: u64) -> Result<bool> {
    let layout = &inner.layout;
    if exists(&layout.retries_dir(id))? {
        return Ok(false);
    }
    for e in 1..=attempts {
        if exists(&layout.epoch_dir(LeaseKind::Work, id, e).join("failed"))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How the job finished, if it has.
fn finish_of(inner: &Inner, id: &JobId) -> Result<Option<EventKind>> {
    let layout = &inner.layout;
    if !exists(&layout.result_dir(id))? {
        return Ok(None);
    }
    if exists(&layout.result_value(id))? {
        return Ok(Some(EventKind::Fulfilled));
    }
    Ok(crate::outcome::read_outcome(inner, id)
        .ok()
        .flatten()
        .map(|o| EventKind::of_finish(o.state)))
}
