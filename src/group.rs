//! Groups (FORMAT.md §12.5): jobs created under one group id, waited on together
//! (proletariat's work groups, Sidekiq's batches).
//!
//! Invariant kept here: **a group never misses a member that can run.** Membership is an empty
//! file `groups/<group>/<id>`, made (and fsynced) after the job directory is in place and
//! before the job's index entry, so no worker can finish a job whose membership is not on disk
//! yet, and a create that returned has its membership. A member file whose job is gone is
//! skipped by readers and removed by `recover`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::PoisonError;
use std::time::{Duration, Instant, SystemTime};

use crate::atomic::{exists, is_real_dir, list_names, older_than, visible_names};
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::instance::{ensure_dir, real_dir};
use crate::job::{JobInfo, JobRecord};
use crate::layout::{GROUPS, is_valid_name};
use crate::name::{check_name, validated_name};
use crate::recover::{RecoveryReport, push_q};
use crate::store::{Inner, Store};
use crate::watch::Channel;

/// Most members whose job directories one wait watches for file events; the others are looked
/// at once per poll interval.
const WATCH_CAP: usize = 1024;

/// The name of a group: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, the first a letter or a
/// digit (as instance names and job keys). It names a directory, so anything else is refused
/// before a path is built.
///
/// ```
/// use jobdir::GroupId;
/// let g: GroupId = "nightly-2026-11-23".parse()?;
/// assert_eq!(g.as_str(), "nightly-2026-11-23");
/// assert!("../x".parse::<GroupId>().is_err());
/// # Ok::<(), jobdir::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(String);

impl GroupId {
    /// Validates `name` as a group name.
    ///
    /// ```
    /// assert!(jobdir::GroupId::new("batch_7").is_ok());
    /// assert!(jobdir::GroupId::new(".hidden").is_err());
    /// ```
    pub fn new(name: impl Into<String>) -> Result<GroupId> {
        check_name("group name", name.into()).map(GroupId)
    }
}

validated_name! {
    /// The name as text.
    ///
    /// ```
    /// assert_eq!(jobdir::GroupId::new("g1")?.as_str(), "g1");
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    GroupId, new = GroupId::new, debug = "GroupId({})", serde
}

fn groups_root(inner: &Inner) -> PathBuf {
    inner.layout.root.join(GROUPS)
}

fn group_dir(inner: &Inner, g: &GroupId) -> PathBuf {
    groups_root(inner).join(g.as_str())
}

/// Makes `id` a member of `g` (idempotent): the file `groups/<g>/<id>`, its directory fsynced.
pub(crate) fn join(inner: &Inner, g: &GroupId, id: &JobId) -> Result<()> {
    let root = groups_root(inner);
    let dir = group_dir(inner, g);
    let path = dir.join(id.to_string());
    for _ in 0..8 {
        ensure_dir(&inner.fs, &root)?;
        match ensure_dir(&inner.fs, &dir) {
            Ok(()) => {}
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(e),
        }
        let res = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(inner.fs.file_mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match res {
            Ok(f) => {
                inner.fs.fix_file_mode(&f, &path)?;
                return inner.fs.sync_dir(&dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            // An empty group directory removed by recover just now: make it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).ctx("create group member", &path),
        }
    }
    Err(Error::Io {
        op: "create group member",
        path,
        source: io::Error::new(
            io::ErrorKind::ResourceBusy,
            "its directory kept disappearing",
        ),
    })
}

/// Removes a membership (best effort; recover removes what is left).
pub(crate) fn leave(inner: &Inner, g: &GroupId, id: &JobId) {
    let _ = fs::remove_file(group_dir(inner, g).join(id.to_string()));
}

/// The ids named in a group directory (sorted), without checking their jobs.
fn member_ids(inner: &Inner, g: &GroupId) -> Result<Vec<JobId>> {
    let root = groups_root(inner);
    let dir = group_dir(inner, g);
    if !real_dir(&root)? || !real_dir(&dir)? {
        return Err(Error::GroupNotFound(g.clone()));
    }
    let mut ids: Vec<JobId> = list_names(&dir)?
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The watches a group wait holds on its members' job directories; released on drop.
struct Holds<'a> {
    inner: &'a Inner,
    dirs: HashMap<JobId, PathBuf>,
}

impl Holds<'_> {
    fn hold(&mut self, id: JobId) {
        if self.dirs.len() >= WATCH_CAP || self.dirs.contains_key(&id) {
            return;
        }
        let dir = self.inner.layout.job_dir(&id);
        self.inner
            .watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hold_job(&dir);
        self.dirs.insert(id, dir);
    }

    fn release(&mut self, id: &JobId) {
        if let Some(dir) = self.dirs.remove(id) {
            self.inner
                .watch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .release_job(&dir);
        }
    }
}

impl Drop for Holds<'_> {
    fn drop(&mut self) {
        let ids: Vec<JobId> = self.dirs.keys().copied().collect();
        for id in ids {
            self.release(&id);
        }
    }
}

/// A member not finished yet, as a waiter knows it.
struct Waiting {
    /// When it expires if nothing happens (its deadline or pickup limit), once known.
    expires: Option<SystemTime>,
    /// Whether it has been read once.
    known: bool,
}

impl Store {
    /// The groups in the store, sorted by name.
    ///
    /// ```
    /// use jobdir::{CreateOptions, GroupId};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// assert!(store.groups()?.is_empty());
    /// store.create_with(&1, CreateOptions::default().group("b".parse()?))?;
    /// store.create_with(&2, CreateOptions::default().group("a".parse()?))?;
    /// assert_eq!(store.groups()?, [GroupId::new("a")?, GroupId::new("b")?]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn groups(&self) -> Result<Vec<GroupId>> {
        let root = groups_root(&self.inner);
        if !real_dir(&root)? {
            return Ok(Vec::new());
        }
        let mut out: Vec<GroupId> = list_names(&root)?
            .into_iter()
            .filter_map(|n| GroupId::new(n).ok())
            .filter(|g| is_real_dir(&root.join(g.as_str())))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The members of a group whose jobs exist, in creation order. [`Error::GroupNotFound`]
    /// if no job was ever created in it.
    ///
    /// ```
    /// use jobdir::{CreateOptions, GroupId};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let g = GroupId::new("g")?;
    /// let id = store.create_with(&1, CreateOptions::default().group(g.clone()))?;
    /// assert_eq!(store.group_members(&g)?, [id]);
    /// store.remove(&id)?;
    /// assert!(store.group_members(&g)?.is_empty());
    /// assert!(matches!(
    ///     store.group_members(&"other".parse()?),
    ///     Err(jobdir::Error::GroupNotFound(_))
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn group_members(&self, group: &GroupId) -> Result<Vec<JobId>> {
        let inner = &self.inner;
        let mut out = Vec::new();
        for id in member_ids(inner, group)? {
            if inner.check_shard(&id).is_ok() && exists(&inner.layout.job_dir(&id))? {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Blocks until every member of the group has finished (fulfilled, failed, cancelled or
    /// expired), and returns each one's [`JobInfo`] (state, result or error), in creation
    /// order. [`Error::Timeout`] after `timeout`; [`Error::GroupNotFound`] for a group with no
    /// job. See [`wait_group_each`](Self::wait_group_each) for the rules.
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobdir::{CreateOptions, GroupId, JobState};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let g = GroupId::new("g")?;
    /// let a = store.create_with(&1, CreateOptions::default().group(g.clone()))?;
    /// let b = store.create_with(&2, CreateOptions::default().group(g.clone()))?;
    /// let s2 = store.clone();
    /// std::thread::spawn(move || -> jobdir::Result<()> {
    ///     s2.fulfill(&a, b"one")?;
    ///     s2.cancel(&b, "not needed")
    /// });
    /// let items = store.wait_group(&g, Duration::from_secs(10))?;
    /// assert_eq!(items[0].result.as_deref(), Some(&b"one"[..]));
    /// assert_eq!(items[1].state, JobState::Cancelled);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_group(&self, group: &GroupId, timeout: Duration) -> Result<Vec<JobInfo>> {
        let mut items = Vec::new();
        self.wait_group_each(group, timeout, |info| {
            items.push(info);
            ControlFlow::Continue(())
        })?;
        items.sort_by_key(|i| i.id);
        Ok(items)
    }

    /// Calls `each` once per member of the group as it finishes (members already finished
    /// first), and returns when every member has finished, or when `each` breaks.
    /// [`Error::Timeout`] after `timeout` (the members reported so far stay reported);
    /// [`Error::GroupNotFound`] for a group with no job.
    ///
    /// Woken by file events on the members' job directories (the first 1024 unfinished ones;
    /// the others, and other hosts' changes, are looked at once per poll interval). Members
    /// added while it waits are waited for too; the group is done when a listing made after the
    /// last member finished shows no new one. A member whose job was removed is skipped. A
    /// member past its deadline is expired by the waiter, as [`wait`](Self::wait) does.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use std::time::Duration;
    /// use jobdir::{CreateOptions, GroupId};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let g = GroupId::new("g")?;
    /// for n in 0..3 {
    ///     store.create_with(&n, CreateOptions::default().group(g.clone()))?;
    /// }
    /// let s2 = store.clone();
    /// std::thread::spawn(move || {
    ///     while let Ok(Some(job)) = s2.pull_work_timeout(Duration::from_secs(5)) {
    ///         let n = job.request().as_u64().unwrap_or(0);
    ///         let _ = job.fulfill((n * 10).to_string());
    ///     }
    /// });
    /// let mut seen = 0;
    /// store.wait_group_each(&g, Duration::from_secs(10), |info| {
    ///     assert!(info.state.is_finished());
    ///     seen += 1;
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!(seen, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_group_each<F>(&self, group: &GroupId, timeout: Duration, mut each: F) -> Result<()>
    where
        F: FnMut(JobInfo) -> ControlFlow<()>,
    {
        let inner = &self.inner;
        let deadline = Instant::now().checked_add(timeout);
        let mut holds = Holds {
            inner,
            dirs: HashMap::new(),
        };
        let mut reported: HashSet<JobId> = HashSet::new();
        let mut waiting: BTreeMap<JobId, Waiting> = BTreeMap::new();
        let mut last_list: Option<Instant> = None;
        loop {
            let seen = inner.signals.seq(Channel::Result);
            // Creators send no event here: list at the start and once per poll interval.
            let listed = last_list.is_none_or(|t| t.elapsed() >= inner.opts.poll_interval);
            if listed {
                for id in member_ids(inner, group)? {
                    if !reported.contains(&id) && !waiting.contains_key(&id) {
                        holds.hold(id);
                        waiting.insert(
                            id,
                            Waiting {
                                expires: None,
                                known: false,
                            },
                        );
                    }
                }
                last_list = Some(Instant::now());
            }
            let now = SystemTime::now();
            let mut finished_now = false;
            let ids: Vec<JobId> = waiting.keys().copied().collect();
            for id in ids {
                let Some((known, expires)) = waiting.get(&id).map(|w| (w.known, w.expires)) else {
                    continue;
                };
                let look = !known
                    || exists(&inner.layout.result_dir(&id))?
                    || expires.is_some_and(|t| t <= now)
                    || (listed && !exists(&inner.layout.job_dir(&id))?);
                if !look {
                    continue;
                }
                let info = match self.get(&id) {
                    Ok(info) => info,
                    Err(Error::NotFound(_)) => {
                        // Removed: it will never finish.
                        waiting.remove(&id);
                        holds.release(&id);
                        reported.insert(id);
                        finished_now = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if info.state.is_finished() {
                    waiting.remove(&id);
                    holds.release(&id);
                    reported.insert(id);
                    finished_now = true;
                    if each(info).is_break() {
                        return Ok(());
                    }
                    continue;
                }
                // Not finished: when to look again without an event. A time already past (a
                // running job past its deadline, which its holder's heartbeat ends) is not
                // looked at again until an event or the next listing.
                if let Some(w) = waiting.get_mut(&id) {
                    w.known = true;
                    w.expires = inner
                        .read_record(&id)
                        .ok()
                        .and_then(|r: JobRecord| r.expires_at(info.attempts > 0))
                        .filter(|t| *t > SystemTime::now());
                }
            }
            if waiting.is_empty() {
                // Done once a listing made after the last finish shows no new member (one
                // made before it could miss a member created just before that finish).
                if listed && !finished_now {
                    return Ok(());
                }
                last_list = None;
                continue;
            }
            let now_i = Instant::now();
            let mut nap = inner.opts.poll_interval;
            if let Some(d) = deadline {
                if now_i >= d {
                    return Err(Error::Timeout);
                }
                nap = nap.min(d - now_i);
            }
            let now = SystemTime::now();
            if let Some(t) = waiting.values().filter_map(|w| w.expires).min() {
                nap = nap.min(t.duration_since(now).unwrap_or(Duration::ZERO));
            }
            inner
                .signals
                .wait(Channel::Result, seen, nap.max(Duration::from_millis(1)));
        }
    }
}

/// Recover, for one job kept in the store: re-adds its membership of the group in its
/// `job.json` if the file is missing (a create that crashed before making it).
pub(crate) fn recover_member(
    inner: &Inner,
    rec: &JobRecord,
    report: &mut RecoveryReport,
) -> Result<()> {
    let Some(g) = rec.group.as_deref().and_then(|g| GroupId::new(g).ok()) else {
        return Ok(());
    };
    if !exists(&group_dir(inner, &g).join(rec.id.to_string()))? {
        join(inner, &g, &rec.id)?;
        report.entries_added += 1;
    }
    Ok(())
}

/// Recover's part below `groups/` (FORMAT.md §12.6): quarantine what does not belong, remove
/// members whose job is gone, and remove group directories left empty for `grace`.
pub(crate) fn recover(inner: &Inner, grace: Duration, report: &mut RecoveryReport) -> Result<()> {
    let root = groups_root(inner);
    match fs::symlink_metadata(&root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return push_q(inner, report, &root, "groups must be a directory"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).ctx("stat", &root),
    }
    for name in visible_names(&root)? {
        let dir = root.join(&name);
        if !is_valid_name(&name) || !is_real_dir(&dir) {
            push_q(inner, report, &dir, "not a group directory")?;
            continue;
        }
        for member in visible_names(&dir)? {
            let path = dir.join(&member);
            let id = match member.parse::<JobId>() {
                Ok(id) if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) => id,
                _ => {
                    push_q(
                        inner,
                        report,
                        &path,
                        "not a group member (an empty file named by a job id)",
                    )?;
                    continue;
                }
            };
            if inner.check_shard(&id).is_ok()
                && !exists(&inner.layout.job_dir(&id))?
                && crate::atomic::remove_file_if_exists(&path)?
            {
                report.entries_removed += 1;
            }
        }
        if visible_names(&dir)?.is_empty() && older_than(&dir, grace) {
            // Fails harmlessly if a member was added meanwhile; a creator whose member file
            // finds the directory gone makes it again.
            let _ = fs::remove_dir(&dir);
        }
    }
    Ok(())
}
