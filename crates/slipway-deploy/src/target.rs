//! Deployment targets: where a release's instances run. The engine asks a target to start
//! and stop numbered instances of a release and to tell what is running; it never spawns
//! anything itself. `process` (supervised local processes) is the embedded target;
//! containers, ECS and scripts will implement the same trait.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::broadcast;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One release of an environment as a target runs it: the artifact, the command and the
/// deployment's own variables.
#[derive(Clone)]
pub struct ReleaseSpec {
    pub environment: String,
    /// Unique per deployment (the engine uses the deploying deployment's id), so an old
    /// and a new release of the same artifact never share instance names.
    pub release: String,
    /// The artifact, extracted.
    pub artifact_dir: PathBuf,
    /// Shell command; `$PORT` is set for each instance.
    pub command: String,
    /// The deployment's variables, passed as environment variables (values may be
    /// secrets: never logged).
    pub variables: Vec<(String, String)>,
    /// Between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

impl fmt::Debug for ReleaseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseSpec")
            .field("environment", &self.environment)
            .field("release", &self.release)
            .field("artifact_dir", &self.artifact_dir)
            .field("command", &self.command)
            .field(
                "variables",
                &self.variables.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// An instance that was started, and where it listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartedInstance {
    pub index: u32,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Running,
    /// Crashed; waiting for its backoff before the next start.
    Restarting,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub index: u32,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    pub state: InstanceState,
    pub restarts: u32,
    pub last_exit: Option<i32>,
}

/// Something a target saw happen by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetEvent {
    /// An instance's process ended without being asked to (it will be restarted).
    Exited {
        environment: String,
        release: String,
        index: u32,
        code: Option<i32>,
    },
}

/// What a previous run of the engine left behind and the target cleaned up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub environment: String,
    pub release: String,
    pub index: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError(pub String);

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TargetError {}

pub trait DeploymentTarget: Send + Sync {
    /// Start these instances of a release; returns once each is launched (not ready:
    /// readiness is for health checks to tell).
    fn start<'a>(
        &'a self,
        release: &'a ReleaseSpec,
        indices: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<StartedInstance>, TargetError>>;

    /// Stop these instances (gracefully, then forcibly); returns once they are gone.
    fn stop<'a>(
        &'a self,
        environment: &'a str,
        release: &'a str,
        indices: &'a [u32],
    ) -> BoxFuture<'a, ()>;

    /// What runs for a release now.
    fn status(&self, environment: &str, release: &str) -> Vec<InstanceStatus>;

    /// Crashes and other events the target notices by itself.
    fn subscribe(&self) -> broadcast::Receiver<TargetEvent>;

    /// After the engine restarted: stop whatever an earlier engine process left running,
    /// so nothing serves a stale version unsupervised.
    fn reclaim(&self) -> BoxFuture<'_, Vec<Reclaimed>>;
}
