//! What people do to deployments, shared by the API and the pages: approve, reject and
//! roll back, with who may.
//!
//! - **Approvers** of a protected environment are the users its rule names and the
//!   members of the groups it names; a rule naming nobody leaves approval to the
//!   project's maintainers (and instance administrators). Anyone else is refused (403).
//!   Whoever triggered the deployment (ran the pipeline, played or retried the job) may
//!   not approve it unless the rule allows self-approval. Each approver decides once;
//!   one rejection cancels the deployment and its job.
//! - **Rollback** deploys an earlier successful deployment's release again with that
//!   deployment's own recorded variables, as a new deployment marked as a rollback (no
//!   new approval: on a protected environment only its approvers may roll back, on
//!   others developers and above). While the release is still warm it is a traffic
//!   switch.

use crate::app::AppState;
use crate::http::error::{ApiError, ApiResult};
use slipway_db::{
    Action, Actor, Decided, Decision, Deployment, DeploymentId, DeploymentStatus, Environment,
    JobStatus, NewDeployment, Project, ProtectionRule, Role, User,
};
use slipway_deploy::{DeploymentReport, ReleaseSettings};
use std::time::Duration;

/// Whether `user` approves deployments to the environment `rule` protects.
pub async fn is_approver(
    app: &AppState,
    user: &User,
    project: &Project,
    rule: &ProtectionRule,
) -> ApiResult<bool> {
    if user.disabled {
        return Ok(false);
    }
    if rule.approver_users.is_empty() && rule.approver_groups.is_empty() {
        if user.is_admin {
            return Ok(true);
        }
        let role = app.store.member_role(project.id, user.id).await?;
        return Ok(role.is_some_and(|r| r >= Role::Maintainer));
    }
    Ok(app.store.is_named_approver(rule, user.id).await?)
}

/// Why `user` may not decide on `d`, if they may not.
pub async fn approval_refusal(
    app: &AppState,
    user: &User,
    project: &Project,
    d: &Deployment,
    decision: Decision,
) -> ApiResult<Option<String>> {
    let Some(rule) = app
        .store
        .protection_rule(project.id, &d.environment)
        .await?
    else {
        return Ok(Some(format!(
            "environment {} is not protected: its deployments need no approval",
            d.environment
        )));
    };
    if !is_approver(app, user, project, &rule).await? {
        return Ok(Some(format!(
            "{} is not an approver of environment {}",
            user.username, d.environment
        )));
    }
    if decision == Decision::Approved
        && !rule.allow_self_approval
        && d.triggered_by == Some(user.id)
    {
        return Ok(Some(format!(
            "{} triggered deployment {} and environment {} does not allow self-approval",
            user.username, d.id, d.environment
        )));
    }
    Ok(None)
}

/// Approves or rejects deployment `id`; releases or cancels its job when that settles it.
pub async fn decide(
    app: &AppState,
    user: &User,
    project: &Project,
    d: &Deployment,
    decision: Decision,
    comment: Option<&str>,
) -> ApiResult<Decided> {
    if let Some(why) = approval_refusal(app, user, project, d, decision).await? {
        return Err(ApiError::forbidden(why));
    }
    let rule = app
        .store
        .protection_rule(project.id, &d.environment)
        .await?
        .ok_or_else(|| ApiError::conflict("the environment is no longer protected"))?;
    let now = app.store.now();
    let waits = d.wait_until.is_some_and(|t| t > now);
    let then = if waits {
        DeploymentStatus::Waiting
    } else {
        DeploymentStatus::Created
    };
    let actor = Actor::user(user);
    let decided = app
        .store
        .decide_deployment(
            &actor,
            d.id,
            decision,
            comment.filter(|c| !c.trim().is_empty()),
            rule.required_approvals.max(1),
            then,
        )
        .await?;
    if decided.settled {
        if let Some(job) = d.job_id {
            match decision {
                Decision::Approved => {
                    let (to, at) = if waits {
                        (JobStatus::Scheduled, d.wait_until)
                    } else {
                        (JobStatus::Pending, None)
                    };
                    app.store
                        .release_held_job(job, JobStatus::WaitingForApproval, to, at)
                        .await?;
                }
                Decision::Rejected => {
                    let j = app.store.job(job).await?;
                    if !j.status.is_finished() {
                        crate::http::api::jobs::cancel_job(app, &actor, job).await?;
                    }
                }
            }
        }
    }
    Ok(decided)
}

/// The deployment a rollback of `env` goes back to: `to` if given (it must have
/// succeeded there), else the newest successful deployment before the one serving now
/// whose release differs from it.
pub async fn rollback_target(
    app: &AppState,
    env: &Environment,
    to: Option<DeploymentId>,
) -> ApiResult<(Option<Deployment>, Deployment)> {
    let history = app.store.deployments(env.id, None, 200).await?;
    let current = history
        .iter()
        .find(|d| d.status == DeploymentStatus::Success)
        .cloned();
    let origin = |d: &Deployment| d.rollback_of.unwrap_or(d.id);
    if let Some(to) = to {
        let d = app.store.deployment(to).await?;
        if d.environment_id != env.id {
            return Err(ApiError::invalid(format!(
                "deployment {to} was not to environment {}",
                env.name
            )));
        }
        if !matches!(
            d.status,
            DeploymentStatus::Success | DeploymentStatus::RolledBack
        ) {
            return Err(ApiError::invalid(format!(
                "deployment {to} did not succeed ({}): only a release that served can be brought back",
                d.status.as_str()
            )));
        }
        return Ok((current, d));
    }
    let Some(cur) = current.clone() else {
        return Err(ApiError::conflict(format!(
            "nothing has been deployed successfully to {} yet",
            env.name
        )));
    };
    let target = history
        .iter()
        .filter(|d| d.id < cur.id && d.status == DeploymentStatus::Success)
        .find(|d| origin(d) != origin(&cur) && d.settings.is_some())
        .cloned()
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "there is no earlier successful deployment of {} to roll back to",
                env.name
            ))
        })?;
    Ok((current, target))
}

/// Who may roll `env` back: its approvers when it needs approvals, else developers.
pub async fn rollback_refusal(
    app: &AppState,
    user: &User,
    project: &Project,
    env: &Environment,
) -> ApiResult<Option<String>> {
    match app.store.protection_rule(project.id, &env.name).await? {
        Some(rule) if rule.required_approvals > 0 => {
            if is_approver(app, user, project, &rule).await? {
                Ok(None)
            } else {
                Ok(Some(format!(
                    "environment {} is protected: only its approvers may roll it back",
                    env.name
                )))
            }
        }
        _ => {
            if app.store.can(user, project.id, Action::PlayJob).await? {
                Ok(None)
            } else {
                Ok(Some(format!(
                    "your role in project {} does not allow deploying (developer or above)",
                    project.name
                )))
            }
        }
    }
}

/// Rolls `env` back to `target` (see [`rollback_target`]): a new deployment marked as a
/// rollback, with the target's artifact, settings and recorded variables. Waits until
/// traffic is on it; returns the new deployment and the engine's report.
pub async fn rollback(
    app: &AppState,
    user: &User,
    project: &Project,
    env: &Environment,
    target: &Deployment,
) -> ApiResult<(Deployment, DeploymentReport)> {
    if let Some(why) = rollback_refusal(app, user, project, env).await? {
        return Err(ApiError::forbidden(why));
    }
    let Some(settings_v) = target.settings.clone() else {
        return Err(ApiError::conflict(format!(
            "deployment {} was made by its job's script, not by Slipway's engine: retry that job to \
             deploy it again",
            target.id
        )));
    };
    let settings: ReleaseSettings = serde_json::from_value(settings_v)
        .map_err(|e| ApiError::internal("reading the deployment's settings", &e))?;
    let variables = app.store.deployment_variables(target.id).await?;
    let actor = Actor::user(user);
    let d = app
        .store
        .create_deployment(
            &actor,
            NewDeployment {
                environment: env.id,
                pipeline: target.pipeline_id,
                job: None,
                ref_name: target.ref_name.clone(),
                tag: target.tag,
                sha: target.sha.clone(),
                version: target.version.clone(),
                digest: target.digest.clone(),
                release_artifacts: target.release_artifacts.clone(),
                settings: target.settings.clone(),
                strategy: target.strategy.clone(),
                triggered_by: Some(user.id),
                triggered_by_name: user.username.clone(),
                status: DeploymentStatus::Running,
                reason: None,
                rollback_of: Some(target.rollback_of.unwrap_or(target.id)),
                wait_until: None,
                variables: Some(variables),
            },
        )
        .await?;
    super::pins(app, project.id).await;
    let release = app
        .deployer
        .catalog()
        .map_err(ApiError::conflict)?
        .release_of(d.id)
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::CONFLICT, "release_unavailable", e));
    let release = match release {
        Ok(r) => r,
        Err(e) => {
            app.store
                .set_deployment_status(
                    &Actor::system("deployer"),
                    d.id,
                    &[DeploymentStatus::Running],
                    DeploymentStatus::Failed,
                    Some(&e.message),
                )
                .await?;
            return Err(e);
        }
    };
    let report = tokio::time::timeout(
        Duration::from_secs(15 * 60),
        super::engine::run(
            app,
            &d,
            release,
            settings,
            None,
            target.release_id.clone(),
            None,
            None,
        ),
    )
    .await
    .map_err(|_| ApiError::conflict("the rollback is still running after 15 minutes"))?;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            app.store
                .set_deployment_status(
                    &Actor::system("deployer"),
                    d.id,
                    &[DeploymentStatus::Running],
                    DeploymentStatus::Failed,
                    Some(&e),
                )
                .await?;
            return Err(ApiError::conflict(e));
        }
    };
    super::pins(app, project.id).await;
    let d = app.store.deployment(d.id).await?;
    Ok((d, report))
}
