//! Manifests: the list of what a set of artifacts (or a cache) holds, each file by its
//! blob, and the code that builds one from a workspace and writes one out again.

use super::blob::{is_hash, with_codec, Blobs, Codec};
use super::collect::{mtime_ns, Collected, Found};
use super::fsutil::{invalid_data, is_safe_rel, PathContext};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// What a job's artifacts (or a cache) hold: files by content, directories, symlinks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactSet {
    /// Sorted by path; paths are relative, `/`-separated and normalised.
    pub entries: Vec<Entry>,
    /// What GitLab Runner logs as warnings while collecting (`<path>: no matching
    /// files ...`, paths outside the workspace, symlinks leading out of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What it logs as information (`<path>: found 3 matching artifact files and
    /// directories`, `<pattern>: excluded 2 files`, `untracked: found 4 files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    #[serde(flatten)]
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    File {
        /// Permission bits (`0o755` for an executable).
        mode: u32,
        size: u64,
        /// SHA-256 of the content, hex.
        blob: String,
        /// Modification time, nanoseconds since the Unix epoch; restored on extraction
        /// (build tools that compare timestamps rely on it, as with the runner's zips).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<u64>,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        /// Relative to the link's directory; always inside the workspace.
        target: String,
    },
}

impl ArtifactSet {
    /// Number of regular files.
    pub fn file_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count()
    }

    /// Total size of the files, uncompressed.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }

    /// The blobs the set refers to.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File { blob, .. } => Some(blob.as_str()),
            _ => None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Store the collected files as blobs and make the manifest.
pub(crate) fn build(
    blobs: &Blobs,
    workdir: &Path,
    collected: Collected,
) -> io::Result<ArtifactSet> {
    with_codec(|codec| build_with(blobs, workdir, collected, codec))
}

fn build_with(
    blobs: &Blobs,
    workdir: &Path,
    collected: Collected,
    codec: &mut Codec,
) -> io::Result<ArtifactSet> {
    let mut set = ArtifactSet {
        entries: Vec::with_capacity(collected.entries.len()),
        warnings: collected.warnings,
        notes: collected.notes,
    };
    for (path, found) in collected.entries {
        let kind = match found {
            Found::Dir { mode } => EntryKind::Dir { mode },
            Found::Symlink { target } => EntryKind::Symlink { target },
            Found::File => {
                let src = workdir.join(&path);
                // No following a symlink swapped in since the walk.
                let mut file = match OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&src)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        set.warnings
                            .push(format!("{path}: removed while being collected"));
                        continue;
                    }
                    Err(e) => return Err(e).at("cannot open", &src),
                };
                let meta = file.metadata().at("cannot stat", &src)?;
                if !meta.is_file() {
                    set.warnings
                        .push(format!("{path}: no longer a regular file, skipped"));
                    continue;
                }
                let put = blobs.put_file(&mut file, &src, codec)?;
                EntryKind::File {
                    mode: meta.permissions().mode() & 0o777,
                    size: put.size,
                    blob: put.hash,
                    mtime_ns: mtime_ns(&meta),
                }
            }
        };
        set.entries.push(Entry { path, kind });
    }
    Ok(set)
}

/// Check a manifest read from disk before trusting its paths and hashes.
pub(crate) fn validate(set: &ArtifactSet, source: &Path) -> io::Result<()> {
    for e in &set.entries {
        if !is_safe_rel(&e.path) {
            return Err(invalid_data(format!(
                "unsafe path {:?} in {}",
                e.path,
                source.display()
            )));
        }
        if let EntryKind::File { blob, .. } = &e.kind {
            if !is_hash(blob) {
                return Err(invalid_data(format!(
                    "bad blob hash {blob:?} for {} in {}",
                    e.path,
                    source.display()
                )));
            }
        }
    }
    Ok(())
}

/// Write a set out under `dest`, overwriting what is there; never writes through a
/// symlink that leads outside `dest`.
pub(crate) fn extract(blobs: &Blobs, set: &ArtifactSet, dest: &Path) -> io::Result<()> {
    with_codec(|codec| extract_with(blobs, set, dest, codec))
}

fn extract_with(
    blobs: &Blobs,
    set: &ArtifactSet,
    dest: &Path,
    codec: &mut Codec,
) -> io::Result<()> {
    validate(set, dest)?;
    fs::create_dir_all(dest).at("cannot create directory", dest)?;
    let canon = fs::canonicalize(dest).at("cannot open", dest)?;
    let mut x = Extractor {
        dest,
        canon,
        ready: HashSet::from([String::new()]),
    };
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for e in &set.entries {
        let parent = e.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        x.ensure_dir(parent)?;
        let target = dest.join(&e.path);
        match &e.kind {
            EntryKind::Dir { mode } => {
                x.ensure_dir(&e.path)?;
                dir_modes.push((target, *mode));
            }
            EntryKind::File {
                mode,
                size,
                blob,
                mtime_ns,
            } => {
                clear(&target)?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .at("cannot create", &target)?;
                blobs.write_to(blob, *size, &mut out, &target, codec)?;
                out.set_permissions(Permissions::from_mode(mode & 0o777))
                    .at("cannot set mode of", &target)?;
                if let Some(ns) = mtime_ns {
                    let t = UNIX_EPOCH + Duration::from_nanos(*ns);
                    out.set_modified(t).at("cannot set time of", &target)?;
                }
            }
            EntryKind::Symlink { target: t } => {
                clear(&target)?;
                std::os::unix::fs::symlink(t, &target).at("cannot create symlink", &target)?;
            }
        }
    }
    // Deepest first, so a read-only directory is made so after its contents.
    for (path, mode) in dir_modes.iter().rev() {
        fs::set_permissions(path, Permissions::from_mode(mode & 0o777))
            .at("cannot set mode of", path)?;
    }
    Ok(())
}

/// Remove a file or symlink at `path` so it can be replaced; a directory there is an error.
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at("cannot stat", path),
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("cannot overwrite directory {} with a file", path.display()),
        )),
        Ok(_) => fs::remove_file(path).at("cannot replace", path),
    }
}

struct Extractor<'a> {
    dest: &'a Path,
    canon: PathBuf,
    /// Directories known to exist inside `dest`.
    ready: HashSet<String>,
}

impl Extractor<'_> {
    /// Make sure directory `rel` exists under `dest` and really lies inside it.
    fn ensure_dir(&mut self, rel: &str) -> io::Result<()> {
        if self.ready.contains(rel) {
            return Ok(());
        }
        let parent = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        self.ensure_dir(parent)?;
        let path = self.dest.join(rel);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(e).at("cannot create directory", &path),
            },
            Err(e) => return Err(e).at("cannot stat", &path),
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                let real = fs::canonicalize(&path).ok();
                match real {
                    Some(r) if r.starts_with(&self.canon) && r.is_dir() => {}
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "refusing to extract through symlink {}: it does not lead to a directory inside {}",
                                path.display(),
                                self.dest.display()
                            ),
                        ))
                    }
                }
            }
            Ok(_) => {
                fs::remove_file(&path).at("cannot replace", &path)?;
                fs::create_dir(&path).at("cannot create directory", &path)?;
            }
        }
        self.ready.insert(rel.to_string());
        Ok(())
    }
}
