//! Environments and deployments: each project's environments (with the router address
//! and the deployment engine's intent record the server keeps for them), protection
//! rules (server settings only: required approvals from named users or groups,
//! self-approval, allowed branches and tags, a wait timer), deployments with their
//! approvals, GitLab's resource groups (one job at a time, in the group's process
//! mode), the webhooks deployment notifications go to, and the pins that keep the
//! artifacts of recent deployments from expiring.
//!
//! The decisions (who may approve, whether a ref may deploy, what a promotion needs)
//! belong to the server; this module keeps the facts and makes each change atomic:
//! an approval and the status it completes commit together, a resource group is given
//! to one job under a lock on the group's row, and every approval, rejection, deployment
//! and rule change is audited in the transaction that makes it.

use crate::audit::{append, Actor};
use crate::error::{conflict_on_unique, Error, Result};
use crate::events::Event;
use crate::pipelines::{job_from, job_in, transition, Job};
use crate::queue::Lease;
use crate::row::{flag, to_json, RowExt};
use crate::store::{Dialect, Store, WriteTx};
use crate::types::{
    DeploymentId, DeploymentWebhookId, EnvironmentId, GroupId, JobId, PipelineId, ProjectId,
    ProtectionRuleId, SecretString, Timestamp, UserId,
};
use serde::Serialize;
use serde_json::{json, Value};
use slipway_core::schedule::JobStatus;
use std::collections::BTreeSet;

/// One environment of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Environment {
    pub id: EnvironmentId,
    pub project_id: ProjectId,
    pub name: String,
    /// GitLab's tiers: production, staging, testing, development, other.
    pub tier: String,
    pub url: Option<String>,
    /// The router's address, once chosen.
    pub listen: Option<String>,
    /// The deployment engine's name for it (`project/environment`).
    pub engine_name: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn environment_from(r: &sqlx::any::AnyRow) -> Result<Environment> {
    Ok(Environment {
        id: EnvironmentId(r.i64("id")?),
        project_id: ProjectId(r.i64("project_id")?),
        name: r.text("name")?,
        tier: r.text("tier")?,
        url: r.opt_text("url")?,
        listen: r.opt_text("listen")?,
        engine_name: r.text("engine_name")?,
        created_at: r.ts("created_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

/// A named approver of a protection rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedUser {
    pub id: UserId,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedGroup {
    pub id: GroupId,
    pub name: String,
}

/// How deployments to an environment are protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectionRule {
    pub id: ProtectionRuleId,
    pub project_id: ProjectId,
    pub environment: String,
    /// Approvals needed before a deployment proceeds (0: none).
    pub required_approvals: u32,
    /// Whether whoever triggered the deployment may approve it.
    pub allow_self_approval: bool,
    /// Patterns of the branches that may deploy here; with `allowed_tags` both empty, any
    /// ref may.
    pub allowed_branches: Vec<String>,
    pub allowed_tags: Vec<String>,
    /// Time between a deployment's creation and its start.
    pub wait_timer_ms: i64,
    /// Who may approve: these users and the members of these groups (neither: the
    /// project's maintainers).
    pub approver_users: Vec<NamedUser>,
    pub approver_groups: Vec<NamedGroup>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A protection rule to create or replace.
#[derive(Debug, Clone, Default)]
pub struct ProtectionInput {
    pub required_approvals: u32,
    pub allow_self_approval: bool,
    pub allowed_branches: Vec<String>,
    pub allowed_tags: Vec<String>,
    pub wait_timer_ms: i64,
    /// Usernames.
    pub approver_users: Vec<String>,
    /// Group names.
    pub approver_groups: Vec<String>,
}

/// Where a deployment is, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Recorded; its job has not passed the environment's gate yet.
    Created,
    /// Waiting for the wait timer or the resource group.
    Waiting,
    AwaitingApproval,
    Running,
    /// All traffic is on its release (it may still keep the old one warm).
    Success,
    Failed,
    Canceled,
    /// Its traffic went back to the release before it.
    RolledBack,
    /// Its job did not run.
    Skipped,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Created => "created",
            DeploymentStatus::Waiting => "waiting",
            DeploymentStatus::AwaitingApproval => "awaiting_approval",
            DeploymentStatus::Running => "running",
            DeploymentStatus::Success => "success",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Canceled => "canceled",
            DeploymentStatus::RolledBack => "rolled_back",
            DeploymentStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<DeploymentStatus> {
        Some(match s {
            "created" => DeploymentStatus::Created,
            "waiting" => DeploymentStatus::Waiting,
            "awaiting_approval" => DeploymentStatus::AwaitingApproval,
            "running" => DeploymentStatus::Running,
            "success" => DeploymentStatus::Success,
            "failed" => DeploymentStatus::Failed,
            "canceled" => DeploymentStatus::Canceled,
            "rolled_back" => DeploymentStatus::RolledBack,
            "skipped" => DeploymentStatus::Skipped,
            _ => return None,
        })
    }

    /// Nothing more will happen to it (a successful deployment may still be rolled back
    /// by the engine while it keeps the old release warm).
    pub fn is_finished(self) -> bool {
        !matches!(
            self,
            DeploymentStatus::Created
                | DeploymentStatus::Waiting
                | DeploymentStatus::AwaitingApproval
                | DeploymentStatus::Running
        )
    }
}

/// One deployment of a release to an environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    pub id: DeploymentId,
    pub project_id: ProjectId,
    pub environment_id: EnvironmentId,
    /// The environment's name.
    pub environment: String,
    pub pipeline_id: Option<PipelineId>,
    pub job_id: Option<JobId>,
    pub ref_name: String,
    pub tag: bool,
    pub sha: String,
    /// The tag, or the commit's short SHA.
    pub version: String,
    /// `sha256:...` of the release's manifest.
    pub digest: Option<String>,
    /// The artifact store ids the release is made of, in extraction order.
    pub release_artifacts: Vec<String>,
    /// How the engine runs it; `None` when the job's script deploys.
    pub settings: Option<Value>,
    pub strategy: Option<String>,
    pub triggered_by: Option<UserId>,
    pub triggered_by_name: String,
    pub status: DeploymentStatus,
    /// The engine's phase (`{"phase": "health_checking"}`).
    pub phase: Option<Value>,
    pub reason: Option<String>,
    /// The engine's release id serving it.
    pub release_id: Option<String>,
    /// This deployment brings back that one's release.
    pub rollback_of: Option<DeploymentId>,
    /// Whether variables are recorded (and whether any is a secret).
    pub has_variables: bool,
    pub secret_variables: bool,
    pub switch_us: Option<i64>,
    pub wait_until: Option<Timestamp>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

const DEPLOYMENT_COLUMNS: &str = "d.*, e.name AS environment_name";

fn deployment_from(r: &sqlx::any::AnyRow) -> Result<Deployment> {
    let status = r.text("status")?;
    let phase: Option<String> = r.opt_text("phase")?;
    let settings: Option<String> = r.opt_text("settings")?;
    let sealed: Option<Vec<u8>> = r.opt_blob("sealed_variables")?;
    let plain: Option<String> = r.opt_text("variables")?;
    Ok(Deployment {
        id: DeploymentId(r.i64("id")?),
        project_id: ProjectId(r.i64("project_id")?),
        environment_id: EnvironmentId(r.i64("environment_id")?),
        environment: r.text("environment_name")?,
        pipeline_id: r.opt_i64("pipeline_id")?.map(PipelineId),
        job_id: r.opt_i64("job_id")?.map(JobId),
        ref_name: r.text("ref_name")?,
        tag: r.flag("tag")?,
        sha: r.text("sha")?,
        version: r.text("version")?,
        digest: r.opt_text("digest")?,
        release_artifacts: r.json("release_artifacts")?,
        settings: settings
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("deployment settings: {e}")))?,
        strategy: r.opt_text("strategy")?,
        triggered_by: r.opt_i64("triggered_by")?.map(UserId),
        triggered_by_name: r.text("triggered_by_name")?,
        status: DeploymentStatus::parse(&status)
            .ok_or_else(|| Error::Corrupt(format!("deployment status {status:?}")))?,
        phase: phase
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| Error::Corrupt(format!("deployment phase: {e}")))?,
        reason: r.opt_text("reason")?,
        release_id: r.opt_text("release_id")?,
        rollback_of: r.opt_i64("rollback_of")?.map(DeploymentId),
        has_variables: sealed.is_some() || plain.is_some(),
        secret_variables: sealed.is_some(),
        switch_us: r.opt_i64("switch_us")?,
        wait_until: r.opt_ts("wait_until")?,
        created_at: r.ts("created_at")?,
        started_at: r.opt_ts("started_at")?,
        finished_at: r.opt_ts("finished_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

/// A variable recorded with a deployment, so a rollback runs with it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentVariable {
    pub key: String,
    pub value: SecretString,
    /// A secret or masked value: the whole set is then sealed at rest.
    pub secret: bool,
}

/// A deployment to record.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub environment: EnvironmentId,
    pub pipeline: Option<PipelineId>,
    pub job: Option<JobId>,
    pub ref_name: String,
    pub tag: bool,
    pub sha: String,
    pub version: String,
    pub digest: Option<String>,
    pub release_artifacts: Vec<String>,
    pub settings: Option<Value>,
    pub strategy: Option<String>,
    pub triggered_by: Option<UserId>,
    pub triggered_by_name: String,
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub rollback_of: Option<DeploymentId>,
    pub wait_until: Option<Timestamp>,
    pub variables: Option<Vec<DeploymentVariable>>,
}

/// An approval or a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approval {
    pub deployment_id: DeploymentId,
    pub user_id: Option<UserId>,
    pub username: String,
    pub decision: Decision,
    pub comment: Option<String>,
    pub created_at: Timestamp,
}

fn approval_from(r: &sqlx::any::AnyRow) -> Result<Approval> {
    let d = r.text("decision")?;
    Ok(Approval {
        deployment_id: DeploymentId(r.i64("deployment_id")?),
        user_id: r.opt_i64("user_id")?.map(UserId),
        username: r.text("username")?,
        decision: match d.as_str() {
            "approved" => Decision::Approved,
            "rejected" => Decision::Rejected,
            _ => return Err(Error::Corrupt(format!("approval decision {d:?}"))),
        },
        comment: r.opt_text("comment")?,
        created_at: r.ts("created_at")?,
    })
}

/// What an approval or rejection did.
#[derive(Debug, Clone)]
pub struct Decided {
    pub deployment: Deployment,
    pub approvals: Vec<Approval>,
    /// The approval completed the required count (or the rejection ended it): the
    /// deployment's status changed.
    pub settled: bool,
}

/// GitLab's resource group process modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessMode {
    /// Whichever job asks first.
    Unordered,
    /// The job of the oldest pipeline among those waiting or still to come.
    OldestFirst,
    /// The job of the newest pipeline among those waiting or still to come.
    NewestFirst,
}

impl ProcessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessMode::Unordered => "unordered",
            ProcessMode::OldestFirst => "oldest_first",
            ProcessMode::NewestFirst => "newest_first",
        }
    }

    pub fn parse(s: &str) -> Option<ProcessMode> {
        Some(match s {
            "unordered" => ProcessMode::Unordered,
            "oldest_first" => ProcessMode::OldestFirst,
            "newest_first" => ProcessMode::NewestFirst,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceGroup {
    pub project_id: ProjectId,
    pub name: String,
    pub process_mode: ProcessMode,
}

/// A webhook deployment notifications are posted to (its URL and secret never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentWebhook {
    pub id: DeploymentWebhookId,
    pub project_id: ProjectId,
    /// `None`: every environment of the project.
    pub environment: Option<String>,
    /// `slack` or `json`.
    pub kind: String,
    /// `scheme://host:port` of the URL.
    pub url_origin: String,
    pub signed: bool,
    pub created_at: Timestamp,
}

fn webhook_from(r: &sqlx::any::AnyRow) -> Result<DeploymentWebhook> {
    Ok(DeploymentWebhook {
        id: DeploymentWebhookId(r.i64("id")?),
        project_id: ProjectId(r.i64("project_id")?),
        environment: r.opt_text("environment")?,
        kind: r.text("kind")?,
        url_origin: r.text("url_origin")?,
        signed: r.opt_blob("sealed_secret")?.is_some(),
        created_at: r.ts("created_at")?,
    })
}

/// A webhook with its clear URL and secret, for delivery.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub kind: String,
    pub url: SecretString,
    pub secret: Option<SecretString>,
}

fn variables_context(id: DeploymentId) -> String {
    format!("deployment:{id}:variables")
}

fn webhook_url_context(project: ProjectId, id: DeploymentWebhookId) -> String {
    format!("deployment_webhook:{project}:{id}:url")
}

fn webhook_secret_context(project: ProjectId, id: DeploymentWebhookId) -> String {
    format!("deployment_webhook:{project}:{id}:secret")
}

/// `scheme://host[:port]` of a URL (what may be shown of a webhook).
pub fn url_origin(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            // Credentials in the authority are never shown.
            let host = host.rsplit('@').next().unwrap_or(host);
            format!("{}://{host}", &url[..i])
        }
        None => "(invalid URL)".into(),
    }
}

fn check_patterns(field: &'static str, patterns: &[String]) -> Result<()> {
    for p in patterns {
        if p.trim().is_empty() || p.len() > 255 {
            return Err(Error::invalid(
                field,
                "patterns must be 1 to 255 characters",
            ));
        }
    }
    Ok(())
}

/// The locking read of a row inside a write transaction (PostgreSQL's `FOR UPDATE`;
/// SQLite's single writer already serialises).
fn for_update(tx: &WriteTx, sql: &str) -> String {
    match tx.dialect() {
        Dialect::Postgres => format!("{sql} FOR UPDATE"),
        Dialect::Sqlite => sql.to_string(),
    }
}

async fn deployment_in(tx: &mut WriteTx, id: DeploymentId, lock: bool) -> Result<Deployment> {
    let base = format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN environments e ON e.id = d.environment_id WHERE d.id = $1"
    );
    // PostgreSQL refuses FOR UPDATE on the nullable side of a join; lock the row alone.
    if lock && tx.dialect() == Dialect::Postgres {
        sqlx::query("SELECT id FROM deployments WHERE id = $1 FOR UPDATE")
            .bind(id.0)
            .fetch_optional(tx.conn())
            .await?;
    }
    let r = sqlx::query(&base)
        .bind(id.0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("deployment", id))?;
    deployment_from(&r)
}

/// Sets a deployment's status inside `tx` (with its times) and audits its end.
async fn set_status_in(
    tx: &mut WriteTx,
    d: &Deployment,
    to: DeploymentStatus,
    reason: Option<&str>,
    actor: &Actor,
) -> Result<()> {
    let now = tx.now();
    sqlx::query(
        "UPDATE deployments SET status = $1, reason = COALESCE($2, reason), updated_at = $3, \
         started_at = CASE WHEN $1 = 'running' AND started_at IS NULL THEN $3 ELSE started_at END, \
         finished_at = CASE WHEN $1 IN ('success', 'failed', 'canceled', 'rolled_back', 'skipped') \
           AND finished_at IS NULL THEN $3 ELSE finished_at END \
         WHERE id = $4",
    )
    .bind(to.as_str())
    .bind(reason)
    .bind(now.0)
    .bind(d.id.0)
    .execute(tx.conn())
    .await?;
    if to.is_finished() && to != d.status {
        append(
            tx,
            actor,
            if d.rollback_of.is_some() {
                "deployment.rollback_finish"
            } else {
                "deployment.finish"
            },
            "deployment",
            &d.id.to_string(),
            json!({"environment": d.environment, "project": d.project_id.0,
                   "status": to.as_str(), "reason": reason, "digest": d.digest}),
        )
        .await?;
    }
    tx.emit(Event::DeploymentChanged {
        deployment: d.id,
        project: d.project_id,
    });
    Ok(())
}

/// A status update for a deployment the engine runs, from its intent record.
#[derive(Debug, Clone)]
pub struct EngineSync {
    pub deployment: DeploymentId,
    pub status: DeploymentStatus,
    pub phase: Value,
    pub reason: Option<String>,
    pub release_id: String,
    pub switch_us: Option<i64>,
}

impl Store {
    // --- environments --------------------------------------------------------------

    /// The environment `name` of `project`, created on first use. `tier` and `url`
    /// (from the job's `environment:` or `.slipway`) replace the stored ones when given.
    pub async fn ensure_environment(
        &self,
        project: ProjectId,
        name: &str,
        tier: &str,
        url: Option<&str>,
        engine_name: &str,
    ) -> Result<Environment> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::invalid(
                "environment name",
                "must be 1 to 255 characters",
            ));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO environments (project_id, name, tier, url, engine_name, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (project_id, name) DO UPDATE SET \
             tier = excluded.tier, url = COALESCE(excluded.url, environments.url), updated_at = excluded.updated_at \
             RETURNING *",
        )
        .bind(project.0)
        .bind(name)
        .bind(tier)
        .bind(url)
        .bind(engine_name)
        .bind(now.0)
        .fetch_one(tx.conn())
        .await;
        let r = conflict_on_unique(r, || {
            format!("the engine name {engine_name} is taken by another environment")
        })?;
        let env = environment_from(&r)?;
        tx.commit().await?;
        Ok(env)
    }

    pub async fn environment(&self, id: EnvironmentId) -> Result<Environment> {
        let r = sqlx::query("SELECT * FROM environments WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("environment", id))?;
        environment_from(&r)
    }

    pub async fn environment_by_name(
        &self,
        project: ProjectId,
        name: &str,
    ) -> Result<Option<Environment>> {
        let r = sqlx::query("SELECT * FROM environments WHERE project_id = $1 AND name = $2")
            .bind(project.0)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        r.as_ref().map(environment_from).transpose()
    }

    pub async fn environment_by_engine_name(&self, engine: &str) -> Result<Option<Environment>> {
        let r = sqlx::query("SELECT * FROM environments WHERE engine_name = $1")
            .bind(engine)
            .fetch_optional(self.pool())
            .await?;
        r.as_ref().map(environment_from).transpose()
    }

    /// The project's environments, by name.
    pub async fn environments(&self, project: ProjectId) -> Result<Vec<Environment>> {
        let rows = sqlx::query("SELECT * FROM environments WHERE project_id = $1 ORDER BY name")
            .bind(project.0)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(environment_from).collect()
    }

    /// Every environment of every project.
    pub async fn all_environments(&self) -> Result<Vec<Environment>> {
        let rows = sqlx::query("SELECT * FROM environments ORDER BY project_id, name")
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(environment_from).collect()
    }

    /// Fixes the router's address (once it is bound).
    pub async fn set_environment_listen(&self, id: EnvironmentId, listen: &str) -> Result<()> {
        let mut tx = self.write().await?;
        let now = tx.now();
        sqlx::query("UPDATE environments SET listen = $1, updated_at = $2 WHERE id = $3")
            .bind(listen)
            .bind(now.0)
            .bind(id.0)
            .execute(tx.conn())
            .await?;
        tx.commit().await
    }

    /// The engine's intent records: (engine name, JSON).
    pub async fn engine_states(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT engine_name, engine_state FROM environments WHERE engine_state IS NOT NULL ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.text("engine_name")?, r.text("engine_state")?)))
            .collect()
    }

    /// Saves the engine's intent record for `engine_name` and, in the same transaction,
    /// what it says of the deployments it runs (status, phase, reason). A deployment
    /// that ends is audited.
    pub async fn save_engine_state(
        &self,
        engine_name: &str,
        state: &str,
        syncs: &[EngineSync],
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let n = sqlx::query(
            "UPDATE environments SET engine_state = $1, updated_at = $2 WHERE engine_name = $3",
        )
        .bind(state)
        .bind(now.0)
        .bind(engine_name)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("environment", engine_name));
        }
        for s in syncs {
            let d = match deployment_in(&mut tx, s.deployment, true).await {
                Ok(d) => d,
                // A deployment the engine knows and the database no longer (deleted with
                // its project): nothing to mirror.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let phase = to_json(&s.phase)?;
            let same = d.status == s.status
                && d.phase.as_ref() == Some(&s.phase)
                && d.reason == s.reason
                && d.release_id.as_deref() == Some(s.release_id.as_str())
                && d.switch_us == s.switch_us;
            if same {
                continue;
            }
            sqlx::query(
                "UPDATE deployments SET phase = $1, release_id = $2, switch_us = COALESCE($3, switch_us), \
                 reason = $4, updated_at = $5 WHERE id = $6",
            )
            .bind(&phase)
            .bind(&s.release_id)
            .bind(s.switch_us)
            .bind(s.reason.as_deref())
            .bind(now.0)
            .bind(d.id.0)
            .execute(tx.conn())
            .await?;
            if d.status != s.status {
                set_status_in(
                    &mut tx,
                    &d,
                    s.status,
                    s.reason.as_deref(),
                    &Actor::system("deployer"),
                )
                .await?;
            } else {
                tx.emit(Event::DeploymentChanged {
                    deployment: d.id,
                    project: d.project_id,
                });
            }
        }
        tx.commit().await
    }

    // --- protection rules ---------------------------------------------------------

    /// Creates or replaces the protection of environment `environment`. Audited as
    /// `protection.set` with the whole rule.
    pub async fn set_protection_rule(
        &self,
        actor: &Actor,
        project: ProjectId,
        environment: &str,
        input: &ProtectionInput,
    ) -> Result<ProtectionRule> {
        if environment.is_empty() || environment.len() > 255 {
            return Err(Error::invalid("environment", "must be 1 to 255 characters"));
        }
        if input.required_approvals > 20 {
            return Err(Error::invalid("required_approvals", "at most 20"));
        }
        if input.wait_timer_ms < 0 || input.wait_timer_ms > 30 * 24 * 3600 * 1000 {
            return Err(Error::invalid("wait_timer", "between 0 and 30 days"));
        }
        check_patterns("allowed_branches", &input.allowed_branches)?;
        check_patterns("allowed_tags", &input.allowed_tags)?;
        let mut tx = self.write().await?;
        let now = tx.now();
        let mut users = Vec::new();
        for name in &input.approver_users {
            let r = sqlx::query("SELECT id FROM users WHERE username = $1")
                .bind(name)
                .fetch_optional(tx.conn())
                .await?
                .ok_or_else(|| Error::not_found("user", name))?;
            users.push(r.i64("id")?);
        }
        let mut groups = Vec::new();
        for name in &input.approver_groups {
            let r = sqlx::query("SELECT id FROM groups WHERE name = $1")
                .bind(name)
                .fetch_optional(tx.conn())
                .await?
                .ok_or_else(|| Error::not_found("group", name))?;
            groups.push(r.i64("id")?);
        }
        let r = sqlx::query(
            "INSERT INTO protection_rules (project_id, environment, required_approvals, allow_self_approval, \
             allowed_branches, allowed_tags, wait_timer_ms, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (project_id, environment) DO UPDATE SET \
             required_approvals = excluded.required_approvals, allow_self_approval = excluded.allow_self_approval, \
             allowed_branches = excluded.allowed_branches, allowed_tags = excluded.allowed_tags, \
             wait_timer_ms = excluded.wait_timer_ms, updated_at = excluded.updated_at RETURNING id",
        )
        .bind(project.0)
        .bind(environment)
        .bind(i64::from(input.required_approvals))
        .bind(flag(input.allow_self_approval))
        .bind(to_json(&input.allowed_branches)?)
        .bind(to_json(&input.allowed_tags)?)
        .bind(input.wait_timer_ms)
        .bind(now.0)
        .fetch_one(tx.conn())
        .await?;
        let id = r.i64("id")?;
        sqlx::query("DELETE FROM protection_approvers WHERE rule_id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        for u in users.iter().collect::<BTreeSet<_>>() {
            sqlx::query("INSERT INTO protection_approvers (rule_id, user_id) VALUES ($1, $2)")
                .bind(id)
                .bind(*u)
                .execute(tx.conn())
                .await?;
        }
        for g in groups.iter().collect::<BTreeSet<_>>() {
            sqlx::query("INSERT INTO protection_approvers (rule_id, group_id) VALUES ($1, $2)")
                .bind(id)
                .bind(*g)
                .execute(tx.conn())
                .await?;
        }
        append(
            &mut tx,
            actor,
            "protection.set",
            "environment",
            &format!("{project}/{environment}"),
            json!({
                "required_approvals": input.required_approvals,
                "allow_self_approval": input.allow_self_approval,
                "allowed_branches": input.allowed_branches,
                "allowed_tags": input.allowed_tags,
                "wait_timer_ms": input.wait_timer_ms,
                "approver_users": input.approver_users,
                "approver_groups": input.approver_groups,
            }),
        )
        .await?;
        tx.commit().await?;
        self.protection_rule(project, environment)
            .await?
            .ok_or_else(|| Error::not_found("protection rule", environment))
    }

    pub async fn protection_rule(
        &self,
        project: ProjectId,
        environment: &str,
    ) -> Result<Option<ProtectionRule>> {
        let r = sqlx::query(
            "SELECT * FROM protection_rules WHERE project_id = $1 AND environment = $2",
        )
        .bind(project.0)
        .bind(environment)
        .fetch_optional(self.pool())
        .await?;
        match r {
            Some(r) => Ok(Some(self.rule_from(&r).await?)),
            None => Ok(None),
        }
    }

    pub async fn protection_rules(&self, project: ProjectId) -> Result<Vec<ProtectionRule>> {
        let rows = sqlx::query(
            "SELECT * FROM protection_rules WHERE project_id = $1 ORDER BY environment",
        )
        .bind(project.0)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.rule_from(r).await?);
        }
        Ok(out)
    }

    async fn rule_from(&self, r: &sqlx::any::AnyRow) -> Result<ProtectionRule> {
        let id = r.i64("id")?;
        let users = sqlx::query(
            "SELECT u.id, u.username FROM protection_approvers a JOIN users u ON u.id = a.user_id \
             WHERE a.rule_id = $1 ORDER BY u.username",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        let groups = sqlx::query(
            "SELECT g.id, g.name FROM protection_approvers a JOIN groups g ON g.id = a.group_id \
             WHERE a.rule_id = $1 ORDER BY g.name",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await?;
        Ok(ProtectionRule {
            id: ProtectionRuleId(id),
            project_id: ProjectId(r.i64("project_id")?),
            environment: r.text("environment")?,
            required_approvals: r.i64("required_approvals")?.clamp(0, u32::MAX as i64) as u32,
            allow_self_approval: r.flag("allow_self_approval")?,
            allowed_branches: r.json("allowed_branches")?,
            allowed_tags: r.json("allowed_tags")?,
            wait_timer_ms: r.i64("wait_timer_ms")?,
            approver_users: users
                .iter()
                .map(|u| {
                    Ok(NamedUser {
                        id: UserId(u.i64("id")?),
                        username: u.text("username")?,
                    })
                })
                .collect::<Result<_>>()?,
            approver_groups: groups
                .iter()
                .map(|g| {
                    Ok(NamedGroup {
                        id: GroupId(g.i64("id")?),
                        name: g.text("name")?,
                    })
                })
                .collect::<Result<_>>()?,
            created_at: r.ts("created_at")?,
            updated_at: r.ts("updated_at")?,
        })
    }

    /// Removes an environment's protection. Audited as `protection.delete`.
    pub async fn delete_protection_rule(
        &self,
        actor: &Actor,
        project: ProjectId,
        environment: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let n =
            sqlx::query("DELETE FROM protection_rules WHERE project_id = $1 AND environment = $2")
                .bind(project.0)
                .bind(environment)
                .execute(tx.conn())
                .await?
                .rows_affected();
        if n == 0 {
            return Err(Error::not_found("protection rule", environment));
        }
        append(
            &mut tx,
            actor,
            "protection.delete",
            "environment",
            &format!("{project}/{environment}"),
            json!({}),
        )
        .await?;
        tx.commit().await
    }

    // --- deployments --------------------------------------------------------------

    /// Records a deployment. Audited as `deployment.create` (or `deployment.rollback` for
    /// one that brings back an earlier release) by `actor`.
    pub async fn create_deployment(&self, actor: &Actor, d: NewDeployment) -> Result<Deployment> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let env = sqlx::query("SELECT project_id, name FROM environments WHERE id = $1")
            .bind(d.environment.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| Error::not_found("environment", d.environment))?;
        let project = ProjectId(env.i64("project_id")?);
        let env_name = env.text("name")?;
        let r = sqlx::query(
            "INSERT INTO deployments (project_id, environment_id, pipeline_id, job_id, ref_name, tag, sha, version, \
             digest, release_artifacts, settings, strategy, triggered_by, triggered_by_name, status, reason, \
             rollback_of, wait_until, created_at, updated_at, started_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19, \
             CASE WHEN $15 = 'running' THEN $19 END, \
             CASE WHEN $15 IN ('success', 'failed', 'canceled', 'rolled_back', 'skipped') THEN $19 END) \
             RETURNING id",
        )
        .bind(project.0)
        .bind(d.environment.0)
        .bind(d.pipeline.map(|p| p.0))
        .bind(d.job.map(|j| j.0))
        .bind(&d.ref_name)
        .bind(flag(d.tag))
        .bind(&d.sha)
        .bind(&d.version)
        .bind(d.digest.as_deref())
        .bind(to_json(&d.release_artifacts)?)
        .bind(d.settings.as_ref().map(to_json).transpose()?)
        .bind(d.strategy.as_deref())
        .bind(d.triggered_by.map(|u| u.0))
        .bind(&d.triggered_by_name)
        .bind(d.status.as_str())
        .bind(d.reason.as_deref())
        .bind(d.rollback_of.map(|r| r.0))
        .bind(d.wait_until.map(|t| t.0))
        .bind(now.0)
        .fetch_one(tx.conn())
        .await;
        let r = conflict_on_unique(r, || "this job already has a deployment".to_string())?;
        let id = DeploymentId(r.i64("id")?);
        if let Some(vars) = &d.variables {
            write_variables(&mut tx, id, vars).await?;
        }
        let created = deployment_in(&mut tx, id, false).await?;
        append(
            &mut tx,
            actor,
            if d.rollback_of.is_some() {
                "deployment.rollback"
            } else {
                "deployment.create"
            },
            "deployment",
            &id.to_string(),
            json!({"project": project.0, "environment": env_name, "ref": d.ref_name, "sha": d.sha,
                   "digest": d.digest, "job": d.job.map(|j| j.0), "status": d.status.as_str(),
                   "rollback_of": d.rollback_of.map(|r| r.0)}),
        )
        .await?;
        if d.status.is_finished() {
            append(
                &mut tx,
                actor,
                "deployment.finish",
                "deployment",
                &id.to_string(),
                json!({"environment": env_name, "project": project.0, "status": d.status.as_str(),
                       "reason": d.reason, "digest": d.digest}),
            )
            .await?;
        }
        tx.emit(Event::DeploymentChanged {
            deployment: id,
            project,
        });
        tx.commit().await?;
        Ok(created)
    }

    pub async fn deployment(&self, id: DeploymentId) -> Result<Deployment> {
        let r = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN environments e ON e.id = d.environment_id WHERE d.id = $1"
        ))
        .bind(id.0)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| Error::not_found("deployment", id))?;
        deployment_from(&r)
    }

    /// The deployment job attempt `job` made, if any.
    pub async fn deployment_for_job(&self, job: JobId) -> Result<Option<Deployment>> {
        let r = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN environments e ON e.id = d.environment_id WHERE d.job_id = $1"
        ))
        .bind(job.0)
        .fetch_optional(self.pool())
        .await?;
        r.as_ref().map(deployment_from).transpose()
    }

    /// An environment's deployments, newest first: at most `limit`, older than `before`.
    pub async fn deployments(
        &self,
        environment: EnvironmentId,
        before: Option<DeploymentId>,
        limit: i64,
    ) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN environments e ON e.id = d.environment_id \
             WHERE d.environment_id = $1 AND d.id < $2 ORDER BY d.id DESC LIMIT $3"
        ))
        .bind(environment.0)
        .bind(before.map(|b| b.0).unwrap_or(i64::MAX))
        .bind(limit.clamp(1, 500))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(deployment_from).collect()
    }

    /// The deployments of a pipeline (its jobs' deployments).
    pub async fn pipeline_deployments(&self, pipeline: PipelineId) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN environments e ON e.id = d.environment_id \
             WHERE d.pipeline_id = $1 ORDER BY d.id"
        ))
        .bind(pipeline.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(deployment_from).collect()
    }

    /// Unfinished deployments of every project (after a restart, and for the sweep that
    /// closes those whose job ended).
    pub async fn unfinished_deployments(&self) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN environments e ON e.id = d.environment_id \
             WHERE d.status IN ('created', 'waiting', 'awaiting_approval', 'running') ORDER BY d.id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(deployment_from).collect()
    }

    /// Whether `digest` was deployed successfully to environment `environment` of
    /// `project` (the promotion rule's question). A deployment rolled back since does
    /// not count.
    pub async fn digest_deployed(
        &self,
        project: ProjectId,
        environment: &str,
        digest: &str,
    ) -> Result<bool> {
        let r = sqlx::query(
            "SELECT d.id FROM deployments d JOIN environments e ON e.id = d.environment_id \
             WHERE d.project_id = $1 AND e.name = $2 AND d.digest = $3 AND d.status = 'success' LIMIT 1",
        )
        .bind(project.0)
        .bind(environment)
        .bind(digest)
        .fetch_optional(self.pool())
        .await?;
        Ok(r.is_some())
    }

    /// Moves a deployment to `to` if its status is one of `from`; returns whether it
    /// did. Its end is audited (by `actor`).
    pub async fn set_deployment_status(
        &self,
        actor: &Actor,
        id: DeploymentId,
        from: &[DeploymentStatus],
        to: DeploymentStatus,
        reason: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let d = deployment_in(&mut tx, id, true).await?;
        if !from.contains(&d.status) {
            tx.commit().await?;
            return Ok(false);
        }
        set_status_in(&mut tx, &d, to, reason, actor).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records the variables a deployment runs with (sealed when any is a secret).
    pub async fn set_deployment_variables(
        &self,
        id: DeploymentId,
        vars: &[DeploymentVariable],
    ) -> Result<()> {
        let mut tx = self.write().await?;
        write_variables(&mut tx, id, vars).await?;
        tx.commit().await
    }

    /// The variables recorded with a deployment, in clear (to run its release again).
    pub async fn deployment_variables(&self, id: DeploymentId) -> Result<Vec<DeploymentVariable>> {
        let r = sqlx::query("SELECT variables, sealed_variables FROM deployments WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("deployment", id))?;
        let text = match r.opt_blob("sealed_variables")? {
            Some(sealed) => self
                .cipher()
                .open_str(&sealed, &variables_context(id))?
                .into_inner(),
            None => match r.opt_text("variables")? {
                Some(t) => t,
                None => return Ok(Vec::new()),
            },
        };
        let pairs: Vec<(String, String, bool)> = serde_json::from_str(&text)
            .map_err(|e| Error::Corrupt(format!("deployment {id} variables: {e}")))?;
        Ok(pairs
            .into_iter()
            .map(|(key, value, secret)| DeploymentVariable {
                key,
                value: SecretString::new(value),
                secret,
            })
            .collect())
    }

    /// Copies the recorded variables of `from` to `to` (a rollback runs with the old
    /// deployment's variables, not today's).
    pub async fn copy_deployment_variables(
        &self,
        from: DeploymentId,
        to: DeploymentId,
    ) -> Result<()> {
        let vars = self.deployment_variables(from).await?;
        self.set_deployment_variables(to, &vars).await
    }

    // --- approvals ------------------------------------------------------------------

    /// Records `actor`'s decision on a deployment awaiting approval, in one transaction
    /// with what it settles: a rejection cancels the deployment; the approval that
    /// reaches `required` moves it to `then` (`waiting` for a wait timer, else
    /// `created`: its job passes the gate when claimed again). Each user decides once.
    /// Audited as `deployment.approve` or `deployment.reject`.
    pub async fn decide_deployment(
        &self,
        actor: &Actor,
        id: DeploymentId,
        decision: Decision,
        comment: Option<&str>,
        required: u32,
        then: DeploymentStatus,
    ) -> Result<Decided> {
        let user = actor
            .user_id
            .ok_or_else(|| Error::invalid("actor", "only users approve deployments"))?;
        if comment.is_some_and(|c| c.len() > 2000) {
            return Err(Error::invalid("comment", "at most 2000 characters"));
        }
        let mut tx = self.write().await?;
        let d = deployment_in(&mut tx, id, true).await?;
        if d.status != DeploymentStatus::AwaitingApproval {
            return Err(Error::State(format!(
                "deployment {id} is {}, not awaiting approval",
                d.status.as_str()
            )));
        }
        let now = tx.now();
        let r = sqlx::query(
            "INSERT INTO deployment_approvals (deployment_id, user_id, username, decision, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.0)
        .bind(user.0)
        .bind(&actor.name)
        .bind(decision.as_str())
        .bind(comment)
        .bind(now.0)
        .execute(tx.conn())
        .await;
        conflict_on_unique(r, || {
            format!("{} has already decided on deployment {id}", actor.name)
        })?;
        append(
            &mut tx,
            actor,
            match decision {
                Decision::Approved => "deployment.approve",
                Decision::Rejected => "deployment.reject",
            },
            "deployment",
            &id.to_string(),
            json!({"environment": d.environment, "project": d.project_id.0, "comment": comment}),
        )
        .await?;
        let approved: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM deployment_approvals WHERE deployment_id = $1 AND decision = 'approved'",
        )
        .bind(id.0)
        .fetch_one(tx.conn())
        .await?
        .i64("n")?;
        let settled = match decision {
            Decision::Rejected => {
                let reason = match comment {
                    Some(c) if !c.is_empty() => format!("rejected by {}: {c}", actor.name),
                    _ => format!("rejected by {}", actor.name),
                };
                set_status_in(
                    &mut tx,
                    &d,
                    DeploymentStatus::Canceled,
                    Some(&reason),
                    actor,
                )
                .await?;
                true
            }
            Decision::Approved if approved >= i64::from(required) => {
                set_status_in(&mut tx, &d, then, None, actor).await?;
                true
            }
            Decision::Approved => {
                tx.emit(Event::DeploymentChanged {
                    deployment: d.id,
                    project: d.project_id,
                });
                false
            }
        };
        let deployment = deployment_in(&mut tx, id, false).await?;
        let approvals = approvals_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(Decided {
            deployment,
            approvals,
            settled,
        })
    }

    pub async fn approvals(&self, id: DeploymentId) -> Result<Vec<Approval>> {
        let rows = sqlx::query(
            "SELECT * FROM deployment_approvals WHERE deployment_id = $1 ORDER BY created_at, id",
        )
        .bind(id.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(approval_from).collect()
    }

    /// Whether `user` is one of `rule`'s named approvers (directly or through a group).
    pub async fn is_named_approver(&self, rule: &ProtectionRule, user: UserId) -> Result<bool> {
        if rule.approver_users.iter().any(|u| u.id == user) {
            return Ok(true);
        }
        if rule.approver_groups.is_empty() {
            return Ok(false);
        }
        let groups = self.user_groups(user).await?;
        Ok(groups
            .iter()
            .any(|g| rule.approver_groups.iter().any(|a| a.id == g.id)))
    }

    // --- holding jobs at the gate -----------------------------------------------------

    /// Gives back the claim of a job that may not run yet: it becomes `to`
    /// (`waiting_for_approval`, `waiting_for_resource`, or `scheduled` until
    /// `scheduled_at` for a wait timer), its lease is dropped, and it is claimed again
    /// once something moves it back to pending. A job whose cancel was requested while
    /// it was claimed is canceled instead.
    pub async fn hold_claimed_job(
        &self,
        lease: &Lease,
        to: JobStatus,
        scheduled_at: Option<Timestamp>,
    ) -> Result<Job> {
        if !matches!(
            to,
            JobStatus::WaitingForApproval | JobStatus::WaitingForResource | JobStatus::Scheduled
        ) {
            return Err(Error::invalid("status", "a held job waits"));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "UPDATE jobs SET status = $1, scheduled_at = $2, started_at = NULL, updated_at = $3, \
             lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, executor = NULL \
             WHERE id = $4 AND lease_token = $5 AND status = 'running' RETURNING *",
        )
        .bind(to.as_str())
        .bind(scheduled_at.map(|t| t.0))
        .bind(now.0)
        .bind(lease.job.0)
        .bind(lease.token())
        .fetch_optional(tx.conn())
        .await?
        .ok_or(Error::LeaseLost { job: lease.job.0 })?;
        let mut job = job_from(&r)?;
        // A cancel (a rejection, a user) that came while the job was claimed only asked
        // its holder to stop; the holder is giving the job back instead of running it,
        // so the cancel takes effect here rather than leaving the job held.
        if job.cancel_requested && transition(&mut tx, &job, JobStatus::Canceled).await? {
            job = job_in(&mut tx, job.id).await?;
        }
        tx.emit(Event::JobChanged {
            job: job.id,
            pipeline: job.pipeline_id,
        });
        tx.commit().await?;
        Ok(job)
    }

    /// Moves a held job back to the queue (`to` is `pending`, or `scheduled` until
    /// `scheduled_at`), if it is still `from`.
    pub async fn release_held_job(
        &self,
        job: JobId,
        from: JobStatus,
        to: JobStatus,
        scheduled_at: Option<Timestamp>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let j = job_in(&mut tx, job).await?;
        if j.status != from {
            tx.commit().await?;
            return Ok(false);
        }
        if let Some(t) = scheduled_at {
            sqlx::query("UPDATE jobs SET scheduled_at = $1 WHERE id = $2")
                .bind(t.0)
                .bind(job.0)
                .execute(tx.conn())
                .await?;
        }
        let done = transition(&mut tx, &j, to).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Fails a job that never ran (a deployment its environment refused), with the
    /// reason in its failure reason; if it holds a lease, only under that lease.
    pub async fn refuse_claimed_job(&self, lease: &Lease, reason: &str) -> Result<Job> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "UPDATE jobs SET status = 'failed', failure_reason = $1, finished_at = $2, updated_at = $2, \
             lease_token = NULL, lease_expires_at = NULL WHERE id = $3 AND lease_token = $4 AND status = 'running' \
             RETURNING *",
        )
        .bind(reason)
        .bind(now.0)
        .bind(lease.job.0)
        .bind(lease.token())
        .fetch_optional(tx.conn())
        .await?
        .ok_or(Error::LeaseLost { job: lease.job.0 })?;
        let job = job_from(&r)?;
        tx.emit(Event::JobChanged {
            job: job.id,
            pipeline: job.pipeline_id,
        });
        tx.commit().await?;
        Ok(job)
    }

    // --- resource groups ------------------------------------------------------------

    pub async fn resource_group(&self, project: ProjectId, name: &str) -> Result<ResourceGroup> {
        let r = sqlx::query(
            "SELECT process_mode FROM resource_groups WHERE project_id = $1 AND name = $2",
        )
        .bind(project.0)
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        let mode = match r {
            Some(r) => {
                let m = r.text("process_mode")?;
                ProcessMode::parse(&m)
                    .ok_or_else(|| Error::Corrupt(format!("process mode {m:?}")))?
            }
            None => ProcessMode::Unordered,
        };
        Ok(ResourceGroup {
            project_id: project,
            name: name.to_string(),
            process_mode: mode,
        })
    }

    /// The groups the project's jobs name (with their modes).
    pub async fn resource_groups(&self, project: ProjectId) -> Result<Vec<ResourceGroup>> {
        let rows = sqlx::query(
            "SELECT name FROM resource_groups WHERE project_id = $1 UNION \
             SELECT DISTINCT resource_group AS name FROM jobs WHERE project_id = $1 AND resource_group IS NOT NULL \
             ORDER BY name",
        )
        .bind(project.0)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.resource_group(project, &r.text("name")?).await?);
        }
        Ok(out)
    }

    /// Sets a group's process mode (GitLab's API does this; the file cannot). Audited as
    /// `resource_group.update`.
    pub async fn set_resource_group_mode(
        &self,
        actor: &Actor,
        project: ProjectId,
        name: &str,
        mode: ProcessMode,
    ) -> Result<ResourceGroup> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::invalid(
                "resource group",
                "must be 1 to 255 characters",
            ));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        sqlx::query(
            "INSERT INTO resource_groups (project_id, name, process_mode, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (project_id, name) DO UPDATE SET \
             process_mode = excluded.process_mode, updated_at = excluded.updated_at",
        )
        .bind(project.0)
        .bind(name)
        .bind(mode.as_str())
        .bind(now.0)
        .execute(tx.conn())
        .await?;
        append(
            &mut tx,
            actor,
            "resource_group.update",
            "project",
            &project.to_string(),
            json!({"name": name, "process_mode": mode.as_str()}),
        )
        .await?;
        tx.commit().await?;
        // Another mode may let a waiting job go now.
        self.inner
            .core
            .hub
            .publish(Event::ResourceGroupChanged { project });
        Ok(ResourceGroup {
            project_id: project,
            name: name.to_string(),
            process_mode: mode,
        })
    }

    /// Whether `job` (claimed, so `running`) may have its resource group now: nobody
    /// else holds it and, for the ordered modes, no job of an older (`oldest_first`) or
    /// newer (`newest_first`) pipeline is waiting for it or still to come (GitLab's
    /// "upcoming" jobs: created, scheduled, waiting for the resource). Given to it if so.
    pub async fn acquire_resource(&self, job: JobId) -> Result<bool> {
        let mut tx = self.write().await?;
        let j = job_in(&mut tx, job).await?;
        let Some(group) = j.resource_group.clone() else {
            tx.commit().await?;
            return Ok(true);
        };
        if j.resource_assigned {
            tx.commit().await?;
            return Ok(true);
        }
        let mode = lock_group(&mut tx, j.project_id, &group).await?;
        let holders = sqlx::query(
            "SELECT COUNT(*) AS n FROM jobs WHERE project_id = $1 AND resource_group = $2 AND id <> $3 \
             AND resource_assigned = 1 AND status IN ('pending', 'running')",
        )
        .bind(j.project_id.0)
        .bind(&group)
        .bind(j.id.0)
        .fetch_one(tx.conn())
        .await?
        .i64("n")?;
        let mut free = holders == 0;
        if free && mode != ProcessMode::Unordered {
            let cmp = if mode == ProcessMode::OldestFirst {
                "<"
            } else {
                ">"
            };
            let ahead = sqlx::query(&format!(
                "SELECT COUNT(*) AS n FROM jobs WHERE project_id = $1 AND resource_group = $2 AND id <> $3 \
                 AND retried = 0 AND pipeline_id {cmp} $4 \
                 AND status IN ('created', 'scheduled', 'waiting_for_resource', 'pending')"
            ))
            .bind(j.project_id.0)
            .bind(&group)
            .bind(j.id.0)
            .bind(j.pipeline_id.0)
            .fetch_one(tx.conn())
            .await?
            .i64("n")?;
            free = ahead == 0;
        }
        if free {
            sqlx::query("UPDATE jobs SET resource_assigned = 1 WHERE id = $1")
                .bind(j.id.0)
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await?;
        Ok(free)
    }

    /// When nobody holds the group: gives it to the next job by the group's mode (from
    /// those waiting for it; for the ordered modes, nothing while the first in order is
    /// still to come) and queues that job. Returns the job released.
    pub async fn release_next_in_group(
        &self,
        project: ProjectId,
        group: &str,
    ) -> Result<Option<JobId>> {
        let mut tx = self.write().await?;
        let mode = lock_group(&mut tx, project, group).await?;
        let holders = sqlx::query(
            "SELECT COUNT(*) AS n FROM jobs WHERE project_id = $1 AND resource_group = $2 \
             AND resource_assigned = 1 AND status IN ('pending', 'running')",
        )
        .bind(project.0)
        .bind(group)
        .fetch_one(tx.conn())
        .await?
        .i64("n")?;
        if holders > 0 {
            tx.commit().await?;
            return Ok(None);
        }
        let sql = match mode {
            // First come, first served: the longest waiting.
            ProcessMode::Unordered => {
                "SELECT * FROM jobs WHERE project_id = $1 AND resource_group = $2 \
                 AND status = 'waiting_for_resource' ORDER BY updated_at, id LIMIT 1"
            }
            ProcessMode::OldestFirst => {
                "SELECT * FROM jobs WHERE project_id = $1 AND resource_group = $2 AND retried = 0 \
                 AND status IN ('created', 'scheduled', 'waiting_for_resource', 'pending') \
                 ORDER BY pipeline_id, CASE WHEN status = 'waiting_for_resource' THEN 0 ELSE 1 END, id LIMIT 1"
            }
            ProcessMode::NewestFirst => {
                "SELECT * FROM jobs WHERE project_id = $1 AND resource_group = $2 AND retried = 0 \
                 AND status IN ('created', 'scheduled', 'waiting_for_resource', 'pending') \
                 ORDER BY pipeline_id DESC, CASE WHEN status = 'waiting_for_resource' THEN 0 ELSE 1 END, id LIMIT 1"
            }
        };
        let next = sqlx::query(sql)
            .bind(project.0)
            .bind(group)
            .fetch_optional(tx.conn())
            .await?;
        let Some(next) = next.as_ref().map(job_from).transpose()? else {
            tx.commit().await?;
            return Ok(None);
        };
        if next.status != JobStatus::WaitingForResource {
            // The first in order has not asked yet: the group waits for it.
            tx.commit().await?;
            return Ok(None);
        }
        sqlx::query("UPDATE jobs SET resource_assigned = 1 WHERE id = $1")
            .bind(next.id.0)
            .execute(tx.conn())
            .await?;
        transition(&mut tx, &next, JobStatus::Pending).await?;
        tx.commit().await?;
        Ok(Some(next.id))
    }

    /// Groups with a job waiting for them (for the periodic sweep).
    pub async fn waiting_resource_groups(&self) -> Result<Vec<(ProjectId, String)>> {
        let rows = sqlx::query(
            "SELECT DISTINCT project_id, resource_group FROM jobs WHERE status = 'waiting_for_resource' \
             AND resource_group IS NOT NULL ORDER BY project_id, resource_group",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((ProjectId(r.i64("project_id")?), r.text("resource_group")?)))
            .collect()
    }

    // --- notification webhooks ---------------------------------------------------

    /// Adds a webhook for the project's deployment notifications (of one environment, or
    /// all). The URL and the secret are sealed. Audited as `deployment_webhook.create`.
    pub async fn add_deployment_webhook(
        &self,
        actor: &Actor,
        project: ProjectId,
        environment: Option<&str>,
        kind: &str,
        url: &SecretString,
        secret: Option<&SecretString>,
    ) -> Result<DeploymentWebhook> {
        if !matches!(kind, "slack" | "json") {
            return Err(Error::invalid("kind", "slack or json"));
        }
        let u = url.expose();
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 2000 {
            return Err(Error::invalid(
                "url",
                "an http:// URL of at most 2000 characters",
            ));
        }
        if secret.is_some_and(|s| s.expose().len() < 8) {
            return Err(Error::invalid("secret", "must be at least 8 characters"));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        // The id is part of the sealing context: insert, then seal with it.
        let r = sqlx::query(
            "INSERT INTO deployment_webhooks (project_id, environment, kind, sealed_url, url_origin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(project.0)
        .bind(environment)
        .bind(kind)
        .bind(Vec::<u8>::new())
        .bind(url_origin(u))
        .bind(now.0)
        .fetch_one(tx.conn())
        .await?;
        let id = DeploymentWebhookId(r.i64("id")?);
        let sealed_url = self
            .cipher()
            .seal_str(u, &webhook_url_context(project, id))?;
        let sealed_secret = secret
            .map(|s| {
                self.cipher()
                    .seal_str(s.expose(), &webhook_secret_context(project, id))
            })
            .transpose()?;
        let r = sqlx::query(
            "UPDATE deployment_webhooks SET sealed_url = $1, sealed_secret = $2 WHERE id = $3 RETURNING *",
        )
        .bind(sealed_url)
        .bind(sealed_secret)
        .bind(id.0)
        .fetch_one(tx.conn())
        .await?;
        let hook = webhook_from(&r)?;
        append(
            &mut tx,
            actor,
            "deployment_webhook.create",
            "project",
            &project.to_string(),
            json!({"id": id.0, "kind": kind, "environment": environment,
                   "url": hook.url_origin, "signed": secret.is_some()}),
        )
        .await?;
        tx.commit().await?;
        Ok(hook)
    }

    pub async fn deployment_webhooks(&self, project: ProjectId) -> Result<Vec<DeploymentWebhook>> {
        let rows =
            sqlx::query("SELECT * FROM deployment_webhooks WHERE project_id = $1 ORDER BY id")
                .bind(project.0)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(webhook_from).collect()
    }

    /// Audited as `deployment_webhook.delete`.
    pub async fn delete_deployment_webhook(
        &self,
        actor: &Actor,
        project: ProjectId,
        id: DeploymentWebhookId,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let n = sqlx::query("DELETE FROM deployment_webhooks WHERE id = $1 AND project_id = $2")
            .bind(id.0)
            .bind(project.0)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("deployment webhook", id));
        }
        append(
            &mut tx,
            actor,
            "deployment_webhook.delete",
            "project",
            &project.to_string(),
            json!({"id": id.0}),
        )
        .await?;
        tx.commit().await
    }

    /// Where a notification about `environment` of `project` goes, with clear URLs and
    /// secrets (for the notifier only).
    pub async fn webhook_targets(
        &self,
        project: ProjectId,
        environment: &str,
    ) -> Result<Vec<WebhookTarget>> {
        let rows = sqlx::query(
            "SELECT * FROM deployment_webhooks WHERE project_id = $1 AND (environment IS NULL OR environment = $2) \
             ORDER BY id",
        )
        .bind(project.0)
        .bind(environment)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id = DeploymentWebhookId(r.i64("id")?);
            out.push(WebhookTarget {
                kind: r.text("kind")?,
                url: self
                    .cipher()
                    .open_str(&r.blob("sealed_url")?, &webhook_url_context(project, id))?,
                secret: r
                    .opt_blob("sealed_secret")?
                    .map(|s| {
                        self.cipher()
                            .open_str(&s, &webhook_secret_context(project, id))
                    })
                    .transpose()?,
            });
        }
        Ok(out)
    }

    // --- artifact pins --------------------------------------------------------------

    /// Pins (`keep`) the artifacts the project's deployments may need: those of every
    /// unfinished deployment and of the last `keep_last` successful ones per
    /// environment (rollback targets); unpins the ones no longer needed. Deployments
    /// own the `keep` flag. Returns how many artifact rows are pinned.
    pub async fn refresh_artifact_pins(&self, project: ProjectId, keep_last: i64) -> Result<u64> {
        let mut tx = self.write().await?;
        let envs = sqlx::query("SELECT id FROM environments WHERE project_id = $1")
            .bind(project.0)
            .fetch_all(tx.conn())
            .await?;
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        for e in &envs {
            let rows = sqlx::query(
                "SELECT release_artifacts FROM deployments WHERE environment_id = $1 AND status = 'success' \
                 ORDER BY id DESC LIMIT $2",
            )
            .bind(e.i64("id")?)
            .bind(keep_last.max(0))
            .fetch_all(tx.conn())
            .await?;
            for r in &rows {
                wanted.extend(r.json::<Vec<String>>("release_artifacts")?);
            }
        }
        let rows = sqlx::query(
            "SELECT release_artifacts FROM deployments WHERE project_id = $1 \
             AND status IN ('created', 'waiting', 'awaiting_approval', 'running')",
        )
        .bind(project.0)
        .fetch_all(tx.conn())
        .await?;
        for r in &rows {
            wanted.extend(r.json::<Vec<String>>("release_artifacts")?);
        }
        let arts = sqlx::query("SELECT id, store_id, keep FROM artifacts WHERE project_id = $1")
            .bind(project.0)
            .fetch_all(tx.conn())
            .await?;
        let mut pinned = 0;
        for a in &arts {
            let want = wanted.contains(&a.text("store_id")?);
            if want {
                pinned += 1;
            }
            if want != a.flag("keep")? {
                sqlx::query("UPDATE artifacts SET keep = $1 WHERE id = $2")
                    .bind(flag(want))
                    .bind(a.i64("id")?)
                    .execute(tx.conn())
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(pinned)
    }

    /// Store ids of artifacts that are pinned (the blob store keeps them whatever their
    /// expiry).
    pub async fn kept_store_ids(&self) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT DISTINCT store_id FROM artifacts WHERE keep = 1 ORDER BY store_id")
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(|r| r.text("store_id")).collect()
    }
}

async fn approvals_in(tx: &mut WriteTx, id: DeploymentId) -> Result<Vec<Approval>> {
    let rows = sqlx::query(
        "SELECT * FROM deployment_approvals WHERE deployment_id = $1 ORDER BY created_at, id",
    )
    .bind(id.0)
    .fetch_all(tx.conn())
    .await?;
    rows.iter().map(approval_from).collect()
}

async fn write_variables(
    tx: &mut WriteTx,
    id: DeploymentId,
    vars: &[DeploymentVariable],
) -> Result<()> {
    let pairs: Vec<(&str, &str, bool)> = vars
        .iter()
        .map(|v| (v.key.as_str(), v.value.expose(), v.secret))
        .collect();
    let text = to_json(&pairs)?;
    let (plain, sealed) = if vars.iter().any(|v| v.secret) {
        (
            None,
            Some(tx.core.cipher.seal_str(&text, &variables_context(id))?),
        )
    } else {
        (Some(text), None)
    };
    sqlx::query("UPDATE deployments SET variables = $1, sealed_variables = $2 WHERE id = $3")
        .bind(plain)
        .bind(sealed)
        .bind(id.0)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Creates the group's row if needed and locks it; returns its mode.
async fn lock_group(tx: &mut WriteTx, project: ProjectId, group: &str) -> Result<ProcessMode> {
    let now = tx.now();
    sqlx::query(
        "INSERT INTO resource_groups (project_id, name, process_mode, created_at, updated_at) \
         VALUES ($1, $2, 'unordered', $3, $3) ON CONFLICT (project_id, name) DO NOTHING",
    )
    .bind(project.0)
    .bind(group)
    .bind(now.0)
    .execute(tx.conn())
    .await?;
    let sql = for_update(
        tx,
        "SELECT process_mode FROM resource_groups WHERE project_id = $1 AND name = $2",
    );
    let r = sqlx::query(&sql)
        .bind(project.0)
        .bind(group)
        .fetch_one(tx.conn())
        .await?;
    let m = r.text("process_mode")?;
    ProcessMode::parse(&m).ok_or_else(|| Error::Corrupt(format!("process mode {m:?}")))
}
