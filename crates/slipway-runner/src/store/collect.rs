//! Which files of a workspace an `artifacts:` or `cache:` definition selects, with
//! GitLab Runner's semantics (its `fileArchiver`):
//!
//! - Each `paths` entry is taken relative to the workspace (an absolute path must lie
//!   inside it). An entry with none of `*?[{` is a literal file or directory; otherwise
//!   it is a doublestar glob: `*` and `?` stay within one path component, `**` as a
//!   whole component matches zero or more directories, `[...]`/`[!...]` classes and
//!   `{a,b}` alternatives. Hidden files are matched like any other.
//! - Every match is walked recursively without following symlinks; each file,
//!   directory and symlink met is added unless an `exclude` glob matches its path.
//!   An excluded directory is still walked: its files are judged one by one (so
//!   excluding a directory's contents takes `dir/**/*`, as GitLab documents).
//! - An entry that matches nothing yields the runner's warning
//!   `<path>: no matching files ...`; one outside the workspace yields
//!   `artifact path is not a subpath of project directory: <path>`. Neither is an error.
//! - `untracked` adds every file (not directory) of the workspace that was not part of
//!   its checkout: the runner asks `git ls-files -o`, which lists ignored files too.
//!   Here the caller passes the checkout's file list (see [`super::Store`]).
//!
//! Beyond the runner, for safety on a shared machine: a symlink is kept only if its
//! target lies inside the workspace (an absolute target is rewritten relative), and a
//! path whose real parent directory leads outside the workspace (through a symlinked
//! directory) is refused like a path outside.

use super::fsutil::{invalid_input, normalize_rel, PathContext};
use globset::{GlobBuilder, GlobMatcher};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

/// What was found at a selected path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    Dir { mode: u32 },
    File,
    Symlink { target: String },
}

#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Relative `/`-separated path to what is there; sorted, unique.
    pub entries: BTreeMap<String, Found>,
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

pub(crate) struct Spec<'a> {
    pub paths: &'a [String],
    pub exclude: &'a [String],
    /// `Some(checkout)` adds the untracked files: those not in `checkout`.
    pub untracked: Option<&'a [String]>,
}

pub(crate) fn mtime_ns(meta: &fs::Metadata) -> Option<u64> {
    let d = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_nanos()).ok()
}

pub(crate) fn collect(workdir: &Path, spec: &Spec) -> io::Result<Collected> {
    let root = std::path::absolute(workdir).at("cannot resolve workspace", workdir)?;
    let canon = fs::canonicalize(&root).at("cannot open workspace", &root)?;
    let mut c = Collector {
        root,
        canon,
        excludes: Vec::new(),
        excluded: BTreeMap::new(),
        walked: HashSet::new(),
        out: Collected::default(),
    };
    for pattern in spec.exclude {
        match c.relative_pattern(pattern) {
            Ok(rel) => match compile(&rel) {
                Ok(m) => c.excludes.push((pattern.clone(), m)),
                Err(e) => c.out.warnings.push(format!("{pattern}: {e}")),
            },
            Err(w) => c.out.warnings.push(w),
        }
    }
    for path in spec.paths {
        c.process_path(path);
    }
    if let Some(checkout) = spec.untracked {
        c.process_untracked(checkout);
    }
    for (pattern, n) in std::mem::take(&mut c.excluded) {
        c.out.notes.push(format!("{pattern}: excluded {n} files"));
    }
    Ok(c.out)
}

struct Collector {
    /// The workspace as given, made absolute (not resolved).
    root: PathBuf,
    /// The workspace with symlinks resolved.
    canon: PathBuf,
    excludes: Vec<(String, GlobMatcher)>,
    excluded: BTreeMap<String, usize>,
    /// Directories already walked recursively for the current `paths` entry.
    walked: HashSet<String>,
    out: Collected,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// Compile a doublestar pattern with globset. globset accepts `**` only as a whole
/// component; elsewhere doublestar treats it as `*`, so it is rewritten so.
fn compile(pattern: &str) -> Result<GlobMatcher, String> {
    let fixed: Vec<String> = pattern
        .split('/')
        .map(|part| {
            if part != "**" && part.contains("**") {
                let mut s = part.to_string();
                while s.contains("**") {
                    s = s.replace("**", "*");
                }
                s
            } else {
                part.to_string()
            }
        })
        .collect();
    GlobBuilder::new(&fixed.join("/"))
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| e.to_string())
}

fn join_rel(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn components_of(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

impl Collector {
    fn outside(path: &str) -> String {
        format!("artifact path is not a subpath of project directory: {path}")
    }

    /// A pattern or path relative to the workspace, normalised (`.`/`..` resolved
    /// lexically, like Go's `filepath.Clean`); an error (a warning text) if outside.
    fn relative_pattern(&self, pattern: &str) -> Result<String, String> {
        if let Some(abs) = pattern.strip_prefix('/') {
            let parts = normalize_rel(abs).ok_or_else(|| Self::outside(pattern))?;
            for base in [&self.root, &self.canon] {
                let base = components_of(base);
                if parts.len() >= base.len() && parts.iter().zip(&base).all(|(a, b)| *a == b) {
                    return Ok(parts[base.len()..].join("/"));
                }
            }
            return Err(Self::outside(pattern));
        }
        normalize_rel(pattern)
            .map(|p| p.join("/"))
            .ok_or_else(|| Self::outside(pattern))
    }

    /// Whether the directory `rel` (relative, normalised) really lies inside the
    /// workspace once symlinks are resolved. A missing directory is `Ok(false)`.
    fn real_dir_inside(&self, rel: &str) -> Result<bool, ()> {
        match fs::canonicalize(self.root.join(rel)) {
            Ok(real) => {
                if real.starts_with(&self.canon) {
                    Ok(true)
                } else {
                    Err(())
                }
            }
            Err(_) => Ok(false),
        }
    }

    fn process_path(&mut self, path: &str) {
        // Each entry is judged on its own: one covered by an earlier entry still
        // counts its matches (and gives no "no matching files" warning).
        self.walked.clear();
        if path.is_empty() {
            self.out
                .warnings
                .push("No matching files. Path is empty.".to_string());
            return;
        }
        let rel = match self.relative_pattern(path) {
            Ok(r) => r,
            Err(w) => {
                self.out.warnings.push(w);
                return;
            }
        };
        let found = if is_glob(&rel) {
            self.process_glob(path, &rel)
        } else {
            self.process_literal(path, &rel)
        };
        match found {
            None => {}
            Some(0) => self.out.warnings.push(format!(
                "{path}: no matching files. Ensure that the artifact path is relative to the working directory ({})",
                self.root.display()
            )),
            Some(n) => self
                .out
                .notes
                .push(format!("{path}: found {n} matching artifact files and directories")),
        }
    }

    /// `None` when a warning was already given.
    fn process_literal(&mut self, path: &str, rel: &str) -> Option<usize> {
        let parent = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        match self.real_dir_inside(parent) {
            Ok(true) => {}
            Ok(false) => return Some(0),
            Err(()) => {
                self.out.warnings.push(Self::outside(path));
                return None;
            }
        }
        let meta = match fs::symlink_metadata(self.root.join(rel)) {
            Ok(m) => m,
            Err(_) => return Some(0),
        };
        Some(self.walk_match(rel, &meta))
    }

    fn process_glob(&mut self, path: &str, rel: &str) -> Option<usize> {
        let parts: Vec<&str> = rel.split('/').collect();
        let first_glob = parts.iter().position(|p| is_glob(p)).unwrap_or(parts.len());
        let base = parts[..first_glob].join("/");
        let rest = &parts[first_glob..];
        let matcher = match compile(rel) {
            Ok(m) => m,
            Err(e) => {
                self.out.warnings.push(format!("{path}: {e}"));
                return None;
            }
        };
        match self.real_dir_inside(&base) {
            Ok(true) => {}
            Ok(false) => return Some(0),
            Err(()) => {
                self.out.warnings.push(Self::outside(path));
                return None;
            }
        }
        let depth = if rest.contains(&"**") {
            usize::MAX
        } else {
            rest.len()
        };
        let mut matches = Vec::new();
        self.search(&base, depth, &matcher, &mut matches);
        matches.sort();
        let mut found = 0;
        for m in matches {
            if self.covered(&m) {
                continue;
            }
            if let Ok(meta) = fs::symlink_metadata(self.root.join(&m)) {
                found += self.walk_match(&m, &meta);
            }
        }
        Some(found)
    }

    /// Whether an ancestor of `rel` was already walked (so `rel` was handled).
    fn covered(&self, rel: &str) -> bool {
        let mut p = rel;
        while let Some((parent, _)) = p.rsplit_once('/') {
            if self.walked.contains(parent) {
                return true;
            }
            p = parent;
        }
        self.walked.contains(rel) || self.walked.contains("")
    }

    /// Paths under `dir` (at most `depth` levels down) that the glob matches.
    fn search(&mut self, dir: &str, depth: usize, matcher: &GlobMatcher, out: &mut Vec<String>) {
        if depth == 0 {
            return;
        }
        let rd = match fs::read_dir(self.root.join(dir)) {
            Ok(rd) => rd,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    self.out.warnings.push(format!("Walking {dir}: {e}"));
                }
                return;
            }
        };
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                self.not_utf8(dir, &entry.file_name());
                continue;
            };
            let rel = join_rel(dir, &name);
            if matcher.is_match(&rel) {
                out.push(rel.clone());
            }
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                self.search(&rel, depth - 1, matcher, out);
            }
        }
    }

    fn not_utf8(&mut self, dir: &str, name: &std::ffi::OsStr) {
        self.out.warnings.push(format!(
            "{}: file name is not valid UTF-8, skipped",
            join_rel(dir, &name.to_string_lossy())
        ));
    }

    /// Add `rel` and, for a directory, everything below it. Returns how many were added.
    fn walk_match(&mut self, rel: &str, meta: &fs::Metadata) -> usize {
        let mut found = 0;
        if !rel.is_empty() && self.process(rel, meta) {
            found += 1;
        }
        if meta.is_dir() {
            self.walked.insert(rel.to_string());
            let rd = match fs::read_dir(self.root.join(rel)) {
                Ok(rd) => rd,
                Err(e) => {
                    self.out.warnings.push(format!("Walking {rel}: {e}"));
                    return found;
                }
            };
            let mut children: Vec<(String, fs::Metadata)> = Vec::new();
            for entry in rd.flatten() {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    self.not_utf8(rel, &entry.file_name());
                    continue;
                };
                if let Ok(m) = entry.metadata() {
                    children.push((join_rel(rel, &name), m));
                }
            }
            for (child, m) in children {
                found += self.walk_match(&child, &m);
            }
        }
        found
    }

    /// Add one path unless excluded. `meta` is from `lstat`.
    fn process(&mut self, rel: &str, meta: &fs::Metadata) -> bool {
        if let Some((pattern, _)) = self.excludes.iter().find(|(_, m)| m.is_match(rel)) {
            *self.excluded.entry(pattern.clone()).or_insert(0) += 1;
            return false;
        }
        let ft = meta.file_type();
        let found = if ft.is_symlink() {
            let target = match fs::read_link(self.root.join(rel)) {
                Ok(t) => t,
                Err(e) => {
                    self.out.warnings.push(format!("{rel}: {e}"));
                    return false;
                }
            };
            match self.inside_target(rel, &target) {
                Some(target) => Found::Symlink { target },
                None => {
                    self.out.warnings.push(format!(
                        "{rel}: symlink target {} is outside the working directory, not stored",
                        target.display()
                    ));
                    return false;
                }
            }
        } else if ft.is_dir() {
            Found::Dir {
                mode: meta.permissions().mode() & 0o777,
            }
        } else if ft.is_file() {
            Found::File
        } else {
            self.out.warnings.push(format!(
                "{rel}: not a regular file, directory or symlink, skipped"
            ));
            return false;
        };
        self.out.entries.insert(rel.to_string(), found);
        true
    }

    /// The symlink's target if it stays inside the workspace: relative targets as
    /// written, absolute ones rewritten relative to the link.
    fn inside_target(&self, link_rel: &str, target: &Path) -> Option<String> {
        let t = target.to_str()?;
        let parent: Vec<&str> = link_rel.split('/').collect();
        let parent = &parent[..parent.len() - 1];
        if t.starts_with('/') {
            let rel = self.relative_pattern(t).ok()?;
            let rel: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
            let common = parent.iter().zip(&rel).take_while(|(a, b)| a == b).count();
            let mut out: Vec<&str> = vec![".."; parent.len() - common];
            out.extend(&rel[common..]);
            return Some(if out.is_empty() {
                ".".to_string()
            } else {
                out.join("/")
            });
        }
        let joined = format!("{}/{t}", parent.join("/"));
        normalize_rel(&joined)?;
        Some(t.to_string())
    }

    fn process_untracked(&mut self, checkout: &[String]) {
        let tracked: HashSet<&str> = checkout
            .iter()
            .map(|s| s.trim_start_matches("./"))
            .collect();
        let mut files = Vec::new();
        self.untracked_walk("", &tracked, &mut files);
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut found = 0;
        for (rel, meta) in files {
            if self.process(&rel, &meta) {
                found += 1;
            }
        }
        if found == 0 {
            self.out.warnings.push("untracked: no files".to_string());
        } else {
            self.out
                .notes
                .push(format!("untracked: found {found} files"));
        }
    }

    fn untracked_walk(
        &mut self,
        dir: &str,
        tracked: &HashSet<&str>,
        out: &mut Vec<(String, fs::Metadata)>,
    ) {
        let rd = match fs::read_dir(self.root.join(dir)) {
            Ok(rd) => rd,
            Err(e) => {
                self.out
                    .warnings
                    .push(format!("untracked: walking {dir}: {e}"));
                return;
            }
        };
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                self.not_utf8(dir, &entry.file_name());
                continue;
            };
            if name == ".git" {
                continue;
            }
            let rel = join_rel(dir, &name);
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                self.untracked_walk(&rel, tracked, out);
            } else if !tracked.contains(rel.as_str()) {
                out.push((rel, meta));
            }
        }
    }
}

/// Files (and symlinks) of a workspace, for `cache:key:files` wildcards. Skips `.git`.
pub(crate) fn list_files(root: &Path) -> io::Result<Vec<String>> {
    fn walk(root: &Path, dir: &str, out: &mut Vec<String>) -> io::Result<()> {
        let path = root.join(dir);
        for entry in fs::read_dir(&path).at("cannot read directory", &path)? {
            let entry = entry.at("cannot read directory", &path)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name == ".git" {
                continue;
            }
            let rel = join_rel(dir, &name);
            let ft = entry.file_type().at("cannot stat", &entry.path())?;
            if ft.is_dir() {
                walk(root, &rel, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    if !root.is_dir() {
        return Err(invalid_input(format!(
            "workspace {} is not a directory",
            root.display()
        )));
    }
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doublestar_rewrites() {
        let m = compile("a/b**c/**/*.o").expect("compiles");
        assert!(m.is_match("a/bxc/d/e/f.o"));
        assert!(m.is_match("a/bxc/f.o"));
        assert!(!m.is_match("a/bx/yc/f.o"));
        let m = compile("**/*.txt").expect("compiles");
        assert!(m.is_match("x.txt"));
        assert!(m.is_match("d/.hidden.txt"));
        let m = compile("out/*.{rpm,deb}").expect("compiles");
        assert!(m.is_match("out/a.deb"));
        assert!(!m.is_match("out/sub/a.deb"));
    }
}
