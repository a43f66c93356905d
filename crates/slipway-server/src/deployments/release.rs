//! What a deployment deploys, and with which variables.
//!
//! **The release** is the set of files the deploy job receives from the jobs it depends
//! on (`needs`/`dependencies` artifacts, extracted in the order the runner extracts
//! them, a later one replacing a path of an earlier one): build once, deploy many. The
//! deploy job's own script may check or announce the deployment, but what it writes is
//! not part of the release, so the build promoted from dev to staging to production is
//! the same files.
//!
//! **Its digest** is `sha256:` over the release's manifest: for each path in order, its
//! kind, mode and content hash (or a symlink's target), never modification times. The
//! same build therefore has the same digest in every environment it is promoted to,
//! and a rebuild that produces the same bytes does too; the promotion rule
//! (`promotion: {from: staging}`) compares these digests.
//!
//! **Its variables** are the deploy job's own: the project's variables and secrets for
//! that environment, the pipeline's and the job's `variables:`, the run's variables and
//! the dotenv variables it received, plus a few `CI_*` facts about the commit and the
//! environment. They are recorded with the deployment (sealed when any is secret), so a
//! rollback runs the old release with the old values.

use crate::queue::JobPayload;
use sha2::{Digest, Sha256};
use slipway_db::{DeploymentVariable, SecretString};
use slipway_runner::store::{ArtifactSet, EntryKind, Store};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

/// The `CI_*` variables a release gets (the rest describe the job's workspace).
pub const CI_VARIABLES: &[&str] = &[
    "CI_COMMIT_SHA",
    "CI_COMMIT_SHORT_SHA",
    "CI_COMMIT_REF_NAME",
    "CI_COMMIT_REF_SLUG",
    "CI_COMMIT_BRANCH",
    "CI_COMMIT_TAG",
    "CI_PIPELINE_ID",
    "CI_PIPELINE_IID",
    "CI_JOB_ID",
    "CI_PROJECT_NAME",
    "CI_PROJECT_PATH",
    "CI_ENVIRONMENT_NAME",
    "CI_ENVIRONMENT_SLUG",
    "CI_ENVIRONMENT_TIER",
    "CI_ENVIRONMENT_URL",
];

/// The union of artifact sets, a later set replacing an earlier one's path.
fn merged(store: &Store, ids: &[String]) -> io::Result<ArtifactSet> {
    let mut by_path: BTreeMap<String, slipway_runner::store::Entry> = BTreeMap::new();
    for id in ids {
        let set = store.load_artifacts(id).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the artifacts {id} of the release are gone: {e}"),
            )
        })?;
        for e in set.entries {
            by_path.insert(e.path.clone(), e);
        }
    }
    Ok(ArtifactSet {
        entries: by_path.into_values().collect(),
        ..ArtifactSet::default()
    })
}

/// `sha256:...` of a manifest: paths, kinds, modes, contents; no times.
pub fn manifest_digest(set: &ArtifactSet) -> String {
    let mut h = Sha256::new();
    for e in &set.entries {
        h.update(e.path.as_bytes());
        h.update([0]);
        match &e.kind {
            EntryKind::File { mode, blob, .. } => {
                h.update(format!("f {:o} {blob}", mode & 0o7777).as_bytes());
            }
            EntryKind::Dir { mode } => h.update(format!("d {:o}", mode & 0o7777).as_bytes()),
            EntryKind::Symlink { target } => h.update(format!("l {target}").as_bytes()),
        }
        h.update([b'\n']);
    }
    let d = h.finalize();
    let mut out = String::from("sha256:");
    for b in d {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The digest of the release made of artifacts `ids` (blocking: reads manifests).
pub fn digest(store: &Store, ids: &[String]) -> io::Result<String> {
    Ok(manifest_digest(&merged(store, ids)?))
}

/// The release extracted under `releases_dir`, named by its digest: extracted once
/// (into a temporary directory, then renamed in), read by every deployment of it.
/// Blocking.
pub fn extract(
    store: &Store,
    ids: &[String],
    digest: &str,
    releases_dir: &Path,
) -> io::Result<PathBuf> {
    let name = digest.replace(':', "-");
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid release digest {digest:?}"),
        ));
    }
    let dir = releases_dir.join(&name);
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(releases_dir)?;
    let set = merged(store, ids)?;
    if manifest_digest(&set) != digest {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the artifacts no longer match release {digest}"),
        ));
    }
    let tmp = releases_dir.join(format!(
        ".{name}.{}.{}",
        std::process::id(),
        crate::hook::new_token()
            .map(|t| t[..8].to_string())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&tmp)?;
    if let Err(e) = store.extract_artifacts(&set, &tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another deployment extracted it first: theirs is the same files.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// The release's variables, from the deploy job's environment `env` (what its script
/// saw; later entries win): the user-defined ones and [`CI_VARIABLES`]. File variables
/// are left out (their files belong to the job). Masked and secret project variables
/// are marked secret.
pub fn variables(p: &JobPayload, env: &[(String, String)]) -> Vec<DeploymentVariable> {
    let mut user: HashSet<&str> = HashSet::new();
    let mut secret: HashSet<&str> = HashSet::new();
    let mut files: HashSet<&str> = HashSet::new();
    for v in &p.project_variables {
        if v.file {
            files.insert(&v.key);
            continue;
        }
        user.insert(&v.key);
        if v.masked {
            secret.insert(&v.key);
        }
    }
    user.extend(p.planned.variables.iter().map(|v| v.key.as_str()));
    user.extend(p.run_variables.iter().map(|(k, _)| k.as_str()));
    user.extend(
        p.dependencies
            .iter()
            .flat_map(|d| d.dotenv.iter().map(|(k, _)| k.as_str())),
    );
    user.extend(CI_VARIABLES.iter().copied());
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in env {
        if user.contains(k.as_str()) && !files.contains(k.as_str()) {
            last.insert(k, v);
        }
    }
    last.into_iter()
        .map(|(k, v)| DeploymentVariable {
            key: k.to_string(),
            value: SecretString::new(v),
            secret: secret.contains(k),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_runner::store::Entry;

    fn file(path: &str, blob: &str, mtime: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                mode: 0o755,
                size: 1,
                blob: blob.into(),
                mtime_ns: Some(mtime),
            },
        }
    }

    #[test]
    fn digests_ignore_times_and_see_contents_and_modes() {
        let a = ArtifactSet {
            entries: vec![file("app", "aa", 1)],
            ..ArtifactSet::default()
        };
        let b = ArtifactSet {
            entries: vec![file("app", "aa", 2)],
            ..ArtifactSet::default()
        };
        assert_eq!(manifest_digest(&a), manifest_digest(&b));
        let c = ArtifactSet {
            entries: vec![file("app", "bb", 1)],
            ..ArtifactSet::default()
        };
        assert_ne!(manifest_digest(&a), manifest_digest(&c));
        let mut d = a.clone();
        if let EntryKind::File { mode, .. } = &mut d.entries[0].kind {
            *mode = 0o644;
        }
        assert_ne!(manifest_digest(&a), manifest_digest(&d));
        assert!(manifest_digest(&a).starts_with("sha256:"));
        assert_eq!(manifest_digest(&a).len(), 7 + 64);
    }
}
