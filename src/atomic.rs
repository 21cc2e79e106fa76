//! Temp-write, fsync, rename: how every visible file comes into being complete.
//!
//! Invariant kept here: a reader never sees a partial file. Content is written to a temporary
//! file in the store's `tmp/` directory (same filesystem), flushed with `fsync` in durable mode,
//! renamed (or linked, when the name must not already exist) into place, and the directory that
//! gained the name is fsynced in durable mode before the call returns.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::{NamedTempFile, TempDir};

use crate::error::{Error, IoContext, Result};

/// How hard the store works to survive power loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// fsync every new file and the directory that gains its name before an operation returns.
    /// A job acknowledged by `create` survives power loss. The default.
    #[default]
    Durable,
    /// No fsync. Survives the crash of any process (`kill -9`), but a power loss or kernel crash
    /// may lose recently acknowledged operations. Several times faster.
    Fast,
}

/// File-writing policy of one store: where temporaries go, durability, permissions.
#[derive(Clone, Debug)]
pub(crate) struct AtomicFs {
    pub tmp: PathBuf,
    pub durability: Durability,
    pub file_mode: u32,
    pub dir_mode: u32,
}

impl AtomicFs {
    /// Writes `bytes` as a complete file at `dest`, which must not exist yet (the first writer
    /// wins; a later one fails with `AlreadyExists`).
    pub(crate) fn write_file(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.temp_file(bytes)?;
        tmp.persist_noclobber(dest)
            .map_err(|e| e.error)
            .ctx("rename into place", dest)?;
        self.sync_parent(dest)
    }

    /// A complete temporary file holding `bytes`, flushed in durable mode, not yet visible.
    pub(crate) fn temp_file(&self, bytes: &[u8]) -> Result<NamedTempFile> {
        let mut tmp = tempfile::Builder::new()
            .prefix("f.")
            .permissions(fs::Permissions::from_mode(self.file_mode))
            .tempfile_in(&self.tmp)
            .ctx("create temporary file in", &self.tmp)?;
        self.fix_mode(tmp.as_file(), self.file_mode, tmp.path())?;
        tmp.write_all(bytes).ctx("write", tmp.path())?;
        if self.durability == Durability::Durable {
            tmp.as_file().sync_all().ctx("fsync", tmp.path())?;
        }
        Ok(tmp)
    }

    /// [`temp_file`](Self::temp_file) with an exclusive `flock` held on it: a lease or presence
    /// file, complete and locked before its name appears.
    pub(crate) fn locked_temp_file(&self, bytes: &[u8]) -> Result<NamedTempFile> {
        let tmp = self.temp_file(bytes)?;
        tmp.as_file()
            .try_lock()
            .map_err(|e| io::Error::other(e.to_string()))
            .ctx("lock", tmp.path())?;
        Ok(tmp)
    }

    /// A new empty temporary directory (removed on drop unless kept).
    pub(crate) fn temp_dir(&self) -> Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("d.")
            .permissions(fs::Permissions::from_mode(self.dir_mode))
            .tempdir_in(&self.tmp)
            .ctx("create temporary directory in", &self.tmp)?;
        if self.dir_mode & 0o070 != 0 {
            // The umask may have narrowed the mode; group sharing needs it exact.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(self.dir_mode))
                .ctx("chmod", dir.path())?;
        }
        Ok(dir)
    }

    /// Writes a complete file directly into a directory that is not yet visible (a temporary
    /// directory), so no rename is needed for it.
    pub(crate) fn write_into_private_dir(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.file_mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .ctx("create", dest)?;
        self.fix_mode(&f, self.file_mode, dest)?;
        f.write_all(bytes).ctx("write", dest)?;
        if self.durability == Durability::Durable {
            f.sync_all().ctx("fsync", dest)?;
        }
        Ok(())
    }

    /// Creates an empty index entry `path` in `dir` (an existing one is fine), making `dir`
    /// and its missing parents when needed: a bucket may not exist yet, or a puller may have
    /// removed it as empty just now (retried a few times). Not fsynced.
    pub(crate) fn create_entry(&self, path: &Path, dir: &Path) -> Result<()> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let res = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.file_mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path);
            match res {
                Ok(f) => return self.fix_file_mode(&f, path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 8 => {
                    self.create_dir_all(dir)?;
                }
                Err(e) => return Err(e).ctx("create index entry", path),
            }
        }
    }

    /// Creates one directory with the store's mode (exact, whatever the umask).
    pub(crate) fn make_dir(&self, dir: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(self.dir_mode).create(dir)?;
        if self.dir_mode & 0o070 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(self.dir_mode))?;
        }
        Ok(())
    }

    /// Writes `bytes` as a complete file at `dest`, atomically replacing what is there.
    pub(crate) fn replace_file(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.temp_file(bytes)?;
        tmp.persist(dest)
            .map_err(|e| e.error)
            .ctx("rename into place", dest)?;
        self.sync_parent(dest)
    }

    /// Sets a file's mode exactly when the store is group-shared (the umask may narrow it).
    pub(crate) fn fix_file_mode(&self, f: &File, path: &Path) -> Result<()> {
        self.fix_mode(f, self.file_mode, path)
    }

    /// Creates a directory (and missing parents) with the store's mode; existing is fine.
    /// In durable mode the parent of each created directory is fsynced.
    pub(crate) fn create_dir_all(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dir_all(parent)?;
        }
        match fs::DirBuilder::new().mode(self.dir_mode).create(dir) {
            Ok(()) => {
                if self.dir_mode & 0o070 != 0 {
                    fs::set_permissions(dir, fs::Permissions::from_mode(self.dir_mode))
                        .ctx("chmod", dir)?;
                }
                self.sync_parent(dir)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
            Err(e) => Err(e).ctx("create directory", dir),
        }
    }

    /// fsyncs the directory containing `path` (durable mode only).
    pub(crate) fn sync_parent(&self, path: &Path) -> Result<()> {
        match path.parent() {
            Some(parent) => self.sync_dir(parent),
            None => Ok(()),
        }
    }

    /// fsyncs a directory (durable mode only).
    pub(crate) fn sync_dir(&self, dir: &Path) -> Result<()> {
        if self.durability == Durability::Durable {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .ctx("fsync directory", dir)?;
        }
        Ok(())
    }

    fn fix_mode(&self, f: &File, mode: u32, path: &Path) -> Result<()> {
        // The umask may have narrowed the mode; group sharing needs it exact.
        if mode & 0o070 != 0 {
            f.set_permissions(fs::Permissions::from_mode(mode))
                .ctx("chmod", path)?;
        }
        Ok(())
    }
}

/// Reads a whole file without following a symlink in its last component, refusing files larger
/// than `limit` bytes.
pub(crate) fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    read_file_ino(path, limit).map(|(b, _, _)| b)
}

/// Which file a name pointed to: inode number and modification time (nanoseconds). The mtime
/// tells apart a new file that reuses a freed inode number; a rename does not change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    ino: u64,
    mtime: (i64, i64),
}

impl FileStamp {
    pub(crate) fn of(meta: &fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// [`read_file`], also returning which file was read, and the open file (holding it open keeps
/// its inode number from being reused).
pub(crate) fn read_file_ino(path: &Path, limit: u64) -> Result<(Vec<u8>, FileStamp, File)> {
    let (mut f, meta) = open_regular_meta(path, false)?;
    let (len, ino) = (meta.len(), FileStamp::of(&meta));
    if len > limit {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is over the {limit}-byte limit"),
        });
    }
    // Store files are complete before their names appear and never change afterwards, so the
    // size just read is the size to read (no probing read for the end of the file).
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Corrupt {
                path: path.to_path_buf(),
                reason: "shorter than its size (truncated while being read)".into(),
            }
        } else {
            Error::Io {
                op: "read",
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    Ok((buf, ino, f))
}

/// True if `path` exists (without following a final symlink).
pub(crate) fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx("stat", path),
    }
}

/// Removes a file; a missing file is not an error.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx("remove", path),
    }
}

/// Lists the names in a directory; a missing directory lists as empty. Names that are not UTF-8
/// are left out: the store never makes one (recovery does not move them either).
pub(crate) fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("list", dir),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.ctx("list", dir)?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// [`list_names`] without the `.nfs*` names an NFS client creates for files deleted while open
/// (they belong to the client and vanish on their own): what recovery looks at.
pub(crate) fn visible_names(dir: &Path) -> Result<Vec<String>> {
    Ok(list_names(dir)?
        .into_iter()
        .filter(|n| !n.starts_with(".nfs"))
        .collect())
}

/// A directory, and not a symlink to one (planted links are never followed); any error reads
/// as false.
pub(crate) fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// True if `path` was last modified at least `grace` ago, by this process's clock (a missing
/// path, or one modified in this clock's future, is not).
pub(crate) fn older_than(path: &Path, grace: std::time::Duration) -> bool {
    fs::symlink_metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= grace)
}

/// Sets a file's modification time to now through its open descriptor, making sure the new
/// value differs from `previous` (heartbeats are judged by the mtime *changing*).
pub(crate) fn touch_file(
    f: &File,
    previous: Option<std::time::SystemTime>,
) -> io::Result<std::time::SystemTime> {
    let mut now = std::time::SystemTime::now();
    if let Some(prev) = previous
        && now <= prev
    {
        now = prev + std::time::Duration::from_micros(1);
    }
    f.set_modified(now)?;
    Ok(now)
}

/// Opens an existing store file: never through a symlink (`O_NOFOLLOW`), never blocking on a
/// planted FIFO or device (`O_NONBLOCK`), and only if it is a regular file.
pub(crate) fn open_regular(path: &Path, write: bool) -> Result<File> {
    open_regular_meta(path, write).map(|(f, _)| f)
}

/// [`open_regular`], also returning the file's metadata (from the one `fstat` it makes).
pub(crate) fn open_regular_meta(path: &Path, write: bool) -> Result<(File, fs::Metadata)> {
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ctx("open", path)?;
    let meta = f.metadata().ctx("stat", path)?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR)).ctx("open", path);
    }
    if !meta.is_file() {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    Ok((f, meta))
}

/// Sets a path's modification time to now (a wake-up signal for watchers of its directory).
pub(crate) fn touch_path(path: &Path) -> Result<()> {
    let f = open_regular(path, true)?;
    f.set_modified(std::time::SystemTime::now())
        .ctx("touch", path)
}
