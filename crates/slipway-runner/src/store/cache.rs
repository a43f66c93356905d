//! Cache keys: GitLab's computation of `cache:key` (literal or `key:files`), GitLab
//! Runner's sanitising of the result, and the mapping of a key to a file name.

use super::collect::list_files;
use super::fsutil::{hex, is_safe_rel};
use sha1::{Digest, Sha1};
use sha2::Sha256;
use slipway_core::model::{Cache, CacheKey};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

/// The key of the `index`-th cache (0-based) of a job, as GitLab computes it.
///
/// - A literal key (default `default`) is expanded with the caller's `expand`.
/// - `key:files` is `<prefix>-<digest>`: the digest is the SHA-1 of the sorted,
///   de-duplicated git blob ids of the listed files joined by `-` (GitLab hashes the
///   files' content since 18.x; before, their last commits), or `default` when none
///   of them exists. Entries containing `*` are wildcards over the repository's files
///   (`**` any characters, `*` any but `/`, GitLab's `search_files_by_wildcard_path`).
///   Paths are taken as repository paths: `./Gemfile` or a directory matches nothing,
///   as on GitLab. The prefix is `key:prefix` (expanded), or, without one, the cache's
///   index: GitLab names the first cache's key `0-<digest>`.
///
/// Files are read from `workdir`, which should still be the checkout: compute keys
/// before restoring caches and artifacts into it. GitLab reads the files at the
/// pipeline's commit; locally they are those of the working tree the workspace was
/// made from. GitLab Runner's `-protected`/`-non_protected` suffix is not added.
pub fn cache_key(
    cache: &Cache,
    index: usize,
    workdir: &Path,
    expand: &dyn Fn(&str) -> String,
) -> String {
    cache_key_in(cache, index, workdir, None, expand)
}

/// [`cache_key`] with the repository's file list given (`key:files` wildcards match
/// among `files` instead of a walk of `root`): keys computed from the source tree
/// rather than a workspace.
pub fn cache_key_in(
    cache: &Cache,
    index: usize,
    root: &Path,
    files: Option<&[String]>,
    expand: &dyn Fn(&str) -> String,
) -> String {
    match &cache.key {
        CacheKey::Literal(k) => expand(k),
        CacheKey::Files {
            files: key_files,
            prefix,
        } => {
            let digest =
                files_digest(key_files, root, files).unwrap_or_else(|| "default".to_string());
            let prefix = prefix.clone().unwrap_or_else(|| index.to_string());
            let key = [prefix.as_str(), digest.as_str()]
                .iter()
                .filter(|s| !s.trim().is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("-");
            expand(&key)
        }
    }
}

fn files_digest(files: &[String], workdir: &Path, known: Option<&[String]>) -> Option<String> {
    let mut patterns: Vec<&str> = Vec::new();
    for f in files {
        if !f.trim().is_empty() && !patterns.contains(&f.as_str()) {
            patterns.push(f);
        }
    }
    let mut listing: Option<Vec<String>> = None;
    let mut paths: Vec<String> = Vec::new();
    for p in patterns {
        if p.contains('*') {
            if listing.is_none() {
                listing = Some(match known {
                    Some(k) => k.to_vec(),
                    None => list_files(workdir).unwrap_or_default(),
                });
            }
            let tokens = wildcard_tokens(p);
            for f in listing.iter().flatten() {
                if wildcard_match(&tokens, f) {
                    paths.push(f.clone());
                }
            }
        } else if known.is_none_or(|k| k.binary_search_by(|f| f.as_str().cmp(p)).is_ok()) {
            // With a known file list (sorted), only the repository's files count.
            paths.push(p.to_string());
        }
    }
    let mut ids: Vec<String> = paths
        .iter()
        .filter_map(|p| git_blob_id(workdir, p))
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return None;
    }
    Some(hex(&Sha1::digest(ids.join("-").as_bytes())))
}

/// The git blob id of the repository file `rel`, if it is a file (or symlink) in the
/// workspace reached without passing through a symlinked directory (git never does).
fn git_blob_id(workdir: &Path, rel: &str) -> Option<String> {
    if !is_safe_rel(rel) {
        return None;
    }
    let mut at = workdir.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for dir in &parts[..parts.len() - 1] {
        at.push(dir);
        if !fs::symlink_metadata(&at).ok()?.is_dir() {
            return None;
        }
    }
    let path = workdir.join(rel);
    let meta = fs::symlink_metadata(&path).ok()?;
    let mut hasher = Sha1::new();
    if meta.file_type().is_symlink() {
        let target = fs::read_link(&path).ok()?;
        let bytes = target.as_os_str().as_encoded_bytes();
        hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
        hasher.update(bytes);
        return Some(hex(&hasher.finalize()));
    }
    if !meta.is_file() {
        return None;
    }
    let mut file = File::open(&path).ok()?;
    let len = file.metadata().ok()?.len();
    hasher.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    (read == len).then(|| hex(&hasher.finalize()))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Char(char),
    /// `*`: any characters but `/`.
    Star,
    /// `**`: any characters.
    Any,
}

fn wildcard_tokens(pattern: &str) -> Vec<Tok> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '*' {
            if chars.get(i + 1) == Some(&'*') {
                out.push(Tok::Any);
                i += 2;
            } else {
                out.push(Tok::Star);
                i += 1;
            }
        } else {
            out.push(Tok::Char(chars[i]));
            i += 1;
        }
    }
    out
}

/// Whole-string match, linear in pattern × text.
fn wildcard_match(tokens: &[Tok], text: &str) -> bool {
    let s: Vec<char> = text.chars().collect();
    let n = s.len();
    let mut dp = vec![false; n + 1];
    dp[0] = true;
    for t in tokens {
        let mut next = vec![false; n + 1];
        match t {
            Tok::Char(c) => {
                for j in 0..n {
                    if dp[j] && s[j] == *c {
                        next[j + 1] = true;
                    }
                }
            }
            Tok::Any => {
                let mut reach = false;
                for j in 0..=n {
                    reach |= dp[j];
                    next[j] = reach;
                }
            }
            Tok::Star => {
                for j in 0..=n {
                    next[j] = dp[j] || (j > 0 && next[j - 1] && s[j - 1] != '/');
                }
            }
        }
        dp = next;
    }
    dp[n]
}

/// GitLab Runner's cache key sanitising: `%2F`/`%2E` decoded, `\` taken as `/`, `.`
/// and `..` resolved inside the key (never above it), trailing whitespace of the last
/// segments dropped. `None` when nothing is left (the runner then skips the cache).
pub fn sanitize_cache_key(key: &str) -> Option<String> {
    let decoded = key
        .replace("%2f", "/")
        .replace("%2F", "/")
        .replace("%2e", ".")
        .replace("%2E", ".")
        .replace('\\', "/");
    let mut parts: Vec<&str> = Vec::new();
    for p in decoded.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    while let Some(last) = parts.last_mut() {
        *last = last.trim_end();
        if !last.is_empty() {
            break;
        }
        parts.pop();
    }
    let key = parts.join("/");
    (!key.is_empty()).then_some(key)
}

/// A file name for a sanitised key: letters, digits, `_`, `-` and (not leading) `.`
/// kept, every other byte `%XX`; so distinct keys get distinct names, none of them `.`
/// or `..` or with a `/`. Very long keys are cut and suffixed with `~` and a hash.
pub(crate) fn key_file_name(key: &str) -> String {
    let mut units: Vec<String> = Vec::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            units.push((b as char).to_string());
        } else {
            units.push(format!("%{b:02X}"));
        }
    }
    let full: String = units.concat();
    if full.len() <= 180 {
        return full;
    }
    let mut cut = String::new();
    for u in units {
        if cut.len() + u.len() > 100 {
            break;
        }
        cut.push_str(&u);
    }
    format!("{cut}~{}", &hex(&Sha256::digest(key.as_bytes()))[..32])
}

pub(crate) fn io_bad_key(key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("cache key {key:?} could not be sanitized"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_wildcards() {
        let t = wildcard_tokens("**/package.json");
        assert!(wildcard_match(&t, "web/package.json"));
        assert!(wildcard_match(&t, "a/b/package.json"));
        // `**/` needs a slash: GitLab's regexp is `^.*?/package\.json$`.
        assert!(!wildcard_match(&t, "package.json"));
        let t = wildcard_tokens("*.lock");
        assert!(wildcard_match(&t, "Gemfile.lock"));
        assert!(!wildcard_match(&t, "sub/Gemfile.lock"));
        let t = wildcard_tokens("a?.txt");
        assert!(wildcard_match(&t, "a?.txt"));
        assert!(!wildcard_match(&t, "ab.txt"));
    }

    #[test]
    fn sanitizes_like_the_runner() {
        assert_eq!(sanitize_cache_key("a/../b").as_deref(), Some("b"));
        assert_eq!(sanitize_cache_key("../../etc").as_deref(), Some("etc"));
        assert_eq!(sanitize_cache_key("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(sanitize_cache_key("a\\b ").as_deref(), Some("a/b"));
        assert_eq!(sanitize_cache_key("key  /  ").as_deref(), Some("key"));
        assert_eq!(sanitize_cache_key(".."), None);
        assert_eq!(sanitize_cache_key(""), None);
        assert_eq!(sanitize_cache_key("%2e%2E"), None);
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        assert_eq!(key_file_name("default"), "default");
        assert_eq!(key_file_name("a/b"), "a%2Fb");
        assert_eq!(key_file_name(".x"), "%2Ex");
        assert_eq!(key_file_name("a%2Fb"), "a%252Fb");
        assert_ne!(key_file_name("a b"), key_file_name("a_b"));
        let long = "k".repeat(500);
        let name = key_file_name(&long);
        assert!(name.len() < 200, "{name}");
        assert_ne!(name, key_file_name(&"k".repeat(501)));
    }

    #[test]
    fn git_blob_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("empty"), b"").expect("write");
        fs::write(dir.path().join("hello"), b"hello\n").expect("write");
        // As `git hash-object` prints them.
        assert_eq!(
            git_blob_id(dir.path(), "empty").as_deref(),
            Some("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391")
        );
        assert_eq!(
            git_blob_id(dir.path(), "hello").as_deref(),
            Some("ce013625030ba8dba906f756967f9e9ca394464a")
        );
        assert_eq!(git_blob_id(dir.path(), "./hello"), None);
        assert_eq!(git_blob_id(dir.path(), "missing"), None);
    }
}
