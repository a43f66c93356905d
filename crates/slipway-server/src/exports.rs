//! Commits checked out for jobs: each commit is exported from the project's mirror once,
//! into `DATA_DIR/exports/<sha>/tree`, and every job of that commit starts its workspace
//! from it (the runner copies only what differs). The newest exports are kept; older
//! ones are removed when there are more than [`KEEP`].

use crate::git::{GitError, Mirror};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Exports kept on disk.
pub const KEEP: usize = 32;

/// A commit's files on disk.
#[derive(Debug, Clone)]
pub struct Export {
    pub root: PathBuf,
    pub files: Vec<String>,
}

#[derive(Default)]
pub struct Exports {
    /// One export at a time per commit; others wait for it and share it.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Exports {
    /// The files of `sha`, exported from `mirror` under `dir` if not there yet.
    pub async fn get(
        &self,
        dir: &Path,
        mirror: &Arc<Mirror>,
        sha: &str,
    ) -> Result<Export, GitError> {
        if !crate::git::is_sha(sha) {
            return Err(GitError::Invalid(format!("{sha:?} is not a commit id")));
        }
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sha.to_string())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let dir = dir.to_path_buf();
        let mirror = mirror.clone();
        let sha = sha.to_string();
        crate::mirrors::blocking(move || export_blocking(&dir, &mirror, &sha)).await
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> GitError {
    move |error| GitError::Io { context, error }
}

fn export_blocking(dir: &Path, mirror: &Mirror, sha: &str) -> Result<Export, GitError> {
    let at = dir.join(sha);
    let tree = at.join("tree");
    let done = at.join("complete");
    if !done.exists() {
        // Made beside its place and renamed in: a crash leaves no half export.
        let tmp = dir.join(format!(".{sha}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        mirror.export(sha, &tmp.join("tree"))?;
        std::fs::write(tmp.join("complete"), sha)
            .map_err(io(format!("writing in {}", tmp.display())))?;
        let _ = std::fs::remove_dir_all(&at);
        std::fs::rename(&tmp, &at).map_err(io(format!("moving {}", at.display())))?;
        prune(dir, sha);
    } else {
        // Touched, so pruning keeps what is in use.
        let _ = std::fs::write(&done, sha);
    }
    // The files as exported (walking the tree costs less than asking git again).
    let mut files = Vec::new();
    walk(&tree, "", &mut files).map_err(io(format!("reading {}", tree.display())))?;
    files.sort();
    Ok(Export { root: tree, files })
}

/// Every file and symbolic link under `dir`, relative, `/`-separated.
fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Removes the oldest exports beyond [`KEEP`], never `current`.
fn prune(dir: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            !n.starts_with('.') && n != current
        })
        .filter_map(|e| {
            let t = e.path().join("complete").metadata().ok()?.modified().ok()?;
            Some((t, e.path()))
        })
        .collect();
    if all.len() < KEEP {
        return;
    }
    all.sort();
    let excess = all.len() + 1 - KEEP;
    for (_, p) in all.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(p);
    }
}
