//! The progress channel of `jobdir work`: a file per job, named by `JOBDIR_PROGRESS`, where
//! PROGRAM writes JSON lines; the latest complete line is passed to `WorkLease::progress`
//! (FORMAT.md §13.2).
//!
//! Invariants kept here: a line is forwarded only when complete (ends with a newline) and valid
//! JSON; memory is bounded whatever PROGRAM writes (only the unfinished tail of the file is
//! kept, at most 64 KiB); a failure of the channel never fails the job.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How often the file is looked at while PROGRAM runs.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// The longest line kept (longer ones are dropped: `WorkLease::progress` refuses them anyway).
const LINE_LIMIT: usize = 64 * 1024;

/// A private directory (`$TMPDIR/jobdir-progress.*`, mode 0700) for one worker's progress
/// files; removed when the worker exits.
pub struct ProgressDir {
    dir: Option<tempfile::TempDir>,
}

impl ProgressDir {
    /// Makes the directory; without one (a full `$TMPDIR`, say) jobs run without
    /// `JOBDIR_PROGRESS`, with a warning.
    pub fn new() -> ProgressDir {
        let dir = match tempfile::Builder::new()
            .prefix("jobdir-progress.")
            .tempdir()
        {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("no progress channel for PROGRAM (JOBDIR_PROGRESS unset): {e}");
                None
            }
        };
        ProgressDir { dir }
    }

    /// A fresh, empty progress file for one job.
    pub fn file(&self, name: &str) -> Option<ProgressFile> {
        let dir = self.dir.as_ref()?;
        let path = dir.path().join(format!("{name}.jsonl"));
        match File::create(&path) {
            Ok(_) => Some(ProgressFile {
                path,
                ino: None,
                offset: 0,
                tail: Vec::new(),
                skipping: false,
                next_check: Instant::now(),
            }),
            Err(e) => {
                tracing::warn!("cannot create {}: {e}", path.display());
                None
            }
        }
    }
}

/// One job's progress file, read incrementally.
pub struct ProgressFile {
    path: PathBuf,
    /// The inode read from (a file replaced by PROGRAM is read again from its start).
    ino: Option<u64>,
    offset: u64,
    /// Bytes after the last newline read.
    tail: Vec<u8>,
    /// Dropping an over-long line up to its newline.
    skipping: bool,
    next_check: Instant,
}

impl ProgressFile {
    /// The path given to PROGRAM.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// At most every 50 ms: the latest complete JSON line written since the last call, if any.
    pub fn poll(&mut self) -> Option<Value> {
        let now = Instant::now();
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_EVERY;
        let mut f = File::open(&self.path).ok()?;
        let meta = f.metadata().ok()?;
        if self.ino != Some(meta.ino()) || meta.len() < self.offset {
            // Replaced or truncated (`>` instead of `>>`): read it again from the start.
            self.ino = Some(meta.ino());
            self.offset = 0;
            self.tail.clear();
            self.skipping = false;
        }
        if meta.len() == self.offset {
            return None;
        }
        f.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut fresh = Vec::new();
        let n = f
            .take(meta.len() - self.offset)
            .read_to_end(&mut fresh)
            .ok()?;
        self.offset += n as u64;
        let mut latest = None;
        for &b in &fresh {
            if b == b'\n' {
                if !self.skipping
                    && let Ok(v) = serde_json::from_slice::<Value>(&self.tail)
                {
                    latest = Some(v);
                }
                self.tail.clear();
                self.skipping = false;
            } else if !self.skipping {
                self.tail.push(b);
                if self.tail.len() > LINE_LIMIT {
                    self.tail.clear();
                    self.skipping = true;
                }
            }
        }
        latest
    }
}

impl Drop for ProgressFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn forwards_the_latest_complete_json_line() {
        let dir = ProgressDir::new();
        let mut p = dir.file("job").expect("a progress file");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(p.path())
            .expect("open");
        let poll = |p: &mut ProgressFile| {
            p.next_check = Instant::now();
            p.poll()
        };
        assert_eq!(poll(&mut p), None);
        f.write_all(b"{\"pct\":10}\n{\"pct\":20}\n{\"pct\"")
            .expect("write");
        assert_eq!(poll(&mut p), Some(serde_json::json!({"pct": 20})));
        assert_eq!(poll(&mut p), None);
        f.write_all(b":30}\nnot json\n").expect("write");
        assert_eq!(poll(&mut p), Some(serde_json::json!({"pct": 30})));
        // Replaced by a shorter file: read from its start.
        std::fs::write(p.path(), b"7\n").expect("write");
        assert_eq!(poll(&mut p), Some(serde_json::json!(7)));
        let path = p.path().to_path_buf();
        drop(p);
        assert!(!path.exists());
    }
}
