//! Git repository access with the `git` command, so that every answer matches what the
//! user's own git says and every repository format git supports works.
//!
//! The server keeps one bare [`Mirror`] per project, made from a local path (bare or not)
//! or a clone URL and brought up to date with `git fetch --prune`. Pushes are detected by
//! comparing [`RefSnapshot`]s (polling) or reported by the `post-receive` hook; pipeline
//! files, file lists and changes are read from commits, never from a working tree; a job's
//! workspace is a commit exported with [`Mirror::export`].
//!
//! Everything here blocks on a child process: async callers use `spawn_blocking`. Child
//! processes never inherit the `GIT_*` variables of a hook environment, never prompt for
//! credentials, and never run the `ext::` transport.

use slipway_core::source::SourceLoader;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Forty zeros: git's "no object", the old SHA of a created ref and the new SHA of a
/// deleted one.
pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// How long a network operation (clone, fetch, `ls-remote`) may take by default.
pub const DEFAULT_NETWORK_TIMEOUT: Duration = Duration::from_secs(600);

/// Environment variables a hook (or a test harness run from one) may have set that would
/// point a child git at another repository.
const GIT_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
    "GIT_NAMESPACE",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_PUSH_OPTION_COUNT",
];

/// What went wrong running git.
#[derive(Debug)]
pub enum GitError {
    /// `git` could not be started (not installed, not on `PATH`).
    Spawn(std::io::Error),
    /// git ran and failed.
    Failed {
        /// The command line, without the repository path.
        command: String,
        /// What git printed on standard error, trimmed.
        stderr: String,
    },
    /// The operation took longer than allowed and git was killed.
    Timeout { command: String, after: Duration },
    /// A file system operation around git failed.
    Io {
        context: String,
        error: std::io::Error,
    },
    /// The request itself is not acceptable (a path leaving the repository, a URL that
    /// looks like an option, a malformed SHA).
    Invalid(String),
}

impl fmt::Display for GitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitError::Spawn(e) => write!(f, "cannot run git: {e}"),
            GitError::Failed { command, stderr } if stderr.is_empty() => {
                write!(f, "{command} failed")
            }
            GitError::Failed { command, stderr } => write!(f, "{command} failed: {stderr}"),
            GitError::Timeout { command, after } => {
                write!(f, "{command} did not finish within {}s", after.as_secs())
            }
            GitError::Io { context, error } => write!(f, "{context}: {error}"),
            GitError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for GitError {}

/// A git command about to run, with the hygiene every call needs.
struct GitCommand {
    cmd: Command,
    shown: String,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl GitCommand {
    fn new(git_dir: Option<&Path>) -> GitCommand {
        let mut cmd = Command::new("git");
        for var in GIT_ENV {
            cmd.env_remove(var);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env("LC_ALL", "C")
            .args([
                "-c",
                "protocol.ext.allow=never",
                "-c",
                "core.quotePath=false",
            ]);
        if let Some(dir) = git_dir {
            cmd.arg("--git-dir").arg(dir);
        }
        GitCommand {
            cmd,
            shown: "git".into(),
            stdin: None,
            timeout: None,
        }
    }

    fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        let a = a.as_ref();
        self.shown.push(' ');
        self.shown.push_str(&a.to_string_lossy());
        self.cmd.arg(a);
        self
    }

    fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    fn env(&mut self, k: &str, v: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(k, v);
        self
    }

    fn stdin(&mut self, input: Vec<u8>) -> &mut Self {
        self.stdin = Some(input);
        self
    }

    fn timeout(&mut self, t: Duration) -> &mut Self {
        self.timeout = Some(t);
        self
    }

    /// Runs git; standard output on success.
    fn run(&mut self) -> Result<Vec<u8>, GitError> {
        let (ok, out, err) = self.run_status()?;
        if ok {
            Ok(out)
        } else {
            Err(GitError::Failed {
                command: self.shown.clone(),
                stderr: String::from_utf8_lossy(&err).trim().to_string(),
            })
        }
    }

    /// Runs git; whether it succeeded, standard output and standard error.
    fn run_status(&mut self) -> Result<(bool, Vec<u8>, Vec<u8>), GitError> {
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().map_err(GitError::Spawn)?;
        // Readers and the writer run on their own threads so that a large output or input
        // never deadlocks on a full pipe.
        let writer = match (self.stdin.take(), child.stdin.take()) {
            (Some(input), Some(mut pipe)) => Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            })),
            _ => None,
        };
        let out = child.stdout.take().map(|mut p| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = p.read_to_end(&mut v);
                v
            })
        });
        let err = child.stderr.take().map(|mut p| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = p.read_to_end(&mut v);
                v
            })
        });
        let status = match self.timeout {
            None => child.wait(),
            Some(limit) => {
                let start = Instant::now();
                loop {
                    match child.try_wait() {
                        Ok(Some(s)) => break Ok(s),
                        Ok(None) if start.elapsed() >= limit => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(GitError::Timeout {
                                command: self.shown.clone(),
                                after: limit,
                            });
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                        Err(e) => break Err(e),
                    }
                }
            }
        }
        .map_err(|e| GitError::Io {
            context: format!("waiting for {}", self.shown),
            error: e,
        })?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        let out = out.and_then(|h| h.join().ok()).unwrap_or_default();
        let err = err.and_then(|h| h.join().ok()).unwrap_or_default();
        Ok((status.success(), out, err))
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\n')
        .to_string()
}

/// Runs `git -C dir ARGS` and returns its standard output without the trailing newline,
/// or `None` when git fails. For questions about a working tree where "no answer" is an
/// answer (the CLI's branch, tag, file list).
pub fn query(dir: &Path, args: &[&str]) -> Option<String> {
    let mut c = GitCommand::new(None);
    c.arg("-C").arg(dir).args(args);
    c.run().ok().map(text)
}

/// Whether `s` is a full hexadecimal object name (SHA-1 or SHA-256).
pub fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where a project's repository comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoSource {
    /// A repository on this machine, bare or with a working tree.
    Local(PathBuf),
    /// Anything git can clone from: `https://`, `ssh://`, `git@host:path`, `file://`.
    Url(String),
}

impl RepoSource {
    /// A local path when `s` names an existing directory, else a URL.
    pub fn parse(s: &str) -> Result<RepoSource, GitError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(GitError::Invalid("the repository location is empty".into()));
        }
        if s.starts_with('-') {
            return Err(GitError::Invalid(format!(
                "{s}: a repository location may not start with '-'"
            )));
        }
        if s.starts_with("ext::") || s.contains("::") && !s.contains("://") {
            return Err(GitError::Invalid(format!(
                "{s}: git remote helpers (`transport::address`) are not allowed"
            )));
        }
        let p = Path::new(s);
        if p.is_dir() {
            let abs = std::fs::canonicalize(p).map_err(|e| GitError::Io {
                context: format!("resolving {s}"),
                error: e,
            })?;
            return Ok(RepoSource::Local(abs));
        }
        if p.is_absolute() || s.starts_with("./") || s.starts_with("../") {
            return Err(GitError::Invalid(format!("{s}: no such directory")));
        }
        Ok(RepoSource::Url(s.to_string()))
    }

    fn as_arg(&self) -> &OsStr {
        match self {
            RepoSource::Local(p) => p.as_os_str(),
            RepoSource::Url(u) => OsStr::new(u),
        }
    }
}

/// The kind of a ref that pipelines run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    Branch,
    Tag,
}

/// A full ref name (`refs/heads/main`) split into its kind and short name.
pub fn split_ref(full: &str) -> Option<(RefKind, &str)> {
    if let Some(b) = full.strip_prefix("refs/heads/") {
        Some((RefKind::Branch, b))
    } else {
        full.strip_prefix("refs/tags/").map(|t| (RefKind::Tag, t))
    }
}

/// One ref's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefTarget {
    /// The object the ref points at (for an annotated tag, the tag object).
    pub sha: String,
    /// The commit it points at (equal to `sha` except for annotated tags).
    pub commit: String,
}

/// Every branch and tag of a repository at one moment, by full ref name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefSnapshot {
    pub refs: BTreeMap<String, RefTarget>,
}

/// How a ref changed between two snapshots, or in one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefChangeKind {
    Created,
    Updated,
    Deleted,
}

/// A ref that changed: what the `post-receive` hook reports, and what comparing two
/// snapshots finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The full ref name, `refs/heads/main` or `refs/tags/v1.0`.
    pub ref_name: String,
    /// The value before; `None` when the ref is new.
    pub old: Option<String>,
    /// The value after; `None` when the ref was deleted.
    pub new: Option<String>,
}

impl RefUpdate {
    /// From the hook's `OLD NEW REF` triple (forty zeros meaning "none").
    pub fn from_shas(old: &str, new: &str, ref_name: &str) -> Result<RefUpdate, GitError> {
        for s in [old, new] {
            if !is_sha(s) {
                return Err(GitError::Invalid(format!("{s}: not an object name")));
            }
        }
        if !ref_name.starts_with("refs/") || ref_name.contains(['\n', '\0', ' ']) {
            return Err(GitError::Invalid(format!("{ref_name}: not a ref name")));
        }
        let opt = |s: &str| (!s.bytes().all(|b| b == b'0')).then(|| s.to_ascii_lowercase());
        Ok(RefUpdate {
            ref_name: ref_name.to_string(),
            old: opt(old),
            new: opt(new),
        })
    }

    /// Created, updated or deleted. No new value is a deletion even when the old one is
    /// unknown (Gitea's `delete` webhook does not give it).
    pub fn kind(&self) -> RefChangeKind {
        match (&self.old, &self.new) {
            (_, None) => RefChangeKind::Deleted,
            (None, Some(_)) => RefChangeKind::Created,
            (Some(_), Some(_)) => RefChangeKind::Updated,
        }
    }

    /// Branch or tag and the short name; `None` for other refs (notes, pull heads).
    pub fn split(&self) -> Option<(RefKind, &str)> {
        split_ref(&self.ref_name)
    }
}

impl RefSnapshot {
    /// What changed from `self` to `newer`: created, updated and deleted refs, in ref
    /// name order. A ref whose target is unchanged is not listed.
    pub fn changes_to(&self, newer: &RefSnapshot) -> Vec<RefUpdate> {
        let mut out = Vec::new();
        for (name, new) in &newer.refs {
            match self.refs.get(name) {
                Some(old) if old.sha == new.sha => {}
                old => out.push(RefUpdate {
                    ref_name: name.clone(),
                    old: old.map(|o| o.sha.clone()),
                    new: Some(new.sha.clone()),
                }),
            }
        }
        for (name, old) in &self.refs {
            if !newer.refs.contains_key(name) {
                out.push(RefUpdate {
                    ref_name: name.clone(),
                    old: Some(old.sha.clone()),
                    new: None,
                });
            }
        }
        out.sort_by(|a, b| a.ref_name.cmp(&b.ref_name));
        out
    }

    pub fn get(&self, full_ref: &str) -> Option<&RefTarget> {
        self.refs.get(full_ref)
    }

    pub fn branch(&self, name: &str) -> Option<&RefTarget> {
        self.refs.get(&format!("refs/heads/{name}"))
    }

    pub fn tag(&self, name: &str) -> Option<&RefTarget> {
        self.refs.get(&format!("refs/tags/{name}"))
    }

    /// `packed-refs` text for these refs, for a job workspace's `.git` (so `git describe`
    /// and `git branch -a` work there).
    pub fn packed_refs(&self) -> String {
        let mut s = String::from("# pack-refs with: peeled fully-peeled sorted \n");
        for (name, t) in &self.refs {
            s.push_str(&format!("{} {name}\n", t.sha));
            if t.commit != t.sha {
                s.push_str(&format!("^{}\n", t.commit));
            }
        }
        s
    }
}

/// A commit's metadata, for the `CI_COMMIT_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub sha: String,
    pub parents: Vec<String>,
    /// `Name <email>`.
    pub author: String,
    /// Committer date, ISO 8601 (`2024-05-01T10:00:00+02:00`).
    pub timestamp: String,
    /// The full message.
    pub message: String,
}

/// What [`Mirror::export`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    /// Files (including symbolic links) written.
    pub files: usize,
}

/// A bare repository the server owns: one per project, fetched from the project's source.
///
/// Fetches are serialised per mirror (git's ref locks would make a second concurrent fetch
/// fail); reads run concurrently. Keep one `Mirror` per project (in an `Arc`).
#[derive(Debug)]
pub struct Mirror {
    path: PathBuf,
    fetch_lock: Mutex<()>,
    network_timeout: Duration,
}

/// The refs a mirror keeps: branches and tags, each replaced as the source has it.
const FETCH_REFSPECS: &[&str] = &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

impl Mirror {
    /// Opens an existing mirror.
    pub fn open(path: &Path) -> Result<Mirror, GitError> {
        let m = Mirror {
            path: path.to_path_buf(),
            fetch_lock: Mutex::new(()),
            network_timeout: DEFAULT_NETWORK_TIMEOUT,
        };
        let out = m.git().args(["rev-parse", "--is-bare-repository"]).run()?;
        if text(out) != "true" {
            return Err(GitError::Invalid(format!(
                "{}: not a bare repository",
                path.display()
            )));
        }
        Ok(m)
    }

    /// Opens the mirror at `path`, or creates it from `source` and fetches everything.
    /// Creation is atomic: the mirror is built beside `path` and renamed into place, so a
    /// crash or a failed first fetch leaves nothing half-made.
    pub fn create_or_open(path: &Path, source: &RepoSource) -> Result<Mirror, GitError> {
        if path.join("HEAD").exists() {
            let m = Mirror::open(path)?;
            m.set_source(source)?;
            return Ok(m);
        }
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| GitError::Io {
            context: format!("creating {}", parent.display()),
            error: e,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "mirror".into());
        let tmp = tempfile_path(parent, &format!("new-mirror-{name}"));
        let result = (|| {
            GitCommand::new(None)
                .args(["init", "--quiet", "--bare"])
                .arg(&tmp)
                .run()?;
            let m = Mirror {
                path: tmp.clone(),
                fetch_lock: Mutex::new(()),
                network_timeout: DEFAULT_NETWORK_TIMEOUT,
            };
            m.git()
                .args(["config", "remote.origin.url"])
                .arg(source.as_arg())
                .run()?;
            for spec in FETCH_REFSPECS {
                m.git()
                    .args(["config", "--add", "remote.origin.fetch", spec])
                    .run()?;
            }
            // Jobs and diffs read the mirror; git's automatic maintenance would compete
            // with them for the two cores; `gc` is run by the server at quiet times.
            m.git().args(["config", "gc.auto", "0"]).run()?;
            m.git()
                .args(["config", "maintenance.auto", "false"])
                .run()?;
            m.fetch()?;
            Ok::<(), GitError>(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Someone else made it meanwhile: theirs is as good as ours.
            if path.join("HEAD").exists() {
                return Mirror::open(path);
            }
            return Err(GitError::Io {
                context: format!("moving the new mirror to {}", path.display()),
                error: e,
            });
        }
        Mirror::open(path)
    }

    /// Changes where the mirror fetches from (the project's repository moved).
    pub fn set_source(&self, source: &RepoSource) -> Result<(), GitError> {
        // Read first: opening a mirror calls this every time, and a needless write
        // takes git's config lock, which a concurrent reader-turned-writer then hits.
        let (ok, current, _) = self
            .git()
            .args(["config", "--get", "remote.origin.url"])
            .run_status()?;
        let current = current.strip_suffix(b"\n").unwrap_or(&current);
        if ok && current == std::os::unix::ffi::OsStrExt::as_bytes(source.as_arg()) {
            return Ok(());
        }
        self.git()
            .args(["config", "remote.origin.url"])
            .arg(source.as_arg())
            .run()
            .map(|_| ())
    }

    /// Limits how long a fetch may take (default [`DEFAULT_NETWORK_TIMEOUT`]).
    pub fn with_network_timeout(mut self, t: Duration) -> Mirror {
        self.network_timeout = t;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn git(&self) -> GitCommand {
        GitCommand::new(Some(&self.path))
    }

    /// Brings the mirror up to date with its source (`git fetch --prune`: new, moved and
    /// deleted branches and tags), follows the source's default branch, and returns the
    /// refs before and after, so the caller can compare them.
    pub fn fetch(&self) -> Result<(RefSnapshot, RefSnapshot), GitError> {
        let _guard = self.fetch_lock.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.refs()?;
        self.git()
            .args([
                "fetch",
                "--quiet",
                "--prune",
                "--prune-tags",
                "--no-write-fetch-head",
                "--no-auto-gc",
                "--no-recurse-submodules",
                "origin",
            ])
            .timeout(self.network_timeout)
            .run()?;
        self.follow_default_branch()?;
        let after = self.refs()?;
        Ok((before, after))
    }

    /// One poll of the source: fetch, and the branches and tags it created, moved or
    /// deleted since the last fetch, in ref name order.
    pub fn poll(&self) -> Result<Vec<RefUpdate>, GitError> {
        let (before, after) = self.fetch()?;
        Ok(before.changes_to(&after))
    }

    /// Fetches extra refs into the mirror, such as a pull request's head
    /// (`+refs/pull/12/head:refs/pull/12/head`), whatever the configured refspecs.
    pub fn fetch_refspecs(&self, refspecs: &[&str]) -> Result<(), GitError> {
        for spec in refspecs {
            if spec.starts_with('-') {
                return Err(GitError::Invalid(format!("{spec}: not a refspec")));
            }
        }
        let _guard = self.fetch_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.git()
            .args([
                "fetch",
                "--quiet",
                "--no-write-fetch-head",
                "--no-auto-gc",
                "origin",
            ])
            .args(refspecs)
            .timeout(self.network_timeout)
            .run()
            .map(|_| ())
    }

    /// Points the mirror's HEAD at the source's HEAD branch, so that
    /// [`default_branch`](Self::default_branch) is the source's.
    fn follow_default_branch(&self) -> Result<(), GitError> {
        let out = self
            .git()
            .args(["ls-remote", "--symref", "origin", "HEAD"])
            .timeout(self.network_timeout)
            .run()?;
        let out = text(out);
        let head = out.lines().find_map(|l| {
            l.strip_prefix("ref: ")
                .and_then(|r| r.strip_suffix("\tHEAD"))
                .map(str::to_string)
        });
        if let Some(head) = head {
            if head.starts_with("refs/heads/") {
                self.git().args(["symbolic-ref", "HEAD", &head]).run()?;
            }
        }
        Ok(())
    }

    /// Every branch and tag with what it points at.
    pub fn refs(&self) -> Result<RefSnapshot, GitError> {
        let out = self
            .git()
            .args([
                "for-each-ref",
                "--format=%(objectname) %(*objectname) %(refname)",
                "refs/heads",
                "refs/tags",
            ])
            .run()?;
        let mut snap = RefSnapshot::default();
        for line in String::from_utf8_lossy(&out).lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(sha), Some(peeled), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let commit = if peeled.is_empty() { sha } else { peeled };
            snap.refs.insert(
                name.to_string(),
                RefTarget {
                    sha: sha.to_string(),
                    commit: commit.to_string(),
                },
            );
        }
        Ok(snap)
    }

    /// The default branch: the branch HEAD names (the source's default branch after a
    /// fetch), `None` when HEAD names no existing branch.
    pub fn default_branch(&self) -> Option<String> {
        let out = self
            .git()
            .args(["symbolic-ref", "--quiet", "HEAD"])
            .run()
            .ok()?;
        let full = text(out);
        let name = full.strip_prefix("refs/heads/")?.to_string();
        self.resolve_commit(&full).ok().flatten().map(|_| name)
    }

    /// The commit `rev` names (a SHA, a full or short ref name, `main~2`), `None` when it
    /// names no commit.
    pub fn resolve_commit(&self, rev: &str) -> Result<Option<String>, GitError> {
        if rev.starts_with('-') || rev.is_empty() {
            return Err(GitError::Invalid(format!("{rev}: not a revision")));
        }
        let (ok, out, _) = self
            .git()
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{rev}^{{commit}}"))
            .run_status()?;
        Ok(ok.then(|| text(out)).filter(|s| is_sha(s)))
    }

    /// The commit's metadata.
    pub fn commit_info(&self, sha: &str) -> Result<CommitInfo, GitError> {
        check_rev(sha)?;
        let out = self
            .git()
            .args([
                "log",
                "-1",
                "--no-show-signature",
                "--format=%H%x00%P%x00%an <%ae>%x00%cI%x00%B",
                "--end-of-options",
                sha,
            ])
            .run()?;
        let s = String::from_utf8_lossy(&out);
        let mut f = s.splitn(5, '\0');
        let sha = f.next().unwrap_or_default().to_string();
        let parents = f
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let author = f.next().unwrap_or_default().to_string();
        let timestamp = f.next().unwrap_or_default().to_string();
        let message = f
            .next()
            .unwrap_or_default()
            .trim_end_matches('\n')
            .to_string();
        Ok(CommitInfo {
            sha,
            parents,
            author,
            timestamp,
            message,
        })
    }

    /// The message of an annotated tag (`CI_COMMIT_TAG_MESSAGE`); `None` for a lightweight
    /// tag or no such tag.
    pub fn tag_message(&self, tag: &str) -> Result<Option<String>, GitError> {
        let full = format!("refs/tags/{tag}");
        check_rev(tag)?;
        let out = self
            .git()
            .args([
                "for-each-ref",
                "--format=%(objecttype)%00%(contents)",
                &full,
            ])
            .run()?;
        let s = String::from_utf8_lossy(&out);
        Ok(s.strip_prefix("tag\0")
            .map(|m| m.trim_end_matches('\n').to_string()))
    }

    /// The bytes of the file at `path` in `commit`; `None` when there is no such file
    /// (missing, or a directory).
    pub fn read_file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        check_rev(commit)?;
        let rel = clean_path(path)?;
        let out = self
            .git()
            .args(["cat-file", "--batch"])
            .stdin(format!("{commit}:{rel}\n").into_bytes())
            .run()?;
        // `<sha> blob <size>\n<bytes>\n`, or `<name> missing\n`.
        let Some(nl) = out.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let header = String::from_utf8_lossy(&out[..nl]);
        let mut h = header.split(' ');
        let (_, kind, size) = (h.next(), h.next(), h.next());
        if kind != Some("blob") {
            return Ok(None);
        }
        let size: usize = size.and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = out
            .get(nl + 1..nl + 1 + size)
            .ok_or_else(|| GitError::Failed {
                command: "git cat-file --batch".into(),
                stderr: "short output".into(),
            })?;
        Ok(Some(body.to_vec()))
    }

    /// Every file path in `commit` (blobs and symbolic links; not submodules), sorted,
    /// `/`-separated: what `rules:exists` and `include:local` globs see.
    pub fn list_files(&self, commit: &str) -> Result<Vec<String>, GitError> {
        check_rev(commit)?;
        let out = self
            .git()
            .args([
                "ls-tree",
                "-r",
                "-z",
                "--full-tree",
                "--end-of-options",
                commit,
            ])
            .run()?;
        let mut files = Vec::new();
        for entry in out.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            // `<mode> SP <type> SP <object> TAB <path>`
            let Some(tab) = entry.iter().position(|&b| b == b'\t') else {
                continue;
            };
            let meta = String::from_utf8_lossy(&entry[..tab]);
            if meta.split(' ').nth(1) != Some("blob") {
                continue;
            }
            files.push(String::from_utf8_lossy(&entry[tab + 1..]).to_string());
        }
        files.sort();
        Ok(files)
    }

    /// The files that differ between `base` and `head` as GitLab computes a push's or a
    /// merge request's changes: from their merge base to `head` (`git diff base...head`),
    /// renames shown as their new path and deletions included. Sorted.
    pub fn changed_files(&self, base: &str, head: &str) -> Result<Vec<String>, GitError> {
        check_rev(base)?;
        check_rev(head)?;
        let out = self
            .git()
            .args([
                "diff",
                "--name-only",
                "-z",
                "--no-renames",
                "--no-ext-diff",
                "--no-textconv",
                "--end-of-options",
            ])
            .arg(format!("{base}...{head}"))
            .run()?;
        let mut files: Vec<String> = out
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| String::from_utf8_lossy(e).to_string())
            .collect();
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// Writes the files of `commit` into `dest` (created when missing; must be empty),
    /// with their modes and symbolic links, as `git checkout` would, without touching the
    /// mirror's own index or HEAD. One `read-tree` and one parallel `checkout-index`: under
    /// a second for 5,000 files (`bench/export-5000.sh`).
    pub fn export(&self, commit: &str, dest: &Path) -> Result<ExportStats, GitError> {
        check_rev(commit)?;
        let io = |context: String| move |error| GitError::Io { context, error };
        std::fs::create_dir_all(dest).map_err(io(format!("creating {}", dest.display())))?;
        let not_empty = std::fs::read_dir(dest)
            .map_err(io(format!("reading {}", dest.display())))?
            .next()
            .is_some();
        if not_empty {
            return Err(GitError::Invalid(format!(
                "{}: the export directory is not empty",
                dest.display()
            )));
        }
        let dest =
            std::fs::canonicalize(dest).map_err(io(format!("resolving {}", dest.display())))?;
        // A private index beside the mirror, removed afterwards.
        let index = tempfile_path(&self.path, "export-index");
        let _cleanup = RemoveOnDrop(index.clone());
        self.git()
            .env("GIT_INDEX_FILE", &index)
            .args(["read-tree", "--end-of-options", commit])
            .run()?;
        self.git()
            .env("GIT_INDEX_FILE", &index)
            .arg("--work-tree")
            .arg(&dest)
            .args([
                "-c",
                "checkout.workers=0",
                "checkout-index",
                "--all",
                "--force",
            ])
            .run()?;
        // Counted on disk rather than by asking git again (a process fewer on the way to a
        // job's start): files and symbolic links; a submodule is an empty directory.
        let files = count_files(&dest).map_err(io(format!("reading {}", dest.display())))?;
        Ok(ExportStats { files })
    }

    /// A reader answering many questions through one `git cat-file --batch` process.
    pub fn objects(&self) -> Result<ObjectReader, GitError> {
        ObjectReader::spawn(self)
    }

    /// A [`SourceLoader`] reading the pipeline files of `commit` through one
    /// [`ObjectReader`], each file read once.
    pub fn at_commit(&self, commit: &str) -> CommitFiles<'_> {
        CommitFiles {
            mirror: self,
            commit: commit.to_string(),
            reader: Mutex::new(None),
            read: Mutex::new(HashMap::new()),
            files: OnceLock::new(),
        }
    }

    /// [`at_commit`](Self::at_commit) with a reader already started.
    pub fn at_commit_with(&self, commit: &str, reader: ObjectReader) -> CommitFiles<'_> {
        let files = self.at_commit(commit);
        *files.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader);
        files
    }
}

/// One `git cat-file --batch` process answering many questions about a mirror's objects
/// (revisions, files, commits, trees) over its pipes: planning a pipeline asks about ten
/// questions, and one process instead of one per question saves a few milliseconds each.
/// Answers are those of the per-question [`Mirror`] methods. Not shared between threads;
/// the process ends when the reader is dropped.
pub struct ObjectReader {
    child: std::process::Child,
    /// `None` once closed (dropping).
    input: Option<std::process::ChildStdin>,
    output: std::io::BufReader<std::process::ChildStdout>,
    /// Set once the process failed or the stream lost its place: every later question
    /// fails instead of reading another object's bytes.
    broken: bool,
}

/// An object read by [`ObjectReader`].
struct RawObject {
    oid: String,
    kind: String,
    data: Vec<u8>,
}

impl ObjectReader {
    fn spawn(mirror: &Mirror) -> Result<ObjectReader, GitError> {
        let mut git = mirror.git();
        git.args(["cat-file", "--batch"]);
        let mut child = git
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(GitError::Spawn)?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(GitError::Failed {
                command: git.shown,
                stderr: "no pipes".into(),
            });
        };
        Ok(ObjectReader {
            child,
            input: Some(input),
            output: std::io::BufReader::new(output),
            broken: false,
        })
    }

    fn failed(&mut self, what: &str) -> GitError {
        self.broken = true;
        GitError::Failed {
            command: "git cat-file --batch".into(),
            stderr: what.to_string(),
        }
    }

    /// The object `name` names (any of git's object names without a newline), `None` when
    /// it names none.
    fn object(&mut self, name: &str) -> Result<Option<RawObject>, GitError> {
        use std::io::BufRead;
        if self.broken {
            return Err(self.failed("the reader failed earlier"));
        }
        if name.contains(['\n', '\0']) || name.is_empty() {
            return Ok(None);
        }
        let sent = match self.input.as_mut() {
            Some(input) => input
                .write_all(format!("{name}\n").as_bytes())
                .and_then(|_| input.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if sent.is_err() {
            return Err(self.failed("git stopped reading"));
        }
        let mut header = Vec::new();
        match self.output.read_until(b'\n', &mut header) {
            Ok(n) if n > 0 && header.ends_with(b"\n") => {}
            _ => return Err(self.failed("git stopped answering")),
        }
        header.pop();
        // `<oid> <type> <size>`, or `<name> missing` / `<name> ambiguous` (the name may hold
        // spaces: read from the end).
        let header = String::from_utf8_lossy(&header).to_string();
        let mut fields = header.rsplitn(3, ' ');
        let (Some(size), Some(kind), Some(oid)) = (fields.next(), fields.next(), fields.next())
        else {
            return Ok(None);
        };
        let Ok(size) = size.parse::<usize>() else {
            return Ok(None);
        };
        if !is_sha(oid) {
            return Ok(None);
        }
        let mut data = vec![0; size + 1];
        if self.output.read_exact(&mut data).is_err() || data.pop() != Some(b'\n') {
            return Err(self.failed("short output"));
        }
        Ok(Some(RawObject {
            oid: oid.to_string(),
            kind: kind.to_string(),
            data,
        }))
    }

    /// As [`Mirror::resolve_commit`]. Names other than object names and plain ref names
    /// (`main~2`, `@{u}`, `HEAD:path`...) go to `git rev-parse`, which reports every odd
    /// syntax the same way.
    pub fn resolve_commit(
        &mut self,
        mirror: &Mirror,
        rev: &str,
    ) -> Result<Option<String>, GitError> {
        let plain = !rev.is_empty()
            && !rev.starts_with(['-', '/', '.'])
            && !rev.ends_with(['/', '.'])
            && !rev.contains("..")
            && !rev.contains("@{")
            && !rev.contains("//")
            && !rev.ends_with(".lock")
            && rev.bytes().all(|b| {
                b > b' '
                    && b != 0x7f
                    && !matches!(b, b':' | b'^' | b'~' | b'?' | b'*' | b'[' | b'\\')
            });
        if !plain {
            return mirror.resolve_commit(rev);
        }
        Ok(self
            .object(&format!("{rev}^{{commit}}"))?
            .filter(|o| o.kind == "commit")
            .map(|o| o.oid))
    }

    /// As [`Mirror::read_file`].
    pub fn read_file(&mut self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        check_rev(commit)?;
        let rel = clean_path(path)?;
        Ok(self
            .object(&format!("{commit}:{rel}"))?
            .filter(|o| o.kind == "blob")
            .map(|o| o.data))
    }

    /// As [`Mirror::commit_info`]; a message in another encoding than UTF-8 is left to
    /// `git log` to convert.
    pub fn commit_info(&mut self, mirror: &Mirror, sha: &str) -> Result<CommitInfo, GitError> {
        check_rev(sha)?;
        let Some(obj) = self.object(sha)?.filter(|o| o.kind == "commit") else {
            return mirror.commit_info(sha);
        };
        match parse_commit(&obj.oid, &obj.data) {
            Some(info) => Ok(info),
            None => mirror.commit_info(sha),
        }
    }

    /// As [`Mirror::list_files`]: the commit's trees walked one object at a time.
    pub fn list_files(&mut self, commit: &str) -> Result<Vec<String>, GitError> {
        check_rev(commit)?;
        let Some(root) = self
            .object(&format!("{commit}^{{tree}}"))?
            .filter(|o| o.kind == "tree")
        else {
            return Err(GitError::Failed {
                command: "git cat-file --batch".into(),
                stderr: format!("{commit}: not a commit"),
            });
        };
        let hash_len = root.oid.len() / 2;
        let mut files: Vec<Vec<u8>> = Vec::new();
        let mut pending: Vec<(Vec<u8>, Vec<u8>)> = vec![(Vec::new(), root.data)];
        while let Some((prefix, tree)) = pending.pop() {
            let mut rest = &tree[..];
            while !rest.is_empty() {
                // `<mode> SP <name> NUL <hash>`
                let (Some(sp), Some(nul)) = (
                    rest.iter().position(|&b| b == b' '),
                    rest.iter().position(|&b| b == 0),
                ) else {
                    return Err(self.failed("malformed tree"));
                };
                if sp > nul || rest.len() < nul + 1 + hash_len {
                    return Err(self.failed("malformed tree"));
                }
                let mode = &rest[..sp];
                let mut path = prefix.clone();
                path.extend_from_slice(&rest[sp + 1..nul]);
                let hash = &rest[nul + 1..nul + 1 + hash_len];
                rest = &rest[nul + 1 + hash_len..];
                match mode {
                    b"40000" | b"040000" => {
                        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                        let Some(sub) = self.object(&hex)?.filter(|o| o.kind == "tree") else {
                            return Err(self.failed("a tree is missing"));
                        };
                        path.push(b'/');
                        pending.push((path, sub.data));
                    }
                    // Submodules are commits of other repositories, not files.
                    b"160000" => {}
                    _ => files.push(path),
                }
            }
        }
        let mut files: Vec<String> = files
            .into_iter()
            .map(|p| String::from_utf8_lossy(&p).to_string())
            .collect();
        files.sort();
        Ok(files)
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        // End of input ends `cat-file`; a process on a stream that lost its place is killed.
        if self.broken {
            let _ = self.child.kill();
        }
        drop(self.input.take());
        let _ = self.child.wait();
    }
}

/// A raw commit object as `git log --format=%H%x00%P%x00%an <%ae>%x00%cI%x00%B` shows it;
/// `None` when git would convert its message from another encoding, or it is malformed.
fn parse_commit(oid: &str, data: &[u8]) -> Option<CommitInfo> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data.strip_suffix(b"\n").unwrap_or(data), &b""[..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut parents = Vec::new();
    let mut author = None;
    let mut timestamp = None;
    for line in head.lines() {
        // Continuation lines of multi-line headers (`gpgsig`, `mergetag`) start with a space.
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "parent" => parents.push(value.to_string()),
            "author" if author.is_none() => {
                let (name, email, _) = split_ident(value)?;
                author = Some(format!("{name} <{email}>"));
            }
            "committer" if timestamp.is_none() => {
                let (_, _, date) = split_ident(value)?;
                timestamp = Some(iso_strict(date)?);
            }
            "encoding"
                if !value.eq_ignore_ascii_case("utf-8") && !value.eq_ignore_ascii_case("utf8") =>
            {
                return None
            }
            _ => {}
        }
    }
    let message = String::from_utf8_lossy(body)
        .trim_end_matches('\n')
        .to_string();
    Some(CommitInfo {
        sha: oid.to_string(),
        parents,
        author: author?,
        timestamp: timestamp?,
        message,
    })
}

/// `Name <email> 1700000000 +0100` as git splits it: the name before the first `<`
/// (trailing spaces dropped), the address up to the next `>`, the date after it.
fn split_ident(value: &str) -> Option<(&str, &str, &str)> {
    let lt = value.find('<')?;
    let gt = lt + value[lt..].find('>')?;
    Some((
        value[..lt].trim_end_matches(' '),
        &value[lt + 1..gt],
        value[gt + 1..].trim(),
    ))
}

/// `1700000000 +0100` as git's strict ISO 8601 (`%cI`): `2023-11-14T23:13:20+01:00`, and
/// `Z` for UTC as git 2.45 and later and GitLab's `CI_COMMIT_TIMESTAMP` write it.
fn iso_strict(date: &str) -> Option<String> {
    let (secs, tz) = date.split_once(' ')?;
    let secs: i64 = secs.parse().ok()?;
    let (sign, hhmm) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    if hhmm.len() != 4 || !hhmm.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = hhmm[..2].parse().ok()?;
    let minutes: i32 = hhmm[2..].parse().ok()?;
    let offset = jiff::tz::Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()?;
    let local = jiff::Timestamp::from_second(secs)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::fixed(offset));
    if offset.seconds() == 0 {
        Some(local.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
    } else {
        Some(local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string())
    }
}

/// Files and symbolic links under `dir`, at any depth.
fn count_files(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            n += count_files(&e.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

/// A path unique to this process and call, next to `dir`'s contents.
fn tempfile_path(dir: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("slipway-{what}-{}-{n}", std::process::id()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let mut lock = self.0.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
}

/// Refuses revisions that git would read as options or that carry range syntax.
fn check_rev(rev: &str) -> Result<(), GitError> {
    if rev.is_empty()
        || rev.starts_with('-')
        || rev.contains(['\n', '\0', ' '])
        || rev.contains("..")
    {
        return Err(GitError::Invalid(format!("{rev:?}: not a revision")));
    }
    Ok(())
}

/// A repository-relative path without `..`, leading `/` or `./`.
fn clean_path(path: &str) -> Result<String, GitError> {
    let mut parts = Vec::new();
    for c in Path::new(path.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().to_string()),
            Component::CurDir => {}
            _ => {
                return Err(GitError::Invalid(format!(
                    "{path}: paths may not leave the repository"
                )))
            }
        }
    }
    if parts.is_empty() || path.contains(['\n', '\0']) {
        return Err(GitError::Invalid(format!("{path:?}: not a file path")));
    }
    Ok(parts.join("/"))
}

/// The files of one commit, for the pipeline loader (`include:local`, `rules:exists`) and
/// the planner's other questions about the commit, through one [`ObjectReader`] started on
/// first use.
pub struct CommitFiles<'a> {
    mirror: &'a Mirror,
    commit: String,
    reader: Mutex<Option<ObjectReader>>,
    /// Files read so far (`None`: no such file), so the pipeline file the planner looks
    /// for is not read again by the loader.
    read: Mutex<HashMap<String, Option<Vec<u8>>>>,
    files: OnceLock<Result<Vec<String>, String>>,
}

impl CommitFiles<'_> {
    pub fn commit(&self) -> &str {
        &self.commit
    }

    pub fn mirror(&self) -> &Mirror {
        self.mirror
    }

    /// Runs `f` with the commit's reader, started on first use.
    pub fn with_reader<T>(
        &self,
        f: impl FnOnce(&mut ObjectReader) -> Result<T, GitError>,
    ) -> Result<T, GitError> {
        let mut slot = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let reader = match slot.as_mut() {
            // A reader that lost its place is replaced.
            Some(r) if !r.broken => r,
            _ => slot.insert(self.mirror.objects()?),
        };
        f(reader)
    }

    /// The bytes of the file at `path` (as [`Mirror::read_file`]), read once.
    pub fn read_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        let key = clean_path(path)?;
        if let Some(hit) = self
            .read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let bytes = self.with_reader(|r| r.read_file(&self.commit, &key))?;
        self.read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, bytes.clone());
        Ok(bytes)
    }

    /// The file list, read once.
    pub fn files(&self) -> Result<&[String], String> {
        self.files
            .get_or_init(|| {
                self.with_reader(|r| r.list_files(&self.commit))
                    .map_err(|e| e.to_string())
            })
            .as_deref()
            .map_err(Clone::clone)
    }
}

impl SourceLoader for CommitFiles<'_> {
    fn read(&self, path: &str) -> Result<String, String> {
        match self.read_bytes(path) {
            Ok(Some(bytes)) => String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string()),
            Ok(None) => Err(format!(
                "no such file at commit {}",
                &self.commit[..self.commit.len().min(8)]
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    fn list(&self) -> Vec<String> {
        self.files().map(<[String]>::to_vec).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_triples_parse() {
        let u = RefUpdate::from_shas(ZERO_SHA, &"a".repeat(40), "refs/heads/main").expect("ok");
        assert_eq!(u.kind(), RefChangeKind::Created);
        assert_eq!(u.split(), Some((RefKind::Branch, "main")));
        let d = RefUpdate::from_shas(&"b".repeat(40), ZERO_SHA, "refs/tags/v1").expect("ok");
        assert_eq!(d.kind(), RefChangeKind::Deleted);
        assert_eq!(d.split(), Some((RefKind::Tag, "v1")));
        assert!(RefUpdate::from_shas("xyz", ZERO_SHA, "refs/heads/a").is_err());
        assert!(RefUpdate::from_shas(ZERO_SHA, ZERO_SHA, "main").is_err());
    }

    #[test]
    fn snapshot_changes() {
        let t = |s: &str| RefTarget {
            sha: s.repeat(40),
            commit: s.repeat(40),
        };
        let mut a = RefSnapshot::default();
        a.refs.insert("refs/heads/main".into(), t("1"));
        a.refs.insert("refs/heads/gone".into(), t("2"));
        a.refs.insert("refs/tags/v1".into(), t("3"));
        let mut b = a.clone();
        b.refs.remove("refs/heads/gone");
        b.refs.insert("refs/heads/main".into(), t("4"));
        b.refs.insert("refs/heads/new".into(), t("5"));
        let ch = a.changes_to(&b);
        let kinds: Vec<(&str, RefChangeKind)> =
            ch.iter().map(|c| (c.ref_name.as_str(), c.kind())).collect();
        assert_eq!(
            kinds,
            vec![
                ("refs/heads/gone", RefChangeKind::Deleted),
                ("refs/heads/main", RefChangeKind::Updated),
                ("refs/heads/new", RefChangeKind::Created),
            ]
        );
        assert!(a.changes_to(&a).is_empty());
    }

    #[test]
    fn sources_and_paths() {
        assert!(RepoSource::parse("--upload-pack=evil").is_err());
        assert!(RepoSource::parse("ext::sh -c touch% /tmp/x").is_err());
        assert!(RepoSource::parse("/no/such/dir").is_err());
        assert_eq!(
            RepoSource::parse("https://example.com/a.git").expect("url"),
            RepoSource::Url("https://example.com/a.git".into())
        );
        assert_eq!(
            RepoSource::parse("git@example.com:group/a.git").expect("scp"),
            RepoSource::Url("git@example.com:group/a.git".into())
        );
        assert!(clean_path("../etc/passwd").is_err());
        assert_eq!(clean_path("/ci/./a.yml").expect("ok"), "ci/a.yml");
        assert!(check_rev("--output=x").is_err());
        assert!(check_rev("a..b").is_err());
    }
}
