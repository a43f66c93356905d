//! The repository the CLI runs in: where its root is, which branch is checked out, which
//! files it has. Answers come from the `git` command, so they match what the user sees,
//! except the simple ones `gitdir.rs` reads from `.git` directly (they are asked on every
//! command, and a `git` process costs milliseconds).

use crate::gitdir::{self, GitDirs};
use slipway_core::source::SourceLoader;
// The server's git runner: no inherited GIT_* variables, no prompts, C locale.
use slipway_server::git::query as git;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A working tree (or a plain directory when there is no git repository).
pub struct Repo {
    pub root: PathBuf,
    pub is_git: bool,
    files: OnceLock<Vec<String>>,
    dirs: Option<GitDirs>,
}

/// What `slipway` needs to know about a commit.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub sha: String,
    /// `Name <email>`.
    pub author: String,
    /// ISO 8601.
    pub timestamp: String,
    pub message: String,
}

impl Repo {
    /// The repository containing `dir`, or `dir` itself when it is not in one.
    pub fn discover(dir: &Path) -> Repo {
        if let Some(d) = gitdir::find(dir) {
            return Repo {
                root: d.root.clone(),
                is_git: true,
                files: OnceLock::new(),
                dirs: Some(d),
            };
        }
        match git(dir, &["rev-parse", "--show-toplevel"]) {
            Some(root) => Repo {
                root: PathBuf::from(root),
                is_git: true,
                files: OnceLock::new(),
                dirs: None,
            },
            None => Repo {
                root: dir.to_path_buf(),
                is_git: false,
                files: OnceLock::new(),
                dirs: None,
            },
        }
    }

    /// The commit `rev` names, with its author, time and message (one `git` call).
    pub fn commit_info(&self, rev: &str) -> Option<CommitInfo> {
        let out = self.git(&[
            "log",
            "-1",
            "--format=%H%x00%an <%ae>%x00%cI%x00%B",
            &format!("{rev}^{{commit}}"),
            "--",
        ])?;
        let mut parts = out.splitn(4, '\0');
        Some(CommitInfo {
            sha: parts.next()?.to_string(),
            author: parts.next().unwrap_or_default().to_string(),
            timestamp: parts.next().unwrap_or_default().to_string(),
            message: parts.next().unwrap_or_default().to_string(),
        })
    }

    /// The git directory holding the repository's objects (the main one for a linked
    /// worktree).
    pub fn objects_git_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.dirs {
            return std::fs::canonicalize(&d.common_dir).ok();
        }
        let dir = self.git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])?;
        Some(PathBuf::from(dir))
    }

    /// Every branch and tag as `<id> <refname>` lines.
    pub fn branches_and_tags(&self) -> String {
        if let Some(refs) = self.dirs.as_ref().and_then(gitdir::branches_and_tags) {
            return refs;
        }
        self.git(&[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads",
            "refs/tags",
        ])
        .map(|r| format!("{r}\n"))
        .unwrap_or_default()
    }

    pub fn git(&self, args: &[&str]) -> Option<String> {
        if !self.is_git {
            return None;
        }
        git(&self.root, args)
    }

    /// The checked-out branch, `None` on a detached HEAD.
    pub fn current_branch(&self) -> Option<String> {
        if let Some(head) = self.dirs.as_ref().and_then(gitdir::head) {
            return head.ok();
        }
        self.git(&["symbolic-ref", "--quiet", "--short", "HEAD"])
    }

    /// A tag pointing exactly at HEAD.
    pub fn current_tag(&self) -> Option<String> {
        self.git(&["describe", "--tags", "--exact-match", "HEAD"])
    }

    pub fn head_sha(&self) -> Option<String> {
        if let Some(sha) = self.dirs.as_ref().and_then(gitdir::head_commit) {
            return sha;
        }
        self.git(&["rev-parse", "--verify", "--quiet", "HEAD"])
    }

    /// Whether the branch `name` exists.
    fn has_branch(&self, name: &str) -> bool {
        let full = format!("refs/heads/{name}");
        if let Some(found) = self.dirs.as_ref().and_then(|d| gitdir::resolve(d, &full)) {
            return found.is_some();
        }
        self.git(&["rev-parse", "--verify", "--quiet", &full])
            .is_some()
    }

    /// The default branch: origin's HEAD when known, else `init.defaultBranch`, else
    /// `main` or `master` when such a branch exists, else `main`.
    pub fn default_branch(&self) -> String {
        let origin = match &self.dirs {
            Some(d) => gitdir::origin_head(d),
            None => self
                .git(&[
                    "symbolic-ref",
                    "--quiet",
                    "--short",
                    "refs/remotes/origin/HEAD",
                ])
                .and_then(|r| r.strip_prefix("origin/").map(str::to_string)),
        };
        if let Some(b) = origin {
            return b;
        }
        for b in ["main", "master"] {
            if self.has_branch(b) {
                return b.to_string();
            }
        }
        self.git(&["config", "init.defaultBranch"])
            .unwrap_or_else(|| "main".to_string())
    }

    /// Tracked files plus untracked files that are not ignored, as the working tree has
    /// them, relative to the root.
    pub fn files(&self) -> &[String] {
        self.files.get_or_init(|| {
            if let Some(out) = self.git(&[
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ]) {
                let mut v: Vec<String> = out
                    .split('\0')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                v.sort();
                v.dedup();
                // Deleted-but-tracked files are listed by --cached; keep only what exists.
                v.retain(|f| self.root.join(f).exists());
                v
            } else {
                let mut v = Vec::new();
                walk(&self.root, &self.root, &mut v);
                v.sort();
                v
            }
        })
    }

    /// A path relative to the root for `path` given relative to the current directory.
    pub fn relative(&self, path: &Path) -> Option<String> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().ok()?.join(path)
        };
        let abs = normalize(&abs);
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let abs = std::fs::canonicalize(&abs).unwrap_or(abs);
        abs.strip_prefix(&root)
            .ok()
            .map(|p| p.to_string_lossy().replace('\\', "/"))
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == ".git" {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(root, &p, out),
            Ok(_) => {
                if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
            Err(_) => {}
        }
    }
}

/// Read the repository file `path` (relative to `root`; a leading `/` is the root).
fn read_inside(root: &Path, path: &str) -> Result<String, String> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("paths may not leave the repository".into());
    }
    std::fs::read_to_string(root.join(rel)).map_err(|e| e.to_string())
}

impl SourceLoader for Repo {
    fn read(&self, path: &str) -> Result<String, String> {
        read_inside(&self.root, path)
    }

    fn list(&self) -> Vec<String> {
        self.files().to_vec()
    }
}

/// A directory with a known file list: a commit's checkout, read like a working tree.
pub struct Snapshot {
    pub root: PathBuf,
    pub files: Vec<String>,
}

impl SourceLoader for Snapshot {
    fn read(&self, path: &str) -> Result<String, String> {
        read_inside(&self.root, path)
    }

    fn list(&self) -> Vec<String> {
        self.files.clone()
    }
}

impl Repo {
    /// The full id of the commit `rev` names.
    pub fn resolve_commit(&self, rev: &str) -> Result<String, String> {
        if !self.is_git {
            return Err(format!(
                "{} is not a git repository: --commit needs one",
                self.root.display()
            ));
        }
        self.git(&[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ])
        .ok_or_else(|| format!("--commit {rev}: no such commit in {}", self.root.display()))
    }

    /// A clean checkout of `commit` in `dir` (made once, then reused: a commit never
    /// changes), without touching the working tree, the index or the refs: the files are
    /// written through a temporary index. Returns the files, as `git ls-tree` lists them
    /// (submodules left out).
    pub fn checkout(&self, commit: &str, dir: &Path) -> Result<Snapshot, String> {
        let listing = self
            .git(&["ls-tree", "-r", "-z", "--full-tree", commit])
            .ok_or_else(|| format!("cannot list the files of commit {commit}"))?;
        let files: Vec<String> = listing
            .split('\0')
            .filter_map(|entry| {
                let (meta, path) = entry.split_once('\t')?;
                (meta.split(' ').nth(1) == Some("blob")).then(|| path.to_string())
            })
            .collect();
        let done = dir.join(".slipway-checkout-complete");
        if done.exists() {
            return Ok(Snapshot {
                root: dir.join("tree"),
                files,
            });
        }
        let tmp = dir.with_file_name(format!(
            ".{}-{}",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("tree"))
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let index = tmp.join("index");
        let prefix = format!("{}/", tmp.join("tree").display());
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(&self.root)
                .args(args)
                .env("GIT_INDEX_FILE", &index)
                .output()
                .map_err(|e| format!("cannot run git: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "git {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(&["read-tree", commit])?;
        run(&[
            "checkout-index",
            "--all",
            "--force",
            &format!("--prefix={prefix}"),
        ])?;
        let _ = std::fs::remove_file(&index);
        std::fs::write(tmp.join(".slipway-checkout-complete"), commit)
            .map_err(|e| format!("cannot write in {}: {e}", tmp.display()))?;
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        // Another run may have finished the same checkout first: either one will do.
        if std::fs::rename(&tmp, dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
            if !done.exists() {
                return Err(format!("cannot move the checkout into {}", dir.display()));
            }
        }
        Ok(Snapshot {
            root: dir.join("tree"),
            files,
        })
    }
}
