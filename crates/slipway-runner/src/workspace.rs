//! Job workspaces. Each job runs in its own directory holding the repository's files as
//! the source has them (the working tree: tracked plus untracked-not-ignored files, or a
//! checkout of a commit). A workspace persists between runs of the same job and is brought
//! up to date incrementally, like rsync: a file is copied only when its size, mtime or
//! mode differ from the source, files the source does not have are deleted. So a job
//! always starts from exactly the source's files, and preparing it on a large repository
//! costs a `stat` per file instead of a copy per file.
//!
//! Hard links are not used: a job writing into a file in place would change the
//! developer's working tree or another job's workspace.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The files a workspace is made from.
#[derive(Debug, Clone)]
pub struct Source {
    pub root: PathBuf,
    /// Paths relative to `root`, `/`-separated.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub copied: usize,
    pub unchanged: usize,
    pub removed: usize,
}

/// Bring `dest` to exactly the source's files. `keep` names top-level entries of `dest`
/// that are not touched (the workspace's own `.git`).
pub fn sync(source: &Source, dest: &Path, keep: &[&str]) -> io::Result<SyncStats> {
    let mut stats = SyncStats::default();
    fs::create_dir_all(dest).map_err(|e| annotate(e, dest))?;
    let mut wanted: HashSet<PathBuf> = HashSet::with_capacity(source.files.len() * 2);
    let mut made_dirs: HashSet<PathBuf> = HashSet::new();
    for rel in &source.files {
        let rel_path = Path::new(rel);
        if rel_path.is_absolute()
            || rel_path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            continue;
        }
        let src = source.root.join(rel_path);
        let Ok(meta) = fs::symlink_metadata(&src) else {
            // Listed but gone (deleted in the working tree): the workspace lacks it too.
            continue;
        };
        let target = dest.join(rel_path);
        let mut parent = rel_path.parent();
        while let Some(p) = parent {
            if p.as_os_str().is_empty() {
                break;
            }
            wanted.insert(p.to_path_buf());
            parent = p.parent();
        }
        wanted.insert(rel_path.to_path_buf());
        if let Some(parent) = target.parent() {
            if !made_dirs.contains(parent) {
                ensure_dir(parent)?;
                made_dirs.insert(parent.to_path_buf());
            }
        }
        if up_to_date(&src, &meta, &target) {
            stats.unchanged += 1;
            continue;
        }
        copy_entry(&src, &meta, &target)?;
        stats.copied += 1;
    }
    stats.removed = prune(dest, dest, &wanted, keep)?;
    Ok(stats)
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Make `dir` a directory, replacing a file or symlink that stands in the way.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            fs::remove_file(dir).map_err(|e| annotate(e, dir))?;
            fs::create_dir_all(dir).map_err(|e| annotate(e, dir))
        }
        Err(_) => {
            if let Some(parent) = dir.parent() {
                if parent != dir && !parent.as_os_str().is_empty() {
                    ensure_dir(parent)?;
                }
            }
            match fs::create_dir(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(annotate(e, dir)),
            }
        }
    }
}

fn up_to_date(src_path: &Path, src: &fs::Metadata, target: &Path) -> bool {
    let Ok(t) = fs::symlink_metadata(target) else {
        return false;
    };
    if src.file_type().is_symlink() {
        return t.file_type().is_symlink()
            && fs::read_link(target).ok() == fs::read_link(src_path).ok();
    }
    t.is_file()
        && t.len() == src.len()
        && t.mtime() == src.mtime()
        && t.mtime_nsec() == src.mtime_nsec()
        && t.mode() & 0o7777 == src.mode() & 0o7777
}

fn copy_entry(src: &Path, meta: &fs::Metadata, target: &Path) -> io::Result<()> {
    if let Ok(t) = fs::symlink_metadata(target) {
        if t.is_dir() {
            fs::remove_dir_all(target).map_err(|e| annotate(e, target))?;
        } else {
            fs::remove_file(target).map_err(|e| annotate(e, target))?;
        }
    }
    if meta.file_type().is_symlink() {
        let link = fs::read_link(src).map_err(|e| annotate(e, src))?;
        std::os::unix::fs::symlink(&link, target).map_err(|e| annotate(e, target))?;
        return Ok(());
    }
    if !meta.is_file() {
        return Ok(());
    }
    // std's copy uses copy_file_range (a reflink on file systems that have them).
    fs::copy(src, target).map_err(|e| annotate(e, src))?;
    fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| annotate(e, target))?;
    let mtime = meta.modified().map_err(|e| annotate(e, src))?;
    let f = fs::File::options()
        .write(true)
        .open(target)
        .map_err(|e| annotate(e, target))?;
    f.set_modified(mtime).map_err(|e| annotate(e, target))?;
    Ok(())
}

/// Delete what the source does not have. Returns the number of entries removed.
fn prune(root: &Path, dir: &Path, wanted: &HashSet<PathBuf>, keep: &[&str]) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(annotate(e, dir)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| annotate(e, dir))?;
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if dir == root && keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        let ft = entry.file_type().map_err(|e| annotate(e, &path))?;
        if !wanted.contains(rel) {
            if ft.is_dir() {
                make_writable(&path);
                fs::remove_dir_all(&path).map_err(|e| annotate(e, &path))?;
            } else {
                fs::remove_file(&path).map_err(|e| annotate(e, &path))?;
            }
            removed += 1;
        } else if ft.is_dir() {
            removed += prune(root, &path, wanted, keep)?;
        }
    }
    Ok(removed)
}

/// Jobs may leave read-only directories behind (Go's module cache does); make them
/// deletable.
fn make_writable(dir: &Path) {
    if let Ok(m) = fs::symlink_metadata(dir) {
        if m.is_dir() {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(m.mode() | 0o700));
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

/// Give the workspace a `.git` that shows the commit being built without touching the
/// developer's repository: objects are borrowed through `alternates`, HEAD is detached at
/// `commit` as GitLab Runner leaves it, and refs (branches, tags) are copied in
/// `packed-refs` so `git describe` works. No git process is needed.
pub fn link_git(
    dest: &Path,
    source_git_dir: &Path,
    commit: &str,
    packed_refs: &str,
) -> io::Result<()> {
    let git = dest.join(".git");
    for d in ["objects/info", "refs/heads", "refs/tags"] {
        fs::create_dir_all(git.join(d)).map_err(|e| annotate(e, &git))?;
    }
    let objects = source_git_dir.join("objects");
    fs::write(
        git.join("objects/info/alternates"),
        format!("{}\n", objects.display()),
    )?;
    fs::write(git.join("HEAD"), format!("{commit}\n"))?;
    let config = git.join("config");
    if !config.exists() {
        fs::write(
            &config,
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n",
        )?;
    }
    fs::write(git.join("packed-refs"), packed_refs)?;
    // A stale index from an earlier run would show changes that are not there.
    let _ = fs::remove_file(git.join("index"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    #[test]
    fn first_sync_copies_then_nothing_changes() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        write(src.path(), "a.txt", "a");
        write(src.path(), "dir/b.txt", "b");
        let source = Source {
            root: src.path().into(),
            files: vec!["a.txt".into(), "dir/b.txt".into()],
        };
        let s1 = sync(&source, dst.path(), &[]).expect("sync");
        assert_eq!(s1.copied, 2);
        let s2 = sync(&source, dst.path(), &[]).expect("sync");
        assert_eq!((s2.copied, s2.unchanged, s2.removed), (0, 2, 0));
        assert_eq!(
            fs::read_to_string(dst.path().join("dir/b.txt")).expect("read"),
            "b"
        );
    }

    #[test]
    fn job_changes_are_undone_and_extra_files_removed() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        write(src.path(), "a.txt", "original");
        let source = Source {
            root: src.path().into(),
            files: vec!["a.txt".into()],
        };
        sync(&source, dst.path(), &[]).expect("sync");
        // A job modifies a file, adds build output and a directory.
        fs::write(dst.path().join("a.txt"), "changed by job!").expect("write");
        write(dst.path(), "target/out.bin", "x");
        write(dst.path(), ".git/HEAD", "kept");
        let s = sync(&source, dst.path(), &[".git"]).expect("sync");
        assert_eq!(s.copied, 1);
        assert_eq!(s.removed, 1);
        assert_eq!(
            fs::read_to_string(dst.path().join("a.txt")).expect("read"),
            "original"
        );
        assert!(!dst.path().join("target").exists());
        assert!(dst.path().join(".git/HEAD").exists());
        // The source is never touched.
        assert_eq!(
            fs::read_to_string(src.path().join("a.txt")).expect("read"),
            "original"
        );
    }

    #[test]
    fn modes_and_symlinks_are_kept() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        write(src.path(), "run.sh", "#!/bin/sh\n");
        fs::set_permissions(src.path().join("run.sh"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::os::unix::fs::symlink("run.sh", src.path().join("link")).expect("symlink");
        let source = Source {
            root: src.path().into(),
            files: vec!["run.sh".into(), "link".into()],
        };
        sync(&source, dst.path(), &[]).expect("sync");
        let m = fs::metadata(dst.path().join("run.sh")).expect("meta");
        assert_eq!(m.mode() & 0o777, 0o755);
        assert_eq!(
            fs::read_link(dst.path().join("link")).expect("link"),
            PathBuf::from("run.sh")
        );
    }

    #[test]
    fn a_file_replaced_by_a_directory_and_back() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        write(src.path(), "x/y", "y");
        let source = Source {
            root: src.path().into(),
            files: vec!["x/y".into()],
        };
        sync(&source, dst.path(), &[]).expect("sync");
        fs::remove_dir_all(dst.path().join("x")).expect("rm");
        fs::write(dst.path().join("x"), "now a file").expect("write");
        sync(&source, dst.path(), &[]).expect("sync");
        assert_eq!(
            fs::read_to_string(dst.path().join("x/y")).expect("read"),
            "y"
        );
    }

    #[test]
    fn paths_leaving_the_root_are_ignored() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        let source = Source {
            root: src.path().into(),
            files: vec!["../evil".into(), "/etc/passwd".into()],
        };
        let s = sync(&source, dst.path(), &[]).expect("sync");
        assert_eq!(s.copied, 0);
    }
}
