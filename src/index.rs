//! The two ordered indexes (work: `pending/`, notifications: `notify/`) and the in-memory
//! frontier each process keeps of them.
//!
//! Invariants kept here:
//! - An entry is an empty file named `<class>/<bucket>/<name>`; names sort in pull order
//!   (priority class first, then time bucket, then the time-ordered id), so the oldest bucket of
//!   the highest priority is all a puller needs to read.
//! - No directory grows without bound: a bucket holds the entries of ~4 s of creations.
//! - The frontier holds a bounded number of keys: everything up to its horizon that is not
//!   known to be taken, never the whole index. Pulls cost the same at 10 and at 1 M entries.
//! - A pull limited to a priority range (`ClassRange`) takes the first key of the range in pull
//!   order; a range that is not a prefix of the order has its own bounded frontier, which never
//!   lists the class directories outside the range (FORMAT.md §13.4).
//! - An entry may outlive its reason (a crash leaves an extra entry, never a missing one):
//!   pullers check the job itself and remove entries that no longer apply.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::atomic::{AtomicFs, is_real_dir, list_names, remove_file_if_exists};
use crate::error::Result;
use crate::layout::{bucket_end_millis, parse_priority_class, priority_class};
use crate::watch::{Inbox, Watch};

/// Load buckets until the frontier holds at least this many keys.
const LOAD_TARGET: usize = 1024;
/// Never hold more than this many keys (trim the largest, lower the horizon).
const FRONTIER_CAP: usize = 65_536;
/// Sorts after every character an entry name may contain.
const AFTER_ALL: char = '~';
/// Empty buckets older than this (by the local clock) are removed when met.
const EMPTY_BUCKET_GRACE_MS: u64 = 60_000;
/// Most frontiers kept for pulls limited to a priority range that is not a prefix of the pull
/// order (the least recently used one is dropped past this).
const RANGED_CAP: usize = 8;

/// One on-disk index rooted at `pending/` or `notify/`.
#[derive(Clone, Debug)]
pub(crate) struct Index {
    pub root: PathBuf,
}

impl Index {
    /// The path of an entry key (`class/bucket/name`).
    pub(crate) fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Creates an entry (idempotent), creating its class and bucket directories if needed, and
    /// fsyncs the bucket directory in durable mode.
    pub(crate) fn add(&self, fs: &AtomicFs, key: &str) -> Result<()> {
        let dir = self.add_unsynced(fs, key)?;
        fs.sync_dir(&dir)
    }

    /// [`add`](Self::add) without the final fsync: returns the directory that gained the
    /// entry, which the caller must fsync (durable mode) before reporting the entry durable.
    pub(crate) fn add_unsynced(&self, fs: &AtomicFs, key: &str) -> Result<PathBuf> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs.create_entry(&path, &dir)?;
        Ok(dir)
    }

    /// Removes an entry; a missing entry is fine.
    pub(crate) fn remove(&self, key: &str) -> Result<()> {
        remove_file_if_exists(&self.path(key)).map(drop)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Horizon {
    /// Nothing loaded yet.
    Start,
    /// Every key up to and including this one has been loaded.
    Upto(String),
    /// The whole index has been loaded; every new key is taken from events.
    End,
}

/// The priority classes a pull may take from, as class names (inclusive bounds; a higher
/// priority has a smaller class name, so `first` comes from the largest priority allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClassRange {
    /// The smallest class name allowed (`None`: from the start of the index).
    first: Option<String>,
    /// The largest class name allowed (`None`: to the end of the index).
    last: Option<String>,
    /// No priority at all is allowed.
    empty: bool,
}

impl ClassRange {
    /// Every class.
    pub(crate) fn all() -> ClassRange {
        ClassRange::default()
    }

    /// The classes of priorities `min <= p < max` (either bound absent: unbounded).
    pub(crate) fn of(min: Option<i32>, max: Option<i32>) -> ClassRange {
        let empty = match (min, max) {
            (_, Some(i32::MIN)) => true,
            (Some(lo), Some(hi)) => lo >= hi,
            _ => false,
        };
        ClassRange {
            first: max.and_then(|m| m.checked_sub(1)).map(priority_class),
            last: min.map(priority_class),
            empty,
        }
    }

    /// True when every class is allowed.
    fn is_all(&self) -> bool {
        !self.empty && self.first.is_none() && self.last.is_none()
    }

    /// True when the key's class lies in the range.
    pub(crate) fn contains(&self, key: &str) -> bool {
        if self.empty {
            return false;
        }
        let class = key.split('/').next().unwrap_or_default();
        self.first.as_deref().is_none_or(|f| class >= f)
            && self.last.as_deref().is_none_or(|l| class <= l)
    }

    /// The smallest key after every key of the range's last class.
    fn end_key(&self) -> Option<String> {
        self.last.as_ref().map(|l| format!("{l}/{AFTER_ALL}"))
    }
}

/// A process's bounded, ordered view of the front of one index (or of the part of it inside
/// a class range).
#[derive(Debug)]
pub(crate) struct Frontier {
    keys: BTreeSet<String>,
    horizon: Horizon,
    /// Only keys of these classes are loaded or taken from events.
    bounds: ClassRange,
}

impl Default for Frontier {
    fn default() -> Self {
        Frontier::bounded(ClassRange::all())
    }
}

impl Frontier {
    fn bounded(bounds: ClassRange) -> Frontier {
        Frontier {
            keys: BTreeSet::new(),
            horizon: Horizon::Start,
            bounds,
        }
    }

    /// Forgets everything; the next pull re-reads the front of the index from disk.
    pub(crate) fn refresh(&mut self) {
        self.keys.clear();
        self.horizon = Horizon::Start;
    }

    /// Adds a key seen in an event, if it lies inside the loaded range.
    pub(crate) fn offer(&mut self, key: String) {
        if !self.bounds.contains(&key) {
            return;
        }
        let inside = match &self.horizon {
            Horizon::Start => false,
            Horizon::Upto(h) => key <= *h,
            Horizon::End => true,
        };
        if inside {
            self.keys.insert(key);
            self.trim();
        }
    }

    /// Applies collected events: new keys, new directories (watched and listed), lost events.
    pub(crate) fn absorb(&mut self, index: &Index, inbox: Inbox, watch: &mut Watch) -> Result<()> {
        if inbox.rescan {
            self.refresh();
        }
        for dir in inbox.gone_dirs {
            watch.forget(&dir);
        }
        for key in inbox.keys {
            self.offer(key);
        }
        for dir in inbox.new_dirs {
            self.list_new_dir(index, &dir, watch)?;
        }
        Ok(())
    }

    /// [`absorb`](Self::absorb) for a frontier that shares the inbox with others.
    fn absorb_ref(&mut self, index: &Index, inbox: &Inbox, watch: &mut Watch) -> Result<()> {
        if inbox.rescan {
            self.refresh();
        }
        for dir in &inbox.gone_dirs {
            watch.forget(dir);
        }
        for key in &inbox.keys {
            self.offer(key.clone());
        }
        for dir in &inbox.new_dirs {
            self.list_new_dir(index, dir, watch)?;
        }
        Ok(())
    }

    fn list_new_dir(&mut self, index: &Index, dir: &Path, watch: &mut Watch) -> Result<()> {
        let Ok(rel) = dir.strip_prefix(&index.root) else {
            return Ok(());
        };
        let Some(rel) = rel.to_str() else {
            return Ok(());
        };
        if self.horizon == Horizon::Start || !is_real_dir(dir) {
            return Ok(());
        }
        watch.ensure(dir);
        for name in sorted_names(dir)? {
            let child = format!("{rel}/{name}");
            if rel.contains('/') {
                self.offer(child);
            } else {
                self.list_new_dir(index, &dir.join(&name), watch)?;
            }
        }
        Ok(())
    }

    /// The next key in pull order, loading more of the index from disk when the frontier is
    /// empty. `None` when the index holds nothing more.
    pub(crate) fn next(&mut self, index: &Index, watch: &mut Watch) -> Result<Option<String>> {
        loop {
            if let Some(k) = self.keys.pop_first() {
                return Ok(Some(k));
            }
            if self.horizon == Horizon::End {
                return Ok(None);
            }
            self.load_more(index, watch)?;
        }
    }

    /// Like [`next`](Self::next), but only a key whose class is at most `end` (the classes of
    /// the priorities at or above a minimum: a prefix of the pull order). Keys after it stay;
    /// nothing past the range is loaded once the horizon has passed it.
    fn next_upto(&mut self, index: &Index, watch: &mut Watch, end: &str) -> Result<Option<String>> {
        loop {
            if let Some(first) = self.keys.first() {
                return Ok(if first.as_str() <= end {
                    self.keys.pop_first()
                } else {
                    None
                });
            }
            match &self.horizon {
                Horizon::End => return Ok(None),
                Horizon::Upto(h) if h.as_str() >= end => return Ok(None),
                _ => {}
            }
            self.load_more(index, watch)?;
        }
    }

    /// Reads buckets after the horizon, in order, until [`LOAD_TARGET`] keys are held.
    fn load_more(&mut self, index: &Index, watch: &mut Watch) -> Result<()> {
        let (h_class, h_bucket) = match &self.horizon {
            Horizon::Start => (String::new(), String::new()),
            Horizon::Upto(h) => {
                let mut it = h.split('/');
                (
                    it.next().unwrap_or_default().to_string(),
                    it.next().unwrap_or_default().to_string(),
                )
            }
            Horizon::End => return Ok(()),
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for class in sorted_names(&index.root)? {
            if class < h_class || parse_priority_class(&class).is_none() {
                continue;
            }
            if self.bounds.first.as_ref().is_some_and(|f| class < *f) {
                continue; // a higher priority than the range allows: never listed
            }
            if self.bounds.last.as_ref().is_some_and(|l| class > *l) {
                break; // past the range: everything in it has been read
            }
            let class_dir = index.root.join(&class);
            if !is_real_dir(&class_dir) {
                continue;
            }
            watch.ensure(&class_dir);
            for bucket in sorted_names(&class_dir)? {
                if (class.as_str(), bucket.as_str()) < (h_class.as_str(), h_bucket.as_str()) {
                    continue;
                }
                let Some(end_ms) = bucket_end_millis(&bucket) else {
                    continue;
                };
                let dir = class_dir.join(&bucket);
                if !is_real_dir(&dir) {
                    continue;
                }
                watch.ensure(&dir);
                let names = list_names(&dir)?;
                if names.is_empty() && end_ms + EMPTY_BUCKET_GRACE_MS < now_ms {
                    // Fails harmlessly if a creator just added an entry.
                    if fs::remove_dir(&dir).is_ok() {
                        watch.forget(&dir);
                    }
                    continue;
                }
                let mut fresh: Vec<String> = names
                    .into_iter()
                    .map(|name| format!("{class}/{bucket}/{name}"))
                    .filter(|key| match &self.horizon {
                        Horizon::Upto(h) => key > h,
                        _ => true,
                    })
                    .collect();
                let room = LOAD_TARGET.saturating_sub(self.keys.len()).max(1);
                if fresh.len() > room {
                    // A big bucket: keep only the first `room` keys in order (linear time),
                    // and stop the horizon at the last one kept; the rest is read later.
                    fresh.select_nth_unstable(room - 1);
                    fresh.truncate(room);
                    let last = fresh.iter().max().cloned().unwrap_or_default();
                    self.keys.extend(fresh);
                    self.horizon = Horizon::Upto(last);
                    return Ok(());
                }
                self.keys.extend(fresh);
                self.horizon = Horizon::Upto(format!("{class}/{bucket}/{AFTER_ALL}"));
                self.trim();
                if self.keys.len() >= LOAD_TARGET {
                    return Ok(());
                }
            }
        }
        self.horizon = Horizon::End;
        Ok(())
    }

    fn trim(&mut self) {
        while self.keys.len() > FRONTIER_CAP {
            self.keys.pop_last();
            if let Some(last) = self.keys.last() {
                self.horizon = Horizon::Upto(last.clone());
            }
        }
    }
}

/// The frontiers one process keeps of one index: the main one (whole pull order), and one per
/// priority range that a filtered pull asked for and that is not a prefix of the pull order.
#[derive(Debug, Default)]
pub(crate) struct Frontiers {
    main: Frontier,
    /// (range, frontier, last use), at most [`RANGED_CAP`].
    ranged: Vec<(ClassRange, Frontier, u64)>,
    uses: u64,
}

impl Frontiers {
    /// Forgets everything; the next pulls re-read the disk.
    pub(crate) fn refresh(&mut self) {
        self.main.refresh();
        for (_, f, _) in &mut self.ranged {
            f.refresh();
        }
    }

    /// Offers a key to every frontier (each keeps it if it is inside its loaded range).
    pub(crate) fn offer(&mut self, key: String) {
        for (_, f, _) in &mut self.ranged {
            f.offer(key.clone());
        }
        self.main.offer(key);
    }

    /// Applies collected events to every frontier.
    pub(crate) fn absorb(&mut self, index: &Index, inbox: Inbox, watch: &mut Watch) -> Result<()> {
        for (_, f, _) in &mut self.ranged {
            f.absorb_ref(index, &inbox, watch)?;
        }
        self.main.absorb(index, inbox, watch)
    }

    /// The next key in pull order whose class lies in `range`. A range open upwards (no
    /// maximum priority) is a prefix of the pull order and is served by the main frontier; any
    /// other range by a frontier of its own, which lists only the class directories inside
    /// it. A key taken from one frontier is dropped from the others, so this process does not
    /// try it twice.
    pub(crate) fn next_in(
        &mut self,
        index: &Index,
        watch: &mut Watch,
        range: &ClassRange,
    ) -> Result<Option<String>> {
        if range.empty {
            return Ok(None);
        }
        let key = if range.is_all() {
            self.main.next(index, watch)?
        } else if range.first.is_none() {
            let end = range.end_key().unwrap_or_default();
            self.main.next_upto(index, watch, &end)?
        } else {
            self.uses += 1;
            let now = self.uses;
            let pos = match self.ranged.iter().position(|(r, _, _)| r == range) {
                Some(pos) => pos,
                None => {
                    if self.ranged.len() >= RANGED_CAP
                        && let Some(oldest) = self
                            .ranged
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, (_, _, used))| *used)
                            .map(|(i, _)| i)
                    {
                        self.ranged.swap_remove(oldest);
                    }
                    self.ranged
                        .push((range.clone(), Frontier::bounded(range.clone()), now));
                    self.ranged.len() - 1
                }
            };
            let entry = &mut self.ranged[pos];
            entry.2 = now;
            entry.1.next(index, watch)?
        };
        if let Some(k) = &key {
            self.main.keys.remove(k);
            for (_, f, _) in &mut self.ranged {
                f.keys.remove(k);
            }
        }
        Ok(key)
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = list_names(dir)?;
    names.sort_unstable();
    Ok(names)
}

/// Every entry key of an index, in order (for recovery and counts: a full listing).
pub(crate) fn all_keys(index: &Index) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for class in sorted_names(&index.root)? {
        let class_dir = index.root.join(&class);
        if !is_real_dir(&class_dir) {
            keys.push(class);
            continue;
        }
        for bucket in sorted_names(&class_dir)? {
            let dir = class_dir.join(&bucket);
            if !is_real_dir(&dir) {
                keys.push(format!("{class}/{bucket}"));
                continue;
            }
            for name in sorted_names(&dir)? {
                keys.push(format!("{class}/{bucket}/{name}"));
            }
        }
    }
    Ok(keys)
}

/// Splits a key into its three parts.
pub(crate) fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut it = key.splitn(3, '/');
    Some((it.next()?, it.next()?, it.next()?))
}
