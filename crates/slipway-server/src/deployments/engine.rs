//! The deployment engine inside the server: `slipway_deploy::Engine` with the
//! `process` target, its intent kept in the database ([`DbIntentStore`]: each
//! environment's record in its `environments` row, saved in one transaction with the
//! status and phase of the deployments it runs), releases found again after a restart
//! from the deployment table ([`DbCatalog`]), and notifications to the webhooks the
//! project configured ([`DbWebhooks`]).
//!
//! Environments are served (their router bound) when first deployed and, after a
//! restart, for every environment the engine has a record of; the router's address is
//! kept in the environment's row and reused.

use crate::app::AppState;
use crate::deployments::release;
use serde_json::Value;
use slipway_core::deploy::machine::{Phase, Status};
use slipway_db::{DeploymentId, DeploymentStatus, EngineSync, Environment, Store};
use slipway_deploy::notify::{Notification, RetryPolicy, Webhook, WebhookKind, WebhookSource};
use slipway_deploy::store::{EnvironmentRecord, StoreError};
use slipway_deploy::target::BoxFuture;
use slipway_deploy::{
    DeployRequest, DeploymentReport, Engine, EngineEvent, EngineOptions, EnvironmentSpec,
    IntentStore, ProcessTarget, Release, ReleaseCatalog, ReleaseSettings,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Fault injection for the crash tests: `SLIPWAY_FAILPOINT=deploy:before_switch` stops
/// the engine (forever) right after the intent of a traffic switch is saved and before
/// the route table changes; `deploy:after_switch` after the route table changed and
/// before that is saved. Nothing else reads it.
pub const FAILPOINT_VAR: &str = "SLIPWAY_FAILPOINT";

/// The engine's status as a deployment's.
pub fn status_of(s: Status) -> DeploymentStatus {
    match s {
        Status::Pending | Status::Running => DeploymentStatus::Running,
        Status::AwaitingApproval => DeploymentStatus::AwaitingApproval,
        Status::Success => DeploymentStatus::Success,
        Status::Failed => DeploymentStatus::Failed,
        Status::RolledBack => DeploymentStatus::RolledBack,
        Status::Canceled => DeploymentStatus::Canceled,
    }
}

/// The engine's intent in the database.
pub struct DbIntentStore {
    pub store: Store,
    failpoint: Option<String>,
}

impl DbIntentStore {
    pub fn new(store: Store) -> DbIntentStore {
        DbIntentStore {
            store,
            failpoint: std::env::var(FAILPOINT_VAR).ok().filter(|v| !v.is_empty()),
        }
    }
}

async fn pause_forever(at: &str) {
    tracing::warn!(
        failpoint = at,
        "failpoint reached: the deployment engine stops here"
    );
    eprintln!("failpoint reached: {at}");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

impl IntentStore for DbIntentStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<EnvironmentRecord>, StoreError>> {
        Box::pin(async move {
            let states = self
                .store
                .engine_states()
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            let mut out = Vec::with_capacity(states.len());
            for (name, json) in states {
                let rec: EnvironmentRecord = serde_json::from_str(&json).map_err(|e| {
                    StoreError(format!("the deployment state of {name} is corrupt: {e}"))
                })?;
                out.push(rec);
            }
            Ok(out)
        })
    }

    fn save<'a>(&'a self, record: &'a EnvironmentRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let phase = record.current.as_ref().map(|c| c.phase.clone());
            if self.failpoint.as_deref() == Some("deploy:after_switch")
                && matches!(phase, Some(Phase::KeepingOldWarm { .. }))
            {
                pause_forever("deploy:after_switch").await;
            }
            let state = serde_json::to_string(record)
                .map_err(|e| StoreError(format!("cannot encode the deployment state: {e}")))?;
            let mut syncs = Vec::new();
            for d in record
                .current
                .iter()
                .chain(record.history.iter().rev().take(3))
            {
                let Ok(id) = d.id.parse::<i64>() else {
                    continue;
                };
                syncs.push(EngineSync {
                    deployment: DeploymentId(id),
                    status: status_of(d.status),
                    phase: serde_json::to_value(&d.phase).unwrap_or(Value::Null),
                    reason: d.reason.clone(),
                    release_id: d.release.release.clone(),
                    switch_us: d.switch_ms.map(|ms| (ms * 1000.0) as i64),
                });
            }
            self.store
                .save_engine_state(&record.name, &state, &syncs)
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            if self.failpoint.as_deref() == Some("deploy:before_switch")
                && matches!(phase, Some(Phase::SwitchingTraffic))
                && record.serving.is_some()
                && record
                    .current
                    .as_ref()
                    .is_some_and(|c| c.switching.is_some())
            {
                pause_forever("deploy:before_switch").await;
            }
            Ok(())
        })
    }
}

/// Releases from the deployment table: the artifacts (extracted again if needed) and
/// the variables recorded with the deployment that brought the release.
pub struct DbCatalog {
    pub store: Store,
    pub artifacts: Arc<slipway_runner::store::Store>,
    pub releases_dir: PathBuf,
}

impl DbCatalog {
    pub async fn release_of(&self, id: DeploymentId) -> Result<Release, String> {
        let d = self.store.deployment(id).await.map_err(|e| e.to_string())?;
        let digest = d
            .digest
            .clone()
            .ok_or_else(|| format!("deployment {id} has no release"))?;
        let (store, ids, dir, dg) = (
            self.artifacts.clone(),
            d.release_artifacts.clone(),
            self.releases_dir.clone(),
            digest.clone(),
        );
        let artifact_dir =
            tokio::task::spawn_blocking(move || release::extract(&store, &ids, &dg, &dir))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot extract the release of deployment {id}: {e}"))?;
        let variables = self
            .store
            .deployment_variables(id)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|v| (v.key, v.value.into_inner()))
            .collect();
        Ok(Release {
            version: Some(d.version),
            digest: Some(digest),
            artifact_dir,
            variables,
        })
    }
}

impl ReleaseCatalog for DbCatalog {
    fn release<'a>(
        &'a self,
        _environment: &'a str,
        deployment: &'a str,
    ) -> BoxFuture<'a, Option<Release>> {
        Box::pin(async move {
            let id = deployment.parse::<i64>().ok()?;
            match self.release_of(DeploymentId(id)).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(deployment = id, error = %e, "cannot restore a release");
                    None
                }
            }
        })
    }
}

/// The project's (or environment's) notification webhooks, read at delivery time.
pub struct DbWebhooks {
    pub store: Store,
}

impl WebhookSource for DbWebhooks {
    fn webhooks(&self, mut n: Notification) -> BoxFuture<'_, (Notification, Vec<Webhook>)> {
        Box::pin(async move {
            let env = match self.store.environment_by_engine_name(&n.environment).await {
                Ok(Some(e)) => e,
                _ => return (n, Vec::new()),
            };
            let project = self.store.project(env.project_id).await.ok();
            let targets = self
                .store
                .webhook_targets(env.project_id, &env.name)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read the deployment webhooks");
                    Vec::new()
                });
            n.environment = env.name.clone();
            n.project = project.map(|p| p.name);
            let hooks = targets
                .into_iter()
                .map(|t| Webhook {
                    url: t.url.into_inner(),
                    kind: match t.kind.as_str() {
                        "slack" => WebhookKind::Slack,
                        _ => WebhookKind::Json {
                            secret: t.secret.map(|s| s.into_inner()),
                        },
                    },
                })
                .collect();
            (n, hooks)
        })
    }
}

/// The server's deployment engine and what it serves.
pub struct Deployer {
    engine: OnceLock<Engine>,
    catalog: OnceLock<Arc<DbCatalog>>,
    served: tokio::sync::Mutex<HashSet<String>>,
    /// Extracted releases, by digest.
    pub releases_dir: PathBuf,
    /// The process target's PID files and instance logs.
    pub state_dir: PathBuf,
    /// Successful deployments per environment whose artifacts stay pinned.
    pub keep_deployments: i64,
    /// Notification retries (tests shorten them).
    pub retry: RetryPolicy,
}

impl Deployer {
    pub fn new(data_dir: &std::path::Path, keep_deployments: i64, retry: RetryPolicy) -> Self {
        Deployer {
            engine: OnceLock::new(),
            catalog: OnceLock::new(),
            served: tokio::sync::Mutex::new(HashSet::new()),
            releases_dir: data_dir.join("releases"),
            state_dir: data_dir.join("deploy"),
            keep_deployments,
            retry,
        }
    }

    pub fn engine(&self) -> Result<&Engine, String> {
        self.engine
            .get()
            .ok_or_else(|| "the deployment engine is not running".to_string())
    }

    pub fn catalog(&self) -> Result<&Arc<DbCatalog>, String> {
        self.catalog
            .get()
            .ok_or_else(|| "the deployment engine is not running".to_string())
    }

    /// Queues a notification (deployments the engine does not run: their job's script
    /// deploys). Never waits.
    pub fn notify(&self, n: Notification) {
        if let Some(e) = self.engine.get() {
            e.notify(n);
        }
    }
}

/// Opens the engine: stops what a previous process left running, closes the
/// deployments it was in the middle of (their records say so), then serves every
/// environment it has a record of, bringing back the release that served.
pub async fn start(app: &AppState) -> Result<(), String> {
    let d = &app.deployer;
    let target = ProcessTarget::new(&d.state_dir).map_err(|e| e.to_string())?;
    let catalog = Arc::new(DbCatalog {
        store: app.store.clone(),
        artifacts: app.artifacts.clone(),
        releases_dir: d.releases_dir.clone(),
    });
    let notifier = slipway_deploy::notify::Notifier::start_with(
        Arc::new(DbWebhooks {
            store: app.store.clone(),
        }),
        d.retry,
    );
    let engine = Engine::open(EngineOptions {
        store: Arc::new(DbIntentStore::new(app.store.clone())),
        target: Arc::new(target),
        catalog: catalog.clone(),
        notifier: Some(notifier),
    })
    .await
    .map_err(|e| e.to_string())?;
    for r in engine.reclaimed() {
        tracing::warn!(
            environment = %r.environment,
            release = %r.release,
            index = r.index,
            pid = r.pid,
            "stopped an instance the previous server process left running"
        );
    }
    for i in engine.interrupted() {
        tracing::warn!(
            environment = %i.environment,
            deployment = %i.id,
            reason = i.reason.as_deref().unwrap_or(""),
            "deployment interrupted by the restart"
        );
    }
    let mut events = engine.subscribe();
    let stop = app.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                e = events.recv() => e,
            };
            match ev {
                Ok(EngineEvent::Error {
                    environment,
                    message,
                }) => tracing::error!(%environment, %message, "deployment engine"),
                Ok(EngineEvent::Restored {
                    environment,
                    release,
                    ok,
                    reason,
                }) => {
                    tracing::info!(%environment, %release, ok, reason = reason.as_deref().unwrap_or(""), "release restored")
                }
                Ok(EngineEvent::Finished(r)) => tracing::info!(
                    environment = %r.environment,
                    deployment = %r.deployment,
                    status = r.status.as_str(),
                    "deployment finished"
                ),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    let _ = d.catalog.set(catalog);
    if d.engine.set(engine).is_err() {
        return Err("the deployment engine was started twice".into());
    }
    // Serve what the engine has records of (their routers, and the releases serving).
    let states = app.store.engine_states().await.map_err(|e| e.to_string())?;
    for (name, json) in states {
        let Ok(Some(env)) = app.store.environment_by_engine_name(&name).await else {
            continue;
        };
        let settings = serde_json::from_str::<EnvironmentRecord>(&json)
            .ok()
            .and_then(|r| r.serving.and_then(|s| s.settings));
        let Some(settings) = settings else {
            // Nothing served there: the router starts with the next deployment.
            continue;
        };
        if let Err(e) = ensure_served(app, &env, &settings, None).await {
            tracing::error!(environment = %name, error = %e, "cannot serve the environment");
        }
    }
    Ok(())
}

/// Binds the environment's router if it is not served yet; returns its address. The
/// address is the one stored for the environment, else `listen` (the `.slipway`
/// `process: listen`), else a free port on 127.0.0.1, and is stored once bound.
pub async fn ensure_served(
    app: &AppState,
    env: &Environment,
    settings: &ReleaseSettings,
    listen: Option<SocketAddr>,
) -> Result<SocketAddr, String> {
    let engine = app.deployer.engine()?;
    let mut served = app.deployer.served.lock().await;
    if served.contains(&env.engine_name) {
        return engine
            .status(&env.engine_name)
            .await
            .map(|s| s.listen)
            .map_err(|e| e.to_string());
    }
    let stored: Option<SocketAddr> = env.listen.as_deref().and_then(|l| l.parse().ok());
    if let (Some(s), Some(l)) = (stored, listen) {
        if s != l {
            tracing::warn!(
                environment = %env.engine_name,
                stored = %s,
                asked = %l,
                "the router keeps the address it was first given (re-create the environment to move it)"
            );
        }
    }
    let addr = stored
        .or(listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let spec = EnvironmentSpec {
        name: env.engine_name.clone(),
        listen: addr,
        command: settings.command.clone(),
        instances: settings.instances,
        stop_grace: Duration::from_millis(settings.stop_grace_ms),
        strategy: settings.strategy.clone(),
        health_check: settings.health_check.clone(),
    };
    let bound = engine
        .add_environment(spec)
        .await
        .map_err(|e| e.to_string())?;
    if stored != Some(bound) {
        app.store
            .set_environment_listen(env.id, &bound.to_string())
            .await
            .map_err(|e| e.to_string())?;
    }
    served.insert(env.engine_name.clone());
    Ok(bound)
}

/// What a caller watching a deployment is told.
pub trait Progress: Send + Sync {
    fn line(&self, text: &str);
}

/// Runs a release through the engine and waits until traffic is on it (or it ended):
/// the environment is served first, phases are reported to `progress`, and `cancel`
/// stops the deployment (the engine rolls back what it did).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    app: &AppState,
    deployment: &slipway_db::Deployment,
    release: Release,
    settings: ReleaseSettings,
    listen: Option<SocketAddr>,
    rollback_to: Option<String>,
    progress: Option<&dyn Progress>,
    cancel: Option<&CancellationToken>,
) -> Result<DeploymentReport, String> {
    let env = app
        .store
        .environment(deployment.environment_id)
        .await
        .map_err(|e| e.to_string())?;
    let addr = ensure_served(app, &env, &settings, listen).await?;
    let engine = app.deployer.engine()?;
    let id = deployment.id.to_string();
    if let Some(p) = progress {
        p.line(&format!(
            "Deploying {} ({}) to {} at http://{addr}: {}, {} instance{}",
            deployment.version,
            deployment.digest.as_deref().unwrap_or("no artifacts"),
            env.name,
            settings.strategy.name(),
            settings.instances,
            if settings.instances == 1 { "" } else { "s" }
        ));
    }
    let mut events = engine.subscribe();
    let handle = engine
        .deploy(DeployRequest {
            deployment: id.clone(),
            environment: env.engine_name.clone(),
            release,
            needs_approval: false,
            rollback_to,
            settings: Some(settings),
        })
        .map_err(|e| e.to_string())?;
    let wait = handle.wait();
    tokio::pin!(wait);
    let never = CancellationToken::new();
    let cancel = cancel.unwrap_or(&never);
    let mut canceled = false;
    let mut listening = true;
    loop {
        tokio::select! {
            r = &mut wait => return r.map_err(|e| e.to_string()),
            _ = cancel.cancelled(), if !canceled => {
                canceled = true;
                if let Some(p) = progress {
                    p.line("Canceling the deployment: the engine undoes what it did");
                }
                let _ = engine.cancel(&env.engine_name, &id).await;
            }
            ev = events.recv(), if listening => match ev {
                Ok(EngineEvent::Phase { deployment, phase, .. }) if deployment == id => {
                    if let Some(p) = progress {
                        let name = serde_json::to_value(&phase)
                            .ok()
                            .and_then(|v| v.get("phase").and_then(|s| s.as_str()).map(str::to_string))
                            .unwrap_or_default();
                        p.line(&format!("Deployment {id}: {}", name.replace('_', " ")));
                    }
                }
                Ok(EngineEvent::Routed { environment, routes, swap_us }) if environment == env.engine_name => {
                    if let Some(p) = progress {
                        let shares: Vec<String> = routes
                            .iter()
                            .map(|r| format!("release {} weight {}", r.release, r.weight))
                            .collect();
                        p.line(&format!(
                            "Traffic: {} (route table replaced in {swap_us:.1} µs)",
                            if shares.is_empty() { "none".to_string() } else { shares.join(", ") }
                        ));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => listening = false,
                _ => {}
            },
        }
    }
}
