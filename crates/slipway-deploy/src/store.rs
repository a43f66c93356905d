//! The engine's intent, persisted before it acts: per environment, which release serves
//! (the last traffic switch that completed), which one is kept warm, the deployment in
//! progress with its phase and the switch it is making, and recent history. The server
//! will keep this in its database; [`JsonFileStore`] keeps it in one JSON file replaced
//! atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! Variables are never stored here (they may hold secrets): after a restart the engine
//! asks its [`crate::engine::ReleaseCatalog`] for the release it must serve.

use crate::engine::ReleaseSettings;
use crate::process::write_atomic;
use crate::target::BoxFuture;
use serde::{Deserialize, Serialize};
use slipway_core::deploy::machine::{Phase, Status};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use tokio::sync::Mutex;

/// How many finished deployments an environment record keeps.
pub const HISTORY_LEN: usize = 20;

/// A release as the record knows it (no variables).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The id of the deployment that brought this release.
    pub release: String,
    pub version: Option<String>,
    pub digest: Option<String>,
    pub artifact_dir: PathBuf,
    pub instances: u32,
    /// How it runs (command, strategy, health check; never variables).
    #[serde(default)]
    pub settings: Option<ReleaseSettings>,
}

/// A share of traffic in a switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteShare {
    pub release: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub environment: String,
    pub release: ReleaseRecord,
    /// What served when it started.
    pub previous: Option<ReleaseRecord>,
    pub strategy: String,
    /// Set on a rollback: the deployment whose release it brings back.
    pub rollback_to: Option<String>,
    #[serde(flatten)]
    pub phase: Phase,
    pub status: Status,
    pub reason: Option<String>,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// The traffic switch being made, written before the route table changes.
    pub switching: Option<Vec<RouteShare>>,
    /// Milliseconds from the request to all traffic on this release.
    pub switch_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmRecord {
    pub release: ReleaseRecord,
    /// Wall-clock milliseconds since the Unix epoch.
    pub until_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentRecord {
    pub name: String,
    /// The release that took all traffic in the last completed switch.
    pub serving: Option<ReleaseRecord>,
    pub warm: Option<WarmRecord>,
    pub current: Option<DeploymentRecord>,
    /// Finished deployments, oldest first.
    pub history: Vec<DeploymentRecord>,
}

impl EnvironmentRecord {
    pub fn new(name: &str) -> EnvironmentRecord {
        EnvironmentRecord {
            name: name.to_string(),
            serving: None,
            warm: None,
            current: None,
            history: Vec::new(),
        }
    }

    /// Move the current deployment to the history.
    pub fn finish_current(&mut self) {
        if let Some(d) = self.current.take() {
            self.history.push(d);
            if self.history.len() > HISTORY_LEN {
                let extra = self.history.len() - HISTORY_LEN;
                self.history.drain(..extra);
            }
        }
    }

    /// A deployment by id, current or past.
    pub fn deployment(&self, id: &str) -> Option<&DeploymentRecord> {
        self.current
            .iter()
            .chain(self.history.iter().rev())
            .find(|d| d.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Durable storage of environment records. `save` returns only once the record would
/// survive a crash.
pub trait IntentStore: Send + Sync {
    fn load(&self) -> BoxFuture<'_, Result<Vec<EnvironmentRecord>, StoreError>>;
    fn save<'a>(&'a self, record: &'a EnvironmentRecord) -> BoxFuture<'a, Result<(), StoreError>>;
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    environments: BTreeMap<String, EnvironmentRecord>,
}

/// All environments in one JSON file.
pub struct JsonFileStore {
    path: PathBuf,
    records: Mutex<BTreeMap<String, EnvironmentRecord>>,
}

impl JsonFileStore {
    /// Open (or create on first save) the file; a file that exists but does not parse is
    /// an error, never silently replaced.
    pub fn open(path: &Path) -> Result<JsonFileStore, StoreError> {
        let records = match std::fs::read(path) {
            Ok(bytes) => {
                let f: FileFormat = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
                f.environments
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(StoreError(format!("cannot read {}: {e}", path.display()))),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", parent.display())))?;
        }
        Ok(JsonFileStore {
            path: path.to_path_buf(),
            records: Mutex::new(records),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl IntentStore for JsonFileStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<EnvironmentRecord>, StoreError>> {
        Box::pin(async move { Ok(self.records.lock().await.values().cloned().collect()) })
    }

    fn save<'a>(&'a self, record: &'a EnvironmentRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // One writer at a time, holding the lock across the write, so an older state
            // can never replace a newer one; saves are small and rare (a few per deployment).
            let mut records = self.records.lock().await;
            records.insert(record.name.clone(), record.clone());
            let bytes = serde_json::to_vec_pretty(&FileFormat {
                version: 1,
                environments: records.clone(),
            })
            .map_err(|e| StoreError(format!("cannot encode the state: {e}")))?;
            let path = self.path.clone();
            let shown = path.display().to_string();
            tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
                .await
                .map_err(|e| StoreError(format!("cannot write {shown}: {e}")))?
                .map_err(|e| StoreError(format!("cannot write {shown}: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saves_survive_reopening_and_garbage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let store = JsonFileStore::open(&path).expect("open");
        let mut rec = EnvironmentRecord::new("production");
        rec.serving = Some(ReleaseRecord {
            release: "d1".into(),
            version: Some("v1".into()),
            digest: None,
            artifact_dir: "/srv/a".into(),
            instances: 2,
            settings: None,
        });
        store.save(&rec).await.expect("save");
        let again = JsonFileStore::open(&path).expect("reopen");
        assert_eq!(again.load().await.expect("load"), vec![rec]);
        assert!(!dir.path().join(".state.json.tmp").exists());

        std::fs::write(&path, b"{not json").expect("write");
        assert!(JsonFileStore::open(&path).is_err());
    }
}
