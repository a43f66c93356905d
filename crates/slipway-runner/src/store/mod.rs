//! The content-addressed artifact and cache store.
//!
//! Layout of the data directory:
//!
//! ```text
//! objects/ab/cdef…        file contents, zstd-compressed, named by the SHA-256 of the
//!                         uncompressed bytes: identical files are stored once, across
//!                         jobs, pipelines, artifacts and caches
//! artifacts/<id>.json     one job's artifacts: a manifest of paths, modes, blobs, and
//!                         its expiry
//! caches/<key>.json       one cache: a manifest, replaced whole (temporary file, then
//!                         rename) so concurrent jobs sharing a key never see half of
//!                         one; the last writer wins
//! ```
//!
//! Blobs are written before the manifest that names them, so a manifest never refers
//! to a missing blob. [`Store::expire`] deletes expired artifact manifests and then
//! garbage-collects blobs no manifest (artifacts or caches) refers to. A blob younger
//! than the grace period ([`Store::with_gc_grace`], an hour by default) is spared,
//! and storing a file whose blob already exists refreshes that blob's time: so a
//! collection running while a job saves its artifacts cannot remove blobs the job's
//! manifest, not yet written, is about to name.
//!
//! **Untracked files.** GitLab Runner finds `untracked: true` files with
//! `git ls-files -o`. A Slipway workspace is a copy of a file list (the repository's
//! `git ls-files --cached --others --exclude-standard`), so callers pass that list,
//! `checkout`: every file of the workspace not in it (created by the job, extracted
//! from artifacts or caches, ignored by `.gitignore`) is untracked. The `.git`
//! directory is never included.
//!
//! # Paths and globs
//!
//! As GitLab Runner (details in `collect.rs`): `paths` entries are files, directories (taken recursively) or doublestar globs
//! (`*`, `?`, `**`, `[...]`, `{a,b}`) relative to the workspace; `exclude` globs drop
//! matching files and directories; paths outside the workspace and paths that match
//! nothing give warnings in [`ArtifactSet::warnings`], not errors.

mod blob;
mod cache;
mod collect;
mod fsutil;
mod manifest;

pub use cache::{cache_key, cache_key_in, sanitize_cache_key};
pub use manifest::{ArtifactSet, Entry, EntryKind};

use blob::{is_hash, Blobs};
use collect::Spec;
use fsutil::{invalid_input, read_json, write_json_atomic, PathContext, TMP_PREFIX};
use serde::{Deserialize, Serialize};
use slipway_core::model::Artifacts;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FORMAT: u32 = 1;

/// The default [`Store::with_gc_grace`].
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);

/// The artifact and cache store in one data directory. Cheap to share between threads
/// (`&Store`); several processes may use one directory at once.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    blobs_dir: PathBuf,
    gc_grace: Duration,
    durable: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredArtifacts {
    format: u32,
    /// Unix seconds; `None`: never expires.
    expire_at: Option<u64>,
    set: ArtifactSet,
}

#[derive(Serialize, Deserialize)]
struct StoredCache {
    format: u32,
    /// The sanitised key.
    key: String,
    set: ArtifactSet,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    pub blobs_removed: usize,
    /// Compressed bytes freed.
    pub bytes_freed: u64,
    pub blobs_kept: usize,
}

/// When artifacts expire: `expire_in` (GitLab's human durations, `never`) counted from
/// `from` (when the job's artifacts were stored), or `default` when it is not set (on
/// GitLab, the instance's default expiration, 30 days unless configured). `None`:
/// never. An unreadable duration (the pipeline linter rejects those) takes `default`.
pub fn expire_at(
    expire_in: Option<&str>,
    from: SystemTime,
    default: Option<Duration>,
) -> Option<SystemTime> {
    let after = match expire_in.map(str::trim) {
        Some(s) if s.eq_ignore_ascii_case("never") => None,
        Some(s) => slipway_core::duration::parse_seconds(s)
            .map(Duration::from_secs)
            .or(default),
        None => default,
    };
    after.and_then(|d| from.checked_add(d))
}

/// Artifact ids name files: letters, digits, `.`, `_`, `-`, not starting with `.`.
fn check_id(id: &str) -> io::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid_input(format!("invalid artifacts id {id:?}")))
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Open (creating if needed) the store in `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Store> {
        let root = root.into();
        for sub in ["objects", "artifacts", "caches"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).at("cannot create directory", &dir)?;
        }
        Ok(Store {
            blobs_dir: root.join("objects"),
            root,
            gc_grace: DEFAULT_GC_GRACE,
            durable: true,
        })
    }

    /// How old an unreferenced blob must be before garbage collection removes it.
    /// It must exceed the time a job takes to save its artifacts or cache.
    pub fn with_gc_grace(mut self, grace: Duration) -> Store {
        self.gc_grace = grace;
        self
    }

    /// Whether manifests are flushed to disk before they replace the old ones (the
    /// default). Without, a killed process still leaves every manifest whole, but a power
    /// cut may lose the latest ones: the trade a local run makes for speed (GitLab
    /// Runner's local cache does not flush either).
    pub fn with_durability(mut self, durable: bool) -> Store {
        self.durable = durable;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs(&self) -> Blobs {
        Blobs::new(self.blobs_dir.clone())
    }

    fn artifacts_path(&self, id: &str) -> PathBuf {
        self.root.join("artifacts").join(format!("{id}.json"))
    }

    fn cache_path(&self, sanitized_key: &str) -> PathBuf {
        self.root
            .join("caches")
            .join(format!("{}.json", cache::key_file_name(sanitized_key)))
    }

    // ----- artifacts -----

    /// Collect a job's artifacts from its workspace `workdir` into the store: the files
    /// `artifacts:paths` and `artifacts:untracked` select, less `artifacts:exclude`.
    /// `checkout` is the list of files the workspace was created from (relative,
    /// `/`-separated), used only for `untracked`. Paths that match nothing or lie
    /// outside the workspace are warnings in the result. Persist the result with
    /// [`Store::save_artifacts`].
    pub fn collect_artifacts(
        &self,
        workdir: &Path,
        artifacts: &Artifacts,
        checkout: &[String],
    ) -> io::Result<ArtifactSet> {
        let spec = Spec {
            paths: &artifacts.paths,
            exclude: &artifacts.exclude,
            untracked: artifacts.untracked.then_some(checkout),
        };
        let collected = collect::collect(workdir, &spec)?;
        manifest::build(&self.blobs(), workdir, collected)
    }

    /// Record `set` as artifacts `id` (for example `<pipeline>-<job>`), replacing any
    /// previous record atomically. `expire_at`: see [`expire_at`]. Every blob of the
    /// set must still be stored (`NotFound` otherwise): save soon after collecting.
    pub fn save_artifacts(
        &self,
        id: &str,
        set: &ArtifactSet,
        expire_at: Option<SystemTime>,
    ) -> io::Result<()> {
        check_id(id)?;
        manifest::validate(set, Path::new(id))?;
        self.check_blobs(set)?;
        let record = StoredArtifacts {
            format: FORMAT,
            expire_at: expire_at.map(unix_secs),
            set: set.clone(),
        };
        write_json_atomic(&self.artifacts_path(id), &record, self.durable)
    }

    /// Every blob `set` names must be there: a set collected before a garbage
    /// collection that removed its (then unreferenced) blobs cannot be saved.
    fn check_blobs(&self, set: &ArtifactSet) -> io::Result<()> {
        let blobs = self.blobs();
        for e in &set.entries {
            if let EntryKind::File { blob, .. } = &e.kind {
                let path = blobs.path(blob);
                if !path.exists() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "blob {} of {} is missing: collect the artifacts again",
                            path.display(),
                            e.path
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn load_record(&self, id: &str) -> io::Result<StoredArtifacts> {
        check_id(id)?;
        let path = self.artifacts_path(id);
        let record: StoredArtifacts = read_json(&path)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no artifacts {id} ({} does not exist)", path.display()),
            )
        })?;
        manifest::validate(&record.set, &path)?;
        Ok(record)
    }

    /// Artifacts `id`; a `NotFound` error if there are none (never saved, or expired).
    pub fn load_artifacts(&self, id: &str) -> io::Result<ArtifactSet> {
        self.load_record(id).map(|r| r.set)
    }

    /// When artifacts `id` expire (`None`: never).
    pub fn artifacts_expire_at(&self, id: &str) -> io::Result<Option<SystemTime>> {
        self.load_record(id).map(|r| {
            r.expire_at
                .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        })
    }

    /// Delete artifacts `id` now (their blobs go at the next collection). Whether they existed.
    pub fn delete_artifacts(&self, id: &str) -> io::Result<bool> {
        check_id(id)?;
        let path = self.artifacts_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at("cannot delete", &path),
        }
    }

    /// The ids of all stored artifacts, sorted.
    pub fn artifact_ids(&self) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = list_json(&self.root.join("artifacts"))?
            .into_iter()
            .map(|(stem, _)| stem)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Write artifacts out into `dest` (a later job's workspace), overwriting existing
    /// files, restoring modes, modification times and symlinks.
    pub fn extract_artifacts(&self, set: &ArtifactSet, dest: &Path) -> io::Result<()> {
        manifest::extract(&self.blobs(), set, dest)
    }

    /// Delete the artifact manifests that expired by `now` unless `keep(id)` (artifacts
    /// a deployment may roll back to, the latest of a ref, ...), then collect garbage.
    /// Returns how many manifests were deleted.
    pub fn expire(&self, now: SystemTime, keep: &dyn Fn(&str) -> bool) -> io::Result<usize> {
        let now = unix_secs(now);
        let mut deleted = 0;
        for (id, path) in list_json(&self.root.join("artifacts"))? {
            let Some(record) = read_json::<StoredArtifacts>(&path)? else {
                continue;
            };
            if record.expire_at.is_some_and(|t| t <= now) && !keep(&id) {
                match fs::remove_file(&path) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).at("cannot delete", &path),
                }
            }
        }
        self.gc()?;
        Ok(deleted)
    }

    /// Remove blobs that no artifact or cache manifest refers to (and stale temporary
    /// files), sparing those younger than the grace period. A manifest that cannot be
    /// read stops the collection with an error rather than risk its blobs.
    pub fn gc(&self) -> io::Result<GcStats> {
        let mut referenced: HashSet<String> = HashSet::new();
        for (_, path) in list_json(&self.root.join("artifacts"))? {
            if let Some(r) = read_json::<StoredArtifacts>(&path)? {
                referenced.extend(r.set.blobs().map(str::to_string));
            }
        }
        for (_, path) in list_json(&self.root.join("caches"))? {
            if let Some(r) = read_json::<StoredCache>(&path)? {
                referenced.extend(r.set.blobs().map(str::to_string));
            }
        }
        let cutoff = SystemTime::now()
            .checked_sub(self.gc_grace)
            .unwrap_or(UNIX_EPOCH);
        let old = |meta: &fs::Metadata| meta.modified().map(|t| t <= cutoff).unwrap_or(false);
        let mut stats = GcStats::default();
        for sub in ["artifacts", "caches"] {
            remove_stale_temps(&self.root.join(sub), &old)?;
        }
        let objects = &self.blobs_dir;
        for shard in fs::read_dir(objects).at("cannot read directory", objects)? {
            let shard = shard.at("cannot read directory", objects)?;
            let shard_name = shard.file_name().to_string_lossy().into_owned();
            let shard_path = shard.path();
            if !shard_path.is_dir() {
                continue;
            }
            for f in fs::read_dir(&shard_path).at("cannot read directory", &shard_path)? {
                let f = f.at("cannot read directory", &shard_path)?;
                let name = f.file_name().to_string_lossy().into_owned();
                let path = f.path();
                let Ok(meta) = f.metadata() else { continue };
                if name.starts_with(TMP_PREFIX) {
                    if old(&meta) {
                        let _ = fs::remove_file(&path);
                    }
                    continue;
                }
                let hash = format!("{shard_name}{name}");
                if !is_hash(&hash) || referenced.contains(&hash) || !old(&meta) {
                    stats.blobs_kept += 1;
                    continue;
                }
                match fs::remove_file(&path) {
                    Ok(()) => {
                        stats.blobs_removed += 1;
                        stats.bytes_freed += meta.len();
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).at("cannot delete", &path),
                }
            }
        }
        Ok(stats)
    }

    /// Number of blobs and their compressed size.
    pub fn blob_stats(&self) -> io::Result<(usize, u64)> {
        let mut n = 0;
        let mut bytes = 0;
        let objects = &self.blobs_dir;
        for shard in fs::read_dir(objects).at("cannot read directory", objects)? {
            let shard = shard.at("cannot read directory", objects)?.path();
            if !shard.is_dir() {
                continue;
            }
            for f in fs::read_dir(&shard).at("cannot read directory", &shard)? {
                let f = f.at("cannot read directory", &shard)?;
                if f.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    continue;
                }
                n += 1;
                bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok((n, bytes))
    }

    // ----- caches -----

    /// Save the files `paths` (and, with `untracked: Some(checkout)`, the untracked
    /// files: see the module documentation) of `workdir` as cache `key`, replacing the
    /// previous cache of that key whole. Returns the collection's warnings (paths that
    /// match nothing, ...). An empty selection saves an empty cache, as the runner does.
    /// A key that sanitises to nothing is an `InvalidInput` error.
    pub fn save_cache(
        &self,
        key: &str,
        workdir: &Path,
        paths: &[String],
        untracked: Option<&[String]>,
    ) -> io::Result<Vec<String>> {
        let sanitized = sanitize_cache_key(key).ok_or_else(|| cache::io_bad_key(key))?;
        let spec = Spec {
            paths,
            exclude: &[],
            untracked,
        };
        let collected = collect::collect(workdir, &spec)?;
        let set = manifest::build(&self.blobs(), workdir, collected)?;
        let warnings = set.warnings.clone();
        let record = StoredCache {
            format: FORMAT,
            key: sanitized.clone(),
            set,
        };
        write_json_atomic(&self.cache_path(&sanitized), &record, self.durable)?;
        Ok(warnings)
    }

    /// Restore the first cache found among `key` and then `fallback_keys` into `dest`,
    /// overwriting existing files. Returns the key (as given) that was restored, or
    /// `None`. Keys that sanitise to nothing are skipped. (`CACHE_FALLBACK_KEY` is the
    /// caller's to append.) Like GitLab Runner, callers should report an error here as
    /// a warning and go on with the job.
    pub fn restore_cache(
        &self,
        key: &str,
        fallback_keys: &[String],
        dest: &Path,
    ) -> io::Result<Option<String>> {
        for k in std::iter::once(key).chain(fallback_keys.iter().map(String::as_str)) {
            let Some(sanitized) = sanitize_cache_key(k) else {
                continue;
            };
            let path = self.cache_path(&sanitized);
            let Some(record) = read_json::<StoredCache>(&path)? else {
                continue;
            };
            if record.key != sanitized {
                continue;
            }
            manifest::validate(&record.set, &path)?;
            manifest::extract(&self.blobs(), &record.set, dest)?;
            return Ok(Some(k.to_string()));
        }
        Ok(None)
    }

    /// The manifest of cache `key`, if saved.
    pub fn load_cache(&self, key: &str) -> io::Result<Option<ArtifactSet>> {
        let sanitized = sanitize_cache_key(key).ok_or_else(|| cache::io_bad_key(key))?;
        let path = self.cache_path(&sanitized);
        Ok(read_json::<StoredCache>(&path)?
            .filter(|r| r.key == sanitized)
            .map(|r| r.set))
    }

    /// Delete cache `key` (GitLab's "clear runner caches" for one key). Whether it existed.
    pub fn delete_cache(&self, key: &str) -> io::Result<bool> {
        let sanitized = sanitize_cache_key(key).ok_or_else(|| cache::io_bad_key(key))?;
        let path = self.cache_path(&sanitized);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at("cannot delete", &path),
        }
    }
}

/// `(stem, path)` of the `*.json` files of `dir` (temporary files excluded).
fn list_json(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for f in fs::read_dir(dir).at("cannot read directory", dir)? {
        let f = f.at("cannot read directory", dir)?;
        let name = f.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".json") {
            out.push((stem.to_string(), f.path()));
        }
    }
    Ok(out)
}

fn remove_stale_temps(dir: &Path, old: &dyn Fn(&fs::Metadata) -> bool) -> io::Result<()> {
    for f in fs::read_dir(dir).at("cannot read directory", dir)? {
        let f = f.at("cannot read directory", dir)?;
        if f.file_name().to_string_lossy().starts_with(TMP_PREFIX)
            && f.metadata().map(|m| old(&m)).unwrap_or(false)
        {
            let _ = fs::remove_file(f.path());
        }
    }
    Ok(())
}
