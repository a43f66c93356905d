//! Slipway's state store: everything the server keeps, in SQLite (a file in the data
//! directory, the default) or PostgreSQL (several servers on one database).
//!
//! One [`Store`] handle serves every table. Its operations are grouped by domain:
//!
//! - [`projects`]: projects and polling state; [`variables`]: CI/CD variables, secrets
//!   (sealed at rest) and webhook secrets; [`triggers`]: trigger tokens and schedules;
//! - [`pipelines`]: pipelines and jobs, play / retry / cancel, auto-cancel queries;
//!   [`queue`]: claiming jobs under leases, heartbeats, finishing, restart recovery;
//!   [`logs`]: durable, group-committed job logs; [`artifacts`]: the artifacts index;
//! - [`users`]: users, sessions, API tokens, groups; [`access`]: roles and the
//!   permission check;
//! - [`deployments`]: environments, protection rules, deployments and approvals,
//!   resource groups, notification webhooks, the artifact pins of recent deployments;
//! - [`audit`]: the hash-chained audit log, written in the same transaction as the
//!   change it records;
//! - [`events`]: change notifications for waiters (queue, live logs, pages);
//!   [`listings`]: the pages' lists, a fixed number of queries however long.
//!
//! Everything an operation returns `Ok` for is committed. See ARCHITECTURE.md
//! ("slipway-db") for the schema, the queue and the audit chain.

pub mod access;
pub mod artifacts;
pub mod audit;
pub mod crypto;
pub mod deployments;
pub mod error;
pub mod events;
pub mod listings;
pub mod logs;
pub mod pipelines;
pub mod projects;
pub mod queue;
mod row;
pub mod store;
pub mod triggers;
pub mod types;
pub mod users;
pub mod variables;

pub use access::{permits, Action, Member, Role};
pub use artifacts::{Artifact, NewArtifact};
pub use audit::{Actor, AuditEntry, AuditProblem, AuditProblemKind, AuditReport};
pub use crypto::SecretKey;
pub use deployments::{
    Approval, Decided, Decision, Deployment, DeploymentStatus, DeploymentVariable,
    DeploymentWebhook, EngineSync, Environment, NamedGroup, NamedUser, NewDeployment, ProcessMode,
    ProtectionInput, ProtectionRule, ResourceGroup, WebhookTarget,
};
pub use error::{Error, Result};
pub use events::Event;
pub use listings::{PipelineRow, StageStatus};
pub use logs::LogSlice;
pub use pipelines::{
    AutoCancelCandidate, Job, NewJob, NewPipeline, Pipeline, PipelineQuery, PipelineSource,
};
pub use projects::{NewProject, Project, ProjectUpdate};
pub use queue::{ClaimFilter, JobOutcome, Lease, LeaseState, Recovery, RecoveryReport};
pub use slipway_core::schedule::{JobStatus, PipelineStatus};
pub use store::{Dialect, Store, StoreOptions};
pub use triggers::{KeyValue, NewSchedule, Schedule, ScheduleUpdate, TriggerToken};
pub use types::*;
pub use users::{ApiToken, FirstAdmin, Group, Session, TokenScope, User};
pub use variables::{JobVariable, Variable, VariableInput, Webhook, WebhookProvider};
