//! Shared helpers of the engine tests: artifacts holding the Python test service, an
//! engine on a temporary state directory, and HTTP helpers.
#![allow(dead_code)]

use slipway_core::deploy::settings::{HealthCheck, HttpCheck, Strategy};
use slipway_deploy::http::HttpClient;
use slipway_deploy::{
    Engine, EngineOptions, EnvironmentSpec, JsonFileStore, MemoryCatalog, ProcessTarget, Release,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE: &str = include_str!("../fixtures/service.py");

/// An extracted artifact: the service and its version file.
pub fn artifact(root: &Path, version: &str, healthy: bool) -> PathBuf {
    let dir = root.join(format!("artifact-{version}"));
    std::fs::create_dir_all(&dir).expect("artifact dir");
    std::fs::write(dir.join("service.py"), SERVICE).expect("service");
    std::fs::write(dir.join("version.txt"), version).expect("version");
    if !healthy {
        std::fs::write(dir.join("unhealthy"), "").expect("marker");
    }
    dir
}

pub fn release(dir: &Path, version: &str, vars: &[(&str, &str)]) -> Release {
    Release {
        version: Some(version.to_string()),
        digest: Some(format!("sha256:{version}")),
        artifact_dir: dir.to_path_buf(),
        variables: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

pub fn health() -> HealthCheck {
    HealthCheck {
        check: HttpCheck {
            path: "/healthz".into(),
            status: Some(200),
        },
        timeout_ms: 1_000,
        interval_ms: 50,
        success_threshold: 2,
        failure_threshold: 3,
        start_timeout_ms: 15_000,
    }
}

pub fn spec(name: &str, strategy: Strategy, instances: u32) -> EnvironmentSpec {
    EnvironmentSpec {
        name: name.to_string(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        command: "exec python3 service.py".into(),
        instances,
        stop_grace: Duration::from_secs(3),
        strategy,
        health_check: health(),
    }
}

pub struct TestEngine {
    pub engine: Engine,
    pub catalog: Arc<MemoryCatalog>,
    pub target: Arc<ProcessTarget>,
    pub state: PathBuf,
}

pub async fn engine(state: &Path) -> TestEngine {
    let target = Arc::new(ProcessTarget::new(state).expect("target"));
    let catalog = Arc::new(MemoryCatalog::default());
    let store = Arc::new(JsonFileStore::open(&state.join("state.json")).expect("store"));
    let engine = Engine::open(EngineOptions {
        store,
        target: target.clone(),
        catalog: catalog.clone(),
        notifier: None,
    })
    .await
    .expect("engine");
    TestEngine {
        engine,
        catalog,
        target,
        state: state.to_path_buf(),
    }
}

/// GET through a shared keep-alive client: status and trimmed body.
pub async fn get(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(u16, String), String> {
    client
        .get(&format!("http://{addr}{path}"), Duration::from_secs(10))
        .await
        .map(|r| {
            (
                r.status,
                String::from_utf8_lossy(&r.body).trim().to_string(),
            )
        })
        .map_err(|e| e.to_string())
}

/// Kill every instance group a state directory's PID files name (a test that fails
/// half-way must not leave services running).
pub fn kill_leftovers(state: &Path) {
    let Ok(dir) = std::fs::read_dir(state.join("pids")) else {
        return;
    };
    for e in dir.flatten() {
        let pid = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["pid"].as_i64());
        if let Some(pid) = pid.filter(|p| *p > 0) {
            // SAFETY: signalling a process group this test started.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        kill_leftovers(&self.state);
    }
}
