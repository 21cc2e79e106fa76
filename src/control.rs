//! Broadcast control messages: `pause`, `resume`, `drain`, or any custom JSON, sent to every
//! process listening on the store (proletariat's "system messages").
//!
//! Invariants kept here:
//! - A message is one complete file that appears by one rename and is never changed, so every
//!   listener reads the same message whole.
//! - A message is never consumed: every listener delivers every message that appeared after it
//!   started listening, once. "After" is decided by the names a listener saw when it started,
//!   never by comparing clocks or counters of different hosts.
//! - Old messages are pruned, but the latest `pause` or `resume` is kept whatever its age, so a
//!   listener that starts late still learns whether the store is paused.
//!
//! ```text
//! DIR/control/<uuid v7>.json   {"at":"<RFC 3339>","host":"<host id>","id":"<uuid v7>","message":<JSON>,"pid":<n>}
//! ```

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::PoisonError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;

use crate::atomic::{list_names, read_file, remove_file_if_exists};
use crate::error::{Error, IoContext, Result};
use crate::id::JobId;
use crate::job::rfc3339;
use crate::layout::CONTROL;
use crate::store::{Inner, READ_LIMIT, Store, ensure_real_dir};
use crate::watch::Channel;

/// How long a message stays in `control/` before [`Store::broadcast`] or
/// [`Store::recover`](crate::Store::recover) prunes it (one hour). The latest `pause` or
/// `resume` is never pruned.
pub const CONTROL_TTL: Duration = Duration::from_secs(3600);

/// A listener forgets a pruned message's name only once the message is this old, so a name that
/// drops out of a (stale, NFS) listing and comes back is not delivered twice.
const FORGET_AFTER: Duration = Duration::from_secs(2 * 3600);

/// What a control message says.
///
/// The three words `"pause"`, `"resume"` and `"drain"` (as JSON strings) are understood by
/// `jobdir work` and `jobdir pool`; every other JSON value is a custom message, passed on to the
/// worker's program.
///
/// ```
/// use jobdir::Control;
/// use serde_json::json;
/// assert_eq!(Control::from_json(json!("pause")), Control::Pause);
/// assert_eq!(Control::from_json(json!({"reload": true})).to_json(), json!({"reload": true}));
/// assert_eq!(Control::Drain.to_json(), json!("drain"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// Finish running jobs, pull no more until `resume`.
    Pause,
    /// Pull again after a `pause`.
    Resume,
    /// Finish running jobs, then exit once idle.
    Drain,
    /// Anything else: delivered as is.
    Custom(Value),
}

impl Control {
    /// The message a JSON value stands for.
    ///
    /// ```
    /// assert_eq!(jobdir::Control::from_json("resume".into()), jobdir::Control::Resume);
    /// ```
    pub fn from_json(v: Value) -> Control {
        match v.as_str() {
            Some("pause") => Control::Pause,
            Some("resume") => Control::Resume,
            Some("drain") => Control::Drain,
            _ => Control::Custom(v),
        }
    }

    /// The message as JSON, as it is stored.
    ///
    /// ```
    /// assert_eq!(jobdir::Control::Pause.to_json(), serde_json::json!("pause"));
    /// ```
    pub fn to_json(&self) -> Value {
        match self {
            Control::Pause => Value::from("pause"),
            Control::Resume => Value::from("resume"),
            Control::Drain => Value::from("drain"),
            Control::Custom(v) => v.clone(),
        }
    }
}

/// One broadcast message as read from the store.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let store = jobdir::Store::open(dir.path())?;
/// let sent = store.broadcast(&jobdir::Control::Pause)?;
/// let all = store.control_messages()?;
/// assert_eq!(all, [sent.clone()]);
/// assert_eq!(all[0].message, jobdir::Control::Pause);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ControlMessage {
    /// The message id, a UUID v7 (its file is `control/<id>.json`). Ids sort by creation time,
    /// by the sender's clock.
    pub id: String,
    /// When it was sent, by the sender's clock (the id's timestamp).
    pub at: SystemTime,
    /// What it says.
    pub message: Control,
}

impl ControlMessage {
    /// The message as one line of JSON: `{"at":"<RFC 3339>","id":"<id>","message":<JSON>}`
    /// (the line `jobdir work` appends to the file named by `JOBDIR_CONTROL`).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let sent = store.broadcast(&jobdir::Control::Custom(serde_json::json!({"k": 1})))?;
    /// let line: serde_json::Value = serde_json::from_str(&sent.to_json_line())?;
    /// assert_eq!(line["message"], serde_json::json!({"k": 1}));
    /// assert_eq!(line["id"], sent.id.as_str());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_json_line(&self) -> String {
        serde_json::json!({
            "at": rfc3339(self.at),
            "id": self.id,
            "message": self.message.to_json(),
        })
        .to_string()
    }
}

/// What a message file holds. Readers need `id` and `message`; `at`, `host` and `pid` are for
/// people.
#[derive(Deserialize)]
struct Record {
    id: String,
    message: Value,
}

fn control_dir(inner: &Inner) -> PathBuf {
    inner.layout.root.join(CONTROL)
}

/// The id in a message file name `<uuid v7>.json`.
fn parse_name(name: &str) -> Option<JobId> {
    name.strip_suffix(".json")?.parse().ok()
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn age(id: &JobId) -> Duration {
    Duration::from_millis(now_millis().saturating_sub(id.unix_millis()))
}

/// Lists `control/`: the message names, sorted (creation order). Missing: none. A `control`
/// that is not a real directory is refused, never followed.
fn list_messages(inner: &Inner) -> Result<Vec<String>> {
    let dir = control_dir(inner);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(not_a_dir(&dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("stat", &dir),
    }
    let mut names: Vec<String> = list_names(&dir)?
        .into_iter()
        .filter(|n| parse_name(n).is_some())
        .collect();
    names.sort();
    Ok(names)
}

fn not_a_dir(p: &std::path::Path) -> Error {
    Error::Corrupt {
        path: p.to_path_buf(),
        reason: "must be a directory (not a file or a symlink); run recover".into(),
    }
}

/// Reads one message file (its name already parsed).
fn read_message(inner: &Inner, name: &str) -> Result<ControlMessage> {
    let path = control_dir(inner).join(name);
    let corrupt = |reason: String| Error::Corrupt {
        path: path.clone(),
        reason,
    };
    let id = parse_name(name).ok_or_else(|| corrupt("not a message name".into()))?;
    let bytes = read_file(&path, READ_LIMIT)?;
    let rec: Record = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("not a control message: {e}")))?;
    if rec.id != id.to_string() {
        return Err(corrupt("its id is not its file name".into()));
    }
    Ok(ControlMessage {
        id: rec.id,
        at: UNIX_EPOCH + Duration::from_millis(id.unix_millis()),
        message: Control::from_json(rec.message),
    })
}

/// Reads the messages of `names`, newest first, until one is `pause` or `resume`: its name and
/// whether it pauses. Unreadable messages are skipped.
fn latest_switch(inner: &Inner, names: &[String]) -> Option<(String, bool)> {
    names
        .iter()
        .rev()
        .find_map(|n| match read_message(inner, n) {
            Ok(m) if m.message == Control::Pause => Some((n.clone(), true)),
            Ok(m) if m.message == Control::Resume => Some((n.clone(), false)),
            _ => None,
        })
}

impl Store {
    /// Sends `message` to every process listening on this store (on any host), and to none that
    /// starts listening later — except that a listener that starts later still learns the latest
    /// `pause` or `resume` ([`ControlListener::paused`]). Returns the message as stored. Also
    /// prunes messages older than [`CONTROL_TTL`].
    ///
    /// ```
    /// use jobdir::{Control, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// let mut listener = store.listen_control()?;
    /// store.broadcast(&Control::Custom(serde_json::json!({"reload": "prices"})))?;
    /// let got = listener.next_timeout(std::time::Duration::from_secs(5))?.expect("delivered");
    /// assert_eq!(got.message, Control::Custom(serde_json::json!({"reload": "prices"})));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn broadcast(&self, message: &Control) -> Result<ControlMessage> {
        let inner = &self.inner;
        let value = message.to_json();
        let size = value.to_string().len();
        if size > inner.opts.max_request_bytes {
            return Err(Error::TooLarge {
                what: "control message",
                size,
                limit: inner.opts.max_request_bytes,
            });
        }
        if let Err(e) = self.prune_control(CONTROL_TTL) {
            tracing::warn!("cannot prune old control messages: {e}");
        }
        let dir = control_dir(inner);
        if !ensure_real_dir(&inner.fs, &dir)? {
            return Err(not_a_dir(&dir));
        }
        let id = JobId::generate();
        let at = UNIX_EPOCH + Duration::from_millis(id.unix_millis());
        let body = serde_json::json!({
            "at": rfc3339(at),
            "host": inner.opts.host_id,
            "id": id.to_string(),
            "message": value,
            "pid": std::process::id(),
        });
        inner
            .fs
            .write_file(&dir.join(format!("{id}.json")), body.to_string().as_bytes())?;
        Ok(ControlMessage {
            id: id.to_string(),
            at,
            message: message.clone(),
        })
    }

    /// Every message in `control/`, oldest first. Unreadable or corrupt files are skipped with a
    /// warning (`recover` quarantines them).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// assert!(store.control_messages()?.is_empty());
    /// store.broadcast(&jobdir::Control::Pause)?;
    /// store.broadcast(&jobdir::Control::Resume)?;
    /// let words: Vec<_> = store.control_messages()?.into_iter().map(|m| m.message).collect();
    /// assert_eq!(words, [jobdir::Control::Pause, jobdir::Control::Resume]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn control_messages(&self) -> Result<Vec<ControlMessage>> {
        let mut out = Vec::new();
        for name in list_messages(&self.inner)? {
            match read_message(&self.inner, &name) {
                Ok(m) => out.push(m),
                Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {}
                Err(e) => tracing::warn!("skipping a control message: {e}"),
            }
        }
        Ok(out)
    }

    /// Removes control messages at least `older_than` old (by the age in their id, against this
    /// host's clock), except the latest `pause` or `resume`. Returns how many were removed.
    /// [`broadcast`](Self::broadcast) and [`recover`](Self::recover) call it with
    /// [`CONTROL_TTL`].
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.broadcast(&jobdir::Control::Pause)?;
    /// store.broadcast(&jobdir::Control::Drain)?;
    /// // Everything is older than zero, but the latest pause/resume is kept.
    /// assert_eq!(store.prune_control(std::time::Duration::ZERO)?, 1);
    /// assert_eq!(store.control_messages()?[0].message, jobdir::Control::Pause);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prune_control(&self, older_than: Duration) -> Result<u64> {
        let inner = &self.inner;
        let names = list_messages(inner)?;
        let keep = latest_switch(inner, &names).map(|(n, _)| n);
        let dir = control_dir(inner);
        let mut removed = 0;
        for name in &names {
            let Some(id) = parse_name(name) else {
                continue;
            };
            if Some(name) == keep.as_ref() || age(&id) < older_than {
                continue;
            }
            if remove_file_if_exists(&dir.join(name))? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Starts listening: the returned listener delivers every message that appears from now on,
    /// once each, and knows whether the store is paused (the latest `pause` or `resume`, sent
    /// before or after it started). Woken by file events on `control/` (inotify) at once; without
    /// them, and for other hosts' messages on a shared filesystem, within the store's poll
    /// interval.
    ///
    /// ```
    /// use jobdir::{Control, Store};
    /// let dir = tempfile::tempdir()?;
    /// let store = Store::open(dir.path())?;
    /// store.broadcast(&Control::Pause)?;
    /// store.broadcast(&Control::Custom(1.into()))?; // before listening: not delivered
    /// let mut listener = store.listen_control()?;
    /// assert!(listener.paused(), "a late listener learns the latest pause");
    /// assert!(listener.try_next()?.is_none());
    /// store.broadcast(&Control::Resume)?;
    /// let got = listener.next_timeout(std::time::Duration::from_secs(5))?.expect("delivered");
    /// assert_eq!(got.message, Control::Resume);
    /// assert!(!listener.paused());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn listen_control(&self) -> Result<ControlListener> {
        let inner = &self.inner;
        lock_watch(inner).ensure(&inner.layout.root);
        let mut listener = ControlListener {
            store: self.clone(),
            seen: HashSet::new(),
            queue: VecDeque::new(),
            paused: false,
            watching_dir: false,
            looked: (0, Instant::now()),
        };
        listener.ensure_watch();
        listener.looked = (inner.signals.seq(Channel::Control), Instant::now());
        let names = list_messages(inner)?;
        listener.paused = latest_switch(inner, &names).is_some_and(|(_, p)| p);
        listener.seen = names.into_iter().collect();
        Ok(listener)
    }
}

fn lock_watch(inner: &crate::store::Inner) -> std::sync::MutexGuard<'_, crate::watch::Watch> {
    inner.watch.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Receives the control messages broadcast on a store after it started (see
/// [`Store::listen_control`]). Each message is delivered once, in the order found (within one
/// look at the directory, oldest first). `Send`; one per thread that listens.
///
/// ```
/// use jobdir::{Control, Store};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// let mut a = store.listen_control()?;
/// let mut b = store.listen_control()?;
/// store.broadcast(&Control::Drain)?;
/// let wait = std::time::Duration::from_secs(5);
/// assert_eq!(a.next_timeout(wait)?.map(|m| m.message), Some(Control::Drain));
/// assert_eq!(b.next_timeout(wait)?.map(|m| m.message), Some(Control::Drain), "a broadcast");
/// assert!(a.try_next()?.is_none(), "once each");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ControlListener {
    store: Store,
    /// Message names already delivered or present when listening started.
    seen: HashSet<String>,
    /// Found, not yet returned.
    queue: VecDeque<ControlMessage>,
    paused: bool,
    /// `control/` is watched (through the store's watcher, channel `Control`).
    watching_dir: bool,
    /// The wake-up count and the time of the last look at the directory: it is listed again
    /// only after a file event or once per poll interval.
    looked: (u64, Instant),
}

impl std::fmt::Debug for ControlListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlListener")
            .field("dir", &self.store.inner.layout.root)
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl ControlListener {
    /// True when the latest `pause` or `resume` known to this listener (sent before it started,
    /// or delivered since) is `pause`.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The next message not yet delivered, if one has appeared; never blocks (one look at the
    /// directory).
    pub fn try_next(&mut self) -> Result<Option<ControlMessage>> {
        if self.queue.is_empty() {
            self.looked = (
                self.store.inner.signals.seq(Channel::Control),
                Instant::now(),
            );
            self.look()?;
        }
        Ok(self.pop())
    }

    /// The next message not yet delivered, waiting up to `timeout` for one to appear. The
    /// directory is listed after a file event, and at least once per poll interval; a call
    /// with nothing new to see only waits.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<ControlMessage>> {
        let deadline = Instant::now() + timeout;
        let poll = self.store.inner.opts.poll_interval;
        loop {
            if let Some(m) = self.pop() {
                return Ok(Some(m));
            }
            let seen = self.store.inner.signals.seq(Channel::Control);
            if seen != self.looked.0 || self.looked.1.elapsed() >= poll {
                self.looked = (seen, Instant::now());
                self.look()?;
                if !self.queue.is_empty() {
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let next_look = poll.saturating_sub(self.looked.1.elapsed());
            self.store
                .inner
                .signals
                .wait(Channel::Control, seen, (deadline - now).min(next_look));
        }
    }

    fn pop(&mut self) -> Option<ControlMessage> {
        let m = self.queue.pop_front()?;
        match m.message {
            Control::Pause => self.paused = true,
            Control::Resume => self.paused = false,
            _ => {}
        }
        Some(m)
    }

    /// Watches `control/` once it exists (until then the root is watched for its creation).
    fn ensure_watch(&mut self) {
        if self.watching_dir {
            return;
        }
        let inner = &self.store.inner;
        let dir = control_dir(inner);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            return;
        }
        lock_watch(inner).ensure(&dir);
        self.watching_dir = true;
    }

    /// Lists `control/` and queues the messages not seen before, oldest first.
    fn look(&mut self) -> Result<()> {
        self.ensure_watch();
        let inner = &self.store.inner;
        let names = list_messages(inner)?;
        let listed: HashSet<&String> = names.iter().collect();
        // Forget pruned names, but only old ones: a name missing from a stale listing may
        // come back, and must not be delivered twice.
        self.seen.retain(|n| {
            listed.contains(n) || parse_name(n).is_some_and(|id| age(&id) < FORGET_AFTER)
        });
        for name in &names {
            if self.seen.contains(name) {
                continue;
            }
            match read_message(inner, name) {
                Ok(m) => self.queue.push_back(m),
                Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {}
                Err(e) => tracing::warn!("skipping a control message: {e}"),
            }
            self.seen.insert(name.clone());
        }
        Ok(())
    }
}

/// What `recover` does below `control/`: prunes messages older than [`CONTROL_TTL`] (returning
/// how many), and lists what it must move to quarantine with the reason: a `control` that is
/// not a real directory, names that are not message names, and message files that are corrupt.
/// `.nfs*` names are left alone.
pub(crate) fn recover(store: &Store) -> Result<(u64, Vec<(PathBuf, String)>)> {
    let inner = &store.inner;
    let dir = control_dir(inner);
    let mut out = Vec::new();
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            out.push((dir, "control must be a directory".to_string()));
            return Ok((0, out));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, out)),
        Err(e) => return Err(e).ctx("stat", &dir),
    }
    let pruned = store.prune_control(CONTROL_TTL)?;
    for name in list_names(&dir)? {
        if name.starts_with(".nfs") {
            continue;
        }
        let path = dir.join(&name);
        if parse_name(&name).is_none() {
            out.push((path, "not a control message name".to_string()));
            continue;
        }
        match read_message(inner, &name) {
            Ok(_) => {}
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {}
            Err(e @ Error::Corrupt { .. }) => out.push((path, e.to_string())),
            Err(e) if e.is_io_kind(io::ErrorKind::IsADirectory) => {
                out.push((path, "a control message must be a file".to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((pruned, out))
}
