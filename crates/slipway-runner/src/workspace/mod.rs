//! Job workspaces. Each job runs in a directory holding the repository's files as the
//! source has them (the working tree: tracked plus untracked-not-ignored files, or a
//! checkout of a commit). Workspaces are reused, one per executor slot as GitLab Runner
//! does (`CI_CONCURRENT_ID`), and reset before each job, like rsync: a file is copied only
//! when its size, mtime or mode differ from the source, and what the source does not have
//! is deleted. So a job always starts from exactly the source's files, and preparing it on
//! a large repository costs a `stat` per file instead of a copy per file.
//!
//! Within one process a [`Workspace`] also watches its directories (inotify on Linux, see
//! `track.rs`): after the first full comparison, a reset fixes only the paths the previous
//! job (or the artifacts and caches extracted for it) touched, whatever the repository's
//! size. When events were lost, or cannot be had, it compares everything again.
//!
//! Hard links are not used: a job writing into a file in place would change the
//! developer's working tree or another job's workspace.

mod track;

use crate::store::{ArtifactSet, Entry, EntryKind, Store};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use track::{Changes, Tracker};

/// The files a workspace is made from.
#[derive(Debug, Clone)]
pub struct Source {
    root: PathBuf,
    /// Relative, `/`-separated, sorted, unique, never leaving the root.
    files: Vec<String>,
    /// Every directory that holds a file of the source, relative.
    dirs: HashSet<String>,
}

impl Source {
    /// The files `files` (relative to `root`, `/`-separated) of the directory `root`.
    /// Absolute paths and paths with `..` are dropped.
    pub fn new(root: impl Into<PathBuf>, files: impl IntoIterator<Item = String>) -> Source {
        let mut files: Vec<String> = files
            .into_iter()
            .filter(|rel| {
                let p = Path::new(rel.as_str());
                !rel.is_empty()
                    && !p.is_absolute()
                    && !p
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
            })
            .collect();
        files.sort();
        files.dedup();
        let mut dirs = HashSet::new();
        for f in &files {
            let mut at = f.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                if !dirs.insert(parent.to_string()) {
                    break;
                }
                at = parent;
            }
        }
        Source {
            root: root.into(),
            files,
            dirs,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The files, sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    fn is_file(&self, rel: &str) -> bool {
        self.files.binary_search_by(|f| f.as_str().cmp(rel)).is_ok()
    }

    fn is_dir(&self, rel: &str) -> bool {
        rel.is_empty() || self.dirs.contains(rel)
    }

    /// The files below directory `rel` (`""`: all of them).
    fn files_under<'a>(&'a self, rel: &str) -> &'a [String] {
        if rel.is_empty() {
            return &self.files;
        }
        let prefix = format!("{rel}/");
        let start = self.files.partition_point(|f| f.as_str() < prefix.as_str());
        let len = self.files[start..]
            .iter()
            .take_while(|f| f.starts_with(&prefix))
            .count();
        &self.files[start..start + len]
    }

    /// The directories below `rel` (and `rel` itself), for watching.
    fn dirs_under(&self, rel: &str) -> Vec<String> {
        let prefix = format!("{rel}/");
        let mut out: Vec<String> = self
            .dirs
            .iter()
            .filter(|d| rel.is_empty() || d.starts_with(&prefix))
            .cloned()
            .collect();
        out.push(rel.to_string());
        out
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub copied: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Whether every file was compared (false: only the paths known to have changed).
    pub full: bool,
}

/// Bring `dest` to exactly the source's files, comparing every file. `keep` names
/// top-level entries of `dest` that are not touched (the workspace's own `.git`).
pub fn sync(source: &Source, dest: &Path, keep: &[&str]) -> io::Result<SyncStats> {
    fs::create_dir_all(dest).map_err(|e| annotate(e, dest))?;
    let mut stats = sync_under(source, dest, "", keep)?;
    stats.full = true;
    Ok(stats)
}

/// [`sync`] restricted to the directory `rel` of the workspace.
fn sync_under(source: &Source, dest: &Path, rel: &str, keep: &[&str]) -> io::Result<SyncStats> {
    let mut stats = SyncStats::default();
    let files = source.files_under(rel);
    let mut wanted: HashSet<&str> = HashSet::with_capacity(files.len() * 2);
    let mut made_dirs: HashSet<PathBuf> = HashSet::new();
    if !rel.is_empty() {
        ensure_dir(&dest.join(rel))?;
    }
    for f in files {
        let rel_path = Path::new(f.as_str());
        let src = source.root.join(rel_path);
        let Ok(meta) = fs::symlink_metadata(&src) else {
            // Listed but gone (deleted in the working tree): the workspace lacks it too.
            continue;
        };
        let target = dest.join(rel_path);
        let mut at = f.as_str();
        while let Some((parent, _)) = at.rsplit_once('/') {
            if !wanted.insert(parent) {
                break;
            }
            at = parent;
        }
        wanted.insert(f.as_str());
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
    let start = if rel.is_empty() {
        dest.to_path_buf()
    } else {
        dest.join(rel)
    };
    stats.removed = prune(dest, &start, &wanted, keep)?;
    Ok(stats)
}

/// The repository's git data, so workspaces can show the commit being built.
#[derive(Debug, Clone)]
pub struct GitInfo {
    /// The repository's git directory (its objects are borrowed through `alternates`).
    pub git_dir: PathBuf,
    pub commit: String,
    /// `packed-refs` content: `<sha> refs/heads/<name>` lines.
    pub packed_refs: String,
}

/// One reusable job directory (a GitLab Runner build directory for one concurrent slot).
pub struct Workspace {
    dir: PathBuf,
    tracker: Option<Tracker>,
    /// The tracker's view is complete: the last reset compared everything or followed
    /// every change since.
    trusted: bool,
    /// What the workspace's `.git` was made from.
    git_state: Option<(PathBuf, String, String)>,
    /// The artifacts laid over the source by the last [`Workspace::prepare_with`], by
    /// path, as long as nothing touched them since.
    overlay: BTreeMap<String, Laid>,
    /// Paths written since the last reset that the tracker no longer reports (drained
    /// while laying artifacts): the next reset fixes them.
    pending: BTreeSet<String>,
}

/// One path of the artifacts overlay.
#[derive(Debug, Clone, PartialEq)]
enum Laid {
    /// Written from a manifest entry.
    Entry(EntryKind),
    /// A parent directory extraction created (not part of the source).
    ImplicitDir,
}

/// What laying artifacts over a workspace did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Laying {
    /// Entries written.
    pub written: usize,
    /// Entries already in place from the previous job, untouched, so not written again.
    pub kept: usize,
}

/// The directories of a synthesised `.git`, watched like the checkout's.
const GIT_DIRS: &[&str] = &[
    ".git",
    ".git/objects",
    ".git/objects/info",
    ".git/refs",
    ".git/refs/heads",
    ".git/refs/tags",
];

impl Workspace {
    /// The workspace in `dir` (created at the first [`Workspace::prepare`]).
    pub fn new(dir: impl Into<PathBuf>) -> Workspace {
        Workspace {
            dir: dir.into(),
            tracker: None,
            trusted: false,
            git_state: None,
            overlay: BTreeMap::new(),
            pending: BTreeSet::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reset the workspace to exactly the source's files and give it a fresh `.git`
    /// showing `git`'s commit (none without it). The first reset in a process compares
    /// every file; later ones only what changed since the previous reset, when that is
    /// known.
    pub fn prepare(&mut self, source: &Source, git: Option<&GitInfo>) -> io::Result<SyncStats> {
        self.prepare_with(source, git, &[], None, |_| ())
            .map(|(stats, _, _)| stats)
    }

    /// [`Workspace::prepare`], then `before(dir)` (a job's cache restores), then the
    /// artifacts `sets` laid over the result in order (later ones win, and win over what
    /// `before` wrote), as GitLab Runner orders them. Artifacts the previous job left in
    /// place untouched are kept rather than written again; `store` is where the others
    /// come from (needed when `sets` is not empty).
    pub fn prepare_with<R>(
        &mut self,
        source: &Source,
        git: Option<&GitInfo>,
        sets: &[&ArtifactSet],
        store: Option<&Store>,
        before: impl FnOnce(&Path) -> R,
    ) -> io::Result<(SyncStats, R, Laying)> {
        let stats = self.reset(source, git)?;
        let wanted = merge_sets(sets);
        // Take away what the previous job's artifacts put there and this job does not want.
        self.revert_overlay(source, wanted.as_ref())?;
        if let Some(t) = &mut self.tracker {
            t.discard();
        }
        let r = before(&self.dir);
        let written = match (&mut self.tracker, self.trusted) {
            (Some(t), true) => t.changes(),
            _ => Changes::Unknown,
        };
        let mut laying = Laying::default();
        match (wanted, store) {
            (_, None) if !sets.is_empty() => {
                return Err(io::Error::other("artifacts to lay but no store given"));
            }
            (Some(wanted), Some(store)) if self.trusted => {
                let written = match written {
                    Changes::Paths(p) => p,
                    Changes::Unknown => BTreeSet::new(),
                };
                let mut todo = Vec::new();
                for (path, kind) in &wanted {
                    let in_place = self.overlay.get(path) == Some(&Laid::Entry(kind.clone()))
                        && !touched(&written, path);
                    if in_place {
                        laying.kept += 1;
                    } else {
                        todo.push(Entry {
                            path: path.clone(),
                            kind: kind.clone(),
                        });
                    }
                }
                laying.written = todo.len();
                if !todo.is_empty() {
                    let set = ArtifactSet {
                        entries: todo,
                        ..ArtifactSet::default()
                    };
                    store.extract_artifacts(&set, &self.dir)?;
                }
                self.pending.extend(written);
                self.overlay.clear();
                for (path, kind) in wanted {
                    let mut at = path.as_str();
                    while let Some((parent, _)) = at.rsplit_once('/') {
                        if source.is_dir(parent) || self.overlay.contains_key(parent) {
                            break;
                        }
                        self.overlay.insert(parent.to_string(), Laid::ImplicitDir);
                        at = parent;
                    }
                    self.overlay.insert(path, Laid::Entry(kind));
                }
                // Watch the directories extraction made, so changes in them are seen.
                if let Some(t) = &mut self.tracker {
                    let dirs: Vec<&String> = self
                        .overlay
                        .iter()
                        .filter(|(p, l)| {
                            !source.is_dir(p)
                                && matches!(
                                    l,
                                    Laid::ImplicitDir | Laid::Entry(EntryKind::Dir { .. })
                                )
                        })
                        .map(|(p, _)| p)
                        .collect();
                    if !dirs.iter().all(|d| t.watch(&self.dir, d)) {
                        self.tracker = None;
                        self.trusted = false;
                    }
                }
                if let Some(t) = &mut self.tracker {
                    t.discard();
                }
            }
            (_, store) => {
                // Sets that clash (a file in one, a directory in another), or no tracking:
                // extract one after the other; the next reset finds every change.
                if let Changes::Paths(p) = written {
                    self.pending.extend(p);
                }
                self.overlay.clear();
                if let Some(store) = store {
                    for set in sets {
                        store.extract_artifacts(set, &self.dir)?;
                        laying.written += set.entries.len();
                    }
                }
            }
        }
        Ok((stats, r, laying))
    }

    /// Reset to the source's files, keeping the artifacts overlay where untouched.
    fn reset(&mut self, source: &Source, git: Option<&GitInfo>) -> io::Result<SyncStats> {
        let changes = match (&mut self.tracker, self.trusted) {
            (Some(t), true) => t.changes(),
            _ => Changes::Unknown,
        };
        let (stats, git_touched) = match changes {
            Changes::Paths(mut paths) => {
                paths.append(&mut self.pending);
                let git_touched = paths.iter().any(|p| p == ".git" || p.starts_with(".git/"));
                match self.fix(source, paths)? {
                    Some(stats) => (stats, git_touched),
                    None => (self.full(source)?, true),
                }
            }
            Changes::Unknown => (self.full(source)?, true),
        };
        // `.git` is rewritten when the job touched it or another commit is wanted.
        let wanted = git.map(|g| (g.git_dir.clone(), g.commit.clone(), g.packed_refs.clone()));
        if git_touched || !self.trusted || wanted != self.git_state {
            let dot_git = self.dir.join(".git");
            if fs::symlink_metadata(&dot_git).is_ok() {
                remove_path(&dot_git)?;
            }
            self.git_state = None;
            if let Some(g) = git {
                link_git(&self.dir, &g.git_dir, &g.commit, &g.packed_refs)?;
                if let Some(t) = &mut self.tracker {
                    let watched = GIT_DIRS.iter().all(|d| t.watch(&self.dir, d));
                    if !watched {
                        self.tracker = None;
                        self.trusted = false;
                    }
                }
            }
            self.git_state = wanted;
        }
        if let Some(t) = &mut self.tracker {
            t.discard();
        }
        Ok(stats)
    }

    /// Undo the overlay's entries that `wanted` does not hold as they are (all of them
    /// without `wanted`): source files they replaced come back, the rest is removed.
    fn revert_overlay(
        &mut self,
        source: &Source,
        wanted: Option<&BTreeMap<String, EntryKind>>,
    ) -> io::Result<()> {
        let overlay = std::mem::take(&mut self.overlay);
        // Deepest first, so a directory is empty when its turn comes.
        for (path, laid) in overlay.into_iter().rev() {
            let keep = match (&laid, wanted) {
                (Laid::Entry(kind), Some(w)) => w.get(&path) == Some(kind),
                (Laid::ImplicitDir, Some(w)) => {
                    let prefix = format!("{path}/");
                    w.range(prefix.clone()..)
                        .next()
                        .is_some_and(|(p, _)| p.starts_with(&prefix))
                }
                (_, None) => false,
            };
            if keep {
                self.overlay.insert(path, laid);
                continue;
            }
            let target = self.dir.join(&path);
            if source.is_file(&path) {
                let src = source.root.join(&path);
                match fs::symlink_metadata(&src) {
                    Ok(meta) => copy_entry(&src, &meta, &target)?,
                    Err(_) => {
                        if fs::symlink_metadata(&target).is_ok() {
                            remove_path(&target)?;
                        }
                    }
                }
            } else if source.is_dir(&path) {
                // A directory of the source: it stays.
            } else {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {
                        // Empty by now unless the job's cache or a later entry needs it.
                        if fs::remove_dir(&target).is_err()
                            && wanted.is_none_or(|w| !w.contains_key(&path))
                        {
                            self.pending.insert(path.clone());
                        }
                    }
                    Ok(_) => fs::remove_file(&target).map_err(|e| annotate(e, &target))?,
                    Err(_) => {}
                }
            }
        }
        Ok(())
    }

    fn full(&mut self, source: &Source) -> io::Result<SyncStats> {
        self.trusted = false;
        // Everything not in the source goes, artifacts included.
        self.overlay.clear();
        self.pending.clear();
        let stats = sync(source, &self.dir, &[".git"])?;
        // Watch every directory of the checkout; any refusal means no tracking.
        self.tracker = Tracker::new();
        if let Some(t) = &mut self.tracker {
            self.trusted = source.dirs_under("").iter().all(|d| t.watch(&self.dir, d));
        }
        if !self.trusted {
            self.tracker = None;
        }
        Ok(stats)
    }

    /// Undo the changes at `paths`. `None` when a full comparison is needed instead.
    fn fix(
        &mut self,
        source: &Source,
        paths: std::collections::BTreeSet<String>,
    ) -> io::Result<Option<SyncStats>> {
        let mut stats = SyncStats::default();
        let mut handled: HashSet<String> = HashSet::new();
        for p in paths {
            if p.is_empty() {
                return Ok(None);
            }
            // An ancestor already reset covers its descendants.
            let mut covered = false;
            let mut at = p.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                if handled.contains(parent) {
                    covered = true;
                    break;
                }
                at = parent;
            }
            if covered || p == ".git" || p.starts_with(".git/") {
                continue;
            }
            let target = self.dir.join(&p);
            if source.is_file(&p) {
                let src = source.root.join(&p);
                match fs::symlink_metadata(&src) {
                    Ok(meta) => {
                        copy_entry(&src, &meta, &target)?;
                        stats.copied += 1;
                    }
                    Err(_) => {
                        if fs::symlink_metadata(&target).is_ok() {
                            remove_path(&target)?;
                            stats.removed += 1;
                        }
                    }
                }
            } else if source.is_dir(&p) {
                let Some(t) = self.tracker.as_mut() else {
                    return Ok(None);
                };
                t.unwatch_under(&p);
                let s = sync_under(source, &self.dir, &p, &[])?;
                stats.copied += s.copied;
                stats.unchanged += s.unchanged;
                stats.removed += s.removed;
                let watched = source.dirs_under(&p).iter().all(|d| t.watch(&self.dir, d));
                if !watched {
                    // Reset is done; only the tracking is lost.
                    self.tracker = None;
                    self.trusted = false;
                    return Ok(Some(stats));
                }
            } else if fs::symlink_metadata(&target).is_ok() {
                remove_path(&target)?;
                stats.removed += 1;
            }
            self.drop_overlay_under(&p);
            handled.insert(p);
        }
        Ok(Some(stats))
    }
}

impl Workspace {
    /// Forget overlay entries at `rel` or below it (a reset replaced them).
    fn drop_overlay_under(&mut self, rel: &str) {
        if self.overlay.is_empty() {
            return;
        }
        self.overlay.remove(rel);
        let prefix = format!("{rel}/");
        let gone: Vec<String> = self
            .overlay
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.overlay.remove(&p);
        }
        // A reset inside an implicit directory leaves the directory: it stays listed.
    }
}

/// Whether `path` or one of its ancestors is among `paths`.
fn touched(paths: &BTreeSet<String>, path: &str) -> bool {
    if paths.contains(path) {
        return true;
    }
    let mut at = path;
    while let Some((parent, _)) = at.rsplit_once('/') {
        if paths.contains(parent) {
            return true;
        }
        at = parent;
    }
    false
}

/// The entries of `sets` merged in order (later ones win), or `None` when they clash: a
/// path that is a directory in one set and something else in another, or an entry
/// below a non-directory.
fn merge_sets(sets: &[&ArtifactSet]) -> Option<BTreeMap<String, EntryKind>> {
    let mut out: BTreeMap<String, EntryKind> = BTreeMap::new();
    for set in sets {
        for e in &set.entries {
            if let Some(old) = out.get(&e.path) {
                let dir_old = matches!(old, EntryKind::Dir { .. });
                let dir_new = matches!(e.kind, EntryKind::Dir { .. });
                if dir_old != dir_new {
                    return None;
                }
            }
            out.insert(e.path.clone(), e.kind.clone());
        }
    }
    for path in out.keys() {
        let mut at = path.as_str();
        while let Some((parent, _)) = at.rsplit_once('/') {
            if let Some(k) = out.get(parent) {
                if !matches!(k, EntryKind::Dir { .. }) {
                    return None;
                }
            }
            at = parent;
        }
    }
    Some(out)
}

/// Remove a file, symlink or directory tree (making read-only directories writable).
fn remove_path(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| annotate(e, path))?;
    if meta.is_dir() {
        make_writable(path);
        fs::remove_dir_all(path).map_err(|e| annotate(e, path))
    } else {
        fs::remove_file(path).map_err(|e| annotate(e, path))
    }
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
        // A plain file of the workspace's own is rewritten in place (cheaper than a new
        // file); anything else goes first, so nothing is written through a symlink or a
        // hard link the job made to a file elsewhere.
        let reusable = meta.is_file() && t.is_file() && t.nlink() == 1 && t.mode() & 0o200 != 0;
        if !reusable {
            remove_path(target)?;
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
    // Read-only is enough for the owner to set times (the copy may be read-only).
    let f = fs::File::open(target).map_err(|e| annotate(e, target))?;
    f.set_modified(mtime).map_err(|e| annotate(e, target))?;
    Ok(())
}

/// Delete what the source does not have, below `dir`. Returns the number of entries removed.
fn prune(root: &Path, dir: &Path, wanted: &HashSet<&str>, keep: &[&str]) -> io::Result<usize> {
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
        let known = rel.to_str().is_some_and(|r| wanted.contains(r));
        if !known {
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
        let source = Source::new(src.path(), ["a.txt".into(), "dir/b.txt".into()]);
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
        let source = Source::new(src.path(), ["a.txt".to_string()]);
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
        let source = Source::new(src.path(), ["run.sh".into(), "link".into()]);
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
        let source = Source::new(src.path(), ["x/y".to_string()]);
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
        let source = Source::new(src.path(), ["../evil".into(), "/etc/passwd".into()]);
        let s = sync(&source, dst.path(), &[]).expect("sync");
        assert_eq!(s.copied, 0);
    }
    /// Every kind of change a job makes is undone by a tracked reset, which then leaves
    /// nothing for a full comparison to fix.
    #[test]
    fn tracked_reset_undoes_what_a_job_did() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        let files = [
            "a.txt",
            "dir/b.txt",
            "dir/sub/c.txt",
            "other/d.txt",
            "moved/e.txt",
            "mode.sh",
        ];
        for f in files {
            write(src.path(), f, f);
        }
        let source = Source::new(src.path(), files.iter().map(|f| f.to_string()));
        let mut ws = Workspace::new(dst.path().join("ws"));
        let first = ws.prepare(&source, None).expect("prepare");
        assert!(first.full);
        assert_eq!(first.copied, files.len());
        let root = ws.dir().to_path_buf();
        // What a job might do.
        fs::write(root.join("a.txt"), "changed").expect("write");
        fs::remove_file(root.join("dir/b.txt")).expect("rm");
        fs::remove_dir_all(root.join("other")).expect("rm");
        fs::rename(root.join("moved"), root.join("elsewhere")).expect("mv");
        write(&root, "build/out/bin", "x");
        write(&root, "dir/sub/new.o", "x");
        fs::set_permissions(root.join("mode.sh"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        write(&root, ".git/junk", "x");
        // A hard link to a file outside: resetting must not write through it.
        let outside = dst.path().join("outside.txt");
        fs::write(&outside, "outside, not to be touched").expect("write");
        fs::create_dir_all(root.join("dir/sub")).expect("mkdir");
        fs::remove_file(root.join("dir/sub/c.txt")).expect("rm");
        fs::hard_link(&outside, root.join("dir/sub/c.txt")).expect("link");
        let second = ws.prepare(&source, None).expect("prepare");
        assert_eq!(
            fs::read_to_string(&outside).expect("outside"),
            "outside, not to be touched"
        );
        assert!(!second.full, "{second:?}");
        for f in files {
            assert_eq!(fs::read_to_string(root.join(f)).expect(f), f);
        }
        assert!(!root.join("build").exists());
        assert!(!root.join("elsewhere").exists());
        assert!(!root.join("dir/sub/new.o").exists());
        assert!(!root.join(".git").exists());
        assert_eq!(
            fs::metadata(root.join("mode.sh")).expect("meta").mode() & 0o777,
            fs::metadata(src.path().join("mode.sh"))
                .expect("meta")
                .mode()
                & 0o777
        );
        let check = sync(&source, &root, &[]).expect("sync");
        assert_eq!((check.copied, check.removed), (0, 0), "{check:?}");
        // Nothing changed: nothing to do.
        let third = ws.prepare(&source, None).expect("prepare");
        assert_eq!((third.copied, third.removed, third.full), (0, 0, false));
    }

    #[test]
    fn git_data_is_fresh_for_every_job() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        write(src.path(), "a", "a");
        let source = Source::new(src.path(), ["a".to_string()]);
        let git = GitInfo {
            git_dir: src.path().join(".git"),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            packed_refs: String::new(),
        };
        let mut ws = Workspace::new(dst.path());
        ws.prepare(&source, Some(&git)).expect("prepare");
        write(dst.path(), ".git/refs/heads/stray", "x");
        ws.prepare(&source, Some(&git)).expect("prepare");
        assert!(!dst.path().join(".git/refs/heads/stray").exists());
        assert_eq!(
            fs::read_to_string(dst.path().join(".git/HEAD")).expect("head"),
            format!("{}\n", git.commit)
        );
    }
    /// Artifacts the previous job left untouched are kept; touched ones are written again;
    /// unwanted ones go (a source file they replaced comes back); caches restored before
    /// them never win over them.
    #[test]
    fn artifacts_overlay_is_reused_and_kept_exact() {
        use slipway_core::model::Artifacts;
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        write(src.path(), "a.txt", "source a");
        write(src.path(), "src/main.c", "int main;");
        let source = Source::new(src.path(), ["a.txt".into(), "src/main.c".into()]);
        let store = Store::open(dst.path().join("store")).expect("store");
        let build = dst.path().join("build");
        write(&build, "out/x.bin", "artifact x");
        write(&build, "out/sub/y", "artifact y");
        write(&build, "a.txt", "artifact a");
        let arts = Artifacts {
            paths: vec!["out/".into(), "a.txt".into()],
            ..Artifacts::default()
        };
        let set = store
            .collect_artifacts(&build, &arts, &[])
            .expect("collect");
        let mut ws = Workspace::new(dst.path().join("ws"));
        let root = ws.dir().to_path_buf();
        let lay = |ws: &mut Workspace, sets: &[&ArtifactSet]| {
            ws.prepare_with(&source, None, sets, Some(&store), |_| ())
                .expect("prepare")
                .2
        };
        let first = lay(&mut ws, &[&set]);
        assert_eq!((first.kept, first.written), (0, set.entries.len()));
        assert_eq!(
            fs::read_to_string(root.join("a.txt")).expect("a"),
            "artifact a"
        );
        let second = lay(&mut ws, &[&set]);
        assert_eq!((second.kept, second.written), (set.entries.len(), 0));
        // The job changes an artifact inside a directory extraction made.
        fs::write(root.join("out/x.bin"), "changed by the job").expect("write");
        write(&root, "out/sub/extra", "new");
        let third = lay(&mut ws, &[&set]);
        assert_eq!(third.written, 1, "{third:?}");
        assert_eq!(
            fs::read_to_string(root.join("out/x.bin")).expect("x"),
            "artifact x"
        );
        assert!(!root.join("out/sub/extra").exists());
        // A cache restored first does not win over an artifact.
        let (_, (), fourth) = ws
            .prepare_with(&source, None, &[&set], Some(&store), |dir| {
                fs::write(dir.join("out/x.bin"), "from a cache").expect("cache");
                fs::write(dir.join("cached.txt"), "cache only").expect("cache");
            })
            .expect("prepare");
        assert_eq!(fourth.written, 1);
        assert_eq!(
            fs::read_to_string(root.join("out/x.bin")).expect("x"),
            "artifact x"
        );
        assert!(root.join("cached.txt").exists());
        // No artifacts wanted: the workspace is the source again, exactly.
        let none = lay(&mut ws, &[]);
        assert_eq!(none.written, 0);
        assert!(!root.join("out").exists());
        assert!(!root.join("cached.txt").exists());
        assert_eq!(
            fs::read_to_string(root.join("a.txt")).expect("a"),
            "source a"
        );
        let check = sync(&source, &root, &[]).expect("sync");
        assert_eq!((check.copied, check.removed), (0, 0), "{check:?}");
    }
}
