//! Bad input and hostile environments (issue 4 item 5): each case gets a clear error (the right
//! [`Error`] variant, and a message that names the problem), loses nothing, and leaves no
//! partial file visible.
//!
//! Covered: input that cannot be encoded as JSON, oversized requests and targets (the
//! documented 1 MiB default and a configured limit), hostile ids (`../`, NUL, absolute paths),
//! foreign files, truncated and empty files, directories where files should be, symlinks planted
//! in the store (never followed), a giant sparse `job.json`, a newer format version, and file
//! modes (0600/0700, or 0660/0770 with `group_shared`).
//!
//! Root only (each prints `skipped: needs root (...)` and passes otherwise): `ENOSPC` on a tiny
//! tmpfs, inode exhaustion (tmpfs `nr_inodes`), and a read-only store (tmpfs remounted `ro`).
//! Every mount is unmounted by a drop guard, also when a test fails.
//!
//! ```sh
//! cargo test --release --test hostile            # as root for the tmpfs tests
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobdir::{
    Durability, Error, FORMAT_VERSION, JobId, JobState, RecoverOptions, RecoveryReport, Store,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A store without fsync (the cases here are about bad input, not power loss).
fn fast(dir: &Path) -> Store {
    Store::builder(dir)
        .durability(Durability::Fast)
        .open()
        .expect("open store")
}

/// A fresh store in a temporary directory (the store is `<tmp>/store`).
fn new_store() -> (tempfile::TempDir, Store) {
    let t = tempfile::tempdir().unwrap();
    let s = fast(&t.path().join("store"));
    (t, s)
}

/// A second handle on the same store, as another process would open it after the damage.
fn reopen(store: &Store) -> Store {
    fast(store.dir())
}

fn shard(id: &JobId) -> String {
    id.to_string()[34..].to_string()
}

fn job_dir(store: &Store, id: &JobId) -> PathBuf {
    store
        .dir()
        .join("jobs")
        .join(shard(id))
        .join(id.to_string())
}

/// The target file name the format prescribes: SHA-256 of the canonical JSON, then `.json`.
fn target_name(v: &Value) -> String {
    let canon = serde_json::to_vec(v).unwrap();
    let digest = Sha256::digest(&canon);
    let mut s: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    s.push_str(".json");
    s
}

/// The index entry (`<root>/<class>/<bucket>/<name>`) whose name is or starts with `name`.
fn find_entry(root: &Path, name: &str) -> Option<PathBuf> {
    for class in fs::read_dir(root).ok()? {
        let class = class.ok()?.path();
        if !fs::symlink_metadata(&class).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        for bucket in fs::read_dir(&class).ok()? {
            let bucket = bucket.ok()?.path();
            if !fs::symlink_metadata(&bucket).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            for e in fs::read_dir(&bucket).ok()? {
                let e = e.ok()?;
                if e.file_name().to_string_lossy().starts_with(name) {
                    return Some(e.path());
                }
            }
        }
    }
    None
}

fn recover_all(store: &Store) -> RecoveryReport {
    store
        .recover_with(&RecoverOptions::default().temp_grace(Duration::ZERO))
        .expect("recover")
}

fn tmp_names(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.dir().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn listed(store: &Store) -> BTreeSet<JobId> {
    store.list().unwrap().into_iter().map(|s| s.id).collect()
}

fn quarantined_paths(report: &RecoveryReport) -> BTreeSet<PathBuf> {
    report.quarantined.iter().map(|q| q.path.clone()).collect()
}

/// What a path is, without following symlinks.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    File {
        bytes: Vec<u8>,
        mode: u32,
        mtime: (i64, i64),
        ino: u64,
    },
    Link(PathBuf),
}

/// Everything under `root` (not following symlinks): names, kinds, contents, modes, mtimes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mtime = (m.mtime(), m.mtime_nsec());
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(rel, Node::Link(fs::read_link(&p).unwrap()));
            } else if m.is_dir() {
                out.insert(rel, Node::Dir { mode, mtime });
                walk(root, &p, out);
            } else {
                let bytes = fs::read(&p).unwrap();
                out.insert(
                    rel,
                    Node::File {
                        bytes,
                        mode,
                        mtime,
                        ino: m.ino(),
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Asserts an [`Error::Io`] carrying `errno`, on a path under `under`, whose message names the
/// operation, the path and the OS's text for the error.
fn assert_io(err: &Error, errno: i32, under: &Path) {
    match err {
        Error::Io { op, path, source } => {
            // Some layers (tempfile) wrap the OS error with its path: compare the kind then.
            let want = io::Error::from_raw_os_error(errno);
            assert!(
                source.raw_os_error() == Some(errno)
                    || (source.raw_os_error().is_none() && source.kind() == want.kind()),
                "wrong error (want errno {errno}) in: {err}"
            );
            assert!(
                path.starts_with(under),
                "{} is not under {}",
                path.display(),
                under.display()
            );
            let msg = err.to_string();
            let os = want.to_string();
            assert!(msg.contains(op), "{msg:?} does not name the operation");
            assert!(msg.contains(&path.display().to_string()), "{msg:?}");
            assert!(msg.contains(&os), "{msg:?} does not contain {os:?}");
        }
        other => panic!("expected an I/O error (errno {errno}), got {other:?}"),
    }
}

/// Asserts [`Error::Corrupt`] about `file`, with a message that names it and says why.
fn assert_corrupt(err: &Error, file: &Path, why: &str) {
    match err {
        Error::Corrupt { path, reason } => {
            assert_eq!(path, file);
            assert!(reason.contains(why), "reason {reason:?} lacks {why:?}");
            let msg = err.to_string();
            assert!(msg.starts_with("corrupt "), "{msg:?}");
            assert!(msg.contains(&file.display().to_string()), "{msg:?}");
        }
        other => panic!("expected Corrupt for {}, got {other:?}", file.display()),
    }
}

/// Pulls and fulfils until the queue is empty or a pull fails; returns what was fulfilled and
/// the error a pull ended with (a pull reports an error only when nothing else was claimable).
fn drain_work(store: &Store) -> (Vec<JobId>, Option<Error>) {
    let mut done = Vec::new();
    for _ in 0..100 {
        match store.pull_work() {
            Ok(Some(job)) => {
                done.push(job.id());
                job.fulfill(b"ok").unwrap();
            }
            Ok(None) => return (done, None),
            Err(e) => return (done, Some(e)),
        }
    }
    panic!("pull_work never ran dry: {done:?}");
}

/// A file outside every store, and what it looked like.
struct Outside {
    dir: tempfile::TempDir,
    path: PathBuf,
    before: BTreeMap<PathBuf, Node>,
}

impl Outside {
    fn file(bytes: &[u8]) -> Outside {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outside");
        fs::write(&path, bytes).unwrap();
        let before = snapshot(dir.path());
        Outside { dir, path, before }
    }

    /// A directory outside holding `name` (empty).
    fn dir_with(name: &str) -> Outside {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outside");
        fs::create_dir(&path).unwrap();
        fs::write(path.join(name), b"outside entry").unwrap();
        let before = snapshot(dir.path());
        Outside { dir, path, before }
    }

    /// The outside file is untouched and still at its place.
    fn assert_untouched(&self) {
        assert_eq!(
            snapshot(self.dir.path()),
            self.before,
            "the symlink's target outside the store was changed"
        );
    }
}

fn assert_link_to(path: &Path, target: &Path) {
    let m = fs::symlink_metadata(path).unwrap();
    assert!(
        m.file_type().is_symlink(),
        "{} is no longer the link",
        path.display()
    );
    assert_eq!(fs::read_link(path).unwrap(), target);
}

/// The quarantine slot of `rel` in `report`: the moved item is at `now_at`, beside a
/// `reason.json` that names the path and the reason.
fn assert_quarantined(report: &RecoveryReport, rel: &Path, why: &str) -> PathBuf {
    let q = report
        .quarantined
        .iter()
        .find(|q| q.path == rel)
        .unwrap_or_else(|| panic!("{} not quarantined: {report:?}", rel.display()));
    assert!(
        q.reason.contains(why),
        "reason {:?} lacks {why:?}",
        q.reason
    );
    let reason: Value =
        serde_json::from_slice(&fs::read(q.now_at.with_file_name("reason.json")).unwrap()).unwrap();
    assert_eq!(reason["path"], rel.to_string_lossy().as_ref());
    assert_eq!(reason["reason"], q.reason.as_str());
    assert!(
        fs::symlink_metadata(&q.now_at).is_ok(),
        "item missing in quarantine"
    );
    q.now_at.clone()
}

// ---------------------------------------------------------------------------------------------
// Root-only helpers: tmpfs mounts, always unmounted.
// ---------------------------------------------------------------------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _mountpoint: tempfile::TempDir,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

impl Tmpfs {
    /// Mounts a tmpfs with `options`, or prints why the test is skipped and returns `None`.
    fn mount(options: &str, test: &str) -> Option<Tmpfs> {
        if !is_root() {
            println!("skipped: needs root ({test} mounts a tmpfs)");
            return None;
        }
        let mountpoint = tempfile::tempdir().unwrap();
        let path = mountpoint.path().to_path_buf();
        let fstype = CString::new("tmpfs").unwrap();
        let data = CString::new(options).unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                cstr(&path).as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            println!(
                "skipped: cannot mount a tmpfs ({test}): {}",
                io::Error::last_os_error()
            );
            return None;
        }
        Some(Tmpfs {
            path,
            _mountpoint: mountpoint,
        })
    }

    /// Remounts read-only (`true`) or read-write (`false`).
    fn set_read_only(&self, ro: bool) {
        let flags = libc::MS_REMOUNT | if ro { libc::MS_RDONLY } else { 0 };
        // SAFETY: valid target string; null source, type and data are allowed for a remount.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                cstr(&self.path).as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "remount: {}", io::Error::last_os_error());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = cstr(&self.path);
        // SAFETY: valid target string.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            // Still busy (a failing test left something open): detach it lazily.
            // SAFETY: as above.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Fills the filesystem's free space with one file; returns it (truncate it to free space).
fn fill_space(path: &Path) -> File {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    f
}

/// Uses up every free inode with empty files in `dir`; returns them (remove some to free).
fn fill_inodes(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for i in 0..1_000_000 {
        let p = dir.join(format!("inode.{i}"));
        match File::create(&p) {
            Ok(_) => files.push(p),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return files,
            Err(e) => panic!("filling inodes: {e}"),
        }
    }
    panic!("the filesystem never ran out of inodes");
}

// ---------------------------------------------------------------------------------------------
// Invalid input
// ---------------------------------------------------------------------------------------------

/// A value whose serialization fails: the library-level counterpart of invalid JSON.
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refused by the test"))
    }
}

#[test]
fn unencodable_request_or_target_is_refused_and_nothing_is_written() {
    let (_t, store) = new_store();
    let id = store.create(&json!({"good": true})).unwrap();
    let before = snapshot(store.dir());

    let err = store.create(&Unencodable).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Encode {
                what: "request",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("cannot encode request as JSON"), "{msg}");
    assert!(msg.contains("refused by the test"), "{msg}");

    // A map whose keys are not strings has no JSON form either.
    let mut non_string_keys = BTreeMap::new();
    non_string_keys.insert(vec![1u8, 2], 3u8);
    let err = store.create(&non_string_keys).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Encode {
                what: "request",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("key must be a string"), "{err}");

    for err in [
        store.queue(&id, &Unencodable).unwrap_err(),
        store.queue(&id, &non_string_keys).unwrap_err(),
        store.unqueue(&id, &Unencodable).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Encode { what: "target", .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("cannot encode target as JSON"),
            "{err}"
        );
    }

    assert_eq!(
        snapshot(store.dir()),
        before,
        "a refused request changed the store"
    );
    assert_eq!(listed(&store), BTreeSet::from([id]));
}

#[test]
fn oversized_request_is_refused_at_the_documented_one_mib_limit() {
    const MIB: usize = 1 << 20;
    let (_t, store) = new_store();
    // A JSON string of n characters is n + 2 bytes: exactly the limit is accepted.
    let at_limit = store.create(&"x".repeat(MIB - 2)).unwrap();
    assert_eq!(
        store
            .get(&at_limit)
            .unwrap()
            .request
            .as_str()
            .unwrap()
            .len(),
        MIB - 2
    );
    let before = snapshot(store.dir());

    let err = store.create(&"x".repeat(MIB - 1)).unwrap_err();
    match &err {
        Error::TooLarge { what, size, limit } => {
            assert_eq!((*what, *size, *limit), ("request", MIB + 1, MIB));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "request is 1048577 bytes; the limit is 1048576 bytes"
    );

    let err = store.queue(&at_limit, &"t".repeat(MIB)).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TooLarge { what: "target", size, limit: MIB } if *size == MIB + 2
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("target is 1048578 bytes"),
        "{err}"
    );

    assert_eq!(
        snapshot(store.dir()),
        before,
        "a refused request changed the store"
    );
    assert!(tmp_names(&store).is_empty());
}

#[test]
fn configured_request_limit_is_enforced_for_requests_and_targets() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::builder(t.path())
        .durability(Durability::Fast)
        .max_request_bytes(64)
        .open()
        .unwrap();
    let small = store.create(&json!({"k": "v"})).unwrap();
    let before = snapshot(store.dir());
    let err = store.create(&json!({"k": "v".repeat(100)})).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TooLarge {
                what: "request",
                size: 108,
                limit: 64
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("the limit is 64 bytes"), "{err}");
    let err = store.queue(&small, &"t".repeat(63)).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TooLarge {
                what: "target",
                size: 65,
                limit: 64
            }
        ),
        "{err:?}"
    );
    assert_eq!(snapshot(store.dir()), before);
}

#[test]
fn hostile_ids_are_rejected_before_any_path_is_built() {
    let (_t, store) = new_store();
    let id = store.create(&"victim").unwrap();
    let good = id.to_string();
    let before = snapshot(store.dir());
    let long = "../".repeat(5000);
    let hostile: Vec<String> = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "../etc/passwd".into(),
        "../../../../../../etc/shadow".into(),
        format!("../{}", &good[3..]),
        format!("{}/..", &good[..33]),
        format!("jobs/{}/{good}", shard(&id)),
        "/etc/passwd".into(),
        "/".into(),
        format!("/{}", &good[1..]),
        format!("{}\0", &good[..35]),
        format!("{good}\0../x"),
        "a\0b".into(),
        format!("{}/{}", &good[..8], &good[9..]),
        good.to_uppercase(),
        good.replace('-', ""),
        format!(" {}", &good[1..]),
        format!("{}\n", &good[..35]),
        "00000000-0000-4000-8000-000000000000".into(), // a UUID, but v4
        long,
    ];
    for text in &hostile {
        let err = text.parse::<JobId>().unwrap_err();
        match &err {
            Error::InvalidId(shown) => {
                assert!(text.starts_with(shown.as_str()), "{shown:?} vs {text:?}")
            }
            other => panic!("{text:?}: expected InvalidId, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.starts_with("invalid job id "), "{msg}");
        assert!(msg.contains("UUID v7"), "{msg}");
        assert!(!msg.contains('\0'), "raw NUL in the message {msg:?}");
        assert!(
            msg.len() < 300,
            "unbounded message for a long id: {} bytes",
            msg.len()
        );
        // The same text arriving as JSON (say, from a request or a file) is refused too.
        assert!(
            serde_json::from_value::<JobId>(json!(text)).is_err(),
            "{text:?}"
        );
    }
    assert_eq!(snapshot(store.dir()), before);
    assert_eq!(store.get(&good.parse().unwrap()).unwrap().request, "victim");
}

// ---------------------------------------------------------------------------------------------
// Foreign, truncated, empty and misplaced files
// ---------------------------------------------------------------------------------------------

#[test]
fn non_store_directory_or_file_is_refused_and_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("home");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let before = snapshot(t.path());
    let err = Store::open(&dir).unwrap_err();
    match &err {
        Error::NotAStore { path, reason } => {
            assert_eq!(path, &dir);
            assert!(reason.contains("notes.txt"), "{reason}");
        }
        other => panic!("expected NotAStore, got {other:?}"),
    }
    assert!(err.to_string().contains("is not a jobdir store"), "{err}");

    let file = t.path().join("file");
    fs::write(&file, b"not a directory").unwrap();
    let before_file = snapshot(t.path());
    let err = Store::open(&file).unwrap_err();
    assert!(
        matches!(&err, Error::NotAStore { reason, .. } if reason == "not a directory"),
        "{err:?}"
    );
    assert_eq!(snapshot(t.path()), before_file);
    fs::remove_file(&file).unwrap();
    assert_eq!(
        snapshot(t.path()),
        before,
        "a refused open changed the directory"
    );
}

#[test]
fn foreign_files_are_skipped_by_pulls_and_quarantined_by_recover() {
    let (_t, store) = new_store();
    let a = store.create(&"a").unwrap();
    let b = store.create(&"b").unwrap();
    store.queue(&b, &"mailto:b").unwrap();
    let dir = store.dir().to_path_buf();
    let bucket_dir = find_entry(&dir.join("pending"), &b.to_string())
        .unwrap()
        .parent()
        .unwrap()
        .strip_prefix(&dir)
        .unwrap()
        .to_path_buf();
    let bucket = bucket_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let a_rel = job_dir(&store, &a)
        .strip_prefix(&dir)
        .unwrap()
        .to_path_buf();

    // (relative path, is a directory, expected reason)
    let planted: Vec<(PathBuf, bool, &str)> = vec![
        ("foreign.txt".into(), false, "not part of the store layout"),
        ("jobs/zz".into(), true, "not a shard directory"),
        (
            "jobs/00/not-an-id".into(),
            false,
            "not a job id of this shard",
        ),
        (a_rel.join("extra.bin"), false, "not part of a job"),
        (a_rel.join("claims/garbage"), false, "not a claim epoch"),
        (a_rel.join("targets/junk.json"), false, "not a target file"),
        ("pending/junk".into(), false, "not an index entry name"),
        (
            bucket_dir.join("not-an-id"),
            false,
            "not an index entry name",
        ),
        (
            PathBuf::from(format!("notify/p7fffffff/{bucket}/junk")),
            false,
            "not an index entry name",
        ),
        ("leases/junk".into(), false, "not a lease file name"),
    ];
    for (i, (rel, is_dir, _)) in planted.iter().enumerate() {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        if *is_dir {
            fs::create_dir(&p).unwrap();
            fs::write(p.join("inside"), format!("foreign {i}")).unwrap();
        } else {
            fs::write(&p, format!("foreign {i}")).unwrap();
        }
    }
    fs::write(dir.join("tmp/someones-temp"), b"young").unwrap();

    // Pulls (in a new handle, as another process) skip everything foreign.
    let s2 = reopen(&store);
    let (done, err) = drain_work(&s2);
    assert!(err.is_none(), "a foreign file made a pull fail: {err:?}");
    assert_eq!(
        done.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([a, b])
    );
    let note = s2.pull_notification().unwrap().expect("b's notification");
    assert_eq!(note.waiting(), &[json!("mailto:b")]);
    note.done(&[json!("mailto:b")]).unwrap();
    assert!(s2.pull_notification().unwrap().is_none());
    assert_eq!(listed(&s2), BTreeSet::from([a, b]));
    s2.counts().unwrap();

    // A default recover keeps a young temporary; quarantines every foreign item, intact.
    let report = s2.recover().unwrap();
    assert_eq!(tmp_names(&s2), vec!["someones-temp".to_string()]);
    assert_eq!(
        quarantined_paths(&report),
        planted.iter().map(|(p, _, _)| p.clone()).collect(),
        "{report:#?}"
    );
    for (i, (rel, is_dir, why)) in planted.iter().enumerate() {
        let now_at = assert_quarantined(&report, rel, why);
        let content = if *is_dir {
            fs::read(now_at.join("inside")).unwrap()
        } else {
            fs::read(&now_at).unwrap()
        };
        assert_eq!(
            content,
            format!("foreign {i}").as_bytes(),
            "{}",
            rel.display()
        );
        assert!(!dir.join(rel).exists());
    }
    assert_eq!(s2.counts().unwrap().quarantined, planted.len() as u64);

    // Nothing lost; a second recover finds nothing; a zero grace sweeps the temporary.
    assert_eq!(s2.result(&a).unwrap().unwrap(), b"ok");
    assert_eq!(s2.result(&b).unwrap().unwrap(), b"ok");
    let again = recover_all(&s2);
    assert!(again.quarantined.is_empty(), "{again:#?}");
    assert_eq!(again.temp_removed, 1);
    assert!(tmp_names(&s2).is_empty());
}

#[test]
fn truncated_empty_or_mismatched_job_json_is_corrupt_and_quarantined_intact() {
    let (_t, store) = new_store();
    let good = store.create(&json!({"n": "good"})).unwrap();
    let truncated = store.create(&json!({"n": "truncated"})).unwrap();
    let empty = store.create(&json!({"n": "empty"})).unwrap();
    let other_id = store.create(&json!({"n": "other"})).unwrap();
    let dotdot = store.create(&json!({"n": "dotdot"})).unwrap();

    let file = |id: &JobId| job_dir(&store, id).join("job.json");
    let original = fs::read(file(&truncated)).unwrap();
    let cut = original[..original.len() / 2].to_vec();
    fs::write(file(&truncated), &cut).unwrap();
    fs::write(file(&empty), b"").unwrap();
    let foreign_record = fs::read(file(&good)).unwrap(); // records `good`'s id
    fs::write(file(&other_id), &foreign_record).unwrap();
    let mut rec: Value = serde_json::from_slice(&fs::read(file(&dotdot)).unwrap()).unwrap();
    rec["id"] = json!("../../../etc");
    let hostile_record = serde_json::to_vec(&rec).unwrap();
    fs::write(file(&dotdot), &hostile_record).unwrap();

    for (id, why) in [
        (truncated, "not a job record"),
        (empty, "not a job record"),
        (other_id, "records id"),
        (dotdot, "invalid job id"),
    ] {
        assert_corrupt(&store.get(&id).unwrap_err(), &file(&id), why);
        assert!(matches!(store.queue(&id, &"t"), Err(Error::Corrupt { .. })));
        assert!(matches!(
            store.fulfill(&id, b"x"),
            Err(Error::Corrupt { .. })
        ));
    }

    // A pull skips the corrupt jobs and quarantines them whole; the good one is done.
    let s2 = reopen(&store);
    let (done, err) = drain_work(&s2);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(done, vec![good]);
    assert_eq!(listed(&s2), BTreeSet::from([good]));
    assert_eq!(s2.counts().unwrap().quarantined, 4);
    assert!(matches!(s2.get(&truncated), Err(Error::NotFound(_))));

    // The bytes are kept, not repaired or deleted.
    let mut kept = BTreeMap::new();
    for slot in fs::read_dir(s2.dir().join("quarantine")).unwrap() {
        let item = slot.unwrap().path().join("item");
        assert!(
            !fs::symlink_metadata(&item)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        kept.insert(fs::read(item.join("job.json")).unwrap(), item);
    }
    for bytes in [&cut, &Vec::new(), &foreign_record, &hostile_record] {
        assert!(kept.contains_key(bytes), "quarantine lost a job.json");
    }
    let report = recover_all(&s2);
    assert!(report.quarantined.is_empty(), "{report:#?}");
    assert!(tmp_names(&s2).is_empty());
}

#[test]
fn recover_quarantines_a_corrupt_job_that_no_pull_met() {
    let (_t, store) = new_store();
    let id = store.create(&"x").unwrap();
    let f = job_dir(&store, &id).join("job.json");
    let bytes = fs::read(&f).unwrap();
    fs::write(&f, &bytes[..bytes.len() - 3]).unwrap();
    let report = recover_all(&store);
    let rel = job_dir(&store, &id)
        .strip_prefix(store.dir())
        .unwrap()
        .to_path_buf();
    let now_at = assert_quarantined(&report, &rel, "unreadable job");
    assert_eq!(
        fs::read(now_at.join("job.json")).unwrap(),
        &bytes[..bytes.len() - 3]
    );
    assert!(find_entry(&store.dir().join("pending"), &id.to_string()).is_none());
    assert!(store.pull_work().unwrap().is_none());
}

#[test]
fn giant_job_json_is_refused_without_being_read() {
    let (_t, store) = new_store();
    let good = store.create(&"good").unwrap();
    let giant = store.create(&"giant").unwrap();
    let f = job_dir(&store, &giant).join("job.json");
    fs::remove_file(&f).unwrap();
    File::create(&f).unwrap().set_len((1 << 30) + 1).unwrap(); // sparse: no space used
    assert_corrupt(
        &store.get(&giant).unwrap_err(),
        &f,
        "1073741825 bytes is over the 1073741824-byte limit",
    );
    let s2 = reopen(&store);
    let (done, err) = drain_work(&s2);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(done, vec![good]);
    assert_eq!(s2.counts().unwrap().quarantined, 1);
}

#[test]
fn bad_marker_is_refused_and_nothing_changes() {
    let (_t, store) = new_store();
    let id = store.create(&"kept").unwrap();
    let dir = store.dir().to_path_buf();
    drop(store);
    let marker = dir.join("jobdir.json");
    let original = fs::read(&marker).unwrap();
    let outside = Outside::file(&original);
    let padded = format!(
        "{{\"format\":\"jobdir\",\"version\":1,\"pad\":\"{}\"}}",
        " ".repeat(100 * 1024)
    );

    type Damage = Box<dyn Fn(&Path)>;
    type Check = fn(&Error) -> bool;
    let cases: Vec<(&str, Damage, Check, &str)> = vec![
        (
            "truncated",
            Box::new(|m| fs::write(m, br#"{"format":"jobdir","vers"#).unwrap()),
            |e| matches!(e, Error::NotAStore { .. }),
            "is not JSON",
        ),
        (
            "empty",
            Box::new(|m| fs::write(m, b"").unwrap()),
            |e| matches!(e, Error::NotAStore { .. }),
            "is not JSON",
        ),
        (
            "an array",
            Box::new(|m| fs::write(m, b"[1]").unwrap()),
            |e| matches!(e, Error::NotAStore { .. }),
            "does not say \"format\": \"jobdir\"",
        ),
        (
            "another format",
            Box::new(|m| fs::write(m, br#"{"format":"other","version":1}"#).unwrap()),
            |e| matches!(e, Error::NotAStore { .. }),
            "does not say \"format\": \"jobdir\"",
        ),
        (
            "no version",
            Box::new(|m| fs::write(m, br#"{"format":"jobdir"}"#).unwrap()),
            |e| matches!(e, Error::NotAStore { .. }),
            "has no version",
        ),
        (
            "over 64 KiB",
            Box::new(move |m| fs::write(m, padded.as_bytes()).unwrap()),
            |e| matches!(e, Error::Corrupt { .. }),
            "over the 65536-byte limit",
        ),
        (
            "a directory",
            Box::new(|m| {
                fs::remove_file(m).unwrap();
                fs::create_dir(m).unwrap();
            }),
            |e| matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EISDIR)),
            "Is a directory",
        ),
        (
            "a symlink to a valid marker",
            Box::new({
                let target = outside.path.clone();
                move |m| {
                    fs::remove_file(m).unwrap();
                    symlink(&target, m).unwrap();
                }
            }),
            |e| matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
            "symbolic links",
        ),
    ];
    for (what, damage, check, says) in cases {
        damage(&marker);
        let before = snapshot(&dir);
        let err = Store::open(&dir).unwrap_err();
        assert!(check(&err), "marker {what}: unexpected {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(says), "marker {what}: {msg:?} lacks {says:?}");
        assert!(
            msg.contains("jobdir.json"),
            "marker {what}: {msg:?} does not name it"
        );
        assert_eq!(
            snapshot(&dir),
            before,
            "marker {what}: open changed the store"
        );
        // Restore for the next case.
        if fs::symlink_metadata(&marker).unwrap().is_dir() {
            fs::remove_dir(&marker).unwrap();
        } else {
            fs::remove_file(&marker).unwrap();
        }
        fs::write(&marker, &original).unwrap();
    }
    outside.assert_untouched();
    assert_eq!(fast(&dir).get(&id).unwrap().request, "kept");
}

#[test]
fn newer_format_version_is_refused_and_nothing_changes() {
    assert_eq!(FORMAT_VERSION, 1);
    let (_t, store) = new_store();
    let a = store.create(&"a").unwrap();
    store.queue(&a, &"t").unwrap();
    let b = store.create(&"b").unwrap();
    store.fulfill(&b, b"done").unwrap();
    let dir = store.dir().to_path_buf();
    drop(store);
    fs::write(
        dir.join("jobdir.json"),
        br#"{"format":"jobdir","version":2}"#,
    )
    .unwrap();
    let before = snapshot(&dir);
    for _ in 0..2 {
        let err = Store::builder(&dir).open().unwrap_err();
        match &err {
            Error::FormatVersion {
                path,
                found,
                supported,
            } => {
                assert_eq!((path, *found, *supported), (&dir, 2, 1));
            }
            other => panic!("expected FormatVersion, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("format version 2"), "{msg}");
        assert!(msg.contains("reads version 1"), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }
    assert_eq!(snapshot(&dir), before, "opening a newer store changed it");

    // A directory holding only a newer marker gains nothing either (no layout is created).
    let t = tempfile::tempdir().unwrap();
    fs::write(
        t.path().join("jobdir.json"),
        br#"{"format":"jobdir","version":7}"#,
    )
    .unwrap();
    let before = snapshot(t.path());
    assert!(matches!(
        Store::open(t.path()),
        Err(Error::FormatVersion { found: 7, .. })
    ));
    assert_eq!(snapshot(t.path()), before);
}

#[test]
fn job_json_as_a_directory_gives_a_clear_error_and_is_quarantined() {
    let (_t, store) = new_store();
    let good = store.create(&"good").unwrap();
    let bad = store.create(&"bad").unwrap();
    let f = job_dir(&store, &bad).join("job.json");
    fs::remove_file(&f).unwrap();
    fs::create_dir(&f).unwrap();
    fs::write(f.join("inside"), b"keep me").unwrap();

    let err = store.get(&bad).unwrap_err();
    assert_io(&err, libc::EISDIR, &f);
    assert!(err.to_string().contains("job.json"));

    // Pulls still deliver the good job; the bad one is reported (FORMAT.md §6.11), not lost.
    let s2 = reopen(&store);
    let (done, err) = drain_work(&s2);
    assert_eq!(done, vec![good]);
    if let Some(e) = err {
        assert_io(&e, libc::EISDIR, &f);
    }
    assert!(listed(&s2).contains(&bad));

    let report = recover_all(&s2);
    let rel = job_dir(&s2, &bad)
        .strip_prefix(s2.dir())
        .unwrap()
        .to_path_buf();
    let now_at = assert_quarantined(&report, &rel, "unreadable job");
    assert_eq!(
        fs::read(now_at.join("job.json/inside")).unwrap(),
        b"keep me"
    );
    assert!(s2.pull_work().unwrap().is_none());
    assert!(tmp_names(&s2).is_empty());
}

#[test]
fn target_file_as_a_directory_or_empty_is_never_delivered_and_is_quarantined() {
    let (_t, store) = new_store();
    let id = store.create(&"j").unwrap();
    store.queue(&id, &"real").unwrap();
    let targets = job_dir(&store, &id).join("targets");
    let as_dir = targets.join(target_name(&json!("dir")));
    fs::create_dir(&as_dir).unwrap();
    let empty = targets.join(target_name(&json!("empty")));
    fs::write(&empty, b"").unwrap();
    let truncated = targets.join(target_name(&json!({"url": "http://x"})));
    fs::write(&truncated, br#"{"url": "ht"#).unwrap();

    // An empty or truncated target is skipped; a directory cannot be read: a clear error.
    match store.get(&id) {
        Ok(info) => assert_eq!(info.waiting, vec![json!("real")]),
        Err(e) => assert_io(&e, libc::EISDIR, &as_dir),
    }
    store.fulfill(&id, b"v").unwrap();
    let s2 = reopen(&store);
    match s2.pull_notification() {
        Ok(Some(note)) => assert_eq!(note.waiting(), &[json!("real")]),
        Ok(None) => panic!("the real target was not offered"),
        Err(e) => assert_io(&e, libc::EISDIR, &as_dir),
    }

    let report = recover_all(&s2);
    for p in [&as_dir, &empty, &truncated] {
        let rel = p.strip_prefix(s2.dir()).unwrap();
        assert_quarantined(&report, rel, "not a target file");
    }
    assert_eq!(report.quarantined.len(), 3);
    // A pull that failed dropped the entry from its frontier until the next poll interval.
    let note = s2
        .pull_notification_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("notification");
    assert_eq!(note.waiting(), &[json!("real")]);
    assert_eq!(note.value(), b"v");
    note.done(&[json!("real")]).unwrap();
    assert!(s2.pull_notification().unwrap().is_none());
}

#[test]
fn index_entry_as_a_directory_is_skipped_and_quarantined() {
    let (_t, store) = new_store();
    let id = store.create(&"j").unwrap();
    let entry = find_entry(&store.dir().join("pending"), &id.to_string()).unwrap();
    fs::remove_file(&entry).unwrap();
    fs::create_dir(&entry).unwrap();
    fs::write(entry.join("inside"), b"keep").unwrap();

    let report = recover_all(&store);
    let rel = entry.strip_prefix(store.dir()).unwrap();
    let now_at = assert_quarantined(&report, rel, "index entries must be plain files");
    assert_eq!(fs::read(now_at.join("inside")).unwrap(), b"keep");
    // The job is re-indexed from the job itself and can be pulled.
    assert!(fs::symlink_metadata(&entry).unwrap().is_file());
    let job = store.pull_work().unwrap().expect("re-indexed job");
    assert_eq!(job.id(), id);
    job.fulfill(b"done").unwrap();
}

#[test]
fn fulfil_of_a_job_whose_index_entry_is_a_directory_reports_success() {
    let (_t, store) = new_store();
    let id = store.create(&"j").unwrap();
    let entry = find_entry(&store.dir().join("pending"), &id.to_string()).unwrap();
    fs::remove_file(&entry).unwrap();
    fs::create_dir(&entry).unwrap();
    let s2 = reopen(&store);
    let job = s2.pull_work().unwrap().expect("the job is still claimable");
    let res = job.fulfill(b"done");
    // The result is committed either way; the call must not report a failure for it.
    assert_eq!(s2.result(&id).unwrap().unwrap(), b"done");
    res.unwrap();
}

#[test]
fn empty_lease_file_delays_a_job_by_at_most_a_lease() {
    let (_t, store) = new_store();
    let id = store.create(&"j").unwrap();
    fs::write(store.dir().join(format!("leases/w.{id}.0000000001")), b"").unwrap();
    let s2 = Store::builder(store.dir())
        .durability(Durability::Fast)
        .lease(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(50))
        .open()
        .unwrap();
    let start = Instant::now();
    let job = s2
        .pull_work_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("the job behind an empty lease file was never pulled");
    assert_eq!(job.id(), id);
    assert!(start.elapsed() < Duration::from_secs(5));
    job.fulfill(b"ok").unwrap();
    assert!(recover_all(&s2).quarantined.is_empty());
}

#[test]
fn lease_file_as_a_directory_does_not_stall_pulls() {
    let (_t, store) = new_store();
    let blocked = store.create(&"blocked").unwrap();
    let lease = store.dir().join(format!("leases/w.{blocked}.0000000001"));
    fs::create_dir(&lease).unwrap();
    fs::write(lease.join("inside"), b"keep").unwrap();
    let s2 = Store::builder(store.dir())
        .durability(Durability::Fast)
        .lease(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(20))
        .open()
        .unwrap();
    // Keep pulling past a lease length while new jobs arrive: none may fail.
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        let id = s2.create(&"fresh").unwrap();
        let mut got = None;
        for _ in 0..3 {
            match s2.pull_work() {
                Ok(Some(job)) if job.id() == id => {
                    got = Some(job.id());
                    job.fulfill(b"ok").unwrap();
                    break;
                }
                Ok(Some(job)) => job.fulfill(b"ok").unwrap(),
                Ok(None) => {}
                Err(e) => panic!("a directory in leases/ made a pull fail: {e}"),
            }
        }
        assert_eq!(got, Some(id));
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = s2.recover().unwrap();
    let rel = lease.strip_prefix(s2.dir()).unwrap();
    let now_at = assert_quarantined(&report, rel, "");
    assert_eq!(fs::read(now_at.join("inside")).unwrap(), b"keep");
}

#[test]
fn result_value_as_a_directory_gives_a_clear_error() {
    let (_t, store) = new_store();
    let id = store.create(&"j").unwrap();
    store.queue(&id, &"t").unwrap();
    store.fulfill(&id, b"v").unwrap();
    let value = job_dir(&store, &id).join("result/value");
    fs::remove_file(&value).unwrap();
    fs::create_dir(&value).unwrap();
    assert_io(&store.result(&id).unwrap_err(), libc::EISDIR, &value);
    assert_io(&store.get(&id).unwrap_err(), libc::EISDIR, &value);
    assert_io(
        &store.wait(&id, Duration::from_millis(10)).unwrap_err(),
        libc::EISDIR,
        &value,
    );
    // The notification is not delivered with a wrong value; other notifications still flow.
    let other = store.create(&"other").unwrap();
    store.queue(&other, &"t2").unwrap();
    store.fulfill(&other, b"v2").unwrap();
    let s2 = reopen(&store);
    let note = s2
        .pull_notification()
        .unwrap()
        .expect("the other notification");
    assert_eq!(note.id(), other);
    note.done(&[json!("t2")]).unwrap();
    match s2.pull_notification() {
        Ok(None) => {}
        Err(e) => assert_io(&e, libc::EISDIR, &value),
        Ok(Some(n)) => panic!("delivered a notification without a readable value: {n:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Symlinks planted in the store: never followed
// ---------------------------------------------------------------------------------------------

#[test]
fn symlinked_job_json_is_never_followed() {
    let (_t, store) = new_store();
    let good = store.create(&"good").unwrap();
    let x = store.create(&json!({"secret": false})).unwrap();
    let f = job_dir(&store, &x).join("job.json");
    // The link points at a valid record of this very job: following it would "work".
    let outside = Outside::file(&fs::read(&f).unwrap());
    fs::remove_file(&f).unwrap();
    symlink(&outside.path, &f).unwrap();

    let err = store.get(&x).unwrap_err();
    assert_io(&err, libc::ELOOP, &f);
    assert!(err.to_string().contains("symbolic links"), "{err}");
    assert!(store.queue(&x, &"t").is_err());
    assert!(store.fulfill(&x, b"v").is_err());
    assert_eq!(store.result(&x).unwrap(), None);

    let s2 = reopen(&store);
    let (done, err) = drain_work(&s2);
    assert_eq!(done, vec![good], "a pull followed the symlinked job.json");
    if let Some(e) = err {
        assert_io(&e, libc::ELOOP, &f);
    }

    let report = recover_all(&s2);
    let rel = job_dir(&s2, &x)
        .strip_prefix(s2.dir())
        .unwrap()
        .to_path_buf();
    let now_at = assert_quarantined(&report, &rel, "unreadable job");
    assert_link_to(&now_at.join("job.json"), &outside.path);
    outside.assert_untouched();
    assert!(s2.pull_work().unwrap().is_none());
}

#[test]
fn symlinked_index_entries_are_never_followed() {
    let (_t, store) = new_store();
    let p = store.create(&"p").unwrap();
    let q = store.create(&"q").unwrap();
    let pending = store.dir().join("pending");
    let outside = Outside::file(b"outside file");
    let outside_dir = Outside::dir_with(&JobId::generate().to_string());

    // p's entry becomes a link; a link for a job that does not exist; a linked bucket.
    let p_entry = find_entry(&pending, &p.to_string()).unwrap();
    fs::remove_file(&p_entry).unwrap();
    symlink(&outside.path, &p_entry).unwrap();
    let ghost = p_entry.with_file_name(JobId::generate().to_string());
    symlink(&outside.path, &ghost).unwrap();
    let class = p_entry.parent().unwrap().parent().unwrap().to_path_buf();
    let linked_bucket = class.join("000000000");
    symlink(&outside_dir.path, &linked_bucket).unwrap();
    let linked_class = pending.join("p00000000");
    symlink(&outside_dir.path, &linked_class).unwrap();

    let s2 = reopen(&store);
    let (done, err) = drain_work(&s2);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        done.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([p, q])
    );
    outside.assert_untouched();
    outside_dir.assert_untouched();
    // Pulls unlink the links themselves (never their targets) once their job is done or gone.
    assert!(fs::symlink_metadata(&p_entry).is_err());
    assert!(fs::symlink_metadata(&ghost).is_err());
    s2.counts().unwrap();

    // Recover quarantines the linked directories (and a link as the entry of a pending job),
    // and indexes the job again from the job itself.
    let r = s2.create(&"r").unwrap();
    let r_entry = find_entry(&pending, &r.to_string()).unwrap();
    fs::remove_file(&r_entry).unwrap();
    symlink(&outside.path, &r_entry).unwrap();
    let report = recover_all(&s2);
    let rel = |p: &Path| p.strip_prefix(s2.dir()).unwrap().to_path_buf();
    assert_link_to(
        &assert_quarantined(&report, &rel(&r_entry), "plain files"),
        &outside.path,
    );
    assert_link_to(
        &assert_quarantined(&report, &rel(&linked_bucket), "not an index entry name"),
        &outside_dir.path,
    );
    assert_link_to(
        &assert_quarantined(&report, &rel(&linked_class), "not an index entry name"),
        &outside_dir.path,
    );
    assert_eq!(report.quarantined.len(), 3, "{report:#?}");
    assert!(fs::symlink_metadata(&r_entry).unwrap().is_file());
    assert_eq!(s2.pull_work().unwrap().unwrap().id(), r);
    outside.assert_untouched();
    outside_dir.assert_untouched();
}

#[test]
fn symlinked_target_file_is_never_followed() {
    let (_t, store) = new_store();
    let id = store.create(&"j").unwrap();
    store.queue(&id, &"real").unwrap();
    let targets = job_dir(&store, &id).join("targets");
    // The link's name is the hash of its target's content: only O_NOFOLLOW stops it.
    let evil = json!("evil");
    let link = targets.join(target_name(&evil));
    let outside = Outside::file(&serde_json::to_vec(&evil).unwrap());
    symlink(&outside.path, &link).unwrap();

    match store.get(&id) {
        Ok(info) => assert_eq!(info.waiting, vec![json!("real")]),
        Err(e) => assert_io(&e, libc::ELOOP, &link),
    }
    store.fulfill(&id, b"v").unwrap();
    let s2 = reopen(&store);
    match s2.pull_notification() {
        Ok(Some(note)) => assert_eq!(note.waiting(), &[json!("real")]),
        Ok(None) => panic!("the real target was not offered"),
        Err(e) => assert_io(&e, libc::ELOOP, &link),
    }
    outside.assert_untouched();

    // Queueing the same target replaces the link (never writes through it); unqueue unlinks.
    s2.queue(&id, &evil).unwrap();
    assert!(fs::symlink_metadata(&link).unwrap().is_file());
    outside.assert_untouched();
    fs::remove_file(&link).unwrap();
    symlink(&outside.path, &link).unwrap();
    s2.unqueue(&id, &evil).unwrap();
    assert!(fs::symlink_metadata(&link).is_err());
    outside.assert_untouched();

    // Recover quarantines the link itself.
    symlink(&outside.path, &link).unwrap();
    let report = recover_all(&s2);
    let rel = link.strip_prefix(s2.dir()).unwrap();
    assert_link_to(
        &assert_quarantined(&report, rel, "not a target file"),
        &outside.path,
    );
    outside.assert_untouched();
    let s3 = reopen(&s2);
    let note = s3.pull_notification().unwrap().expect("notification");
    assert_eq!(note.waiting(), &[json!("real")]);
    note.done(&[json!("real")]).unwrap();
}

#[test]
fn symlinked_lease_file_is_never_followed_and_does_not_stall_pulls() {
    let (_t, store) = new_store();
    let blocked = store.create(&"blocked").unwrap();
    let good = store.create(&"good").unwrap();
    let link = store.dir().join(format!("leases/w.{blocked}.0000000001"));
    let outside = Outside::file(b"outside lease");
    symlink(&outside.path, &link).unwrap();

    let s2 = reopen(&store);
    let mut done = Vec::new();
    for _ in 0..5 {
        match s2.pull_work() {
            Ok(Some(job)) => {
                done.push(job.id());
                job.fulfill(b"ok").unwrap();
            }
            Ok(None) => break,
            Err(e) => panic!("a symlink in leases/ made a pull fail: {e}"),
        }
    }
    assert!(done.contains(&good), "{done:?}");
    outside.assert_untouched();

    let report = s2.recover().unwrap();
    let rel = link.strip_prefix(s2.dir()).unwrap();
    assert_link_to(&assert_quarantined(&report, rel, ""), &outside.path);
    outside.assert_untouched();
    let (rest, err) = drain_work(&s2);
    assert!(err.is_none(), "{err:?}");
    assert!(done.contains(&blocked) || rest.contains(&blocked));
}

#[test]
fn symlinked_shard_directory_is_never_followed() {
    let (_t, store) = new_store();
    let j = store.create(&"behind the link").unwrap();
    let sh = shard(&j);
    let shard_dir = store.dir().join("jobs").join(&sh);
    let outside_dir = tempfile::tempdir().unwrap();
    let moved = outside_dir.path().join(&sh);
    fs::rename(&shard_dir, &moved).unwrap();
    symlink(&moved, &shard_dir).unwrap();
    let before = snapshot(outside_dir.path());

    let s2 = reopen(&store);
    assert!(
        s2.get(&j).is_err(),
        "get read a job through a symlinked shard"
    );
    assert!(!listed(&s2).contains(&j), "list followed a symlinked shard");
    let (done, _) = drain_work(&s2);
    assert!(!done.contains(&j), "a pull followed a symlinked shard");
    // New jobs never land behind the link.
    for _ in 0..1500 {
        let _ = s2.create(&"new");
    }
    assert_eq!(
        snapshot(outside_dir.path()),
        before,
        "written through a symlinked shard"
    );

    let report = recover_all(&s2);
    let rel = PathBuf::from("jobs").join(&sh);
    assert_link_to(
        &assert_quarantined(&report, &rel, "not a shard directory"),
        &moved,
    );
    assert_eq!(snapshot(outside_dir.path()), before);
}

#[test]
fn recover_recreates_a_quarantined_shard() {
    let (_t, store) = new_store();
    let shard_dir = store.dir().join("jobs/a7");
    fs::remove_dir(&shard_dir).unwrap();
    fs::write(&shard_dir, b"a file where a shard should be").unwrap();
    let report = recover_all(&store);
    assert_quarantined(&report, Path::new("jobs/a7"), "not a shard directory");
    assert!(
        fs::symlink_metadata(&shard_dir).is_ok_and(|m| m.is_dir()),
        "recover left the shard missing"
    );
    // And creation in that shard works (ids are random in their last byte).
    for _ in 0..5000 {
        let id = store.create(&"x").unwrap();
        if shard(&id) == "a7" {
            return;
        }
    }
    panic!("no id fell in shard a7 in 5000 tries");
}

#[test]
fn symlinked_top_level_directory_is_refused() {
    let (_t, store) = new_store();
    let dir = store.dir().to_path_buf();
    drop(store);
    let outside_dir = tempfile::tempdir().unwrap();
    let moved = outside_dir.path().join("pending");
    fs::rename(dir.join("pending"), &moved).unwrap();
    symlink(&moved, dir.join("pending")).unwrap();
    let before = snapshot(outside_dir.path());
    match Store::builder(&dir).durability(Durability::Fast).open() {
        Err(e) => assert!(e.to_string().contains("pending"), "{e}"),
        Ok(s) => {
            let _ = s.create(&"x");
            assert_eq!(
                snapshot(outside_dir.path()),
                before,
                "written through a symlinked pending/"
            );
            let err = s.recover().unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        }
    }
}

#[test]
fn recover_refuses_a_symlinked_top_level_directory_clearly() {
    let (_t, store) = new_store();
    let outside_dir = tempfile::tempdir().unwrap();
    let moved = outside_dir.path().join("leases");
    fs::rename(store.dir().join("leases"), &moved).unwrap();
    symlink(&moved, store.dir().join("leases")).unwrap();
    let err = store.recover().unwrap_err();
    assert_corrupt(
        &err,
        &store.dir().join("leases"),
        "must be a directory (not a file or symlink)",
    );
    assert_link_to(&store.dir().join("leases"), &moved);
}

// ---------------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------------

/// umask is per process: the tests that set it run one at a time.
static UMASK: Mutex<()> = Mutex::new(());

struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        // SAFETY: umask has no preconditions.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// Makes one of every kind of file and directory the store writes and checks their modes.
fn check_modes(group_shared: bool, umask: libc::mode_t) {
    let _serial = UMASK.lock().unwrap_or_else(|e| e.into_inner());
    let _umask = Umask::set(umask);
    let (file, dir) = if group_shared {
        (0o660, 0o770)
    } else {
        (0o600, 0o700)
    };
    let check = |p: &Path, want: u32, what: &str| {
        assert_eq!(
            mode_of(p),
            want,
            "{what} {} has mode {:o} (group_shared {group_shared}, umask {umask:03o})",
            p.display(),
            mode_of(p)
        );
    };
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("store");
    let store = Store::builder(&root)
        .durability(Durability::Fast)
        .group_shared(group_shared)
        .open()
        .unwrap();
    check(&root, dir, "store directory");
    check(&root.join("jobdir.json"), file, "marker");
    for d in [
        "tmp",
        "jobs",
        "pending",
        "notify",
        "leases",
        "quarantine",
        "jobs/00",
        "jobs/ff",
    ] {
        check(&root.join(d), dir, "layout directory");
    }

    // A pending job: its directory, record and index entry.
    let pending = store.create(&"pending").unwrap();
    check(&job_dir(&store, &pending), dir, "job directory");
    check(
        &job_dir(&store, &pending).join("job.json"),
        file,
        "job.json",
    );
    let entry = find_entry(&root.join("pending"), &pending.to_string()).unwrap();
    check(&entry, file, "index entry");
    check(entry.parent().unwrap(), dir, "bucket directory");
    check(
        entry.parent().unwrap().parent().unwrap(),
        dir,
        "class directory",
    );

    // A job with a target, held under a lease (lease file, claim), fulfilled through it.
    let id = store
        .create_with(&"held", jobdir::CreateOptions::default().priority(1))
        .unwrap();
    store.queue(&id, &"target").unwrap();
    let targets = job_dir(&store, &id).join("targets");
    check(&targets, dir, "targets directory");
    check(&targets.join(target_name(&json!("target"))), file, "target");
    let job = store.pull_work().unwrap().unwrap();
    assert_eq!(job.id(), id);
    check(
        &root.join(format!("leases/w.{id}.0000000001")),
        file,
        "lease file",
    );
    let claim = job_dir(&store, &id).join("claims/0000000001");
    check(&claim, dir, "claim epoch");
    check(&claim.join("held"), dir, "held");
    job.fulfill(b"value").unwrap();
    check(&job_dir(&store, &id).join("result"), dir, "result (leased)");
    check(
        &job_dir(&store, &id).join("result/value"),
        file,
        "value (leased)",
    );

    // A result written without a lease.
    store.fulfill(&pending, b"value").unwrap();
    check(&job_dir(&store, &pending).join("result"), dir, "result");
    check(
        &job_dir(&store, &pending).join("result/value"),
        file,
        "value",
    );

    // A notification: its index entry, lease file and claim.
    let nentry = find_entry(&root.join("notify"), &id.to_string()).unwrap();
    check(&nentry, file, "notification index entry");
    let note = store.pull_notification().unwrap().unwrap();
    check(
        &root.join(format!("leases/n.{id}.0000000001")),
        file,
        "notification lease",
    );
    check(
        &job_dir(&store, &id).join("nclaims/0000000001/held"),
        dir,
        "notification held",
    );
    note.done(&[]).unwrap();

    // A quarantine slot and its reason.
    fs::write(root.join("foreign"), b"x").unwrap();
    let report = store.recover().unwrap();
    let slot = report.quarantined[0].now_at.parent().unwrap().to_path_buf();
    check(&slot, dir, "quarantine slot");
    check(&slot.join("reason.json"), file, "reason.json");
}

#[test]
fn files_are_0600_and_directories_0700_by_default() {
    check_modes(false, 0o022);
    check_modes(false, 0o000); // a permissive umask does not widen them
}

#[test]
fn group_shared_files_are_0660_and_directories_0770() {
    check_modes(true, 0o022);
    check_modes(true, 0o077); // a strict umask does not narrow them
}

// ---------------------------------------------------------------------------------------------
// Hostile filesystems (root only): ENOSPC, inode exhaustion, read-only
// ---------------------------------------------------------------------------------------------

#[test]
fn enospc_loses_nothing_and_leaves_no_partial_file() {
    let Some(mnt) = Tmpfs::mount("size=2m,nr_inodes=100000,mode=0700", "ENOSPC") else {
        return;
    };
    let dir = mnt.path.join("store");
    let store = Store::open(&dir).unwrap(); // durable: every fsync path runs
    let a = store.create(&json!({"n": "a"})).unwrap();
    let b = store.create(&json!({"n": "b"})).unwrap();
    store.queue(&b, &"mailto:b").unwrap();
    let c = store.create(&json!({"n": "c"})).unwrap();
    store.fulfill(&c, b"c-done").unwrap();

    // Fill the filesystem with big jobs until a create fails.
    let big = "x".repeat(192 * 1024);
    let mut bigs = Vec::new();
    let err = loop {
        match store.create(&json!({"big": big})) {
            Ok(id) => bigs.push(id),
            Err(e) => break e,
        }
        assert!(bigs.len() < 50, "the 2 MiB tmpfs never filled up");
    };
    assert_io(&err, libc::ENOSPC, &dir);
    assert!(err.to_string().contains("No space left on device"), "{err}");
    // Whatever space the failed create found, take the rest too.
    let mut filler = fill_space(&mnt.path.join("filler"));
    filler.flush().unwrap();

    // Under a full disk every write fails clearly, and none is half-done.
    assert_io(&store.create(&"small").unwrap_err(), libc::ENOSPC, &dir);
    assert_io(
        &store.fulfill(&a, b"a-done").unwrap_err(),
        libc::ENOSPC,
        &dir,
    );
    assert_eq!(store.result(&a).unwrap(), None);
    assert_io(
        &store.queue(&a, &"mailto:a").unwrap_err(),
        libc::ENOSPC,
        &dir,
    );
    assert!(store.get(&a).unwrap().waiting.is_empty());
    match store.pull_work() {
        Err(e) => assert_io(&e, libc::ENOSPC, &dir),
        Ok(j) => panic!("claimed with no space for a lease file: {j:?}"),
    }

    // The store still opens; every listed job is complete; nothing acknowledged is lost.
    let s2 = Store::open(&dir).unwrap();
    let mut acked: BTreeSet<JobId> = bigs.iter().copied().collect();
    acked.extend([a, b, c]);
    assert_eq!(listed(&s2), acked, "a failed create left a visible job");
    for id in &bigs {
        assert_eq!(
            s2.get(id).unwrap().request["big"].as_str().unwrap().len(),
            big.len()
        );
    }
    assert_eq!(s2.get(&a).unwrap().state, JobState::Pending);
    assert_eq!(s2.get(&b).unwrap().waiting, vec![json!("mailto:b")]);
    assert_eq!(s2.result(&c).unwrap().unwrap(), b"c-done");
    let report = recover_all(&s2);
    assert!(report.quarantined.is_empty(), "{report:#?}");
    assert!(
        tmp_names(&s2).is_empty(),
        "temporaries left: {:?}",
        tmp_names(&s2)
    );

    // Freeing space through the store (remove needs none) makes everything work again.
    for id in &bigs {
        s2.remove(id).unwrap();
    }
    let d = s2.create(&json!({"n": "d"})).unwrap();
    s2.fulfill(&a, b"a-done").unwrap();
    let (done, err) = drain_work(&s2);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        done.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([b, d])
    );
    let note = s2.pull_notification().unwrap().expect("b's notification");
    assert_eq!(note.waiting(), &[json!("mailto:b")]);
    note.done(&[json!("mailto:b")]).unwrap();
    assert_eq!(s2.result(&a).unwrap().unwrap(), b"a-done");
    assert_eq!(s2.result(&c).unwrap().unwrap(), b"c-done");
    assert_eq!(listed(&s2), BTreeSet::from([a, b, c, d]));
    let report = recover_all(&s2);
    assert!(report.quarantined.is_empty(), "{report:#?}");
    assert!(tmp_names(&s2).is_empty());
    drop(filler);
}

#[test]
fn recover_under_enospc_leaves_no_partial_quarantine_slot() {
    let Some(mnt) = Tmpfs::mount("size=1m,nr_inodes=100000", "quarantine under ENOSPC") else {
        return;
    };
    let store = Store::open(mnt.path.join("store")).unwrap();
    let foreign = store.dir().join("foreign.txt");
    fs::write(&foreign, b"mine").unwrap();
    let filler = fill_space(&mnt.path.join("filler"));
    let err = store.recover().unwrap_err();
    assert_io(&err, libc::ENOSPC, store.dir());
    assert_eq!(fs::read(&foreign).unwrap(), b"mine");
    let slots: Vec<_> = fs::read_dir(store.dir().join("quarantine"))
        .unwrap()
        .collect();
    assert!(slots.is_empty(), "partial quarantine slots left: {slots:?}");
    assert_eq!(store.counts().unwrap().quarantined, 0);
    drop(filler);
    fs::remove_file(mnt.path.join("filler")).unwrap();
    let report = store.recover().unwrap();
    assert_eq!(report.quarantined.len(), 1);
}

#[test]
fn inode_exhaustion_loses_nothing_and_leaves_no_partial_file() {
    let Some(mnt) = Tmpfs::mount("size=16m,nr_inodes=1000", "inode exhaustion") else {
        return;
    };
    let dir = mnt.path.join("store");
    let store = Store::open(&dir).unwrap();
    let a = store.create(&json!({"n": "a"})).unwrap();
    let b = store.create(&json!({"n": "b"})).unwrap();
    store.fulfill(&b, b"b-done").unwrap();
    let mut fillers = fill_inodes(&mnt.path);

    // No inode at all: nothing can start.
    assert_io(&store.create(&"x").unwrap_err(), libc::ENOSPC, &dir);
    assert_io(&store.fulfill(&a, b"v").unwrap_err(), libc::ENOSPC, &dir);
    assert_io(&store.queue(&a, &"t").unwrap_err(), libc::ENOSPC, &dir);
    match store.pull_work() {
        Err(e) => assert_io(&e, libc::ENOSPC, &dir),
        Ok(j) => panic!("claimed with no inode for a lease file: {j:?}"),
    }
    assert!(tmp_names(&store).is_empty());

    // One inode: a create gets its staging directory but not its job.json; it cleans up.
    fs::remove_file(fillers.pop().unwrap()).unwrap();
    assert_io(&store.create(&"x").unwrap_err(), libc::ENOSPC, &dir);
    assert!(tmp_names(&store).is_empty(), "{:?}", tmp_names(&store));
    assert_io(&store.fulfill(&a, b"v").unwrap_err(), libc::ENOSPC, &dir);
    assert!(tmp_names(&store).is_empty(), "{:?}", tmp_names(&store));
    assert_eq!(store.result(&a).unwrap(), None);

    let s2 = Store::open(&dir).unwrap();
    assert_eq!(
        listed(&s2),
        BTreeSet::from([a, b]),
        "a failed create left a visible job"
    );
    assert_eq!(s2.get(&a).unwrap().request, json!({"n": "a"}));
    assert_eq!(s2.result(&b).unwrap().unwrap(), b"b-done");

    // Inodes back: everything works, nothing was lost.
    for f in fillers.drain(..) {
        fs::remove_file(f).unwrap();
    }
    let report = recover_all(&s2);
    assert!(report.quarantined.is_empty(), "{report:#?}");
    assert!(tmp_names(&s2).is_empty());
    let c = s2.create(&json!({"n": "c"})).unwrap();
    let (done, err) = drain_work(&s2);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        done.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([a, c])
    );
    assert_eq!(listed(&s2), BTreeSet::from([a, b, c]));
}

#[test]
fn create_that_fails_leaves_no_visible_job() {
    let Some(mnt) = Tmpfs::mount("size=16m,nr_inodes=1000", "inode exhaustion at the index") else {
        return;
    };
    let dir = mnt.path.join("store");
    let store = Store::open(&dir).unwrap();
    let a = store.create(&"a").unwrap();
    let mut fillers = fill_inodes(&mnt.path);
    // Two inodes: the staging directory and job.json; none for the index entry.
    fs::remove_file(fillers.pop().unwrap()).unwrap();
    fs::remove_file(fillers.pop().unwrap()).unwrap();
    let err = store.create(&"b").unwrap_err();
    assert_io(&err, libc::ENOSPC, &dir);
    assert_eq!(
        listed(&store),
        BTreeSet::from([a]),
        "create failed ({err}), yet its job is visible"
    );
}

#[test]
fn read_only_store_refuses_writes_clearly_and_changes_nothing() {
    let Some(mnt) = Tmpfs::mount("size=4m,nr_inodes=10000", "read-only store") else {
        return;
    };
    let dir = mnt.path.join("store");
    let store = Store::open(&dir).unwrap();
    let a = store.create(&json!({"n": "a"})).unwrap();
    let b = store.create(&json!({"n": "b"})).unwrap();
    store.queue(&b, &"mailto:b").unwrap();
    store.fulfill(&b, b"b-done").unwrap();
    drop(store);
    mnt.set_read_only(true);
    let before = snapshot(&dir);

    // Reading works.
    let store = Store::open(&dir).unwrap();
    assert_eq!(listed(&store), BTreeSet::from([a, b]));
    assert_eq!(store.get(&a).unwrap().request, json!({"n": "a"}));
    assert_eq!(store.result(&b).unwrap().unwrap(), b"b-done");
    assert_eq!(store.get(&b).unwrap().waiting, vec![json!("mailto:b")]);
    let counts = store.counts().unwrap();
    assert_eq!((counts.pending, counts.fulfilled), (1, 1));

    // Every write fails with EROFS, naming the path.
    assert_io(&store.create(&"x").unwrap_err(), libc::EROFS, &dir);
    assert_io(&store.fulfill(&a, b"v").unwrap_err(), libc::EROFS, &dir);
    assert_io(&store.queue(&a, &"t").unwrap_err(), libc::EROFS, &dir);
    assert_io(&store.remove(&a).unwrap_err(), libc::EROFS, &dir);
    match store.pull_work() {
        Err(e) => assert_io(&e, libc::EROFS, &dir),
        Ok(j) => panic!("claimed on a read-only store: {j:?}"),
    }
    match store.pull_notification() {
        Err(e) => assert_io(&e, libc::EROFS, &dir),
        Ok(n) => panic!("claimed on a read-only store: {n:?}"),
    }
    let err = store.create(&"x").unwrap_err();
    assert!(err.to_string().contains("Read-only file system"), "{err}");
    // A recover with nothing to do succeeds; a new store cannot be made here.
    store.recover().unwrap();
    assert_io(
        &Store::open(mnt.path.join("new")).unwrap_err(),
        libc::EROFS,
        &mnt.path,
    );
    drop(store);
    assert_eq!(snapshot(&dir), before, "the read-only store changed");

    // Writable again: nothing was lost, everything works.
    mnt.set_read_only(false);
    let store = Store::open(&dir).unwrap();
    let report = recover_all(&store);
    assert!(report.quarantined.is_empty(), "{report:#?}");
    let job = store.pull_work().unwrap().expect("a");
    assert_eq!(job.id(), a);
    job.fulfill(b"a-done").unwrap();
    let note = store
        .pull_notification()
        .unwrap()
        .expect("b's notification");
    note.done(&[json!("mailto:b")]).unwrap();
    assert_eq!(store.result(&a).unwrap().unwrap(), b"a-done");
    assert!(tmp_names(&store).is_empty());
}

/// Regression (found by `cargo fuzz`): a lease record's `entry` is touched after a takeover;
/// an entry that leaves the index (absolute, or with `..`) must never be used.
#[test]
fn a_lease_record_cannot_point_a_takeover_outside_the_store() {
    for evil in ["ABS", "../../../../../../../../../..ABS"] {
        let (_t, store) = new_store();
        let id = store.create(&"victim").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        outside.as_file().set_modified(old).unwrap();
        // A dead holder of this host, as a crash leaves it: held/ in epoch 1, an unlocked
        // lease file whose record names the outside file as its index entry.
        let job_dir = store
            .dir()
            .join("jobs")
            .join(shard(&id))
            .join(id.to_string());
        fs::create_dir_all(job_dir.join("claims/0000000001/held")).unwrap();
        fs::write(job_dir.join("claims/0000000001/epoch"), b"1").unwrap();
        let entry = evil.replace("ABS", &outside.path().to_string_lossy());
        let meta = serde_json::json!({
            "kind": "w", "job": id, "epoch": 1, "host": store.host_id(), "pid": 1,
            "lease_ms": 200, "acquired_at": "2026-01-01T00:00:00.000Z", "entry": entry,
        });
        fs::write(
            store.dir().join(format!("leases/w.{id}.0000000001")),
            meta.to_string(),
        )
        .unwrap();
        let s2 = reopen(&store);
        // Taken over at once (same host, no flock); then deferred by the backoff after an
        // expired lease (default 1 s, FORMAT.md §6.21), so wait for it.
        let job = s2
            .pull_work_timeout(Duration::from_secs(60))
            .unwrap()
            .expect("the dead holder's job is taken over");
        assert_eq!(job.id(), id);
        assert!(job.attempt() >= 3, "attempt {}", job.attempt());
        assert!(job_dir.join("claims/0000000001/expired").is_dir());
        assert_eq!(
            fs::metadata(outside.path()).unwrap().modified().unwrap(),
            old,
            "a takeover touched a file outside the store ({entry})"
        );
    }
}

/// Regression: a FIFO planted where a file should be must not block any call.
#[test]
fn a_fifo_in_place_of_a_file_never_blocks() {
    let (_t, store) = new_store();
    let id = store.create(&"fifo").unwrap();
    let good = store.create(&"good").unwrap();
    let job_json = store
        .dir()
        .join("jobs")
        .join(shard(&id))
        .join(id.to_string())
        .join("job.json");
    fs::remove_file(&job_json).unwrap();
    let c = std::ffi::CString::new(job_json.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = reopen(&store);
    std::thread::spawn(move || {
        let got = s2.get(&id).map(|_| ());
        let mut pulled = Vec::new();
        while let Ok(Some(j)) = s2.pull_work() {
            pulled.push(j.id());
            j.fulfill(b"x").unwrap();
        }
        let rec = s2.recover().map(|_| s2.counts().unwrap().quarantined);
        tx.send((got, pulled, rec)).unwrap();
    });
    let (got, pulled, rec) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a FIFO blocked the store");
    assert!(got.is_err());
    assert!(pulled.contains(&good));
    assert!(rec.unwrap() >= 1);
}
