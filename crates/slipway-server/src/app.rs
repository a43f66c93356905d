//! The running server's shared state ([`App`]) and its configuration. Handlers, the
//! scheduler, the workers and the trigger loops all hold an [`AppState`]; nothing in it
//! is per request.

use crate::loghub::{HubConfig, LogHub};
use crate::logstore::DbLogStore;
use crate::mirrors::Mirrors;
use crate::pipelines::DocumentCache;
use slipway_db::Store;
use slipway_runner::pipeline::ExecutorChoice;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a server runs. The CLI fills it from flags and the environment.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Mirrors, exports, workspaces, artifacts, the SQLite file, the secret key.
    pub data_dir: PathBuf,
    /// `127.0.0.1:8080`.
    pub listen: String,
    /// `postgres://...`; `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    /// Jobs run at once on this server.
    pub concurrency: usize,
    pub executor: ExecutorChoice,
    /// The address users and hooks reach the server at (`CI_SERVER_URL`, hook URLs);
    /// `None`: `http://` + the listen address.
    pub external_url: Option<String>,
    /// How long a claimed job's lease lasts between heartbeats.
    pub lease: Duration,
    /// Heartbeat period (well under `lease`).
    pub heartbeat: Duration,
    /// UI session lifetime.
    pub session_ttl: Duration,
    /// How often trigger loops look for due polls and schedules.
    pub tick: Duration,
    /// Successful deployments per environment whose artifacts never expire (rollback
    /// targets).
    pub keep_deployments: i64,
    /// How often expired artifacts are deleted.
    pub artifact_expiry: Duration,
    /// Retries of deployment notifications.
    pub notify_retry: slipway_deploy::notify::RetryPolicy,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            listen: "127.0.0.1:8080".into(),
            database_url: None,
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            executor: ExecutorChoice::Auto,
            external_url: None,
            lease: Duration::from_secs(60),
            heartbeat: Duration::from_secs(10),
            session_ttl: Duration::from_secs(14 * 24 * 3600),
            tick: Duration::from_secs(1),
            keep_deployments: 5,
            artifact_expiry: Duration::from_secs(600),
            notify_retry: slipway_deploy::notify::RetryPolicy::default(),
        }
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self, bound: Option<std::net::SocketAddr>) -> String {
        match &self.external_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => match bound {
                Some(a) => format!("http://{a}"),
                None => format!("http://{}", self.listen),
            },
        }
    }

    /// Whether cookies get `Secure` (the server is reached over HTTPS).
    pub fn secure_cookies(&self) -> bool {
        self.external_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}

/// Jobs running on this server, by job id: how to stop each one.
#[derive(Default)]
pub struct RunningJobs {
    jobs: Mutex<HashMap<i64, CancellationToken>>,
}

impl RunningJobs {
    pub fn insert(&self, job: i64, cancel: CancellationToken) {
        self.lock().insert(job, cancel);
    }

    pub fn remove(&self, job: i64) {
        self.lock().remove(&job);
    }

    /// Stops the job if it runs here; true if it did.
    pub fn cancel(&self, job: i64) -> bool {
        match self.lock().get(&job) {
            Some(c) => {
                c.cancel();
                true
            }
            None => false,
        }
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, CancellationToken>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything the server's parts share.
pub struct App {
    pub store: Store,
    pub config: ServerConfig,
    /// Live job logs.
    pub hub: Arc<LogHub>,
    /// This server's name as a lease holder (stable across restarts: it is kept in the
    /// data directory), so a restarted server finds the jobs its previous process held.
    pub holder: String,
    /// One bare mirror per project.
    pub mirrors: Mirrors,
    /// Artifacts and caches, content-addressed (the runner's store).
    pub artifacts: Arc<slipway_runner::store::Store>,
    /// Stored pipeline documents (plan, job definitions, context), read once.
    pub documents: DocumentCache,
    pub running: RunningJobs,
    /// Commits checked out for jobs (`DATA_DIR/exports`).
    pub exports: crate::exports::Exports,
    /// The base URL (`CI_SERVER_URL`, hook targets), known once the listener is bound.
    pub base_url: String,
    /// Cancelled on shutdown: loops and workers stop.
    pub shutdown: CancellationToken,
    /// Environments and deployments: the engine, its routers, notifications.
    pub deployer: crate::deployments::Deployer,
}

pub type AppState = Arc<App>;

impl App {
    /// The state for `store`, with the data directory's parts opened.
    pub fn new(
        store: Store,
        config: ServerConfig,
        holder: String,
        base_url: String,
    ) -> std::io::Result<App> {
        let hub = LogHub::new(
            Arc::new(DbLogStore::new(store.clone())),
            HubConfig::default(),
        );
        let artifacts = Arc::new(slipway_runner::store::Store::open(
            config.data_dir.join("store"),
        )?);
        Ok(App {
            mirrors: Mirrors::new(config.data_dir.join("mirrors")),
            store,
            hub,
            holder,
            artifacts,
            documents: DocumentCache::default(),
            running: RunningJobs::default(),
            exports: crate::exports::Exports::default(),
            base_url,
            shutdown: CancellationToken::new(),
            deployer: crate::deployments::Deployer::new(
                &config.data_dir,
                config.keep_deployments,
                config.notify_retry,
            ),
            config,
        })
    }
}

/// This server's lease-holder name: `server-<random>`, made on first start and kept in
/// `DATA_DIR/server-id`.
pub fn holder_name(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let token = crate::hook::new_token()?;
    let name = format!("server-{}", &token[..16]);
    let tmp = data_dir.join(format!(".server-id-{}", std::process::id()));
    std::fs::write(&tmp, format!("{name}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    // Two first starts race: the first link wins and both use its name.
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(std::fs::read_to_string(&path)?.trim().to_string())
}
