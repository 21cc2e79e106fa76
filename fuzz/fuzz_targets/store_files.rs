//! Fuzz target `store_files`: every parser of on-disk data, driven through the public API.
//!
//! Each input builds a small fresh store (`Durability::Fast`, in a temporary directory under
//! `/dev/shm` when it exists), puts one or two jobs in a state chosen by the input, closes it,
//! and then corrupts exactly one on-disk item chosen by the input:
//!
//! | kind | what is written |
//! | --- | --- |
//! | 0 job      | `jobs/<xx>/<id>/job.json` of job A (the input's bytes, `@ID@` → A's id) |
//! | 1 target   | a file, directory or symlink in A's `targets/`, named by the SHA-256 of the bytes, of their canonical JSON, or by the input |
//! | 2 lease    | a lease file `leases/w.<id>.<epoch>` (or `n.`, or any name), optionally with its `claims/<epoch>/held`, optionally flocked by us |
//! | 3 marker   | `jobdir.json`: any bytes, a directory, a symlink, or missing |
//! | 4 index    | an entry `pending/` or `notify/` `<class>/<bucket>/<name>` (names from the input), as a file, directory or symlink |
//! | 5 result   | A's `result/value`: any bytes, missing, a directory, `result` itself a file, a symlink |
//! | 6 claim    | a name in A's `claims/` or `nclaims/`, empty, with `held/`, `expired/`, or a file |
//! | 7 job dir  | a name under `jobs/<shard>/` (both from the input) holding a `job.json` of the input's bytes, or a file, or a symlink |
//! | 8 top      | a top-level name (one of the seven or any) replaced by a file, a directory or a symlink |
//!
//! Input layout: byte 0 picks the kind (mod 9), byte 1 the setup (bit 0: a target queued on A,
//! 1: A fulfilled, 2: A pulled and released once, 3: a job B, 4: B fulfilled with a target,
//! 5: a notification pulled and released once), byte 2 kind-specific flags, byte 3 A's
//! priority (as `i8`); the rest is read by the kind (see `corrupt`).
//!
//! It then reopens the store and calls `get`, `list`, `counts`, `pull_work`,
//! `pull_notification`, `recover` (with `temp_grace` zero), `get` again, and drains the work
//! and notification queues. Errors are fine; these must hold:
//!
//! - nothing panics (in this thread or the library's heartbeat thread);
//! - after `recover`, a loop of `pull_work` + `fulfill` ends within 64 pulls, and so does a
//!   loop of `pull_notification` + `done` (a queue that never drains is reported as a panic);
//! - nothing outside the store is changed or removed: the symlinks the input plants point at
//!   a decoy directory beside the store, whose files must keep their content and mtime.
//!
//! Placeholders in the input's text: `@ID@` (job A's id), `@IDB@` (job B's id, or A's),
//! `@HOST@` (the store's host id), `@KEY@` (A's pending key), `@CLASS@` and `@BUCKET@` (its
//! parts), `@EPOCH@` (the epoch of a lease input), `@DECOY@` (the absolute path of the decoy
//! file outside the store). They let short inputs reach the checks that come after an id or a
//! key matches.

#![no_main]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jobdir::{CreateOptions, Durability, JobId, RecoverOptions, Store};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const HOST: &str = "fuzz-host";
const DRAIN_LIMIT: usize = 64;

/// Reads the input front to back; past the end it yields zeros and empty slices.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// A length-prefixed piece (at most 127 bytes).
    fn piece(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte() & 0x7f);
        self.take(n)
    }

    fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// What the placeholders stand for in this iteration.
struct Ctx {
    root: PathBuf,
    decoy: PathBuf,
    a: JobId,
    b: Option<JobId>,
    class: String,
    bucket: String,
    epoch: u64,
}

impl Ctx {
    fn subst(&self, bytes: &[u8]) -> Vec<u8> {
        let key = format!("{}/{}/{}", self.class, self.bucket, self.a);
        let pairs: [(&[u8], String); 8] = [
            (b"@DECOY@", self.decoy_file().to_string_lossy().into_owned()),
            (b"@IDB@", self.b.unwrap_or(self.a).to_string()),
            (b"@ID@", self.a.to_string()),
            (b"@HOST@", HOST.to_string()),
            (b"@KEY@", key),
            (b"@CLASS@", self.class.clone()),
            (b"@BUCKET@", self.bucket.clone()),
            (b"@EPOCH@", self.epoch.to_string()),
        ];
        let mut out = Vec::with_capacity(bytes.len() + 64);
        let mut i = 0;
        'outer: while i < bytes.len() {
            if bytes[i] == b'@' {
                for (pat, rep) in &pairs {
                    if bytes[i..].starts_with(pat) {
                        out.extend_from_slice(rep.as_bytes());
                        i += pat.len();
                        continue 'outer;
                    }
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        out
    }

    /// One path component from input bytes (placeholders replaced; never empty, `.`, `..`,
    /// and without `/` or NUL). May be non-UTF-8 on purpose.
    fn component(&self, raw: &[u8]) -> Vec<u8> {
        let mut c: Vec<u8> = self
            .subst(raw)
            .into_iter()
            .map(|b| if b == b'/' || b == 0 { b'_' } else { b })
            .collect();
        c.truncate(200);
        if c.is_empty() || c == b"." || c == b".." {
            c.insert(0, b'_');
        }
        c
    }

    fn job_dir(&self, id: &JobId) -> PathBuf {
        let s = id.to_string();
        self.root.join("jobs").join(&s[34..36]).join(&s)
    }

    fn decoy_file(&self) -> PathBuf {
        self.decoy.join("keep")
    }
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn open(root: &Path) -> jobdir::Result<Store> {
    Store::builder(root)
        .durability(Durability::Fast)
        .host_id(HOST)
        .lease(Duration::from_secs(30))
        .poll_interval(Duration::from_millis(1))
        .open()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Replaces whatever is at `path` (file, directory, link) with nothing.
fn clear(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Writes `path` as kind 0: a file of `bytes`, 1: a directory, 2: a symlink to the decoy file,
/// 3: a symlink to the decoy directory. Parents are created.
fn plant(ctx: &Ctx, path: &Path, kind: u8, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        let _ = fs::create_dir_all(p);
    }
    clear(path);
    let _ = match kind % 4 {
        0 => fs::write(path, bytes),
        1 => fs::create_dir(path),
        2 => std::os::unix::fs::symlink(ctx.decoy_file(), path),
        _ => std::os::unix::fs::symlink(&ctx.decoy, path),
    };
}

/// The first pending entry of job A, as (class, bucket).
fn find_key(root: &Path, a: &JobId) -> Option<(String, String)> {
    let want = a.to_string();
    for class in fs::read_dir(root.join("pending")).ok()?.flatten() {
        for bucket in fs::read_dir(class.path()).ok()?.flatten() {
            if bucket.path().join(&want).exists() {
                return Some((
                    class.file_name().to_string_lossy().into_owned(),
                    bucket.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
    }
    None
}

fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn corrupt(ctx: &mut Ctx, what: u8, mut r: Reader<'_>, flags: u8) -> Option<fs::File> {
    let a_dir = ctx.job_dir(&ctx.a);
    match what % 9 {
        // job.json of job A.
        0 => {
            let kind = r.byte();
            let body = ctx.subst(r.rest());
            plant(
                ctx,
                &a_dir.join("job.json"),
                if kind < 0xf0 { 0 } else { kind },
                &body,
            );
        }
        // A target file.
        1 => {
            let naming = r.byte();
            let kind = r.byte();
            let raw_name = r.piece();
            let body = ctx.subst(r.rest());
            let name = match naming % 4 {
                0 => format!("{}.json", hex(&Sha256::digest(&body))).into_bytes(),
                1 => match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(v) => {
                        let canon = serde_json::to_vec(&v).unwrap_or_default();
                        format!("{}.json", hex(&Sha256::digest(&canon))).into_bytes()
                    }
                    Err(_) => format!("{}.json", hex(&Sha256::digest(&body))).into_bytes(),
                },
                2 => ctx.component(raw_name),
                _ => {
                    // 64 characters from the input, then .json: the length the store expects.
                    let mut n = ctx.component(raw_name);
                    n.resize(64, b'0');
                    n.extend_from_slice(b".json");
                    n
                }
            };
            let dir = a_dir.join("targets");
            let path = dir.join(os(&name));
            plant(ctx, &path, if kind < 0xc0 { 0 } else { kind }, &body);
        }
        // A lease file.
        2 => {
            let epoch = u64::from(r.u32()) % 10_000_000_000;
            ctx.epoch = epoch;
            let prefix = if flags & 0x20 != 0 { "n" } else { "w" };
            let raw_name = r.piece();
            let name = if flags & 0x40 != 0 {
                ctx.component(raw_name)
            } else {
                format!("{prefix}.{}.{epoch:010}", ctx.a).into_bytes()
            };
            let body = ctx.subst(r.rest());
            let path = ctx.root.join("leases").join(os(&name));
            plant(ctx, &path, 0, &body);
            if flags & 0x10 != 0 {
                let claims = if prefix == "n" { "nclaims" } else { "claims" };
                let _ = fs::create_dir_all(
                    a_dir.join(claims).join(format!("{epoch:010}")).join("held"),
                );
            }
            if flags & 0x80 != 0 {
                // Keep it locked (as a live holder on this host would) while the store looks.
                if let Ok(f) = fs::File::open(&path) {
                    if f.try_lock().is_ok() {
                        return Some(f);
                    }
                }
            }
        }
        // The format marker.
        3 => {
            let kind = r.byte();
            let body = r.rest();
            let path = ctx.root.join("jobdir.json");
            if kind >= 0xf8 {
                clear(&path);
            } else {
                plant(ctx, &path, if kind < 0xe0 { 0 } else { kind }, body);
            }
        }
        // An index entry.
        4 => {
            let kind = r.byte();
            let class = ctx.component(r.piece());
            let bucket = ctx.component(r.piece());
            let name = ctx.component(r.rest());
            let index = if flags & 0x20 != 0 {
                "notify"
            } else {
                "pending"
            };
            let path = ctx
                .root
                .join(index)
                .join(os(&class))
                .join(os(&bucket))
                .join(os(&name));
            plant(ctx, &path, if kind < 0xc0 { 0 } else { kind }, b"");
        }
        // A's result.
        5 => {
            let mode = r.byte();
            let body = r.rest();
            let result = a_dir.join("result");
            match mode % 6 {
                0 => {
                    let _ = fs::create_dir_all(&result);
                    let _ = fs::write(result.join("value"), body);
                }
                1 => {
                    clear(&result);
                    let _ = fs::create_dir_all(&result);
                }
                2 => {
                    clear(&result);
                    let _ = fs::create_dir_all(result.join("value"));
                }
                3 => plant(ctx, &result, 0, body),
                4 => {
                    let _ = fs::create_dir_all(&result);
                    plant(ctx, &result.join("value"), 2, b"");
                }
                _ => plant(ctx, &result, 3, b""),
            }
        }
        // A claim epoch directory.
        6 => {
            let mode = r.byte();
            let claims = if flags & 0x20 != 0 {
                "nclaims"
            } else {
                "claims"
            };
            let name = if flags & 0x40 != 0 {
                ctx.component(r.rest())
            } else {
                format!("{:010}", u64::from(r.u32()) % 10_000_000_000).into_bytes()
            };
            let path = a_dir.join(claims).join(os(&name));
            match mode % 6 {
                0 => plant(ctx, &path, 1, b""),
                1 => {
                    plant(ctx, &path, 1, b"");
                    let _ = fs::create_dir(path.join("held"));
                }
                2 => {
                    plant(ctx, &path, 1, b"");
                    let _ = fs::create_dir(path.join("expired"));
                }
                3 => {
                    plant(ctx, &path, 1, b"");
                    let _ = fs::write(path.join("held"), b"");
                }
                4 => plant(ctx, &path, 0, b""),
                _ => plant(ctx, &path, 3, b""),
            }
        }
        // A name under jobs/<shard>/.
        7 => {
            let kind = r.byte();
            let shard = ctx.component(r.take(2));
            let name = ctx.component(r.piece());
            let body = ctx.subst(r.rest());
            let path = ctx.root.join("jobs").join(os(&shard)).join(os(&name));
            match kind % 4 {
                0 => {
                    plant(ctx, &path, 1, b"");
                    let _ = fs::write(path.join("job.json"), &body);
                }
                1 => plant(ctx, &path, 0, &body),
                _ => plant(ctx, &path, kind, b""),
            }
        }
        // A top-level name.
        _ => {
            const KNOWN: [&str; 14] = [
                "jobdir.json",
                "tmp",
                "jobs",
                "pending",
                "notify",
                "leases",
                "quarantine",
                "delayed",
                "instances",
                "allocations",
                "lookups",
                "control",
                "keys",
                "groups",
            ];
            let pick = r.byte();
            let kind = r.byte();
            let name = if usize::from(pick) < KNOWN.len() * 16 {
                KNOWN[usize::from(pick) % KNOWN.len()].as_bytes().to_vec()
            } else {
                ctx.component(r.piece())
            };
            let path = ctx.root.join(os(&name));
            plant(ctx, &path, kind, r.rest());
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader { data };
    let what = r.byte();
    let setup = r.byte();
    let flags = r.byte();
    let priority = i32::from(r.byte() as i8);

    let tmp = tempfile::Builder::new()
        .prefix("jobdir-fuzz.")
        .tempdir_in(base_dir())
        .expect("temporary directory");
    let root = tmp.path().join("store");
    let decoy = tmp.path().join("outside");
    fs::create_dir_all(decoy.join("sub")).unwrap();
    fs::write(decoy.join("keep"), b"keep").unwrap();
    fs::write(decoy.join("sub").join("keep"), b"keep").unwrap();
    // An old mtime, so that any touch shows.
    for f in [decoy.join("keep"), decoy.join("sub").join("keep")] {
        fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|f| {
                f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
            })
            .unwrap();
    }

    // A fresh store in a state chosen by `setup`.
    let store = open(&root).expect("a fresh store opens");
    let a = store
        .create_with(
            &serde_json::json!({"job": "a"}),
            CreateOptions::default().priority(priority),
        )
        .expect("create A");
    if setup & 0x01 != 0 {
        store
            .queue(&a, &serde_json::json!({"to": "a"}))
            .expect("queue on A");
    }
    if setup & 0x04 != 0 {
        // One released work epoch (claims/0000000001/released).
        drop(store.pull_work().expect("pull A"));
    }
    if setup & 0x02 != 0 {
        store.fulfill(&a, b"result of a").expect("fulfil A");
    }
    let b = if setup & 0x08 != 0 {
        let b = store
            .create(&serde_json::json!({"job": "b"}))
            .expect("create B");
        if setup & 0x10 != 0 {
            store.queue(&b, &"b-target").expect("queue on B");
            store.fulfill(&b, b"result of b").expect("fulfil B");
        }
        Some(b)
    } else {
        None
    };
    if setup & 0x20 != 0 {
        // Job A's notification pulled and released (nclaims/0000000001/released).
        drop(store.pull_notification().expect("pull a notification"));
    }
    drop(store);

    let (class, bucket) =
        find_key(&root, &a).unwrap_or_else(|| ("p7fffffff".into(), "000000000".into()));
    let mut ctx = Ctx {
        root: root.clone(),
        decoy: decoy.clone(),
        a,
        b,
        class,
        bucket,
        epoch: 1,
    };
    let lock = corrupt(&mut ctx, what, r, flags);

    if let Ok(store) = open(&root) {
        let _ = store.get(&a);
        if let Some(b) = &b {
            let _ = store.get(b);
        }
        let _ = store.list();
        let _ = store.counts();
        if let Ok(Some(job)) = store.pull_work() {
            let _ = job.request();
            let _ = job.attempt();
        }
        if let Ok(Some(note)) = store.pull_notification() {
            let _ = (note.value(), note.waiting());
        }
        drop(lock);
        let _ = store.recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO));
        let _ = store.get(&a);

        let mut last = String::new();
        let mut drained = false;
        for _ in 0..DRAIN_LIMIT {
            match store.pull_work() {
                Ok(Some(job)) => {
                    last = format!("{} attempt {}", job.id(), job.attempt());
                    if let Err(e) = job.fulfill(b"fuzz") {
                        last.push_str(&format!(": fulfill failed: {e}"));
                    }
                }
                Ok(None) | Err(_) => {
                    drained = true;
                    break;
                }
            }
        }
        assert!(
            drained,
            "pull_work after recover did not terminate; last: {last}"
        );

        let mut drained = false;
        for _ in 0..DRAIN_LIMIT {
            match store.pull_notification() {
                Ok(Some(note)) => {
                    let id = note.id();
                    let waiting = note.waiting().to_vec();
                    last = format!("{id}: {} targets", waiting.len());
                    if let Err(e) = note.done(&waiting) {
                        last.push_str(&format!(": done failed: {e}"));
                    }
                }
                Ok(None) | Err(_) => {
                    drained = true;
                    break;
                }
            }
        }
        assert!(
            drained,
            "pull_notification after recover did not terminate; last: {last}"
        );
    } else {
        drop(lock);
    }

    // Nothing outside the store was touched (through a planted symlink or a path in a file).
    for f in [decoy.join("keep"), decoy.join("sub").join("keep")] {
        assert_eq!(
            fs::read(&f).ok().as_deref(),
            Some(&b"keep"[..]),
            "{} changed or removed",
            f.display()
        );
        let mtime = fs::metadata(&f).and_then(|m| m.modified()).ok();
        assert_eq!(
            mtime,
            Some(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000)),
            "the mtime of {} (outside the store) was changed",
            f.display()
        );
    }
});
