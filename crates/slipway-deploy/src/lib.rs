//! The deployment engine: it runs the releases of an environment on a deployment target,
//! serves the environment's address through Slipway's own HTTP router, checks health,
//! drives the strategies of `slipway_core::deploy::machine` (recreate, blue-green,
//! rolling, canary), rolls back, persists its intent before acting so a `kill -9` leaves a
//! true record, and sends notifications.
//!
//! Map: [`engine`] (the per-environment actors and the public API), [`target`] (the
//! `DeploymentTarget` trait) and [`process`] (supervised local processes), [`router`]
//! (the reverse proxy with atomic route switches), [`metrics`] (per-release counters and
//! the `MetricProvider` trait), [`store`] (the intent record and its JSON-file store),
//! [`notify`] (Slack and signed JSON webhooks), [`http`] (a small plain-HTTP client).

pub mod engine;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod process;
pub mod router;
pub mod store;
pub mod target;

pub use engine::{
    DeployRequest, DeploymentHandle, DeploymentReport, Engine, EngineError, EngineEvent,
    EngineOptions, EnvironmentSpec, EnvironmentStatus, MemoryCatalog, Release, ReleaseCatalog,
    ReleaseSettings,
};
pub use process::ProcessTarget;
pub use store::{IntentStore, JsonFileStore};
pub use target::DeploymentTarget;
