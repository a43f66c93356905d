//! Reading a repository's `.git` directly for the questions asked on every command
//! (where the repository is, which branch is checked out, what a ref points to, which
//! refs exist). Each `git` process costs a few milliseconds, which a local run of a small
//! pipeline notices; these are plain file reads. Anything unusual (reftable refs,
//! `GIT_DIR` in the environment, a file that does not parse) makes the caller ask `git`.

use std::path::{Path, PathBuf};

/// Where a repository keeps its data.
#[derive(Debug, Clone)]
pub struct GitDirs {
    /// The working tree's root.
    pub root: PathBuf,
    /// This working tree's git directory (`.git`, or `.git/worktrees/<name>`).
    pub git_dir: PathBuf,
    /// The directory holding objects and shared refs (the main `.git`).
    pub common_dir: PathBuf,
}

/// The repository containing `start`, found the way git finds it; `None` when git
/// itself should be asked.
pub fn find(start: &Path) -> Option<GitDirs> {
    if [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_COMMON_DIR",
        "GIT_CEILING_DIRECTORIES",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
    {
        return None;
    }
    let start = std::fs::canonicalize(start).ok()?;
    for dir in start.ancestors() {
        let dot_git = dir.join(".git");
        let Ok(meta) = std::fs::symlink_metadata(&dot_git) else {
            continue;
        };
        let git_dir = if meta.is_dir() {
            dot_git
        } else if meta.is_file() {
            let text = std::fs::read_to_string(&dot_git).ok()?;
            let target = text.strip_prefix("gitdir:")?.trim();
            let p = Path::new(target);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        } else {
            return None;
        };
        let common_dir = match std::fs::read_to_string(git_dir.join("commondir")) {
            Ok(c) => {
                let p = Path::new(c.trim());
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    git_dir.join(p)
                }
            }
            Err(_) => git_dir.clone(),
        };
        if !git_dir.join("HEAD").is_file() || common_dir.join("reftable").exists() {
            return None;
        }
        // A bare repository, or `.git` inside a git directory: let git decide.
        if std::fs::read_to_string(common_dir.join("config"))
            .map(|c| c.contains("bare = true"))
            .unwrap_or(false)
        {
            return None;
        }
        return Some(GitDirs {
            root: dir.to_path_buf(),
            git_dir,
            common_dir,
        });
    }
    None
}

fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What `HEAD` says: a branch (`Ok(name)`), or a detached commit (`Err(id)`).
pub fn head(dirs: &GitDirs) -> Option<Result<String, String>> {
    let text = std::fs::read_to_string(dirs.git_dir.join("HEAD")).ok()?;
    let text = text.trim();
    if let Some(r) = text.strip_prefix("ref:") {
        let r = r.trim();
        return r.strip_prefix("refs/heads/").map(|b| Ok(b.to_string()));
    }
    is_object_id(text).then(|| Err(text.to_string()))
}

/// The object a full ref name (`refs/heads/main`) points to; `Some(None)` when it does
/// not exist, `None` when git should be asked (a symbolic ref, an unreadable file).
pub fn resolve(dirs: &GitDirs, name: &str) -> Option<Option<String>> {
    // Per-worktree refs live in the worktree's git directory, the others in the common one.
    for base in [&dirs.git_dir, &dirs.common_dir] {
        if let Ok(text) = std::fs::read_to_string(base.join(name)) {
            let text = text.trim();
            return if is_object_id(text) {
                Some(Some(text.to_string()))
            } else {
                None
            };
        }
    }
    Some(
        packed(dirs)?
            .into_iter()
            .find(|(r, _)| r == name)
            .map(|(_, id)| id),
    )
}

/// The commit `HEAD` points to; `Some(None)` on an unborn branch.
pub fn head_commit(dirs: &GitDirs) -> Option<Option<String>> {
    match head(dirs)? {
        Ok(branch) => resolve(dirs, &format!("refs/heads/{branch}")),
        Err(id) => Some(Some(id)),
    }
}

/// The branch `refs/remotes/origin/HEAD` names, if it is set.
pub fn origin_head(dirs: &GitDirs) -> Option<String> {
    let text = std::fs::read_to_string(dirs.common_dir.join("refs/remotes/origin/HEAD")).ok()?;
    text.trim()
        .strip_prefix("ref:")?
        .trim()
        .strip_prefix("refs/remotes/origin/")
        .map(str::to_string)
}

/// `packed-refs` as `(name, id)` pairs; `Some(empty)` without the file.
fn packed(dirs: &GitDirs) -> Option<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(dirs.common_dir.join("packed-refs")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Vec::new()),
        Err(_) => return None,
    };
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
            .filter_map(|l| {
                let (id, name) = l.split_once(' ')?;
                is_object_id(id).then(|| (name.trim().to_string(), id.to_string()))
            })
            .collect(),
    )
}

/// Every branch and tag as `<id> <name>` lines, as `git for-each-ref` prints them.
pub fn branches_and_tags(dirs: &GitDirs) -> Option<String> {
    let mut refs: std::collections::BTreeMap<String, String> = packed(dirs)?
        .into_iter()
        .filter(|(n, _)| n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
        .collect();
    fn walk(
        base: &Path,
        rel: &str,
        out: &mut std::collections::BTreeMap<String, String>,
    ) -> Option<()> {
        let Ok(rd) = std::fs::read_dir(base.join(rel)) else {
            return Some(());
        };
        for e in rd.flatten() {
            let name = format!("{rel}/{}", e.file_name().to_str()?);
            if e.file_type().ok()?.is_dir() {
                walk(base, &name, out)?;
            } else if let Ok(text) = std::fs::read_to_string(e.path()) {
                let text = text.trim();
                if is_object_id(text) {
                    out.insert(name, text.to_string());
                }
            }
        }
        Some(())
    }
    walk(&dirs.common_dir, "refs/heads", &mut refs)?;
    walk(&dirs.common_dir, "refs/tags", &mut refs)?;
    let mut out = String::new();
    for (name, id) in refs {
        out.push_str(&format!("{id} {name}\n"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "T")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "T")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The answers match git's own, loose and packed, in a linked worktree too.
    #[test]
    fn answers_like_git() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).expect("mkdir");
        git(&repo, &["init", "-q", "-b", "trunk"]);
        std::fs::create_dir(repo.join("sub")).expect("mkdir");
        std::fs::write(repo.join("a"), "a").expect("write");
        git(&repo, &["add", "a"]);
        git(&repo, &["commit", "-qm", "one"]);
        git(&repo, &["tag", "v1"]);
        git(&repo, &["branch", "feature"]);
        git(&repo, &["pack-refs", "--all"]);
        git(&repo, &["branch", "loose"]);
        let d = find(&repo.join("sub")).expect("found");
        assert_eq!(d.root, std::fs::canonicalize(&repo).expect("canon"));
        assert_eq!(head(&d), Some(Ok("trunk".to_string())));
        let sha = git(&repo, &["rev-parse", "HEAD"]);
        assert_eq!(head_commit(&d), Some(Some(sha.clone())));
        assert_eq!(resolve(&d, "refs/heads/feature"), Some(Some(sha.clone())));
        assert_eq!(resolve(&d, "refs/heads/nope"), Some(None));
        let listed = git(
            &repo,
            &[
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/heads",
                "refs/tags",
            ],
        );
        assert_eq!(branches_and_tags(&d).expect("refs").trim(), listed);

        let wt = dir.path().join("wt");
        git(
            &repo,
            &[
                "worktree",
                "add",
                "-q",
                "--detach",
                wt.to_str().expect("utf-8"),
            ],
        );
        let w = find(&wt).expect("worktree");
        assert_eq!(
            w.common_dir.canonicalize().ok(),
            d.git_dir.canonicalize().ok()
        );
        assert_eq!(head(&w), Some(Err(sha.clone())));
        assert_eq!(head_commit(&w), Some(Some(sha)));
    }
}
