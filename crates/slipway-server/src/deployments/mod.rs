//! Deployments in the server: a job with `environment:` creates a deployment record,
//! passes its environment's protection (ref rules, promotion, approvals, wait timer,
//! resource group) when claimed, runs its script, and, when the commit's `.slipway`
//! defines the environment, has its release deployed by Slipway's engine behind
//! Slipway's router before the job succeeds.
//!
//! - [`gate`]: the claim-time gate (record, refusals, holds);
//! - [`release`]: what the release is (the artifacts the job received), its digest,
//!   extraction, its variables;
//! - [`engine`]: `slipway_deploy::Engine` in the server, with its intent, releases and
//!   notification webhooks in the database;
//! - [`actions`]: approve, reject and roll back, and who may;
//! - [`sweep`]: closing deployments whose job ended, giving resource groups to the next
//!   job, pinning the artifacts of recent deployments, artifact expiry.

pub mod actions;
pub mod engine;
pub mod gate;
pub mod release;
pub mod sweep;

pub use engine::Deployer;

use crate::app::AppState;
use crate::queue::JobPayload;
use slipway_core::deploy::machine::Status;
use slipway_core::deploy::settings::Target;
use slipway_core::job::reason;
use slipway_db::{
    Actor, Deployment, DeploymentId, DeploymentStatus, Job, JobOutcome, JobStatus, ProjectId,
};
use slipway_deploy::notify::{Notification, NotificationKind};
use slipway_deploy::ReleaseSettings;
use slipway_runner::logs::LogSink;
use tokio_util::sync::CancellationToken;

impl engine::Progress for LogSink {
    fn line(&self, text: &str) {
        self.system(text);
    }
}

/// Re-pins the artifacts the project's deployments may need (errors are logged: a
/// missed refresh is repeated by the next one).
pub async fn pins(app: &AppState, project: ProjectId) {
    if let Err(e) = app
        .store
        .refresh_artifact_pins(project, app.deployer.keep_deployments)
        .await
    {
        tracing::warn!(project = project.0, error = %e, "cannot pin the deployments' artifacts");
    }
}

/// Notifies a deployment the engine does not run (its job's script deploys).
pub async fn notify(app: &AppState, d: &Deployment, kind: NotificationKind) {
    let Ok(env) = app.store.environment(d.environment_id).await else {
        return;
    };
    let now = app.store.now().as_millis();
    app.deployer.notify(Notification {
        event: kind,
        project: None,
        // The webhook source maps the engine's name back to the project's environment.
        environment: env.engine_name,
        deployment: d.id.to_string(),
        version: Some(d.version.clone()),
        digest: d.digest.clone(),
        strategy: d.strategy.clone().unwrap_or_else(|| "script".into()),
        status: d.status.as_str().to_string(),
        reason: d.reason.clone(),
        rollback_to: d.rollback_of.map(|r| r.to_string()),
        at_ms: u64::try_from(now).unwrap_or(0),
    });
}

fn failed(why: &str) -> JobOutcome {
    JobOutcome::failed(None, why)
}

/// After a deploy job's script succeeded: when the commit's `.slipway` defines the
/// environment, deploy the release with the engine and wait until traffic is on it.
/// Returns the job's outcome then (`None`: the script was the deployment). `env` is the
/// job's environment (its variables become the release's).
pub async fn deploy_after_script(
    app: &AppState,
    p: &JobPayload,
    id: DeploymentId,
    env: &[(String, String)],
    log: &LogSink,
    cancel: &CancellationToken,
) -> Option<JobOutcome> {
    let d = match app.store.deployment(id).await {
        Ok(d) => d,
        Err(e) => {
            log.system(&format!("ERROR: cannot read deployment {id}: {e}"));
            return Some(failed(reason::RUNNER_SYSTEM_FAILURE));
        }
    };
    let settings_v = d.settings.clone()?;
    let give_up = |why: String| async move {
        log.system(&format!("ERROR: deployment {id} failed: {why}"));
        let _ = app
            .store
            .set_deployment_status(
                &Actor::system("deployer"),
                id,
                &[DeploymentStatus::Running],
                DeploymentStatus::Failed,
                Some(&why),
            )
            .await;
        Some(failed(reason::DEPLOYMENT_FAILURE))
    };
    let settings: ReleaseSettings = match serde_json::from_value(settings_v) {
        Ok(s) => s,
        Err(e) => return give_up(format!("its settings do not read: {e}")).await,
    };
    let vars = release::variables(p, env);
    if let Err(e) = app.store.set_deployment_variables(id, &vars).await {
        return give_up(format!("cannot record its variables: {e}")).await;
    }
    let catalog = match app.deployer.catalog() {
        Ok(c) => c.clone(),
        Err(e) => return give_up(e).await,
    };
    let release = match catalog.release_of(id).await {
        Ok(r) => r,
        Err(e) => return give_up(e).await,
    };
    let listen = app
        .documents
        .get(&app.store, slipway_db::PipelineId(p.pipeline_id))
        .await
        .ok()
        .and_then(|doc| {
            let def = doc.deploy.as_ref()?.environment(&d.environment)?.clone();
            let Target::Process(pt) = &def.target;
            pt.listen
        });
    let ran = engine::run(
        app,
        &d,
        release,
        settings,
        listen,
        None,
        Some(log),
        Some(cancel),
    )
    .await;
    pins(app, d.project_id).await;
    match ran {
        Ok(r) => match r.status {
            Status::Success => {
                log.system(&format!(
                    "Deployment {id} succeeded: all traffic on {} ({}){}",
                    d.version,
                    d.environment,
                    r.switch_ms
                        .map(|ms| format!(", {ms:.1} ms after the request"))
                        .unwrap_or_default()
                ));
                Some(JobOutcome::success())
            }
            Status::Canceled => Some(JobOutcome::canceled()),
            _ => {
                log.system(&format!(
                    "ERROR: deployment {id} {}: {}",
                    r.status.as_str().replace('_', " "),
                    r.reason.as_deref().unwrap_or("no reason given")
                ));
                Some(failed(reason::DEPLOYMENT_FAILURE))
            }
        },
        Err(e) => give_up(e).await,
    }
}

/// After `job` ended (finished by its worker, canceled while held, failed by a lease
/// expiry or a restart): closes its deployment if the engine does not own it, and gives
/// its resource group to the next job.
pub async fn job_ended(app: &AppState, job: &Job) {
    if !job.status.is_finished() {
        return;
    }
    if let Ok(Some(d)) = app.store.deployment_for_job(job.id).await {
        if !d.status.is_finished() {
            close(app, job, &d).await;
        }
    }
    if let Some(group) = &job.resource_group {
        match app.store.release_next_in_group(job.project_id, group).await {
            Ok(Some(next)) => {
                tracing::info!(job = next.0, group = %group, "resource group given to the next job")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(group = %group, error = %e, "cannot release the resource group")
            }
        }
    }
}

async fn close(app: &AppState, job: &Job, d: &Deployment) {
    if d.settings.is_some() && d.status == DeploymentStatus::Running {
        // The engine owns a deployment it accepted; it records its end itself.
        if let (Ok(engine), Ok(env)) = (
            app.deployer.engine(),
            app.store.environment(d.environment_id).await,
        ) {
            if let Ok(st) = engine.status(&env.engine_name).await {
                if st.record.deployment(&d.id.to_string()).is_some() {
                    return;
                }
            }
        }
    }
    let (to, why) = match job.status {
        JobStatus::Success if d.settings.is_none() => (DeploymentStatus::Success, None),
        JobStatus::Success => (
            DeploymentStatus::Failed,
            Some("the job ended before its release reached the engine".to_string()),
        ),
        JobStatus::Canceled => (
            DeploymentStatus::Canceled,
            Some("its job was canceled".to_string()),
        ),
        JobStatus::Skipped => (DeploymentStatus::Skipped, None),
        _ => (
            DeploymentStatus::Failed,
            Some(format!(
                "its job failed ({})",
                job.failure_reason.as_deref().unwrap_or("unknown failure")
            )),
        ),
    };
    match app
        .store
        .set_deployment_status(
            &Actor::system("deployer"),
            d.id,
            &[
                DeploymentStatus::Created,
                DeploymentStatus::Waiting,
                DeploymentStatus::AwaitingApproval,
                DeploymentStatus::Running,
            ],
            to,
            why.as_deref(),
        )
        .await
    {
        Ok(true) => {
            if d.settings.is_none() && d.status == DeploymentStatus::Running {
                let kind = if to == DeploymentStatus::Success {
                    NotificationKind::Succeeded
                } else {
                    NotificationKind::Failed
                };
                if let Ok(now) = app.store.deployment(d.id).await {
                    notify(app, &now, kind).await;
                }
            }
            pins(app, d.project_id).await;
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(deployment = d.id.0, error = %e, "cannot close the deployment"),
    }
}
