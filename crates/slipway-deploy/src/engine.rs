//! The engine: one actor task per environment owns its router, its running releases and
//! the deployment in progress, and performs the I/O that the core state machine
//! (`slipway_core::deploy::machine`) asks for. Commands (deploy, approve, cancel,
//! promote, status) and observed facts (health transitions, stops, timers) all arrive on
//! the actor's queue, so an environment changes one step at a time.
//!
//! Every step persists the environment record (phase, and the switch about to be made)
//! before acting on the machine's actions, and again once a switch is applied. After a
//! crash, [`Engine::open`] stops what the previous process left running, marks the
//! interrupted deployment as failed (a switch in progress is not completed: the release
//! that last took all traffic serves again) and [`Engine::add_environment`] starts that
//! release afresh from the [`ReleaseCatalog`], routing to it once healthy.

use crate::http::{HttpClient, HttpError};
use crate::metrics::{MetricProvider, RouterMetrics};
use crate::notify::{Notification, NotificationKind, Notifier};
use crate::router::{RouteTarget, Router};
use crate::store::{
    DeploymentRecord, EnvironmentRecord, IntentStore, ReleaseRecord, RouteShare, WarmRecord,
};
use crate::target::{BoxFuture, DeploymentTarget, Reclaimed, ReleaseSpec, TargetEvent};
use serde::{Deserialize, Serialize};
use slipway_core::deploy::health::{HealthTracker, Probe};
use slipway_core::deploy::machine::{Action, Deployment, Event, Phase, Plan, Slot, Status};
use slipway_core::deploy::settings::{EnvironmentDef, HealthCheck, HttpCheck, Strategy, Target};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// An artifact with the variables of the deployment that deploys it.
#[derive(Clone)]
pub struct Release {
    /// What users call it (`v2`, a commit SHA); shown and sent in notifications.
    pub version: Option<String>,
    pub digest: Option<String>,
    /// The artifact, extracted (from the runner's store).
    pub artifact_dir: PathBuf,
    /// That deployment's own variables (a rollback passes the old deployment's).
    pub variables: Vec<(String, String)>,
}

impl fmt::Debug for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Release")
            .field("version", &self.version)
            .field("digest", &self.digest)
            .field("artifact_dir", &self.artifact_dir)
            .field(
                "variables",
                &self.variables.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Where the engine finds a past deployment's release again after a restart (the server:
/// its deployment table and secret store).
pub trait ReleaseCatalog: Send + Sync {
    /// The release `deployment` brought to `environment` (artifact extracted, that
    /// deployment's variables), if it can still be had.
    fn release<'a>(
        &'a self,
        environment: &'a str,
        deployment: &'a str,
    ) -> BoxFuture<'a, Option<Release>>;
}

/// A catalog in memory (tests, the example binary).
#[derive(Default)]
pub struct MemoryCatalog {
    releases: Mutex<HashMap<(String, String), Release>>,
}

impl MemoryCatalog {
    pub fn insert(&self, environment: &str, deployment: &str, release: Release) {
        self.releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((environment.to_string(), deployment.to_string()), release);
    }
}

impl ReleaseCatalog for MemoryCatalog {
    fn release<'a>(
        &'a self,
        environment: &'a str,
        deployment: &'a str,
    ) -> BoxFuture<'a, Option<Release>> {
        let found = self
            .releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(environment.to_string(), deployment.to_string()))
            .cloned();
        Box::pin(async move { found })
    }
}

/// What the engine needs to know of an environment.
#[derive(Debug, Clone)]
pub struct EnvironmentSpec {
    pub name: String,
    /// The router's address (port 0: any free port).
    pub listen: SocketAddr,
    pub command: String,
    pub instances: u32,
    pub stop_grace: Duration,
    pub strategy: Strategy,
    pub health_check: HealthCheck,
}

impl EnvironmentSpec {
    /// From the repository's definition; `listen` applies when the definition has none.
    pub fn from_def(def: &EnvironmentDef, listen: SocketAddr) -> EnvironmentSpec {
        let Target::Process(p) = &def.target;
        EnvironmentSpec {
            name: def.name.clone(),
            listen: p.listen.unwrap_or(listen),
            command: p.command.clone(),
            instances: p.instances,
            stop_grace: Duration::from_millis(p.stop_grace_ms),
            strategy: def.strategy.clone(),
            health_check: def.health_check.clone(),
        }
    }
}

/// How one release runs: taken from the `.slipway` of the commit being deployed, so a
/// change of command, instance count, strategy or health check ships with the release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseSettings {
    pub command: String,
    pub instances: u32,
    pub stop_grace_ms: u64,
    pub strategy: Strategy,
    pub health_check: HealthCheck,
}

impl ReleaseSettings {
    pub fn from_def(def: &EnvironmentDef) -> ReleaseSettings {
        let Target::Process(p) = &def.target;
        ReleaseSettings {
            command: p.command.clone(),
            instances: p.instances,
            stop_grace_ms: p.stop_grace_ms,
            strategy: def.strategy.clone(),
            health_check: def.health_check.clone(),
        }
    }
}

impl EnvironmentSpec {
    /// The settings a deployment gets when its request brings none.
    pub fn settings(&self) -> ReleaseSettings {
        ReleaseSettings {
            command: self.command.clone(),
            instances: self.instances,
            stop_grace_ms: self.stop_grace.as_millis() as u64,
            strategy: self.strategy.clone(),
            health_check: self.health_check.clone(),
        }
    }
}

/// Deploy a release to an environment.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// Unique; also names the release's instances.
    pub deployment: String,
    pub environment: String,
    pub release: Release,
    /// Wait for [`Engine::approve`] first (the server decides from its protection rules).
    pub needs_approval: bool,
    /// For a rollback: the deployment whose release this brings back. When that release
    /// is still warm, only traffic moves.
    pub rollback_to: Option<String>,
    /// How this release runs; `None` takes the environment's (a rollback should pass the
    /// settings of the deployment it brings back).
    pub settings: Option<ReleaseSettings>,
}

/// How a deployment ended (or, for one that keeps its old release warm, that traffic is
/// on the new release).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentReport {
    pub deployment: String,
    pub environment: String,
    pub status: Status,
    #[serde(flatten)]
    pub phase: Phase,
    pub reason: Option<String>,
    /// Milliseconds from the request to all traffic on the new release.
    pub switch_ms: Option<f64>,
    pub rollback_to: Option<String>,
}

/// What the engine tells its subscribers (the server's event stream, logs, tests).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EngineEvent {
    Phase {
        environment: String,
        deployment: String,
        #[serde(flatten)]
        phase: Phase,
        status: Status,
    },
    Routed {
        environment: String,
        routes: Vec<RouteShare>,
        /// How long replacing the route table took, in microseconds.
        swap_us: f64,
    },
    Finished(DeploymentReport),
    /// After a restart: the release the record says serves was started again.
    Restored {
        environment: String,
        release: String,
        ok: bool,
        reason: Option<String>,
    },
    /// After a restart: a deployment that was in progress, and what became of it.
    Interrupted {
        environment: String,
        deployment: String,
        reason: String,
    },
    Error {
        environment: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError(pub String);

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

/// A deployment accepted by the engine.
pub struct DeploymentHandle {
    pub deployment: String,
    report: watch::Receiver<Option<DeploymentReport>>,
}

impl DeploymentHandle {
    /// Wait until traffic is on the new release (or the deployment ended otherwise).
    pub async fn wait(mut self) -> Result<DeploymentReport, EngineError> {
        match self.report.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone().ok_or_else(|| EngineError("no report".into())),
            Err(_) => Err(EngineError(
                "the environment stopped before the deployment finished".into(),
            )),
        }
    }
}

/// An environment's state for status pages.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentStatus {
    pub record: EnvironmentRecord,
    pub routes: Vec<RouteShare>,
    pub listen: SocketAddr,
    /// Deployments waiting for the current one.
    pub queued: Vec<String>,
}

pub struct EngineOptions {
    pub store: Arc<dyn IntentStore>,
    pub target: Arc<dyn DeploymentTarget>,
    pub catalog: Arc<dyn ReleaseCatalog>,
    pub notifier: Option<Notifier>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn IntentStore>,
    target: Arc<dyn DeploymentTarget>,
    catalog: Arc<dyn ReleaseCatalog>,
    notifier: Option<Notifier>,
    metrics: Arc<RouterMetrics>,
    events: broadcast::Sender<EngineEvent>,
    clock: Instant,
    http: HttpClient,
    envs: Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>,
    /// Records loaded at start, handed to their environment when it is added.
    loaded: Mutex<HashMap<String, EnvironmentRecord>>,
    reclaimed: Vec<Reclaimed>,
    interrupted: Vec<DeploymentRecord>,
}

enum Command {
    Deploy(Box<Queued>),
    Approve(String, oneshot::Sender<Result<(), EngineError>>),
    Reject(String, String, oneshot::Sender<Result<(), EngineError>>),
    Cancel(String, oneshot::Sender<Result<(), EngineError>>),
    Promote(String, oneshot::Sender<Result<(), EngineError>>),
    Status(oneshot::Sender<EnvironmentStatus>),
    /// A fact for the deployment (or restore) with this id.
    Internal(String, Event),
    Health {
        release: String,
        index: u32,
        transition: slipway_core::deploy::health::Transition,
    },
    Stopped(String, Vec<u32>),
    Shutdown(oneshot::Sender<()>),
}

struct Queued {
    req: DeployRequest,
    requested_at: Instant,
    report: watch::Sender<Option<DeploymentReport>>,
}

impl Engine {
    /// Start the engine: clean up after an earlier process (stop its orphans, close its
    /// interrupted deployments) and load the records.
    pub async fn open(options: EngineOptions) -> Result<Engine, EngineError> {
        let reclaimed = options.target.reclaim().await;
        let records = options
            .store
            .load()
            .await
            .map_err(|e| EngineError(format!("cannot load the deployment state: {e}")))?;
        let (events, _) = broadcast::channel(1024);
        let mut loaded = HashMap::new();
        let mut interrupted = Vec::new();
        for mut rec in records {
            if let Some(cur) = rec.current.as_mut() {
                let at = cur.phase.clone();
                let serving = rec
                    .serving
                    .as_ref()
                    .map(|s| format!("release {} serves", s.release))
                    .unwrap_or_else(|| "nothing serves".into());
                let reason = if cur.status == Status::Success {
                    // Traffic had moved; only the warm old release is lost.
                    cur.phase = Phase::Succeeded;
                    rec.warm = None;
                    "the engine restarted while the old release was kept warm; it was stopped"
                        .to_string()
                } else {
                    cur.phase = Phase::Failed;
                    cur.status = Status::Failed;
                    format!(
                        "interrupted: the engine restarted during {}{}; {serving}",
                        phase_name(&at),
                        if cur.switching.is_some() {
                            " (the switch was not completed)"
                        } else {
                            ""
                        }
                    )
                };
                cur.reason = Some(reason.clone());
                cur.finished_at_ms = Some(wall_ms());
                cur.switching = None;
                interrupted.push((rec.name.clone(), cur.clone(), reason));
                rec.finish_current();
                options
                    .store
                    .save(&rec)
                    .await
                    .map_err(|e| EngineError(format!("cannot save the deployment state: {e}")))?;
            }
            loaded.insert(rec.name.clone(), rec);
        }
        let inner = Arc::new(Inner {
            store: options.store,
            target: options.target,
            catalog: options.catalog,
            notifier: options.notifier,
            metrics: Arc::new(RouterMetrics::default()),
            events,
            clock: Instant::now(),
            http: HttpClient::new(),
            envs: Mutex::new(HashMap::new()),
            loaded: Mutex::new(loaded),
            reclaimed,
            interrupted: interrupted.iter().map(|(_, d, _)| d.clone()).collect(),
        });
        for (env, cur, reason) in interrupted {
            if cur.status == Status::Failed {
                inner.notify(NotificationKind::Failed, &cur);
            }
            let _ = inner.events.send(EngineEvent::Interrupted {
                environment: env,
                deployment: cur.id,
                reason,
            });
        }
        Ok(Engine { inner })
    }

    /// What [`Engine::open`] found left running by an earlier process and stopped.
    pub fn reclaimed(&self) -> &[Reclaimed] {
        &self.inner.reclaimed
    }

    /// The deployments [`Engine::open`] found interrupted by a crash, as now recorded.
    pub fn interrupted(&self) -> &[DeploymentRecord] {
        &self.inner.interrupted
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.inner.events.subscribe()
    }

    /// Queues a notification on the engine's notifier (for deployments done outside the
    /// engine, such as a job's own script); never waits.
    pub fn notify(&self, n: Notification) {
        if let Some(notifier) = &self.inner.notifier {
            notifier.notify(n);
        }
    }

    /// The router's per-release counters.
    pub fn metrics(&self) -> Arc<dyn MetricProvider> {
        self.inner.metrics.clone()
    }

    /// Serve an environment: bind its router and, when the record says a release serves
    /// it, start that release again and route to it once healthy. Returns the router's
    /// address.
    pub async fn add_environment(&self, spec: EnvironmentSpec) -> Result<SocketAddr, EngineError> {
        if self.sender(&spec.name).is_some() {
            return Err(EngineError(format!(
                "environment {} is already served",
                spec.name
            )));
        }
        let router = Router::start(&spec.name, spec.listen, self.inner.metrics.clone())
            .await
            .map_err(|e| EngineError(format!("cannot listen on {}: {e}", spec.listen)))?;
        let addr = router.local_addr();
        let record = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&spec.name)
            .unwrap_or_else(|| EnvironmentRecord::new(&spec.name));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut actor = Actor {
            inner: self.inner.clone(),
            spec: spec.clone(),
            router,
            record,
            releases: HashMap::new(),
            active: None,
            queue: VecDeque::new(),
            tx: tx.clone(),
            immediate: VecDeque::new(),
            last_phase: None,
        };
        self.inner
            .envs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), tx);
        actor.restore().await;
        tokio::spawn(actor.run(rx));
        Ok(addr)
    }

    fn sender(&self, env: &str) -> Option<mpsc::UnboundedSender<Command>> {
        self.inner
            .envs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(env)
            .cloned()
    }

    fn send(&self, env: &str, cmd: Command) -> Result<(), EngineError> {
        self.sender(env)
            .ok_or_else(|| EngineError(format!("environment {env} is not served by this engine")))?
            .send(cmd)
            .map_err(|_| EngineError(format!("environment {env} has stopped")))
    }

    /// Start (or queue, behind the deployment in progress) a deployment.
    pub fn deploy(&self, req: DeployRequest) -> Result<DeploymentHandle, EngineError> {
        let (report, rx) = watch::channel(None);
        let deployment = req.deployment.clone();
        let env = req.environment.clone();
        self.send(
            &env,
            Command::Deploy(Box::new(Queued {
                req,
                requested_at: Instant::now(),
                report,
            })),
        )?;
        Ok(DeploymentHandle {
            deployment,
            report: rx,
        })
    }

    async fn ask(
        &self,
        env: &str,
        make: impl FnOnce(oneshot::Sender<Result<(), EngineError>>) -> Command,
    ) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(env, make(tx))?;
        rx.await
            .map_err(|_| EngineError(format!("environment {env} has stopped")))?
    }

    pub async fn approve(&self, env: &str, deployment: &str) -> Result<(), EngineError> {
        let d = deployment.to_string();
        self.ask(env, |tx| Command::Approve(d, tx)).await
    }

    pub async fn reject(
        &self,
        env: &str,
        deployment: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        let (d, r) = (deployment.to_string(), reason.to_string());
        self.ask(env, |tx| Command::Reject(d, r, tx)).await
    }

    pub async fn cancel(&self, env: &str, deployment: &str) -> Result<(), EngineError> {
        let d = deployment.to_string();
        self.ask(env, |tx| Command::Cancel(d, tx)).await
    }

    /// Continue a canary past a manual pause, or end a keep-warm period now.
    pub async fn promote(&self, env: &str, deployment: &str) -> Result<(), EngineError> {
        let d = deployment.to_string();
        self.ask(env, |tx| Command::Promote(d, tx)).await
    }

    pub async fn status(&self, env: &str) -> Result<EnvironmentStatus, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(env, Command::Status(tx))?;
        rx.await
            .map_err(|_| EngineError(format!("environment {env} has stopped")))
    }

    /// Stop every environment: routers close, instances are stopped. The record keeps
    /// what serves, so the next start restores it.
    pub async fn shutdown(&self) {
        let senders: Vec<_> = self
            .inner
            .envs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, tx) in senders {
            let (done, wait) = oneshot::channel();
            if tx.send(Command::Shutdown(done)).is_ok() {
                let _ = wait.await;
            }
        }
    }
}

impl Inner {
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn emit(&self, e: EngineEvent) {
        let _ = self.events.send(e);
    }

    fn notify(&self, kind: NotificationKind, d: &DeploymentRecord) {
        if let Some(n) = &self.notifier {
            n.notify(Notification {
                event: kind,
                project: None,
                environment: d.environment.clone(),
                deployment: d.id.clone(),
                version: d.release.version.clone(),
                digest: d.release.digest.clone(),
                strategy: d.strategy.clone(),
                status: d.status.as_str().to_string(),
                reason: d.reason.clone(),
                rollback_to: d.rollback_to.clone(),
                at_ms: wall_ms(),
            });
        }
    }
}

struct Instance {
    addr: SocketAddr,
    monitor: CancellationToken,
}

struct Running {
    spec: ReleaseSpec,
    settings: ReleaseSettings,
    record: ReleaseRecord,
    instances: BTreeMap<u32, Instance>,
}

struct Active {
    id: String,
    machine: Deployment,
    old: Option<String>,
    new: String,
    /// Restarting the serving release after a crash: no deployment record.
    restore: bool,
    requested_at: Instant,
    report: Option<watch::Sender<Option<DeploymentReport>>>,
    reported: bool,
    switch_ms: Option<f64>,
    rollback_to: Option<String>,
}

impl Active {
    fn strategy(&self) -> &Strategy {
        &self.machine.plan().strategy
    }
}

struct Actor {
    inner: Arc<Inner>,
    spec: EnvironmentSpec,
    router: Arc<Router>,
    record: EnvironmentRecord,
    releases: HashMap<String, Running>,
    active: Option<Active>,
    queue: VecDeque<Box<Queued>>,
    tx: mpsc::UnboundedSender<Command>,
    /// Facts produced by the actor's own actions, handled before the next command.
    immediate: VecDeque<Event>,
    last_phase: Option<Phase>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            while let Some(ev) = self.immediate.pop_front() {
                self.step(ev).await;
            }
            let Some(cmd) = rx.recv().await else { break };
            match cmd {
                Command::Deploy(q) => self.on_deploy(q).await,
                Command::Approve(id, reply) => {
                    let r = self.command_for(&id, Event::Approved).await;
                    let _ = reply.send(r);
                }
                Command::Reject(id, reason, reply) => {
                    let r = if self.dequeue(&id, &reason) {
                        Ok(())
                    } else {
                        self.command_for(&id, Event::Rejected { reason }).await
                    };
                    let _ = reply.send(r);
                }
                Command::Cancel(id, reply) => {
                    let r = if self.dequeue(&id, "canceled") {
                        Ok(())
                    } else {
                        self.command_for(&id, Event::Cancel).await
                    };
                    let _ = reply.send(r);
                }
                Command::Promote(id, reply) => {
                    let r = self.command_for(&id, Event::Promote).await;
                    let _ = reply.send(r);
                }
                Command::Status(reply) => {
                    let _ = reply.send(EnvironmentStatus {
                        record: self.record.clone(),
                        routes: shares(&self.router.routes()),
                        listen: self.router.local_addr(),
                        queued: self
                            .queue
                            .iter()
                            .map(|q| q.req.deployment.clone())
                            .collect(),
                    });
                }
                Command::Internal(id, ev) => {
                    if self.active.as_ref().is_some_and(|a| a.id == id) {
                        self.step(ev).await;
                    }
                }
                Command::Health {
                    release,
                    index,
                    transition,
                } => {
                    let slot = self.active.as_ref().and_then(|a| {
                        if a.new == release {
                            Some(Slot::New)
                        } else if a.old.as_deref() == Some(release.as_str()) {
                            Some(Slot::Old)
                        } else {
                            None
                        }
                    });
                    if let Some(slot) = slot {
                        self.step(Event::Health {
                            slot,
                            index,
                            transition,
                        })
                        .await;
                    } else if self.active.is_none() {
                        self.readiness(&release, index, &transition);
                    }
                }
                Command::Stopped(release, indices) => {
                    if let Some(r) = self.releases.get_mut(&release) {
                        for i in &indices {
                            r.instances.remove(i);
                            self.router.forget(&release, *i);
                        }
                    }
                    self.prune_releases();
                }
                Command::Shutdown(done) => {
                    self.router.shutdown();
                    let all: Vec<(String, Vec<u32>)> = self
                        .releases
                        .iter()
                        .map(|(id, r)| (id.clone(), r.instances.keys().copied().collect()))
                        .collect();
                    for (id, indices) in all {
                        if let Some(r) = self.releases.get(&id) {
                            for inst in r.instances.values() {
                                inst.monitor.cancel();
                            }
                        }
                        self.inner.target.stop(&self.spec.name, &id, &indices).await;
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    /// Between deployments: an instance of the serving release that is lost leaves the
    /// route table (unless it is the last one) and comes back once ready again.
    fn readiness(
        &mut self,
        release: &str,
        index: u32,
        t: &slipway_core::deploy::health::Transition,
    ) {
        use slipway_core::deploy::health::Transition;
        if self.record.serving.as_ref().map(|s| s.release.as_str()) != Some(release) {
            return;
        }
        let mut routes = self.router.routes();
        let present = routes
            .iter()
            .any(|r| r.release == release && r.index == index);
        match t {
            Transition::Lost { .. } | Transition::Failed { .. } if present && routes.len() > 1 => {
                routes.retain(|r| !(r.release == release && r.index == index));
            }
            Transition::Ready if !present => {
                let Some(addr) = self
                    .releases
                    .get(release)
                    .and_then(|r| r.instances.get(&index))
                    .map(|i| i.addr)
                else {
                    return;
                };
                routes.push(RouteTarget {
                    release: release.to_string(),
                    index,
                    addr,
                    weight: 1,
                });
                routes.sort_by_key(|r| r.index);
            }
            _ => return,
        }
        self.router.set_routes(routes.clone());
        self.inner.emit(EngineEvent::Routed {
            environment: self.spec.name.clone(),
            routes: shares(&routes),
            swap_us: 0.0,
        });
    }

    /// Remove a queued deployment (reject or cancel before it started).
    fn dequeue(&mut self, id: &str, reason: &str) -> bool {
        let Some(pos) = self.queue.iter().position(|q| q.req.deployment == id) else {
            return false;
        };
        if let Some(q) = self.queue.remove(pos) {
            let _ = q.report.send(Some(DeploymentReport {
                deployment: id.to_string(),
                environment: self.spec.name.clone(),
                status: Status::Canceled,
                phase: Phase::Canceled,
                reason: Some(reason.to_string()),
                switch_ms: None,
                rollback_to: q.req.rollback_to.clone(),
            }));
        }
        true
    }

    async fn command_for(&mut self, id: &str, ev: Event) -> Result<(), EngineError> {
        match &self.active {
            Some(a) if a.id == id && !a.restore => {
                self.step(ev).await;
                Ok(())
            }
            _ => Err(EngineError(format!(
                "deployment {id} is not in progress on {}",
                self.spec.name
            ))),
        }
    }

    fn release_spec(&self, id: &str, release: &Release, settings: &ReleaseSettings) -> ReleaseSpec {
        ReleaseSpec {
            environment: self.spec.name.clone(),
            release: id.to_string(),
            artifact_dir: release.artifact_dir.clone(),
            command: settings.command.clone(),
            variables: release.variables.clone(),
            stop_grace: Duration::from_millis(settings.stop_grace_ms),
        }
    }

    fn release_record(
        &self,
        id: &str,
        release: &Release,
        settings: &ReleaseSettings,
    ) -> ReleaseRecord {
        ReleaseRecord {
            release: id.to_string(),
            version: release.version.clone(),
            digest: release.digest.clone(),
            artifact_dir: release.artifact_dir.clone(),
            instances: settings.instances,
            settings: Some(settings.clone()),
        }
    }

    /// A running release's settings (the environment's for one this engine lost track of).
    fn settings_of(&self, id: &str) -> ReleaseSettings {
        self.releases
            .get(id)
            .map(|r| r.settings.clone())
            .unwrap_or_else(|| self.spec.settings())
    }

    /// After a restart: start the release the record says serves.
    async fn restore(&mut self) {
        let Some(serving) = self.record.serving.clone() else {
            return;
        };
        let Some(release) = self
            .inner
            .catalog
            .release(&self.spec.name, &serving.release)
            .await
        else {
            self.inner.emit(EngineEvent::Restored {
                environment: self.spec.name.clone(),
                release: serving.release.clone(),
                ok: false,
                reason: Some("the release catalog does not know it".into()),
            });
            return;
        };
        let settings = serving
            .settings
            .clone()
            .unwrap_or_else(|| self.spec.settings());
        let spec = self.release_spec(&serving.release, &release, &settings);
        let instances = settings.instances;
        self.releases.insert(
            serving.release.clone(),
            Running {
                spec,
                settings,
                record: serving.clone(),
                instances: BTreeMap::new(),
            },
        );
        let machine = Deployment::new(Plan {
            strategy: Strategy::Recreate,
            instances,
            old_instances: Vec::new(),
            needs_approval: false,
            new_is_warm: false,
        });
        self.active = Some(Active {
            id: format!("restore:{}", serving.release),
            machine,
            old: None,
            new: serving.release.clone(),
            restore: true,
            requested_at: Instant::now(),
            report: None,
            reported: false,
            switch_ms: None,
            rollback_to: None,
        });
        self.kick().await;
    }

    async fn on_deploy(&mut self, q: Box<Queued>) {
        if let Some(a) = &self.active {
            let warm = matches!(a.machine.phase(), Phase::KeepingOldWarm { .. });
            if !warm {
                self.queue.push_back(q);
                return;
            }
            // The deployment in keep-warm hands over: its old release stays only when the
            // new deployment brings it back.
            let keep_old = q.req.rollback_to.is_some() && q.req.rollback_to == a.old;
            self.step(Event::Superseded { keep_old }).await;
        }
        self.start_deployment(q).await;
    }

    async fn start_deployment(&mut self, q: Box<Queued>) {
        let Queued {
            req,
            requested_at,
            report,
        } = *q;
        let settings = req.settings.clone().unwrap_or_else(|| self.spec.settings());
        let n = settings.instances;
        let serving = self.record.serving.as_ref().map(|s| s.release.clone());
        let serving_running = serving.as_ref().and_then(|s| {
            self.releases
                .get(s)
                .filter(|r| !r.instances.is_empty())
                .map(|r| (s.clone(), r.instances.keys().copied().collect::<Vec<u32>>()))
        });
        // A rollback to a release that still runs with all its instances: switch only.
        let warm_target = req.rollback_to.as_ref().filter(|to| {
            Some(*to) != serving.as_ref()
                && self
                    .releases
                    .get(*to)
                    .is_some_and(|r| r.instances.len() as u32 == n)
        });
        let (new_id, new_is_warm) = match warm_target {
            Some(to) => (to.clone(), true),
            None => (req.deployment.clone(), false),
        };
        if !new_is_warm && self.releases.contains_key(&new_id) {
            // Instance names derive from the id: reusing one would mix two releases.
            let _ = report.send(Some(DeploymentReport {
                deployment: req.deployment.clone(),
                environment: self.spec.name.clone(),
                status: Status::Failed,
                phase: Phase::Failed,
                reason: Some(format!(
                    "deployment id {} is already used by a running release",
                    req.deployment
                )),
                switch_ms: None,
                rollback_to: req.rollback_to.clone(),
            }));
            Box::pin(self.next_queued()).await;
            return;
        }
        if !new_is_warm {
            let spec = self.release_spec(&new_id, &req.release, &settings);
            let record = self.release_record(&new_id, &req.release, &settings);
            self.releases.insert(
                new_id.clone(),
                Running {
                    spec,
                    settings: settings.clone(),
                    record,
                    instances: BTreeMap::new(),
                },
            );
        }
        let (old, old_instances) = match serving_running {
            Some((id, idx)) if id != new_id => (Some(id), idx),
            _ => (None, Vec::new()),
        };
        let new_record = self
            .releases
            .get(&new_id)
            .map(|r| r.record.clone())
            .unwrap_or_else(|| self.release_record(&new_id, &req.release, &settings));
        let previous = old
            .as_ref()
            .and_then(|o| self.releases.get(o))
            .map(|r| r.record.clone());
        let machine = Deployment::new(Plan {
            strategy: settings.strategy.clone(),
            instances: n,
            old_instances,
            needs_approval: req.needs_approval,
            new_is_warm,
        });
        self.record.current = Some(DeploymentRecord {
            id: req.deployment.clone(),
            environment: self.spec.name.clone(),
            release: new_record,
            previous,
            strategy: settings.strategy.name().to_string(),
            rollback_to: req.rollback_to.clone(),
            phase: Phase::Pending,
            status: Status::Pending,
            reason: None,
            created_at_ms: wall_ms(),
            finished_at_ms: None,
            switching: None,
            switch_ms: None,
        });
        self.active = Some(Active {
            id: req.deployment.clone(),
            machine,
            old,
            new: new_id,
            restore: false,
            requested_at,
            report: Some(report),
            reported: false,
            switch_ms: None,
            rollback_to: req.rollback_to.clone(),
        });
        if let Some(cur) = &self.record.current {
            self.inner.notify(NotificationKind::Started, cur);
        }
        self.kick().await;
    }

    /// Start the active machine.
    async fn kick(&mut self) {
        let now = self.inner.now();
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let actions = a.machine.start(now);
        self.after_machine(actions).await;
    }

    async fn step(&mut self, ev: Event) {
        let now = self.inner.now();
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let actions = a.machine.handle(ev, now);
        self.after_machine(actions).await;
    }

    fn slot_release(&self, slot: Slot) -> Option<String> {
        let a = self.active.as_ref()?;
        match slot {
            Slot::New => Some(a.new.clone()),
            Slot::Old => a.old.clone(),
        }
    }

    /// Persist, then act.
    async fn after_machine(&mut self, actions: Vec<Action>) {
        let switching = actions.iter().find_map(|a| match a {
            Action::Route(t) => Some(
                t.iter()
                    .filter_map(|e| {
                        self.slot_release(e.slot).map(|release| RouteShare {
                            release,
                            weight: e.weight,
                        })
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        });
        let persist = self.sync_record(switching);
        if persist {
            if let Err(e) = self.inner.store.save(&self.record).await {
                // Acting without a record would break the promise made after a crash.
                self.inner.emit(EngineEvent::Error {
                    environment: self.spec.name.clone(),
                    message: format!("cannot save the deployment state, not acting: {e}"),
                });
                return;
            }
        }
        for a in actions {
            self.execute(a).await;
        }
        self.check_finished().await;
    }

    /// Mirror the machine into the record; whether anything worth saving changed.
    fn sync_record(&mut self, switching: Option<Vec<RouteShare>>) -> bool {
        let Some(a) = &self.active else { return false };
        let phase = a.machine.phase().clone();
        if self.last_phase.as_ref() != Some(&phase) {
            self.last_phase = Some(phase.clone());
            if !a.restore {
                self.inner.emit(EngineEvent::Phase {
                    environment: self.spec.name.clone(),
                    deployment: a.id.clone(),
                    phase: phase.clone(),
                    status: a.machine.status(),
                });
            }
        }
        if a.restore {
            return false;
        }
        let Some(cur) = self.record.current.as_mut() else {
            return false;
        };
        let before = (cur.phase.clone(), cur.status, cur.switching.clone());
        cur.phase = phase;
        cur.status = a.machine.status();
        cur.reason = a.machine.reason().map(str::to_string);
        cur.switch_ms = a.switch_ms;
        if switching.is_some() {
            cur.switching = switching;
        } else if cur.switching.is_some() && !matches!(cur.phase, Phase::SwitchingTraffic) {
            cur.switching = None;
        }
        before != (cur.phase.clone(), cur.status, cur.switching.clone())
    }

    async fn execute(&mut self, action: Action) {
        let Some(active_id) = self.active.as_ref().map(|a| a.id.clone()) else {
            return;
        };
        match action {
            Action::Start { slot, indices } => {
                let Some(id) = self.slot_release(slot) else {
                    self.immediate.push_back(Event::StartFailed {
                        slot,
                        reason: "no such release".into(),
                    });
                    return;
                };
                let Some(spec) = self.releases.get(&id).map(|r| r.spec.clone()) else {
                    self.immediate.push_back(Event::StartFailed {
                        slot,
                        reason: format!("release {id} is unknown"),
                    });
                    return;
                };
                match self.inner.target.start(&spec, &indices).await {
                    Ok(started) => {
                        for s in started {
                            let monitor = CancellationToken::new();
                            tokio::spawn(monitor_instance(
                                self.inner.clone(),
                                Monitored {
                                    environment: self.spec.name.clone(),
                                    check: self.settings_of(&id).health_check,
                                    release: id.clone(),
                                    index: s.index,
                                    addr: s.addr,
                                },
                                self.tx.clone(),
                                monitor.clone(),
                            ));
                            if let Some(r) = self.releases.get_mut(&id) {
                                if let Some(old) = r.instances.insert(
                                    s.index,
                                    Instance {
                                        addr: s.addr,
                                        monitor,
                                    },
                                ) {
                                    old.monitor.cancel();
                                }
                            }
                        }
                        self.immediate.push_back(Event::Started { slot, indices });
                    }
                    Err(e) => {
                        // Whatever did start goes again.
                        self.inner.target.stop(&self.spec.name, &id, &indices).await;
                        self.immediate.push_back(Event::StartFailed {
                            slot,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            Action::Stop { slot, indices } => {
                let Some(id) = self.slot_release(slot) else {
                    self.immediate.push_back(Event::Stopped { slot, indices });
                    return;
                };
                if let Some(r) = self.releases.get(&id) {
                    for i in &indices {
                        if let Some(inst) = r.instances.get(i) {
                            inst.monitor.cancel();
                        }
                    }
                }
                let (router, target, env, tx, grace) = (
                    self.router.clone(),
                    self.inner.target.clone(),
                    self.spec.name.clone(),
                    self.tx.clone(),
                    Duration::from_millis(self.settings_of(&id).stop_grace_ms),
                );
                tokio::spawn(async move {
                    // Requests already on these instances finish before SIGTERM.
                    for i in &indices {
                        router.drain(&id, *i, grace).await;
                    }
                    target.stop(&env, &id, &indices).await;
                    let _ = tx.send(Command::Stopped(id.clone(), indices.clone()));
                    let _ = tx.send(Command::Internal(
                        active_id,
                        Event::Stopped { slot, indices },
                    ));
                });
            }
            Action::Route(table) => {
                let mut targets = Vec::new();
                for e in &table {
                    let Some(id) = self.slot_release(e.slot) else {
                        continue;
                    };
                    let Some(inst) = self
                        .releases
                        .get(&id)
                        .and_then(|r| r.instances.get(&e.index))
                    else {
                        continue;
                    };
                    targets.push(RouteTarget {
                        release: id,
                        index: e.index,
                        addr: inst.addr,
                        weight: e.weight,
                    });
                }
                let only: Option<String> = match targets.first() {
                    Some(f) if targets.iter().all(|t| t.release == f.release) => {
                        Some(f.release.clone())
                    }
                    _ => None,
                };
                let swap_started = Instant::now();
                self.router.set_routes(targets.clone());
                let swap_us = swap_started.elapsed().as_secs_f64() * 1e6;
                if table.is_empty() {
                    self.record.serving = None;
                } else if let Some(id) = only {
                    if let Some(r) = self.releases.get(&id) {
                        self.record.serving = Some(r.record.clone());
                    }
                    if let Some(a) = self.active.as_mut() {
                        if a.new == id && a.switch_ms.is_none() {
                            a.switch_ms = Some(a.requested_at.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                }
                self.inner.emit(EngineEvent::Routed {
                    environment: self.spec.name.clone(),
                    routes: shares(&targets),
                    swap_us,
                });
                self.immediate.push_front(Event::Routed);
            }
            Action::RunChecks => {
                let checks = match self.active.as_ref().map(|a| a.strategy()) {
                    Some(Strategy::BlueGreen {
                        pre_switch_checks, ..
                    }) => pre_switch_checks.clone(),
                    _ => Vec::new(),
                };
                let new_id = self.slot_release(Slot::New).unwrap_or_default();
                let addrs: Vec<SocketAddr> = self
                    .slot_release(Slot::New)
                    .and_then(|id| self.releases.get(&id))
                    .map(|r| r.instances.values().map(|i| i.addr).collect())
                    .unwrap_or_default();
                let (http, tx, timeout) = (
                    self.inner.http.clone(),
                    self.tx.clone(),
                    Duration::from_millis(self.settings_of(&new_id).health_check.timeout_ms),
                );
                tokio::spawn(async move {
                    let ev = match run_checks(&http, &checks, &addrs, timeout).await {
                        Ok(()) => Event::ChecksPassed,
                        Err(reason) => Event::ChecksFailed { reason },
                    };
                    let _ = tx.send(Command::Internal(active_id, ev));
                });
            }
            Action::WakeAt(t) => {
                let wait = Duration::from_millis(t.saturating_sub(self.inner.now()));
                if let Some(a) = &self.active {
                    if matches!(a.machine.phase(), Phase::KeepingOldWarm { .. }) {
                        if let Some(old) = a.old.as_ref().and_then(|o| self.releases.get(o)) {
                            self.record.warm = Some(WarmRecord {
                                release: old.record.clone(),
                                until_ms: wall_ms() + wait.as_millis() as u64,
                            });
                            let _ = self.inner.store.save(&self.record).await;
                        }
                    }
                }
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(Command::Internal(active_id, Event::Tick));
                });
            }
        }
    }

    async fn check_finished(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let status = a.machine.status();
        let finished = a.machine.is_finished();
        if a.restore {
            if finished {
                let ok = a.machine.phase() == &Phase::Succeeded;
                let release = a.new.clone();
                self.inner.emit(EngineEvent::Restored {
                    environment: self.spec.name.clone(),
                    release,
                    ok,
                    reason: a.machine.reason().map(str::to_string),
                });
                self.active = None;
                self.prune_releases();
                self.next_queued().await;
            }
            return;
        }
        let done_for_waiters = finished || status == Status::Success;
        if done_for_waiters && !a.reported {
            a.reported = true;
            let report = DeploymentReport {
                deployment: a.id.clone(),
                environment: self.spec.name.clone(),
                status,
                phase: a.machine.phase().clone(),
                reason: a.machine.reason().map(str::to_string),
                switch_ms: a.switch_ms,
                rollback_to: a.rollback_to.clone(),
            };
            if let Some(tx) = &a.report {
                let _ = tx.send(Some(report.clone()));
            }
            let kind = match status {
                Status::Success if a.rollback_to.is_some() => Some(NotificationKind::RolledBack),
                Status::Success => Some(NotificationKind::Succeeded),
                Status::Failed => Some(NotificationKind::Failed),
                Status::RolledBack => Some(NotificationKind::RolledBack),
                _ => None,
            };
            if let (Some(kind), Some(cur)) = (kind, &self.record.current) {
                self.inner.notify(kind, cur);
            }
            self.inner.emit(EngineEvent::Finished(report));
        } else if finished && status == Status::RolledBack {
            // Rolled back by itself after traffic had moved (a lost instance while warm).
            if let Some(cur) = &self.record.current {
                self.inner.notify(NotificationKind::RolledBack, cur);
            }
        }
        if finished {
            if let Some(cur) = self.record.current.as_mut() {
                cur.finished_at_ms = Some(wall_ms());
                cur.switching = None;
            }
            self.record.warm = None;
            self.record.finish_current();
            if let Err(e) = self.inner.store.save(&self.record).await {
                self.inner.emit(EngineEvent::Error {
                    environment: self.spec.name.clone(),
                    message: format!("cannot save the deployment state: {e}"),
                });
            }
            self.active = None;
            self.last_phase = None;
            self.prune_releases();
            self.next_queued().await;
        }
    }

    fn prune_releases(&mut self) {
        let keep: Vec<String> = self
            .active
            .iter()
            .flat_map(|a| [Some(a.new.clone()), a.old.clone()])
            .flatten()
            .chain(self.record.serving.iter().map(|s| s.release.clone()))
            .collect();
        self.releases
            .retain(|id, r| !r.instances.is_empty() || keep.contains(id));
    }

    async fn next_queued(&mut self) {
        if self.active.is_none() {
            if let Some(q) = self.queue.pop_front() {
                Box::pin(self.start_deployment(q)).await;
            }
        }
    }
}

fn shares(targets: &[RouteTarget]) -> Vec<RouteShare> {
    let mut out: Vec<RouteShare> = Vec::new();
    for t in targets {
        match out.iter_mut().find(|s| s.release == t.release) {
            Some(s) => s.weight += t.weight,
            None => out.push(RouteShare {
                release: t.release.clone(),
                weight: t.weight,
            }),
        }
    }
    out
}

/// Probe one instance until it is stopped, telling the actor of every verdict change.
/// The instance a monitor probes.
struct Monitored {
    environment: String,
    check: HealthCheck,
    release: String,
    index: u32,
    addr: SocketAddr,
}

async fn monitor_instance(
    inner: Arc<Inner>,
    m: Monitored,
    tx: mpsc::UnboundedSender<Command>,
    cancel: CancellationToken,
) {
    let Monitored {
        environment,
        check,
        release,
        index,
        addr,
    } = m;
    let mut crashes = inner.target.subscribe();
    let mut tracker = HealthTracker::new(&check, inner.now());
    let mut ticks = tokio::time::interval(Duration::from_millis(check.interval_ms.max(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let url = format!("http://{addr}{}", check.check.path);
    let timeout = Duration::from_millis(check.timeout_ms);
    loop {
        let probe = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {
                let p = probe(&inner.http, &url, &check.check, timeout).await;
                if cancel.is_cancelled() {
                    return;
                }
                p
            }
            ev = crashes.recv() => match ev {
                Ok(TargetEvent::Exited { environment: e, release: r, index: i, code })
                    if e == environment && r == release && i == index => Probe::Crashed { code },
                Err(broadcast::error::RecvError::Closed) => {
                    crashes = inner.target.subscribe();
                    continue;
                }
                _ => continue,
            },
        };
        if let Some(transition) = tracker.observe(&probe, inner.now()) {
            let _ = tx.send(Command::Health {
                release: release.clone(),
                index,
                transition,
            });
        }
    }
}

async fn probe(http: &HttpClient, url: &str, check: &HttpCheck, timeout: Duration) -> Probe {
    match http.get(url, timeout).await {
        Ok(r) if check.accepts(r.status) => Probe::Ok,
        Ok(r) => Probe::WrongStatus(r.status),
        Err(HttpError::Refused(_)) => Probe::Refused,
        Err(HttpError::Timeout) => Probe::Timeout,
        // A connection reset while starting looks like a process still binding.
        Err(HttpError::Other(_)) => Probe::Refused,
    }
}

async fn run_checks(
    http: &HttpClient,
    checks: &[HttpCheck],
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(), String> {
    for check in checks {
        for addr in addrs {
            let url = format!("http://{addr}{}", check.path);
            match http.get(&url, timeout).await {
                Ok(r) if check.accepts(r.status) => {}
                Ok(r) => return Err(format!("{} answered {}", check.path, r.status)),
                Err(e) => return Err(format!("{}: {e}", check.path)),
            }
        }
    }
    Ok(())
}

fn phase_name(p: &Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.get("phase").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("{p:?}"))
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
