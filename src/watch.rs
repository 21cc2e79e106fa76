//! Wake-ups: file events (inotify) turned into index keys and sequence numbers that blocked
//! callers wait on, with a bounded polling fallback.
//!
//! Invariant kept here: a blocked caller never sleeps past the poll interval, so a change made
//! where events cannot be seen (another NFS client, an overflowed event queue, no inotify) is
//! found within one poll interval; a change made on this host wakes a waiter at once.
//!
//! Each watched directory asks the kernel only for the events that can make something pullable
//! (a new or touched index entry, a lease file closed by a holder that died, a result that
//! appeared), so the store's own routine work (removing entries, ending leases) wakes nobody.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

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
    /// A broadcast control message may have appeared.
    Control,
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
    /// Something appeared in `delayed/`: the next pull re-reads its head.
    pub delayed_changed: bool,
    seq: [u64; 4],
}

/// Event inboxes and the condition variables blocked callers wait on.
#[derive(Default)]
pub(crate) struct Signals {
    state: Mutex<SignalState>,
    conds: [Condvar; 4],
}

fn idx(ch: Channel) -> usize {
    match ch {
        Channel::Work => 0,
        Channel::Notify => 1,
        Channel::Result => 2,
        Channel::Control => 3,
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
            Channel::Result | Channel::Control => self.conds[idx(ch)].notify_all(),
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

    fn rescan_all(&self) {
        let mut st = self.lock();
        st.work.rescan = true;
        st.notify.rescan = true;
        for ch in [
            Channel::Work,
            Channel::Notify,
            Channel::Result,
            Channel::Control,
        ] {
            Self::bump_locked(&mut st, ch);
        }
        drop(st);
        for ch in [
            Channel::Work,
            Channel::Notify,
            Channel::Result,
            Channel::Control,
        ] {
            self.conds[idx(ch)].notify_all();
        }
    }

    fn handle_path(&self, layout: &Layout, kind: Seen, path: &Path) {
        let appeared = matches!(kind, Seen::Appeared | Seen::DirCreated);
        let dir_created = kind == Seen::DirCreated;
        let dir_removed = kind == Seen::DirGone;
        let control = layout.root.join(crate::layout::CONTROL);
        if path.starts_with(&control) {
            if appeared {
                self.bump(Channel::Control);
            }
            return;
        }
        if path.parent() == Some(layout.root.as_path()) {
            return; // the root is watched only to see `control/` appear
        }
        if path.starts_with(&layout.instances) {
            // An instance's allocation entry made or touched (a job created for it is indexed):
            // its pulls look again (they watch no index directory unless they take
            // unallocated jobs).
            if appeared {
                self.bump(Channel::Work);
            }
            return;
        }
        if path.starts_with(&layout.delayed) {
            if appeared {
                let mut st = self.lock();
                st.delayed_changed = true;
                Self::bump_locked(&mut st, Channel::Work);
                drop(st);
                self.wake(Channel::Work);
            }
            return;
        }
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
            if kind != Seen::Closed {
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

/// What one inotify event means here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// A name appeared (created, renamed in) or was touched.
    Appeared,
    /// A directory appeared.
    DirCreated,
    /// A watched directory is gone (its watch was dropped by the kernel).
    DirGone,
    /// A file open for writing was closed while still linked (a lease holder died).
    Closed,
}

impl Seen {
    fn of(mask: EventMask) -> Option<Seen> {
        if mask.contains(EventMask::IGNORED) {
            Some(Seen::DirGone)
        } else if mask.contains(EventMask::CLOSE_WRITE) {
            Some(Seen::Closed)
        } else if mask.contains(EventMask::CREATE) && mask.contains(EventMask::ISDIR) {
            Some(Seen::DirCreated)
        } else if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO | EventMask::ATTRIB) {
            Some(Seen::Appeared)
        } else {
            None
        }
    }
}

/// The events each kind of directory is watched for. `EXCL_UNLINK` drops events of files
/// already unlinked: a holder ends its lease by unlinking its lease file *before* closing it,
/// so only a holder that died (its file still linked) produces a close event.
fn mask_for(layout: &Layout, dir: &Path) -> WatchMask {
    if dir == layout.root {
        WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR
    } else if dir == layout.leases {
        WatchMask::CLOSE_WRITE | WatchMask::EXCL_UNLINK | WatchMask::ONLYDIR
    } else if dir.starts_with(&layout.jobs) || dir.starts_with(&layout.delayed) {
        WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR
    } else {
        WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::ATTRIB
            | WatchMask::EXCL_UNLINK
            | WatchMask::ONLYDIR
    }
}

/// Watch descriptor number → watched directory, shared with the reading thread.
type DirMap = Arc<Mutex<HashMap<i32, PathBuf>>>;

fn lock_map(m: &DirMap) -> MutexGuard<'_, HashMap<i32, PathBuf>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kernel side: an inotify instance read by one thread, which stops when `stop` is dropped.
struct Watcher {
    watches: Watches,
    dirs: DirMap,
    /// Closing this pipe's write end wakes the reading thread to exit.
    stop: Option<io::PipeWriter>,
}

impl Watcher {
    fn start(layout: &Layout, signals: &Arc<Signals>) -> io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let watches = inotify.watches();
        let (stop_rx, stop_tx) = io::pipe()?;
        let dirs = DirMap::default();
        let (sig, lay, map) = (Arc::clone(signals), layout.clone(), Arc::clone(&dirs));
        std::thread::Builder::new()
            .name("jobdir-watch".into())
            .spawn(move || read_events(inotify, &stop_rx, &sig, &lay, &map))?;
        Ok(Watcher {
            watches,
            dirs,
            stop: Some(stop_tx),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// The reading thread: waits on the inotify descriptor and the stop pipe; on any failure it
/// asks every waiter to re-read the disk and stops (polling carries on).
fn read_events(
    mut inotify: Inotify,
    stop: &io::PipeReader,
    signals: &Signals,
    layout: &Layout,
    dirs: &DirMap,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two initialised pollfd structs that outlives the
        // call, and its length is passed alongside.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            signals.rescan_all();
            return;
        }
        if fds[1].revents != 0 {
            return; // the store handle is gone
        }
        let events = match inotify.read_events(&mut buf) {
            Ok(events) => events,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("file events stopped ({e}); polling only");
                signals.rescan_all();
                return;
            }
        };
        for ev in events {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                signals.rescan_all();
                continue;
            }
            let Some(kind) = Seen::of(ev.mask) else {
                continue;
            };
            let id = ev.wd.get_watch_descriptor_id();
            let path = if kind == Seen::DirGone {
                match lock_map(dirs).remove(&id) {
                    Some(dir) => dir,
                    None => continue,
                }
            } else {
                match lock_map(dirs).get(&id) {
                    Some(dir) => dir.join(ev.name.unwrap_or(OsStr::new(""))),
                    None => continue,
                }
            };
            signals.handle_path(layout, kind, &path);
        }
    }
}

/// The store's directory watcher: `None` inside when inotify is unavailable (polling only).
pub(crate) struct Watch {
    watcher: Option<Watcher>,
    layout: Layout,
    watched: HashMap<PathBuf, WatchDescriptor>,
    job_refs: HashMap<PathBuf, usize>,
}

impl Watch {
    /// Starts a watcher that feeds `signals`; falls back to polling if it cannot start.
    pub(crate) fn start(layout: &Layout, signals: &Arc<Signals>, enabled: bool) -> Watch {
        let watcher = if enabled {
            match Watcher::start(layout, signals) {
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
            layout: layout.clone(),
            watched: HashMap::new(),
            job_refs: HashMap::new(),
        };
        for dir in [
            &layout.pending,
            &layout.notify,
            &layout.leases,
            &layout.delayed,
        ] {
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
        if self.watched.contains_key(dir) {
            return;
        }
        // The map entry goes in under the lock before the thread can read an event of it.
        let mut dirs = lock_map(&w.dirs);
        match w.watches.add(dir, mask_for(&self.layout, dir)) {
            Ok(wd) => {
                dirs.insert(wd.get_watch_descriptor_id(), dir.to_path_buf());
                drop(dirs);
                self.watched.insert(dir.to_path_buf(), wd);
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
                if let Some(wd) = self.watched.remove(dir)
                    && let Some(w) = self.watcher.as_mut()
                {
                    let _ = w.watches.remove(wd);
                }
            }
        }
    }
}
