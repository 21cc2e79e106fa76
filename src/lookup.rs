//! Lookup tables: small named maps from a text key to a JSON value, shared through the store by
//! every process that uses it (okanjo-conductor's "lookups": reference data that workers read
//! instead of each keeping its own copy).
//!
//! Invariant kept here: an entry is one file, replaced atomically (a complete new file renamed
//! over the old one), so a reader sees the old value or the new one, never a mix, and two
//! writers of different keys never touch the same file. Table names are checked against a strict
//! alphabet, and keys are hashed (SHA-256) to make file names, before any path is built.
//!
//! ```text
//! DIR/lookups/<table>/<sha256(key)>.json   {"key":"<key>","set_at":"<RFC 3339>","value":<JSON>}
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;

use crate::atomic::{list_names, read_file, remove_file_if_exists};
use crate::error::{Error, IoContext, Result};
use crate::job::rfc3339;
use crate::layout::LOOKUPS;
use crate::store::{Inner, READ_LIMIT, Store, ensure_real_dir, target_name};

/// Longest table name, in bytes.
const TABLE_MAX: usize = 128;
/// Longest key, in bytes.
const KEY_MAX: usize = 1024;

/// What an entry file holds. Writers write all three fields; readers need `key` and `value`
/// and ignore anything else.
#[derive(Deserialize)]
struct Entry {
    key: String,
    value: Value,
}

fn invalid(what: &'static str, name: &str, reason: &'static str) -> Error {
    Error::InvalidName {
        what,
        text: name.chars().take(80).collect(),
        reason,
    }
}

/// A table name: 1 to 128 ASCII letters, digits, `_`, `-` or `.`, not starting with `.`.
fn check_table(name: &str) -> Result<()> {
    const RULE: &str = "use 1 to 128 ASCII letters, digits, '_', '-' or '.', not starting with '.'";
    let ok = !name.is_empty()
        && name.len() <= TABLE_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid("lookup table name", name, RULE))
    }
}

/// A key: 1 to 1024 bytes of UTF-8 without control characters (so that `jobdir lookup ls`
/// prints one line per key).
fn check_key(key: &str) -> Result<()> {
    const RULE: &str = "use 1 to 1024 bytes of text without control characters";
    if key.is_empty() || key.len() > KEY_MAX || key.chars().any(char::is_control) {
        Err(invalid("lookup key", key, RULE))
    } else {
        Ok(())
    }
}

fn lookups_dir(inner: &Inner) -> PathBuf {
    inner.layout.root.join(LOOKUPS)
}

/// `lookups/<table>` if it exists; `None` if it (or `lookups/`) is missing. A symlink or a file
/// in either place is refused, never followed.
fn existing_table_dir(inner: &Inner, table: &str) -> Result<Option<PathBuf>> {
    let top = lookups_dir(inner);
    let dir = top.join(table);
    for p in [&top, &dir] {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_a_dir(p)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("stat", p),
        }
    }
    Ok(Some(dir))
}

fn not_a_dir(p: &Path) -> Error {
    Error::Corrupt {
        path: p.to_path_buf(),
        reason: "must be a directory (not a file or a symlink); run recover".into(),
    }
}

/// Reads and checks one entry file: its name must be the hash of the key it holds.
fn read_entry(path: &Path, name: &str) -> Result<Entry> {
    let bytes = read_file(path, READ_LIMIT)?;
    let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("not a lookup entry: {e}"),
    })?;
    if target_name(entry.key.as_bytes()) != name {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: "the file name is not the SHA-256 of the key inside".into(),
        });
    }
    Ok(entry)
}

/// True for names of the form `<64 lowercase hex digits>.json`.
fn is_entry_name(name: &str) -> bool {
    name.len() == 69
        && name.ends_with(".json")
        && name[..64]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Store {
    /// Checks a lookup table name and key without touching any store: `Ok` exactly when
    /// [`lookup_set`](Self::lookup_set) would accept them (so a command line can refuse bad
    /// input before it creates a store).
    ///
    /// ```
    /// use jobdir::Store;
    /// assert!(Store::check_lookup_names("fruits", "a").is_ok());
    /// assert!(Store::check_lookup_names("a/b", "k").is_err());
    /// assert!(Store::check_lookup_names("fruits", "").is_err());
    /// ```
    pub fn check_lookup_names(table: &str, key: &str) -> Result<()> {
        check_table(table)?;
        check_key(key)
    }

    /// Sets `key` in lookup table `table` to `value` (any serializable value, stored as JSON),
    /// replacing what was there atomically: a reader in any process sees the old value or the
    /// new one. The table is created on first use. Durable when it returns (in the default
    /// durable mode).
    ///
    /// Table names are 1 to 128 ASCII letters, digits, `_`, `-` or `.` (not starting with `.`);
    /// keys are any text of 1 to 1024 bytes without control characters. Anything else is
    /// refused with [`Error::InvalidName`] before a path is built. A value larger than the
    /// store's `max_request_bytes` is refused with [`Error::TooLarge`].
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.lookup_set("fruits", "a", &"apple")?;
    /// store.lookup_set("fruits", "b", &serde_json::json!({"name": "banana", "kcal": 89}))?;
    /// assert_eq!(store.lookup_get("fruits", "a")?, Some(serde_json::json!("apple")));
    /// assert!(matches!(
    ///     store.lookup_set("../etc", "a", &1),
    ///     Err(jobdir::Error::InvalidName { .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lookup_set<V: serde::Serialize + ?Sized>(
        &self,
        table: &str,
        key: &str,
        value: &V,
    ) -> Result<()> {
        check_table(table)?;
        check_key(key)?;
        let inner = &self.inner;
        let value = serde_json::to_value(value).map_err(|source| Error::Encode {
            what: "lookup value",
            source,
        })?;
        let size = serde_json::to_vec(&value)
            .map_err(|source| Error::Encode {
                what: "lookup value",
                source,
            })?
            .len();
        if size > inner.opts.max_request_bytes {
            return Err(Error::TooLarge {
                what: "lookup value",
                size,
                limit: inner.opts.max_request_bytes,
            });
        }
        let body = serde_json::json!({
            "key": key,
            "set_at": rfc3339(SystemTime::now()),
            "value": value,
        });
        let bytes = serde_json::to_vec(&body).map_err(|source| Error::Encode {
            what: "lookup entry",
            source,
        })?;
        let top = lookups_dir(inner);
        let dir = top.join(table);
        for p in [&top, &dir] {
            if !ensure_real_dir(&inner.fs, p)? {
                return Err(not_a_dir(p));
            }
        }
        inner
            .fs
            .replace_file(&dir.join(target_name(key.as_bytes())), &bytes)
    }

    /// The value of `key` in lookup table `table`, or `None` if the table or the key does not
    /// exist.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// assert_eq!(store.lookup_get("veggies", "c")?, None);
    /// store.lookup_set("veggies", "c", &"carrot")?;
    /// assert_eq!(store.lookup_get("veggies", "c")?, Some(serde_json::json!("carrot")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lookup_get(&self, table: &str, key: &str) -> Result<Option<Value>> {
        check_table(table)?;
        check_key(key)?;
        let Some(dir) = existing_table_dir(&self.inner, table)? else {
            return Ok(None);
        };
        let name = target_name(key.as_bytes());
        match read_entry(&dir.join(&name), &name) {
            Ok(entry) => Ok(Some(entry.value)),
            Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes `key` from lookup table `table`. True if it was there. An emptied table stays
    /// (as an empty table).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.lookup_set("fruits", "a", &"apple")?;
    /// assert!(store.lookup_remove("fruits", "a")?);
    /// assert!(!store.lookup_remove("fruits", "a")?);
    /// assert_eq!(store.lookup_get("fruits", "a")?, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lookup_remove(&self, table: &str, key: &str) -> Result<bool> {
        check_table(table)?;
        check_key(key)?;
        let Some(dir) = existing_table_dir(&self.inner, table)? else {
            return Ok(false);
        };
        let removed = remove_file_if_exists(&dir.join(target_name(key.as_bytes())))?;
        if removed {
            self.inner.fs.sync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// Every entry of lookup table `table`, by key (empty if the table does not exist). Entry
    /// files that cannot be read or are corrupt are skipped with a warning (`recover`
    /// quarantines them).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.lookup_set("fruits", "a", &"apple")?;
    /// store.lookup_set("fruits", "b", &"banana")?;
    /// let table = store.lookup_table("fruits")?;
    /// assert_eq!(table.keys().collect::<Vec<_>>(), ["a", "b"]);
    /// assert_eq!(table["b"], "banana");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lookup_table(&self, table: &str) -> Result<BTreeMap<String, Value>> {
        check_table(table)?;
        let mut out = BTreeMap::new();
        let Some(dir) = existing_table_dir(&self.inner, table)? else {
            return Ok(out);
        };
        for name in list_names(&dir)? {
            if !is_entry_name(&name) {
                continue;
            }
            match read_entry(&dir.join(&name), &name) {
                Ok(entry) => {
                    out.insert(entry.key, entry.value);
                }
                Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {}
                Err(e) => tracing::warn!("skipping a lookup entry: {e}"),
            }
        }
        Ok(out)
    }

    /// The names of the lookup tables, sorted.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// assert!(store.lookup_tables()?.is_empty());
    /// store.lookup_set("veggies", "c", &"carrot")?;
    /// store.lookup_set("fruits", "a", &"apple")?;
    /// assert_eq!(store.lookup_tables()?, ["fruits", "veggies"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lookup_tables(&self) -> Result<Vec<String>> {
        let top = lookups_dir(&self.inner);
        match fs::symlink_metadata(&top) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_a_dir(&top)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("stat", &top),
        }
        let mut names: Vec<String> = list_names(&top)?
            .into_iter()
            .filter(|n| check_table(n).is_ok())
            .filter(|n| fs::symlink_metadata(top.join(n)).is_ok_and(|m| m.is_dir()))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// What `recover` moves to quarantine below `lookups/`, with the reason: a `lookups` that is not
/// a real directory; names in it that are not table names or not real directories; names in a
/// table that are not entry names, and entry files that are corrupt. `.nfs*` names are left
/// alone.
pub(crate) fn foreign(inner: &Inner) -> Result<Vec<(PathBuf, String)>> {
    let top = lookups_dir(inner);
    let mut out = Vec::new();
    match fs::symlink_metadata(&top) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            out.push((top, "lookups must be a directory".to_string()));
            return Ok(out);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).ctx("stat", &top),
    }
    for table in list_names(&top)? {
        if table.starts_with(".nfs") {
            continue;
        }
        let dir = top.join(&table);
        let is_dir = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        if check_table(&table).is_err() || !is_dir {
            out.push((dir, "not a lookup table directory".to_string()));
            continue;
        }
        for name in list_names(&dir)? {
            if name.starts_with(".nfs") {
                continue;
            }
            let path = dir.join(&name);
            if !is_entry_name(&name) {
                out.push((path, "not a lookup entry name".to_string()));
                continue;
            }
            match read_entry(&path, &name) {
                Ok(_) => {}
                Err(e) if e.is_io_kind(io::ErrorKind::NotFound) => {}
                Err(e @ Error::Corrupt { .. }) => out.push((path, e.to_string())),
                Err(e) if e.is_io_kind(io::ErrorKind::IsADirectory) => {
                    out.push((path, "a lookup entry must be a file".to_string()));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_and_keys_are_checked() {
        for good in ["fruits", "a", "A-1_b.c", &"x".repeat(128)] {
            assert!(check_table(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(check_table(bad).is_err(), "{bad}");
        }
        for good in ["a", "../x", "with space", "ünï", &"k".repeat(1024)] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "a\nb", "tab\there", &"k".repeat(1025)] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entry_names_are_hashes() {
        let name = target_name(b"key");
        assert!(is_entry_name(&name));
        assert!(!is_entry_name("x.json"));
        assert!(!is_entry_name(&name.to_uppercase()));
    }
}
