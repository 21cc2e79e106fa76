//! Wake-ups: file events (inotify, through the `notify` crate) turned into index keys and
//! sequence numbers that blocked callers wait on, with a bounded polling fallback.
//!
//! Invariant kept here: a blocked caller never sleeps past the poll interval, so a change made
//! where events cannot be seen (another NFS client, an overflowed event queue, no inotify) is
//! found within one poll interval; a change made on this host wakes a waiter at once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::layout::{Layout, LeaseKind, parse_lease_name};

/// What a blocked caller waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    /// A job may have become pullable.
    Work,
    /// A notification may have become pullable.
    Notify,
    /// A result may have appeared.
    Result,
}

/// Most events kept for a handle that does not pull; past this, they are dropped and the next
/// pull re-reads the disk instead (so a process that only creates or waits holds no backlog).
const INBOX_CAP: usize = 16_384;

/// Events collected for one index, drained by the next puller.
#[derive(Default, Debug)]
pub(crate) struct Inbox {
    /// Entries that appeared or were touched, relative to the index root (`class/bucket/name`).
    pub keys: Vec<String>,
    /// Class or bucket directories that appeared and must be watched and listed.
    pub new_dirs: Vec<PathBuf>,
    /// Directories that disappeared (their watch is gone).
    pub gone_dirs: Vec<PathBuf>,
    /// Events may have been lost: re-list from disk.
    pub rescan: bool,
}

#[derive(Default)]
pub(crate) struct SignalState {
    pub work: Inbox,
    pub notify: Inbox,
    /// Lease files closed by a writer (a holder that ended or died).
    pub leases_closed: Vec<PathBuf>,
    seq: [u64; 3],
}

/// Event inboxes and the condition variables blocked callers wait on.
#[derive(Default)]
pub(crate) struct Signals {
    state: Mutex<SignalState>,
    conds: [Condvar; 3],
}

fn idx(ch: Channel) -> usize {
    match ch {
        Channel::Work => 0,
        Channel::Notify => 1,
        Channel::Result => 2,
    }
}

impl Signals {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SignalState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The channel's sequence number; take it *before* checking for work, then wait for it to
    /// change, so no wake-up is lost between the check and the wait.
    pub(crate) fn seq(&self, ch: Channel) -> u64 {
        self.lock().seq[idx(ch)]
    }

    /// Bumps a channel and wakes one waiter (work, notify) or all of them (result).
    pub(crate) fn bump(&self, ch: Channel) {
        let mut st = self.lock();
        Self::bump_locked(&mut st, ch);
        drop(st);
        self.wake(ch);
    }

    fn bump_locked(st: &mut SignalState, ch: Channel) {
        st.seq[idx(ch)] = st.seq[idx(ch)].wrapping_add(1);
    }

    fn wake(&self, ch: Channel) {
        match ch {
            Channel::Result => self.conds[idx(ch)].notify_all(),
            _ => self.conds[idx(ch)].notify_one(),
        }
    }

    /// Waits until the channel's sequence differs from `seen` or `timeout` passes. Returns true
    /// if it changed.
    pub(crate) fn wait(&self, ch: Channel, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.seq[idx(ch)] != seen {
                // Pass the baton: another waiter may be needed for another event.
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.conds[idx(ch)]
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn handle(&self, layout: &Layout, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(e) => e,
            Err(_) => {
                self.rescan_all();
                return;
            }
        };
        if event.need_rescan() {
            self.rescan_all();
            return;
        }
        for path in &event.paths {
            self.handle_path(layout, &event.kind, path);
        }
    }

    fn rescan_all(&self) {
        let mut st = self.lock();
        st.work.rescan = true;
        st.notify.rescan = true;
        for ch in [Channel::Work, Channel::Notify, Channel::Result] {
            Self::bump_locked(&mut st, ch);
        }
        drop(st);
        for ch in [Channel::Work, Channel::Notify, Channel::Result] {
            self.conds[idx(ch)].notify_all();
        }
    }

    fn handle_path(&self, layout: &Layout, kind: &EventKind, path: &Path) {
        let appeared = matches!(
            kind,
            EventKind::Create(_)
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Modify(ModifyKind::Metadata(_))
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        let dir_created = matches!(kind, EventKind::Create(CreateKind::Folder));
        let dir_removed = matches!(kind, EventKind::Remove(RemoveKind::Folder));
        for (root, ch) in [
            (&layout.pending, Channel::Work),
            (&layout.notify, Channel::Notify),
        ] {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let depth = rel.components().count();
            let mut st = self.lock();
            let inbox = match ch {
                Channel::Work => &mut st.work,
                _ => &mut st.notify,
            };
            if depth == 3 && appeared && !dir_created {
                if inbox.keys.len() >= INBOX_CAP {
                    inbox.keys.clear();
                    inbox.rescan = true;
                } else if let Some(key) = rel.to_str() {
                    inbox.keys.push(key.to_string());
                }
            } else if depth < 3 && dir_created {
                if inbox.new_dirs.len() >= INBOX_CAP {
                    inbox.new_dirs.clear();
                    inbox.rescan = true;
                }
                inbox.new_dirs.push(path.to_path_buf());
            } else if depth < 3 && dir_removed {
                if inbox.gone_dirs.len() >= INBOX_CAP {
                    inbox.gone_dirs.clear();
                }
                inbox.gone_dirs.push(path.to_path_buf());
                return;
            } else {
                return;
            }
            Self::bump_locked(&mut st, ch);
            drop(st);
            self.wake(ch);
            return;
        }
        if let Ok(rel) = path.strip_prefix(&layout.leases) {
            if !matches!(
                kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
            ) {
                return;
            }
            let ch = match rel.to_str().and_then(parse_lease_name) {
                Some((LeaseKind::Work, _, _)) => Channel::Work,
                Some((LeaseKind::Notify, _, _)) => Channel::Notify,
                None => return,
            };
            let mut st = self.lock();
            if st.leases_closed.len() >= INBOX_CAP {
                // Nobody is pulling here; the periodic lease scan covers what is dropped.
                st.leases_closed.clear();
            }
            st.leases_closed.push(path.to_path_buf());
            Self::bump_locked(&mut st, ch);
            drop(st);
            self.wake(ch);
            return;
        }
        if path.starts_with(&layout.jobs)
            && path.file_name().is_some_and(|n| n == "result")
            && appeared
        {
            self.bump(Channel::Result);
        }
    }
}

/// The store's directory watcher: `None` inside when inotify is unavailable (polling only).
pub(crate) struct Watch {
    watcher: Option<RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    job_refs: HashMap<PathBuf, usize>,
}

impl Watch {
    /// Starts a watcher that feeds `signals`; falls back to polling if it cannot start.
    pub(crate) fn start(layout: &Layout, signals: &Arc<Signals>, enabled: bool) -> Watch {
        let sig = Arc::clone(signals);
        let lay = layout.clone();
        let watcher = if enabled {
            match notify::recommended_watcher(move |ev| sig.handle(&lay, ev)) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("file events unavailable ({e}); polling only");
                    None
                }
            }
        } else {
            None
        };
        let mut w = Watch {
            watcher,
            watched: HashSet::new(),
            job_refs: HashMap::new(),
        };
        for dir in [&layout.pending, &layout.notify, &layout.leases] {
            w.ensure(dir);
        }
        w
    }

    /// True when file events are being delivered.
    pub(crate) fn active(&self) -> bool {
        self.watcher.is_some()
    }

    /// Watches a directory (not recursively) if it is not watched yet.
    pub(crate) fn ensure(&mut self, dir: &Path) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        if self.watched.contains(dir) {
            return;
        }
        match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched.insert(dir.to_path_buf());
            }
            Err(e) => tracing::debug!("cannot watch {}: {e}", dir.display()),
        }
    }

    /// Forgets a directory that was removed (the kernel dropped its watch).
    pub(crate) fn forget(&mut self, dir: &Path) {
        self.watched.remove(dir);
    }

    /// Watches a job directory for its result while someone waits on it (reference counted).
    pub(crate) fn hold_job(&mut self, dir: &Path) {
        let n = self.job_refs.entry(dir.to_path_buf()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.ensure(dir);
        }
    }

    /// Releases a [`hold_job`](Self::hold_job).
    pub(crate) fn release_job(&mut self, dir: &Path) {
        if let Some(n) = self.job_refs.get_mut(dir) {
            *n -= 1;
            if *n == 0 {
                self.job_refs.remove(dir);
                if self.watched.remove(dir)
                    && let Some(w) = self.watcher.as_mut()
                {
                    let _ = w.unwatch(dir);
                }
            }
        }
    }
}
