//! The container executor: runs a job in its `image:` with its `services:` through the
//! Docker Engine API (Docker, or Podman's `podman system service`), the way GitLab
//! Runner's Docker executor does:
//!
//! - the job's workspace is bind-mounted at the same path and is the working directory;
//!   the job's variables are the container's environment;
//! - `before_script` + `script` run in one shell (bash when the image has it, else sh,
//!   detected inside the image like the runner does), every command echoed as
//!   `$ command`, the first failing command failing the job with its exit code;
//! - `after_script` runs in a new container of the same image with `CI_JOB_STATUS`
//!   set, always (after a failure, a timeout or a cancel too), with its own timeout;
//! - each service runs in its own container on a network made for the job, reachable
//!   by the host names GitLab derives from its image name and by its aliases;
//! - everything the job created (containers, network, script files) is removed however
//!   the job ends, even when the engine fails half-way.
//!
//! The generated scripts are written to a directory on this machine (outside the
//! workspace, so artifacts and `git status` never see them) and bind-mounted read-only
//! into the container: scripts of any length and any quoting pass through unchanged.
//!
//! Pull policy: `always`, `if-not-present` or `never`, several tried in order as on
//! GitLab. Without one Slipway uses `if-not-present` (GitLab Runner defaults to
//! `always`): local runs must work offline with images already on the machine.

use crate::executor::{ExecFuture, ExecOutcome, ExecStatus, Executor, JobSpec};
use crate::logs::LogSink;
use bollard::container::AttachContainerResults;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount, MountType, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions, KillContainerOptions,
    ListContainersOptions, ListNetworksOptions, LogsOptions, RemoveContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use slipway_core::model::{Image, Service};
use slipway_core::plan::expand_existing;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The label put on every container and network a job creates; its value is the job's
/// random id (also in the names: `slipway-job-<id>`).
pub const JOB_LABEL: &str = "slipway.job";
/// The label naming the job (`test 1/3`) on everything it creates.
pub const JOB_NAME_LABEL: &str = "slipway.job.name";
/// `build`, `after_script` or `service`.
pub const ROLE_LABEL: &str = "slipway.role";

/// Where the generated scripts appear inside the containers.
const SCRIPTS_MOUNT: &str = "/.slipway-scripts";
/// Docker's and Podman's usual sockets, tried in order when `DOCKER_HOST` is not set.
const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
const PODMAN_SYSTEM_SOCKET: &str = "/run/podman/podman.sock";
/// Engine calls that answer at once (create, inspect, remove...) give up after this.
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// Long-polling calls (wait, logs, pull) are bounded by the job's own timeout instead.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long to keep reading a container's output after it stopped.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// GitLab Runner waits this long for services to listen on their exposed ports.
const DEFAULT_SERVICE_WAIT: Duration = Duration::from_secs(30);

/// GitLab Runner's shell detection: the first of these that the image has runs the script.
const DETECT_SHELL: &str =
    "if [ -x /usr/local/bin/bash ]; then exec /usr/local/bin/bash --noprofile --norc \"$@\"; \
elif [ -x /usr/bin/bash ]; then exec /usr/bin/bash --noprofile --norc \"$@\"; \
elif [ -x /bin/bash ]; then exec /bin/bash --noprofile --norc \"$@\"; \
elif [ -x /usr/local/bin/sh ]; then exec /usr/local/bin/sh \"$@\"; \
elif [ -x /usr/bin/sh ]; then exec /usr/bin/sh \"$@\"; \
elif [ -x /bin/sh ]; then exec /bin/sh \"$@\"; \
elif [ -x /busybox/sh ]; then exec /busybox/sh \"$@\"; \
else echo 'shell not found' >&2; exit 1; fi";

/// Where the Docker Engine API is, as given by `DOCKER_HOST` or found among the usual
/// sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineAddress {
    /// A unix socket path.
    Unix(PathBuf),
    /// `tcp://host:port` or `http://host:port` (plain HTTP).
    Tcp(String),
    /// An address this build cannot use (`ssh://`, `npipe://`, ...), as written.
    Unsupported(String),
}

impl EngineAddress {
    /// Parse a `DOCKER_HOST` value: `unix:///path`, a bare absolute socket path,
    /// `tcp://host:port` or `http://host:port`.
    pub fn parse(host: &str) -> EngineAddress {
        let host = host.trim();
        if let Some(path) = host.strip_prefix("unix://") {
            EngineAddress::Unix(PathBuf::from(path))
        } else if host.starts_with('/') {
            EngineAddress::Unix(PathBuf::from(host))
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            EngineAddress::Tcp(host.to_string())
        } else {
            EngineAddress::Unsupported(host.to_string())
        }
    }

    /// `DOCKER_HOST` when set, else the first of `/var/run/docker.sock`,
    /// `$XDG_RUNTIME_DIR/podman/podman.sock` and `/run/podman/podman.sock` that exists
    /// (Docker's socket when none does).
    pub fn from_env() -> EngineAddress {
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            if !host.trim().is_empty() {
                return EngineAddress::parse(&host);
            }
        }
        default_sockets()
            .into_iter()
            .find(|p| p.exists())
            .map(EngineAddress::Unix)
            .unwrap_or_else(|| EngineAddress::Unix(PathBuf::from(DEFAULT_DOCKER_SOCKET)))
    }
}

impl std::fmt::Display for EngineAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineAddress::Unix(p) => write!(f, "unix://{}", p.display()),
            EngineAddress::Tcp(h) | EngineAddress::Unsupported(h) => f.write_str(h),
        }
    }
}

fn default_sockets() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(DEFAULT_DOCKER_SOCKET)];
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
        out.push(PathBuf::from(xdg).join("podman/podman.sock"));
    }
    out.push(PathBuf::from(PODMAN_SYSTEM_SOCKET));
    out
}

/// Runs jobs in containers through the Docker Engine API.
pub struct ContainerExecutor {
    address: EngineAddress,
    /// Whether the address was found among the default sockets (for the error message).
    from_defaults: bool,
    client: Result<Docker, String>,
    /// The engine after version negotiation, once it answered.
    ready: tokio::sync::OnceCell<Docker>,
    default_image: Option<String>,
    labels: Vec<(String, String)>,
    scripts_root: PathBuf,
    service_wait: Duration,
}

impl ContainerExecutor {
    /// Connect to the engine named by `DOCKER_HOST`, or to the first of the usual Docker
    /// and Podman sockets that exists. Nothing is contacted yet: an unreachable engine
    /// is reported by [`ContainerExecutor::ping`] and by each job (as a system failure).
    pub fn from_env() -> ContainerExecutor {
        let explicit = std::env::var("DOCKER_HOST")
            .map(|h| !h.trim().is_empty())
            .unwrap_or(false);
        let mut exec = ContainerExecutor::new(EngineAddress::from_env());
        exec.from_defaults = !explicit;
        exec
    }

    /// Connect to the engine at `address` (`EngineAddress::parse("unix:///run/x.sock")`).
    pub fn new(address: EngineAddress) -> ContainerExecutor {
        let client = match &address {
            EngineAddress::Unix(path) => Docker::connect_with_unix(
                &path.to_string_lossy(),
                API_TIMEOUT.as_secs(),
                bollard::API_DEFAULT_VERSION,
            )
            .map_err(|e| engine_error_text(&e)),
            EngineAddress::Tcp(host) => {
                Docker::connect_with_http(host, API_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
                    .map_err(|e| engine_error_text(&e))
            }
            EngineAddress::Unsupported(host) => Err(format!(
                "unsupported address {host:?} (use unix:///path/to/socket or tcp://host:port)"
            )),
        };
        ContainerExecutor {
            address,
            from_defaults: false,
            client,
            ready: tokio::sync::OnceCell::new(),
            default_image: None,
            labels: Vec::new(),
            scripts_root: std::env::temp_dir(),
            service_wait: DEFAULT_SERVICE_WAIT,
        }
    }

    /// The image for jobs without `image:` (GitLab Runner's configured default image).
    pub fn with_default_image(mut self, image: impl Into<String>) -> ContainerExecutor {
        self.default_image = Some(image.into());
        self
    }

    /// Extra labels put on every container and network (a pipeline id, a test's id).
    pub fn with_labels<I, K, V>(mut self, labels: I) -> ContainerExecutor
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.labels
            .extend(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Where the generated scripts are written (a directory per job is made inside it and
    /// removed after the job); the system's temporary directory by default. It must be on
    /// the machine the engine runs on, like the workspace.
    pub fn with_scripts_dir(mut self, dir: &Path) -> ContainerExecutor {
        self.scripts_root = dir.to_path_buf();
        self
    }

    /// How long to wait for services to listen on their exposed ports (30 s by default).
    pub fn with_service_wait(mut self, wait: Duration) -> ContainerExecutor {
        self.service_wait = wait;
        self
    }

    pub fn address(&self) -> &EngineAddress {
        &self.address
    }

    /// Check that the engine answers (and agree on an API version with it).
    pub async fn ping(&self) -> Result<(), String> {
        self.engine().await.map(|_| ())
    }

    async fn engine(&self) -> Result<Docker, String> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| self.unreachable(e))?
            .clone();
        let docker = self
            .ready
            .get_or_try_init(|| async move {
                tokio::time::timeout(Duration::from_secs(30), client.ping())
                    .await
                    .map_err(|_| "no answer within 30 seconds".to_string())?
                    .map_err(|e| engine_error_text(&e))?;
                client
                    .negotiate_version()
                    .await
                    .map_err(|e| engine_error_text(&e))
            })
            .await
            .map_err(|e| self.unreachable(&e))?;
        Ok(docker.clone())
    }

    fn unreachable(&self, why: &str) -> String {
        let tried = if self.from_defaults {
            let list: Vec<String> = default_sockets()
                .iter()
                .map(|p| format!("unix://{}", p.display()))
                .collect();
            format!(" (DOCKER_HOST is not set; tried {})", list.join(", "))
        } else {
            String::new()
        };
        format!(
            "The Docker Engine API could not be reached at {}{tried}: {why}. Start Docker, or \
             Podman's API service (`podman system service --time=0 unix:///run/podman/podman.sock`), \
             and point DOCKER_HOST at it; or run the job in the shell instead with `--executor shell`.",
            self.address
        )
    }
}

/// The text of an engine error, without bollard's wrapping where it adds nothing.
fn engine_error_text(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} (HTTP {status_code})", message.trim()),
        EngineError::SocketNotFoundError(path) => format!("no socket at {path}"),
        other => other.to_string(),
    }
}

fn is_not_found(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The host names GitLab Runner gives a service from its image name: the tag (and
/// digest, and a registry's port) stripped, then `/` replaced by `__` for the first name
/// and by `-` for the second. `postgres:15` → `postgres`; `tutum/wordpress` →
/// `tutum__wordpress`, `tutum-wordpress`; `registry.example.com:4999/tutum/wordpress` →
/// `registry.example.com__tutum__wordpress`, `registry.example.com-tutum-wordpress`.
pub fn service_host_names(image: &str) -> Vec<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/');
    let path = match no_digest.rfind(':') {
        Some(colon) if last_slash.is_none_or(|s| colon > s) => &no_digest[..colon],
        _ => no_digest,
    };
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() > 1 {
        if let Some((host, _port)) = parts[0].split_once(':') {
            parts[0] = host;
        }
    }
    let mut names = vec![parts.join("__"), parts.join("-")];
    names.dedup();
    names.retain(|n| !n.is_empty());
    names
}

/// An image reference with an explicit tag: the Engine API pulls every tag of a
/// repository when none is given.
fn with_default_tag(image: &str) -> String {
    let last_slash = image.rfind('/');
    let has_tag = image
        .rfind(':')
        .is_some_and(|c| last_slash.is_none_or(|s| c > s));
    if image.contains('@') || has_tag {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The script GitLab Runner would generate: fail on the first failing command (with
/// `pipefail` under bash), echo each command before running it.
pub fn render_script(commands: &[String], workdir: &Path) -> String {
    let mut out = String::new();
    out.push_str("if [ -n \"${BASH_VERSION:-}\" ]; then set -eo pipefail; else set -e; fi\n");
    crate::shell::push_commands(&mut out, commands, workdir);
    out
}

fn random_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:016x}", h.finish())
}

/// Later definitions win; the order of first appearance is kept.
fn env_list(vars: &[(String, String)]) -> Vec<String> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (k, v) in vars {
        match index.get(k.as_str()) {
            Some(&i) => out[i].1 = v,
            None => {
                index.insert(k, out.len());
                out.push((k, v));
            }
        }
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Why a job stopped before its script ended.
#[derive(Debug)]
enum Stop {
    TimedOut,
    Canceled,
    Failure(String),
}

impl Stop {
    fn outcome(self, log: &LogSink) -> ExecOutcome {
        let status = match self {
            Stop::TimedOut => {
                log.system("ERROR: Job timed out while preparing its containers");
                ExecStatus::TimedOut
            }
            Stop::Canceled => {
                log.system("ERROR: Job canceled while preparing its containers");
                ExecStatus::Canceled
            }
            Stop::Failure(msg) => {
                log.system(&format!("ERROR: {msg}"));
                ExecStatus::SystemFailure(msg)
            }
        };
        ExecOutcome {
            status,
            exit_code: None,
        }
    }
}

/// Run an engine call, giving up when the job's deadline passes or it is canceled.
async fn bounded<T, F>(fut: F, deadline: Instant, cancel: &CancellationToken) -> Result<T, Stop>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    tokio::select! {
        r = fut => r.map_err(Stop::Failure),
        _ = tokio::time::sleep_until(deadline) => Err(Stop::TimedOut),
        _ = cancel.cancelled() => Err(Stop::Canceled),
    }
}

/// Everything one job created on the engine and on disk. [`Resources::cleanup`] removes
/// it; if the job's future is dropped before that, `Drop` does it in the background.
struct Resources {
    docker: Docker,
    job_id: String,
    containers: Mutex<Vec<String>>,
    network: Mutex<Option<String>>,
    scripts_dir: PathBuf,
    cleaned: std::sync::atomic::AtomicBool,
}

impl Resources {
    fn add_container(&self, id: &str) {
        if let Ok(mut c) = self.containers.lock() {
            c.push(id.to_string());
        }
    }

    async fn cleanup(&self) {
        self.cleaned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let containers = self
            .containers
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let network = self.network.lock().ok().and_then(|n| n.clone());
        cleanup_job(
            self.docker.clone(),
            self.job_id.clone(),
            containers,
            network,
            self.scripts_dir.clone(),
        )
        .await;
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        if self.cleaned.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let containers = self
            .containers
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let network = self.network.lock().ok().and_then(|n| n.clone());
        let (docker, job_id, dir) = (
            self.docker.clone(),
            self.job_id.clone(),
            self.scripts_dir.clone(),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(cleanup_job(docker, job_id, containers, network, dir));
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Remove a job's containers and network: those recorded, and any other carrying its
/// label (one whose creation answer was lost).
async fn cleanup_job(
    docker: Docker,
    job_id: String,
    mut containers: Vec<String>,
    network: Option<String>,
    scripts_dir: PathBuf,
) {
    let label = format!("{JOB_LABEL}={job_id}");
    let filters = HashMap::from([("label".to_string(), vec![label.clone()])]);
    if let Ok(Ok(found)) = tokio::time::timeout(
        API_TIMEOUT,
        docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        })),
    )
    .await
    {
        for c in found {
            if let Some(id) = c.id {
                if !containers.contains(&id) {
                    containers.push(id);
                }
            }
        }
    }
    for id in &containers {
        let _ = tokio::time::timeout(
            API_TIMEOUT,
            docker.remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            ),
        )
        .await;
    }
    let mut networks: Vec<String> = network.into_iter().collect();
    if let Ok(Ok(found)) = tokio::time::timeout(
        API_TIMEOUT,
        docker.list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        })),
    )
    .await
    {
        for n in found {
            if let Some(name) = n.name {
                if !networks.contains(&name) {
                    networks.push(name);
                }
            }
        }
    }
    for n in &networks {
        let _ = tokio::time::timeout(API_TIMEOUT, docker.remove_network(n)).await;
    }
    let _ = tokio::fs::remove_dir_all(&scripts_dir).await;
}

/// How one container run ended.
enum Ended {
    Exited(i32),
    TimedOut,
    Canceled,
}

/// What differs between the script container and the `after_script` container.
struct Phase<'a> {
    role: &'a str,
    script_file: &'a str,
    extra_env: &'a [(String, String)],
    timeout: Duration,
    cancel: &'a CancellationToken,
}

/// One job on one engine.
struct JobRun<'a> {
    exec: &'a ContainerExecutor,
    docker: Docker,
    job: &'a JobSpec,
    log: &'a Arc<LogSink>,
    res: &'a Resources,
    image: String,
    image_spec: Option<&'a Image>,
    network: Option<String>,
    /// The workspace as an absolute path (the engine needs one to mount it).
    workdir: PathBuf,
}

impl ContainerExecutor {
    fn labels(&self, job_id: &str, job: &JobSpec, role: &str) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self.labels.iter().cloned().collect();
        labels.insert(JOB_LABEL.to_string(), job_id.to_string());
        labels.insert(JOB_NAME_LABEL.to_string(), job.name.clone());
        labels.insert(ROLE_LABEL.to_string(), role.to_string());
        labels
    }

    async fn run_job(
        &self,
        job: &JobSpec,
        log: Arc<LogSink>,
        cancel: CancellationToken,
    ) -> ExecOutcome {
        let docker = match self.engine().await {
            Ok(d) => d,
            Err(msg) => return Stop::Failure(msg).outcome(&log),
        };
        let deadline = Instant::now() + job.timeout;
        let lookup = |name: &str| {
            job.variables
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let image = match (&job.image, &self.default_image) {
            (Some(img), _) if !img.name.trim().is_empty() => expand_existing(&img.name, &lookup),
            (_, Some(default)) => default.clone(),
            _ => {
                return Stop::Failure(format!(
                    "job {:?} has no image: and no default image is configured for the container \
                     executor; add `image:` to the job or run it with `--executor shell`",
                    job.name
                ))
                .outcome(&log)
            }
        };
        let job_id = random_id();
        let res = Resources {
            docker: docker.clone(),
            job_id: job_id.clone(),
            containers: Mutex::new(Vec::new()),
            network: Mutex::new(None),
            scripts_dir: self.scripts_root.join(format!("slipway-scripts-{job_id}")),
            cleaned: std::sync::atomic::AtomicBool::new(false),
        };
        let mut run = JobRun {
            exec: self,
            docker,
            job,
            log: &log,
            res: &res,
            image,
            image_spec: job.image.as_ref(),
            network: None,
            workdir: std::path::absolute(&job.workdir).unwrap_or_else(|_| job.workdir.clone()),
        };
        let outcome = run.run(&job_id, deadline, &cancel, &lookup).await;
        res.cleanup().await;
        outcome
    }
}

impl JobRun<'_> {
    async fn run(
        &mut self,
        job_id: &str,
        deadline: Instant,
        cancel: &CancellationToken,
        lookup: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> ExecOutcome {
        let log = self.log;
        log.system(&format!(
            "Using Docker executor with image {} (engine at {})",
            self.image, self.exec.address
        ));
        let policies = self
            .image_spec
            .map(|i| i.pull_policy.clone())
            .unwrap_or_default();
        let platform = self.image_spec.and_then(|i| i.platform.clone());
        let image = self.image.clone();
        if let Err(stop) = self
            .ensure_image(&image, &policies, platform.as_deref(), deadline, cancel)
            .await
        {
            return stop.outcome(log);
        }
        if !self.job.services.is_empty() {
            if let Err(stop) = self.start_services(job_id, deadline, cancel, lookup).await {
                return stop.outcome(log);
            }
        }
        // The scripts, written where the containers can read them.
        let mut main_commands = self.job.before_script.clone();
        main_commands.extend(self.job.script.iter().cloned());
        let dir = &self.res.scripts_dir;
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| {
                std::fs::write(
                    dir.join("script.sh"),
                    render_script(&main_commands, &self.workdir),
                )
            })
            .and_then(|_| {
                std::fs::write(
                    dir.join("after_script.sh"),
                    render_script(&self.job.after_script, &self.workdir),
                )
            });
        if let Err(e) = written {
            return Stop::Failure(format!(
                "cannot write the job's scripts to {}: {e}",
                dir.display()
            ))
            .outcome(log);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let main = self
            .run_phase(
                job_id,
                Phase {
                    role: "build",
                    script_file: "script.sh",
                    extra_env: &[],
                    timeout: remaining,
                    cancel,
                },
            )
            .await;
        let (status, exit_code) = match main {
            Ok(Ended::Exited(0)) => (ExecStatus::Success, Some(0)),
            Ok(Ended::Exited(code)) => (ExecStatus::Failed, Some(code)),
            Ok(Ended::TimedOut) | Err(Stop::TimedOut) => (ExecStatus::TimedOut, None),
            Ok(Ended::Canceled) | Err(Stop::Canceled) => (ExecStatus::Canceled, None),
            Err(Stop::Failure(msg)) => {
                log.system(&format!("ERROR: {msg}"));
                (ExecStatus::SystemFailure(msg), None)
            }
        };
        match &status {
            ExecStatus::TimedOut => log.system(&format!(
                "ERROR: Job timed out after {}: the container was killed",
                humantime(self.job.timeout)
            )),
            ExecStatus::Canceled => log.system("ERROR: Job canceled: the container was killed"),
            _ => {}
        }
        if !self.job.after_script.is_empty() && !matches!(status, ExecStatus::SystemFailure(_)) {
            let job_status = match status {
                ExecStatus::Success => "success",
                ExecStatus::Canceled => "canceled",
                _ => "failed",
            };
            log.system("Running after_script");
            let env = [("CI_JOB_STATUS".to_string(), job_status.to_string())];
            // after_script runs even after a cancel; a second cancel is not waited for.
            let never = CancellationToken::new();
            let after = self
                .run_phase(
                    job_id,
                    Phase {
                        role: "after_script",
                        script_file: "after_script.sh",
                        extra_env: &env,
                        timeout: self.job.after_script_timeout,
                        cancel: &never,
                    },
                )
                .await;
            match after {
                Ok(Ended::Exited(0)) | Ok(Ended::Canceled) | Err(Stop::Canceled) => {}
                Ok(Ended::Exited(code)) => log.system(&format!(
                    "WARNING: after_script failed with exit code {code}"
                )),
                Ok(Ended::TimedOut) | Err(Stop::TimedOut) => log.system(&format!(
                    "WARNING: after_script timed out after {}",
                    humantime(self.job.after_script_timeout)
                )),
                Err(Stop::Failure(msg)) => {
                    log.system(&format!("WARNING: after_script could not run: {msg}"))
                }
            }
        }
        ExecOutcome { status, exit_code }
    }

    /// Make sure `image` is on the engine, following the pull policies in order (the
    /// next one is tried when one fails, as GitLab Runner does).
    async fn ensure_image(
        &self,
        image: &str,
        policies: &[String],
        platform: Option<&str>,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let policies: Vec<String> = if policies.is_empty() {
            vec!["if-not-present".to_string()]
        } else {
            policies.to_vec()
        };
        let mut errors = Vec::new();
        for policy in &policies {
            let attempt = match policy.as_str() {
                "never" | "if-not-present" => {
                    match bounded(self.image_present(image), deadline, cancel).await? {
                        true => Ok(()),
                        false if policy == "never" => Err(format!(
                            "image {image:?} is not on the container engine and its pull policy \
                             is \"never\"; build or pull it first (podman/docker pull {image}), \
                             or allow pulling with `pull_policy: if-not-present`"
                        )),
                        false => {
                            bounded(
                                async { Ok(self.pull(image, platform).await) },
                                deadline,
                                cancel,
                            )
                            .await?
                        }
                    }
                }
                "always" => {
                    bounded(
                        async { Ok(self.pull(image, platform).await) },
                        deadline,
                        cancel,
                    )
                    .await?
                }
                other => Err(format!(
                    "unknown pull policy {other:?} (expected always, if-not-present or never)"
                )),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if policies.len() > 1 {
                        self.log.system(&format!(
                            "WARNING: pull policy {policy:?} for image {image}: {e}"
                        ));
                    }
                    errors.push(e);
                }
            }
        }
        let last = errors.pop().unwrap_or_default();
        Err(Stop::Failure(if policies.len() > 1 {
            format!(
                "failed to get image {image:?} with pull policies [{}]: {last}",
                policies.join(", ")
            )
        } else {
            last
        }))
    }

    async fn image_present(&self, image: &str) -> Result<bool, String> {
        match self.docker.inspect_image(image).await {
            Ok(info) => {
                if let Some(id) = info.id {
                    self.log
                        .system(&format!("Using docker image {id} for {image}"));
                }
                Ok(true)
            }
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(format!(
                "cannot inspect image {image:?}: {}",
                engine_error_text(&e)
            )),
        }
    }

    /// Pull an image; an error is a reason to try the next policy.
    async fn pull(&self, image: &str, platform: Option<&str>) -> Result<(), String> {
        let reference = with_default_tag(image);
        self.log
            .system(&format!("Pulling docker image {reference} ..."));
        let docker = self.docker.clone().with_timeout(STREAM_TIMEOUT);
        let mut stream = docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(reference.clone()),
                platform: platform.unwrap_or_default().to_string(),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(format!("pulling {reference} failed: {err}"));
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "pulling {reference} failed: {}",
                        engine_error_text(&e)
                    ))
                }
            }
        }
        if self.image_present(&reference).await? {
            Ok(())
        } else {
            Err(format!(
                "pulling {reference} did not make it available on the engine"
            ))
        }
    }

    async fn start_services(
        &mut self,
        job_id: &str,
        deadline: Instant,
        cancel: &CancellationToken,
        lookup: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<(), Stop> {
        let network = format!("slipway-job-{job_id}");
        let labels = self.exec.labels(job_id, self.job, "network");
        let docker = self.docker.clone();
        let net_name = network.clone();
        if let Ok(mut n) = self.res.network.lock() {
            *n = Some(network.clone());
        }
        bounded(
            async move {
                docker
                    .create_network(NetworkCreateRequest {
                        name: net_name.clone(),
                        driver: Some("bridge".to_string()),
                        labels: Some(labels),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        format!(
                            "cannot create the job's network {net_name}: {}",
                            engine_error_text(&e)
                        )
                    })
            },
            deadline,
            cancel,
        )
        .await?;
        self.network = Some(network.clone());
        let mut started: Vec<(String, String)> = Vec::new();
        for (i, service) in self.job.services.iter().enumerate() {
            let name = expand_existing(&service.name, lookup);
            self.log.system(&format!("Starting service {name} ..."));
            self.ensure_image(&name, &service.pull_policy, None, deadline, cancel)
                .await?;
            let id = bounded(
                self.create_service(job_id, i, &name, service, &network, lookup),
                deadline,
                cancel,
            )
            .await?;
            started.push((name, id));
        }
        self.wait_for_services(&started, &network, deadline, cancel)
            .await
    }

    async fn create_service(
        &self,
        job_id: &str,
        index: usize,
        image: &str,
        service: &Service,
        network: &str,
        lookup: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<String, String> {
        let mut aliases = service_host_names(image);
        for a in &service.alias {
            if !aliases.contains(a) {
                aliases.push(a.clone());
            }
        }
        // Services get the job's variables (as GitLab Runner passes the job's public
        // variables) and their own, expanded against the job's.
        let mut vars = self.job.variables.clone();
        for v in &service.variables {
            let value = if v.expand {
                let known = vars.clone();
                expand_existing(&v.value, &|n| {
                    known
                        .iter()
                        .rev()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                        .or_else(|| lookup(n))
                })
            } else {
                v.value.clone()
            };
            vars.push((v.key.clone(), value));
        }
        let name = format!(
            "slipway-job-{job_id}-svc-{index}-{}",
            aliases
                .last()
                .map(|a| crate_name_safe(a))
                .unwrap_or_default()
        );
        let mut labels = self.exec.labels(job_id, self.job, "service");
        labels.insert("slipway.service".to_string(), image.to_string());
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            env: Some(env_list(&vars)),
            entrypoint: service.entrypoint.clone().map(entrypoint_override),
            cmd: service.command.clone(),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.to_string(),
                    EndpointSettings {
                        aliases: Some(aliases.clone()),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot create the container of service {image}: {}",
                    engine_error_text(&e)
                )
            })?;
        self.res.add_container(&created.id);
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| format!("cannot start service {image}: {}", engine_error_text(&e)))?;
        self.log.system(&format!(
            "Service {image} is reachable as {}",
            aliases.join(", ")
        ));
        Ok(created.id)
    }

    /// Like GitLab Runner, wait (30 s by default) for each service to accept connections
    /// on the ports its image exposes. The ports are probed from this machine at the
    /// container's address on the job network; where that address cannot be reached
    /// from here (rootless engines, remote engines) the wait is skipped. A service that
    /// is not running afterwards gets a warning with its output.
    async fn wait_for_services(
        &self,
        started: &[(String, String)],
        network: &str,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let wait_until = (Instant::now() + self.exec.service_wait).min(deadline);
        let mut announced = false;
        for (image, id) in started {
            let info = bounded(
                async {
                    self.docker
                        .inspect_container(id, None)
                        .await
                        .map_err(|e| engine_error_text(&e))
                },
                deadline,
                cancel,
            )
            .await?;
            let ports: Vec<u16> = info
                .config
                .as_ref()
                .and_then(|c| c.exposed_ports.clone())
                .unwrap_or_default()
                .iter()
                .filter(|p| !p.ends_with("/udp"))
                .filter_map(|p| p.split('/').next().and_then(|n| n.parse().ok()))
                .collect();
            let ip = info
                .network_settings
                .as_ref()
                .and_then(|s| s.networks.as_ref())
                .and_then(|n| n.get(network))
                .and_then(|e| e.ip_address.clone())
                .filter(|ip| !ip.is_empty());
            if let (Some(ip), false) = (ip, ports.is_empty()) {
                if !announced {
                    self.log.system(&format!(
                        "Waiting for services to be up and running (timeout {})...",
                        humantime(self.exec.service_wait)
                    ));
                    announced = true;
                }
                for port in ports {
                    let addr = format!("{ip}:{port}");
                    loop {
                        let probe = tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::net::TcpStream::connect(&addr),
                        );
                        let result = tokio::select! {
                            r = probe => r,
                            _ = cancel.cancelled() => return Err(Stop::Canceled),
                        };
                        match result {
                            Ok(Ok(_)) => break,
                            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                if Instant::now() >= wait_until {
                                    self.log.system(&format!(
                                        "WARNING: service {image} is not listening on port {port} \
                                         after {}; starting the job anyway",
                                        humantime(self.exec.service_wait)
                                    ));
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            // Unreachable from here: nothing to wait for.
                            _ => break,
                        }
                    }
                }
            }
        }
        // A service that already exited will not serve the job: say so, with its output.
        for (image, id) in started {
            let running = bounded(
                async {
                    self.docker
                        .inspect_container(id, None)
                        .await
                        .map_err(|e| engine_error_text(&e))
                },
                deadline,
                cancel,
            )
            .await?
            .state
            .and_then(|s| s.running)
            .unwrap_or(false);
            if !running {
                self.log.system(&format!(
                    "WARNING: service {image} probably didn't start properly: it is not running. \
                     Its output:"
                ));
                let mut logs = self.docker.logs(
                    id,
                    Some(LogsOptions {
                        stdout: true,
                        stderr: true,
                        ..Default::default()
                    }),
                );
                let drained = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some(Ok(chunk)) = logs.next().await {
                        self.log.write(&chunk.into_bytes());
                    }
                })
                .await;
                let _ = drained;
                self.log.system("");
            }
        }
        Ok(())
    }

    /// Run one script in a new container of the job's image and stream its output.
    async fn run_phase(&self, job_id: &str, phase: Phase<'_>) -> Result<Ended, Stop> {
        let job = self.job;
        let workdir = self.workdir.to_string_lossy().to_string();
        let mut vars = job.variables.clone();
        vars.extend(phase.extra_env.iter().cloned());
        let entrypoint = self
            .image_spec
            .and_then(|i| i.entrypoint.clone())
            .map(entrypoint_override);
        let network_mode = self.network.clone();
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            env: Some(env_list(&vars)),
            entrypoint,
            cmd: Some(vec![
                "sh".to_string(),
                "-c".to_string(),
                DETECT_SHELL.to_string(),
                "sh".to_string(),
                format!("{SCRIPTS_MOUNT}/{}", phase.script_file),
            ]),
            working_dir: Some(workdir.clone()),
            user: self.image_spec.and_then(|i| i.user.clone()),
            labels: Some(self.exec.labels(job_id, job, phase.role)),
            host_config: Some(HostConfig {
                // Mounts rather than binds: a path with `:` or `,` stays one path.
                mounts: Some(vec![
                    bind_mount(&workdir, &workdir, false),
                    bind_mount(&self.res.scripts_dir.to_string_lossy(), SCRIPTS_MOUNT, true),
                ]),
                network_mode,
                ..Default::default()
            }),
            ..Default::default()
        };
        let deadline = Instant::now() + phase.timeout;
        let name = format!("slipway-job-{job_id}-{}", phase.role.replace('_', "-"));
        let docker = self.docker.clone();
        let created = bounded(
            async {
                docker
                    .create_container(
                        Some(CreateContainerOptions {
                            name: Some(name),
                            ..Default::default()
                        }),
                        body,
                    )
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot create the job container from image {}: {}",
                            self.image,
                            engine_error_text(&e)
                        )
                    })
            },
            deadline,
            phase.cancel,
        )
        .await?;
        let id = created.id;
        self.res.add_container(&id);
        // Attach before starting, so the output is read from its first byte, as it comes.
        // (Podman's `logs --follow` loses lines under load; attach does not.)
        let streaming = self.docker.clone().with_timeout(STREAM_TIMEOUT);
        let attached = bounded(
            async {
                streaming
                    .attach_container(
                        &id,
                        Some(AttachContainerOptions {
                            stream: true,
                            stdout: true,
                            stderr: true,
                            ..Default::default()
                        }),
                    )
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot attach to the job container: {}",
                            engine_error_text(&e)
                        )
                    })
            },
            deadline,
            phase.cancel,
        )
        .await?;
        let log = self.log.clone();
        let reader = tokio::spawn(async move {
            let AttachContainerResults { mut output, input } = attached;
            drop(input);
            while let Some(item) = output.next().await {
                match item {
                    Ok(chunk) => log.write(&chunk.into_bytes()),
                    Err(e) => return Err(engine_error_text(&e)),
                }
            }
            Ok(())
        });
        bounded(
            async {
                self.docker.start_container(&id, None).await.map_err(|e| {
                    format!("cannot start the job container: {}", engine_error_text(&e))
                })
            },
            deadline,
            phase.cancel,
        )
        .await?;
        let waiting = self.docker.clone().with_timeout(STREAM_TIMEOUT);
        let wait_id = id.clone();
        let wait = async move {
            let mut stream = waiting.wait_container(
                &wait_id,
                Some(WaitContainerOptions {
                    condition: "not-running".to_string(),
                }),
            );
            match stream.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(engine_error_text(&e)),
                None => Err("the engine ended the wait without an exit code".to_string()),
            }
        };
        let ended = tokio::select! {
            r = wait => match r {
                Ok(code) => Ok(Ended::Exited(i32::try_from(code).unwrap_or(i32::MAX))),
                Err(e) => Err(Stop::Failure(format!("waiting for the job container failed: {e}"))),
            },
            _ = tokio::time::sleep_until(deadline) => Ok(Ended::TimedOut),
            _ = phase.cancel.cancelled() => Ok(Ended::Canceled),
        };
        if !matches!(ended, Ok(Ended::Exited(_))) {
            let _ = tokio::time::timeout(
                API_TIMEOUT,
                self.docker.kill_container(
                    &id,
                    Some(KillContainerOptions {
                        signal: "SIGKILL".to_string(),
                    }),
                ),
            )
            .await;
        }
        match tokio::time::timeout(DRAIN_LIMIT, reader).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => self
                .log
                .system(&format!("WARNING: reading the job's output failed: {e}")),
            Ok(Err(_)) => {}
            Err(_) => self.log.system(&format!(
                "WARNING: the job's output was still streaming {} after the container stopped; \
                 stopped reading",
                humantime(DRAIN_LIMIT)
            )),
        }
        ended
    }
}

fn bind_mount(source: &str, target: &str, read_only: bool) -> Mount {
    Mount {
        source: Some(source.to_string()),
        target: Some(target.to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The `entrypoint:` override; an empty one (`[""]` or `[]`) clears the image's.
fn entrypoint_override(entrypoint: Vec<String>) -> Vec<String> {
    if entrypoint.iter().all(|e| e.is_empty()) {
        vec![String::new()]
    } else {
        entrypoint
    }
}

/// A name fragment containers can carry.
fn crate_name_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl Executor for ContainerExecutor {
    fn run<'a>(
        &'a self,
        job: &'a JobSpec,
        log: Arc<LogSink>,
        cancel: CancellationToken,
    ) -> ExecFuture<'a> {
        Box::pin(self.run_job(job, log, cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_gitlab_rules() {
        assert_eq!(service_host_names("postgres:15"), vec!["postgres"]);
        assert_eq!(service_host_names("postgres"), vec!["postgres"]);
        assert_eq!(
            service_host_names("tutum/wordpress:latest"),
            vec!["tutum__wordpress", "tutum-wordpress"]
        );
        assert_eq!(
            service_host_names("registry.gitlab-wp.com:4999/tutum/wordpress"),
            vec![
                "registry.gitlab-wp.com__tutum__wordpress",
                "registry.gitlab-wp.com-tutum-wordpress"
            ]
        );
        assert_eq!(
            service_host_names("localhost:5000/db@sha256:abcd"),
            vec!["localhost__db", "localhost-db"]
        );
        assert_eq!(
            service_host_names("library/postgres:15-alpine"),
            vec!["library__postgres", "library-postgres"]
        );
    }

    #[test]
    fn default_tag_is_added_only_when_missing() {
        assert_eq!(with_default_tag("postgres"), "postgres:latest");
        assert_eq!(with_default_tag("postgres:15"), "postgres:15");
        assert_eq!(
            with_default_tag("localhost:5000/x/y"),
            "localhost:5000/x/y:latest"
        );
        assert_eq!(with_default_tag("x@sha256:00"), "x@sha256:00");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            EngineAddress::parse("unix:///run/x.sock"),
            EngineAddress::Unix(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            EngineAddress::parse("/run/x.sock"),
            EngineAddress::Unix(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            EngineAddress::parse("tcp://127.0.0.1:2375"),
            EngineAddress::Tcp("tcp://127.0.0.1:2375".into())
        );
        assert!(matches!(
            EngineAddress::parse("ssh://me@host"),
            EngineAddress::Unsupported(_)
        ));
        assert_eq!(
            EngineAddress::parse("unix:///run/x.sock").to_string(),
            "unix:///run/x.sock"
        );
    }

    #[test]
    fn later_variables_win() {
        let vars = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "2".to_string()),
            ("A".to_string(), "3".to_string()),
        ];
        assert_eq!(env_list(&vars), vec!["A=3", "B=2"]);
    }

    #[test]
    fn script_echoes_and_quotes() {
        let s = render_script(
            &["echo 'it''s'".to_string(), "a\nb".to_string()],
            Path::new("/w d"),
        );
        assert!(s.contains("cd '/w d'\n"));
        assert!(s.contains("printf '%s\\n' '$ echo '\\''it'\\'''\\''s'\\'''\n"));
        assert!(s.contains("'$ a # collapsed multi-line command'"));
    }

    #[tokio::test]
    async fn unreachable_engine_names_the_address_and_the_shell_executor() {
        let exec = ContainerExecutor::new(EngineAddress::parse("unix:///nonexistent/slipway.sock"));
        let err = exec.ping().await.expect_err("no engine");
        assert!(err.contains("unix:///nonexistent/slipway.sock"), "{err}");
        assert!(err.contains("--executor shell"), "{err}");
    }
}
