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
    /// Each file's metadata as [`Source::scan`] read it, in `files` order (`None`: read
    /// when a workspace is compared).
    stamps: Option<Vec<Stamp>>,
}

/// What a comparison needs of a file's metadata: a copy is up to date when its stamp
/// equals the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    kind: Kind,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    /// Permission bits only (`& 0o7777`).
    mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Symlink,
    /// A directory, FIFO, socket or device: not copied.
    Other,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        let ft = m.file_type();
        Stamp {
            kind: if ft.is_symlink() {
                Kind::Symlink
            } else if ft.is_file() {
                Kind::File
            } else {
                Kind::Other
            },
            len: m.len(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            mode: m.mode() & 0o7777,
        }
    }

    // `stat`'s field types differ between platforms: the casts are no-ops on Linux only.
    #[allow(clippy::unnecessary_cast)]
    fn of_stat(st: &libc::stat) -> Stamp {
        let fmt = st.st_mode & libc::S_IFMT;
        Stamp {
            kind: if fmt == libc::S_IFLNK {
                Kind::Symlink
            } else if fmt == libc::S_IFREG {
                Kind::File
            } else {
                Kind::Other
            },
            len: st.st_size as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
            mode: (st.st_mode & 0o7777) as u32,
        }
    }

    fn modified(&self) -> std::time::SystemTime {
        let since = std::time::Duration::new(
            self.mtime.unsigned_abs(),
            self.mtime_nsec.clamp(0, 999_999_999) as u32,
        );
        if self.mtime >= 0 {
            std::time::UNIX_EPOCH + since
        } else {
            std::time::UNIX_EPOCH - since
        }
    }
}

/// The stamp of `name` in the directory `dir` (not following a symlink), by a lookup
/// relative to the open directory: the path is not walked again for every file.
fn stamp_at(dir: &fs::File, name: &str) -> Option<Stamp> {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(name).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a descriptor we hold open, a NUL-terminated name, and a buffer of the type
    // fstatat fills.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: fstatat returned 0, so it filled the buffer.
    Some(Stamp::of_stat(unsafe { &st.assume_init() }))
}

/// The stamps of `files` (sorted, relative to `root`), `None` for those not there.
fn stamps_of(root: &Path, files: &[String]) -> Vec<Option<Stamp>> {
    let mut out = Vec::with_capacity(files.len());
    let mut dir: Option<(&str, Option<fs::File>)> = None;
    for f in files {
        let (parent, name) = f.rsplit_once('/').unwrap_or(("", f.as_str()));
        if dir.as_ref().is_none_or(|(d, _)| *d != parent) {
            let path = if parent.is_empty() {
                root.to_path_buf()
            } else {
                root.join(parent)
            };
            dir = Some((parent, fs::File::open(path).ok()));
        }
        out.push(
            dir.as_ref()
                .and_then(|(_, d)| d.as_ref())
                .and_then(|d| stamp_at(d, name)),
        );
    }
    out
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
            stamps: None,
        }
    }

    /// [`Source::new`], reading every file's metadata once (on as many threads as there
    /// are cores) so each workspace's first comparison reads only its own side. Files
    /// listed but not there (deleted in the working tree) are left out.
    pub fn scan(root: impl Into<PathBuf>, files: impl IntoIterator<Item = String>) -> Source {
        let listed = Source::new(root, files);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8)
            .min(listed.files.len() / 512 + 1);
        let chunk = listed.files.len().div_ceil(threads).max(1);
        let root = listed.root.as_path();
        let stamps: Vec<Option<Stamp>> = std::thread::scope(|s| {
            let parts: Vec<_> = listed
                .files
                .chunks(chunk)
                .map(|part| s.spawn(move || stamps_of(root, part)))
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        if stamps.len() != listed.files.len() {
            // A scanning thread panicked: compare without the snapshot.
            return listed;
        }
        let (files, stamps): (Vec<String>, Vec<Stamp>) = listed
            .files
            .into_iter()
            .zip(stamps)
            .filter_map(|(f, st)| st.map(|st| (f, st)))
            .unzip();
        let mut scanned = Source::new(listed.root, files);
        scanned.stamps = Some(stamps);
        scanned
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The files, sorted.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    fn is_file(&self, rel: &str) -> bool {
        self.index_of(rel).is_some()
    }

    fn index_of(&self, rel: &str) -> Option<usize> {
        self.files.binary_search_by(|f| f.as_str().cmp(rel)).ok()
    }

    /// The positions in `files` of the files below directory `rel` (`""`: all of them).
    fn range_under(&self, rel: &str) -> std::ops::Range<usize> {
        if rel.is_empty() {
            return 0..self.files.len();
        }
        let prefix = format!("{rel}/");
        let start = self.files.partition_point(|f| f.as_str() < prefix.as_str());
        let len = self.files[start..]
            .iter()
            .take_while(|f| f.starts_with(&prefix))
            .count();
        start..start + len
    }

    fn is_dir(&self, rel: &str) -> bool {
        rel.is_empty() || self.dirs.contains(rel)
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

/// [`sync`] restricted to the directory `rel` of the workspace: one walk of the
/// workspace (each entry's metadata read relative to its open directory) finds what is up
/// to date and deletes what the source lacks; then what is missing or differs is copied.
fn sync_under(source: &Source, dest: &Path, rel: &str, keep: &[&str]) -> io::Result<SyncStats> {
    let mut stats = SyncStats::default();
    let range = source.range_under(rel);
    let stamps: std::borrow::Cow<'_, [Option<Stamp>]> = match &source.stamps {
        Some(all) => all[range.clone()].iter().map(|s| Some(*s)).collect(),
        None => stamps_of(&source.root, &source.files[range.clone()]).into(),
    };
    let start = if rel.is_empty() {
        dest.to_path_buf()
    } else {
        ensure_dir(&dest.join(rel))?;
        dest.join(rel)
    };
    let mut walk = Walk {
        source,
        base: range.start,
        stamps: &stamps,
        fresh: vec![false; range.len()],
        keep,
        removed: 0,
        rel: rel.to_string(),
    };
    walk.dir(&start, true)?;
    stats.removed = walk.removed;
    let mut made: Option<PathBuf> = None;
    for (k, f) in source.files[range].iter().enumerate() {
        if walk.fresh[k] {
            stats.unchanged += 1;
            continue;
        }
        if stamps[k].is_none() {
            // Listed but gone (deleted in the working tree): the workspace lacks it too.
            continue;
        }
        // The copy takes the file as it is now, with its current metadata.
        let src = source.root.join(f);
        let Ok(meta) = fs::symlink_metadata(&src) else {
            continue;
        };
        let target = dest.join(f);
        if let Some(parent) = target.parent() {
            if made.as_deref() != Some(parent) {
                ensure_dir(parent)?;
                made = Some(parent.to_path_buf());
            }
        }
        copy_entry(&src, &Stamp::of(&meta), &target)?;
        stats.copied += 1;
    }
    Ok(stats)
}

/// One comparison walk over a workspace directory tree.
struct Walk<'a> {
    source: &'a Source,
    /// Position in `source.files` of `stamps[0]` and `fresh[0]`.
    base: usize,
    stamps: &'a [Option<Stamp>],
    /// Which of the files are in place and up to date.
    fresh: Vec<bool>,
    /// Top-level entries left alone.
    keep: &'a [&'a str],
    removed: usize,
    /// The directory being walked, relative to the workspace root.
    rel: String,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path, top: bool) -> io::Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => return Err(annotate(e, dir)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| annotate(e, dir))?;
            let name = entry.file_name();
            if top && self.keep.iter().any(|k| name == *k) {
                continue;
            }
            let at = self.rel.len();
            // A name the source cannot hold (not UTF-8) is not one of its files.
            let wanted = match name.to_str() {
                Some(n) => {
                    if !self.rel.is_empty() {
                        self.rel.push('/');
                    }
                    self.rel.push_str(n);
                    true
                }
                None => false,
            };
            let ft = entry.file_type().map_err(|e| annotate(e, &entry.path()))?;
            let index = if wanted {
                self.source.index_of(&self.rel)
            } else {
                None
            };
            if wanted && ft.is_dir() && self.source.is_dir(&self.rel) {
                self.dir(&entry.path(), false)?;
            } else if let Some(i) = index.filter(|i| self.stamps[i - self.base].is_some()) {
                let k = i - self.base;
                self.fresh[k] = self.stamps[k].is_some_and(|src| self.up_to_date(&src, &entry));
            } else {
                let path = entry.path();
                if ft.is_dir() {
                    make_writable(&path);
                    fs::remove_dir_all(&path).map_err(|e| annotate(e, &path))?;
                } else {
                    fs::remove_file(&path).map_err(|e| annotate(e, &path))?;
                }
                self.removed += 1;
            }
            self.rel.truncate(at);
        }
        Ok(())
    }

    fn up_to_date(&self, src: &Stamp, entry: &fs::DirEntry) -> bool {
        let Ok(m) = entry.metadata() else {
            return false;
        };
        let t = Stamp::of(&m);
        match src.kind {
            Kind::Symlink => {
                t.kind == Kind::Symlink
                    && fs::read_link(entry.path()).ok()
                        == fs::read_link(self.source.root.join(&self.rel)).ok()
            }
            Kind::File => t == *src,
            Kind::Other => false,
        }
    }
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
    /// Trackers no longer used, their watches removed, closed when the workspace is
    /// dropped (by then the kernel has freed the watches, so closing does not wait).
    retired: Vec<Tracker>,
    /// Stop tracking after the next prepare: no further reset is expected.
    last_use: bool,
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
            retired: Vec::new(),
            last_use: false,
            trusted: false,
            git_state: None,
            overlay: BTreeMap::new(),
            pending: BTreeSet::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stop following changes: no further reset is expected in this process (one would
    /// compare every file). The kernel then frees the watches while the last jobs run,
    /// so dropping the workspace at the end does not wait for that.
    pub fn stop_tracking(&mut self) {
        if let Some(mut t) = self.tracker.take() {
            t.retire();
            self.retired.push(t);
        }
        self.trusted = false;
    }

    /// Stop following changes right after the next prepare (the job about to run is
    /// the last one this workspace is expected to see).
    pub fn stop_tracking_after_prepare(&mut self) {
        self.last_use = true;
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
                        self.stop_tracking();
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
        if std::mem::take(&mut self.last_use) {
            self.stop_tracking();
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
                        self.stop_tracking();
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
                    Ok(meta) => copy_entry(&src, &Stamp::of(&meta), &target)?,
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
        self.stop_tracking();
        self.tracker = Tracker::new();
        if let Some(t) = &mut self.tracker {
            self.trusted = source.dirs_under("").iter().all(|d| t.watch(&self.dir, d));
        }
        if !self.trusted {
            self.stop_tracking();
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
                        copy_entry(&src, &Stamp::of(&meta), &target)?;
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
                    self.stop_tracking();
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

fn copy_entry(src: &Path, stamp: &Stamp, target: &Path) -> io::Result<()> {
    if let Ok(t) = fs::symlink_metadata(target) {
        // A plain file of the workspace's own is rewritten in place (cheaper than a new
        // file); anything else goes first, so nothing is written through a symlink or a
        // hard link the job made to a file elsewhere.
        let reusable =
            stamp.kind == Kind::File && t.is_file() && t.nlink() == 1 && t.mode() & 0o200 != 0;
        if !reusable {
            remove_path(target)?;
        }
    }
    match stamp.kind {
        Kind::Symlink => {
            let link = fs::read_link(src).map_err(|e| annotate(e, src))?;
            std::os::unix::fs::symlink(&link, target).map_err(|e| annotate(e, target))?;
            return Ok(());
        }
        Kind::Other => return Ok(()),
        Kind::File => {}
    }
    // std's copy uses copy_file_range (a reflink on file systems that have them).
    fs::copy(src, target).map_err(|e| annotate(e, src))?;
    fs::set_permissions(target, fs::Permissions::from_mode(stamp.mode))
        .map_err(|e| annotate(e, target))?;
    // Read-only is enough for the owner to set times (the copy may be read-only).
    let f = fs::File::open(target).map_err(|e| annotate(e, target))?;
    f.set_modified(stamp.modified())
        .map_err(|e| annotate(e, target))?;
    Ok(())
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

    /// A scanned source leaves out files listed but not there, and its one reading of
    /// the metadata serves comparisons: what a workspace changed is still found.
    #[test]
    fn scanned_source_drops_missing_files_and_finds_changes() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        write(src.path(), "a.txt", "a");
        write(src.path(), "dir/b.txt", "bb");
        std::os::unix::fs::symlink("a.txt", src.path().join("link")).expect("symlink");
        let listed = ["a.txt", "dir/b.txt", "gone.txt", "dir/gone", "link"];
        let source = Source::scan(src.path(), listed.iter().map(|f| f.to_string()));
        assert_eq!(source.files(), ["a.txt", "dir/b.txt", "link"]);
        let first = sync(&source, dst.path(), &[]).expect("sync");
        assert_eq!(first.copied, 3);
        // Same size, other content and time; an extra file; a directory where a file was.
        fs::write(dst.path().join("a.txt"), "A").expect("write");
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::options()
            .write(true)
            .open(dst.path().join("a.txt"))
            .and_then(|f| f.set_modified(old))
            .expect("touch");
        write(dst.path(), "dir/extra.o", "x");
        fs::remove_file(dst.path().join("link")).expect("rm");
        fs::create_dir(dst.path().join("link")).expect("mkdir");
        write(dst.path(), "gone.txt", "stale");
        let second = sync(&source, dst.path(), &[]).expect("sync");
        assert_eq!((second.copied, second.removed), (2, 2), "{second:?}");
        assert_eq!(
            fs::read_to_string(dst.path().join("a.txt")).expect("a"),
            "a"
        );
        assert_eq!(
            fs::read_link(dst.path().join("link")).expect("link"),
            PathBuf::from("a.txt")
        );
        assert!(!dst.path().join("dir/extra.o").exists());
        assert!(!dst.path().join("gone.txt").exists());
        let third = sync(&source, dst.path(), &[]).expect("sync");
        assert_eq!((third.copied, third.removed, third.unchanged), (0, 0, 3));
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

    /// A workspace that stopped following changes (after its expected last job) still
    /// resets exactly when used again: it compares everything.
    #[test]
    fn a_reset_after_tracking_stopped_compares_everything() {
        let src = tempfile::tempdir().expect("tmp");
        let dst = tempfile::tempdir().expect("tmp");
        write(src.path(), "a.txt", "a");
        write(src.path(), "dir/b.txt", "b");
        let source = Source::scan(src.path(), ["a.txt".into(), "dir/b.txt".into()]);
        let mut ws = Workspace::new(dst.path().join("ws"));
        assert!(ws.prepare(&source, None).expect("prepare").full);
        ws.stop_tracking_after_prepare();
        let tracked = ws.prepare(&source, None).expect("prepare");
        assert!(!tracked.full, "the prepare itself still used tracking");
        // The job changes things; nothing watches any more.
        let root = ws.dir().to_path_buf();
        fs::write(root.join("dir/b.txt"), "changed").expect("write");
        write(&root, "new/file", "x");
        let again = ws.prepare(&source, None).expect("prepare");
        assert!(again.full, "{again:?}");
        assert_eq!((again.copied, again.removed), (1, 1));
        assert_eq!(fs::read_to_string(root.join("dir/b.txt")).expect("b"), "b");
        assert!(!root.join("new").exists());
        // Tracking resumed with that full comparison.
        fs::write(root.join("a.txt"), "edited").expect("write");
        let next = ws.prepare(&source, None).expect("prepare");
        assert!(!next.full);
        assert_eq!(fs::read_to_string(root.join("a.txt")).expect("a"), "a");
        ws.stop_tracking();
        fs::write(root.join("a.txt"), "edited again").expect("write");
        assert!(ws.prepare(&source, None).expect("prepare").full);
        assert_eq!(fs::read_to_string(root.join("a.txt")).expect("a"), "a");
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
