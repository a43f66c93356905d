//! Small filesystem helpers: errors that name their path, unique temporary names,
//! atomic JSON writes, hex.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file the store writes; garbage collection removes stale ones.
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Attach "what path" to an I/O error, keeping its kind.
pub(crate) trait PathContext<T> {
    fn at(self, what: &str, path: &Path) -> io::Result<T>;
}

impl<T> PathContext<T> for io::Result<T> {
    fn at(self, what: &str, path: &Path) -> io::Result<T> {
        self.map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
    }
}

pub(crate) fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

pub(crate) fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Create a new, unique temporary file in `dir` (which must exist). Unique across
/// threads (a counter) and processes (the pid); `create_new` guards against leftovers.
pub(crate) fn create_temp(dir: &Path) -> io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).at("cannot create temporary file", &path),
        }
    }
}

/// Write `value` as JSON to `dest` atomically: a temporary file in the same directory,
/// flushed to disk when `durable`, then renamed over `dest`. Readers see the old or the
/// new file whole; a killed process leaves one or the other; only with `durable` does a
/// power cut too.
pub(crate) fn write_json_atomic<T: Serialize>(
    dest: &Path,
    value: &T,
    durable: bool,
) -> io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| invalid_input(format!("no parent directory for {}", dest.display())))?;
    fs::create_dir_all(dir).at("cannot create directory", dir)?;
    let bytes = serde_json::to_vec(value)
        .map_err(|e| invalid_data(format!("cannot encode {}: {e}", dest.display())))?;
    let (mut file, tmp) = create_temp(dir)?;
    let written = file
        .write_all(&bytes)
        .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
        .at("cannot write", &tmp)
        .and_then(|()| fs::rename(&tmp, dest).at("cannot rename into place", dest));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Read and decode a JSON file. A missing file is `Ok(None)`.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at("cannot read", path),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid_data(format!("corrupt manifest {}: {e}", path.display())))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Lexically normalise a relative, `/`-separated path: drop `.` and empty components,
/// resolve `..`. `None` if it climbs above its start.
pub(crate) fn normalize_rel(path: &str) -> Option<Vec<&str>> {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    Some(out)
}

/// A path stored in a manifest must be relative, normalised and non-empty.
pub(crate) fn is_safe_rel(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_rel("./a//b/../c/"), Some(vec!["a", "c"]));
        assert_eq!(normalize_rel("a/../.."), None);
        assert_eq!(normalize_rel("."), Some(vec![]));
        assert!(is_safe_rel("a/b"));
        assert!(!is_safe_rel("a/../b"));
        assert!(!is_safe_rel("/a"));
        assert!(!is_safe_rel(""));
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }
}
