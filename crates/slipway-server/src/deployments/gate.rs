//! The gate every deployment job passes when a worker claims it (the one place every
//! path to "pending" leads: the scheduler, a played manual job, a retry, a released
//! delayed job). For a job whose `environment:` creates a deployment it:
//!
//! 1. records the deployment the first time (environment, commit, release digest,
//!    pipeline, job, who triggered it), refusing it at once when the environment's
//!    protection rule does not allow the ref, or when its promotion rule (`.slipway`
//!    `promotion: {from: staging}`) finds the digest never deployed successfully there;
//! 2. holds the job in `waiting_for_approval` while approvals are missing;
//! 3. holds it `scheduled` until the rule's wait timer has passed;
//! 4. holds it in `waiting_for_resource` until its `resource_group` is its own.
//!
//! A held job gives its claim back and is claimed again when it is released (by the
//! approval that completes the count, the scheduler's timer, the resource group's next
//! turn), so nothing waits on a worker slot. Jobs without a deployment only pass step 4.

use crate::app::AppState;
use crate::queue::JobPayload;
use slipway_core::deploy::mapping::deployment_environment;
use slipway_core::deploy::settings::{ref_glob_matches, Tier};
use slipway_core::job::reason;
use slipway_core::schedule::JobStatus;
use slipway_db::{
    Actor, Deployment, DeploymentId, DeploymentStatus, Job, Lease, NewDeployment, ProtectionRule,
};
use slipway_deploy::ReleaseSettings;
use std::time::Duration;

/// What the gate decided.
#[derive(Debug)]
pub enum Gate {
    /// Run the job (deploying this deployment after its script, if any).
    Run(Option<DeploymentId>),
    /// The job was held or refused; the claim is given back.
    Held,
}

/// The variables `environment:name` and `url` may use: the run's, then the pipeline's
/// predefined ones.
fn lookup(p: &JobPayload) -> impl Fn(&str) -> Option<String> + '_ {
    let predefined = slipway_core::variables::pipeline_variables(&p.context);
    let pre: Vec<(String, String)> = predefined
        .iter()
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    move |key: &str| {
        p.run_variables
            .iter()
            .rev()
            .chain(pre.iter().rev())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

/// The environment the job deploys to, if it creates a deployment.
pub fn environment_of(p: &JobPayload) -> Option<String> {
    deployment_environment(&p.planned, &p.definition, &lookup(p))
}

/// Whether `rule` lets `ref_name` deploy.
pub fn ref_allowed(rule: &ProtectionRule, ref_name: &str, tag: bool) -> bool {
    if rule.allowed_branches.is_empty() && rule.allowed_tags.is_empty() {
        return true;
    }
    let patterns = if tag {
        &rule.allowed_tags
    } else {
        &rule.allowed_branches
    };
    patterns.iter().any(|p| ref_glob_matches(p, ref_name))
}

fn describe_refs(rule: &ProtectionRule) -> String {
    let mut parts = Vec::new();
    if !rule.allowed_branches.is_empty() {
        parts.push(format!("branches {}", rule.allowed_branches.join(", ")));
    }
    if !rule.allowed_tags.is_empty() {
        parts.push(format!("tags {}", rule.allowed_tags.join(", ")));
    }
    if parts.is_empty() {
        "no ref".into()
    } else {
        parts.join(" and ")
    }
}

async fn log(app: &AppState, job: &Job, line: &str) {
    let _ = app
        .store
        .append_log(job.id, format!("\x1b[36;1m{line}\x1b[0m\n").as_bytes())
        .await;
}

/// Passes `job` (claimed under `lease`) through its gate.
pub async fn check(
    app: &AppState,
    lease: &Lease,
    job: &Job,
    payload: &JobPayload,
) -> Result<Gate, slipway_db::Error> {
    let Some(env_name) = environment_of(payload) else {
        return resource(app, lease, job, None).await;
    };
    let d = match app.store.deployment_for_job(job.id).await? {
        Some(d) => d,
        None => create(app, job, payload, &env_name).await?,
    };
    match d.status {
        DeploymentStatus::AwaitingApproval => {
            let rule = app
                .store
                .protection_rule(d.project_id, &d.environment)
                .await?;
            let approvals = app.store.approvals(d.id).await?;
            let need = rule.as_ref().map(|r| r.required_approvals).unwrap_or(1);
            let have = approvals
                .iter()
                .filter(|a| a.decision == slipway_db::Decision::Approved)
                .count();
            log(
                app,
                job,
                &format!(
                    "Deployment {} to {} is waiting for approval ({have} of {need}): approve it on the \
                     environment's page or with `slipway approve {}`",
                    d.id, d.environment, d.id
                ),
            )
            .await;
            hold(app, lease, JobStatus::WaitingForApproval, None).await
        }
        s if s.is_finished() => {
            let why = d
                .reason
                .clone()
                .unwrap_or_else(|| format!("deployment {} is {}", d.id, s.as_str()));
            log(app, job, &format!("ERROR: {why}")).await;
            app.store
                .refuse_claimed_job(lease, reason::DEPLOYMENT_REJECTED)
                .await?;
            Ok(Gate::Held)
        }
        _ => {
            let now = app.store.now();
            if let Some(until) = d.wait_until.filter(|t| *t > now) {
                app.store
                    .set_deployment_status(
                        &Actor::system("gate"),
                        d.id,
                        &[DeploymentStatus::Created],
                        DeploymentStatus::Waiting,
                        Some("waiting for the environment's wait timer"),
                    )
                    .await?;
                log(
                    app,
                    job,
                    &format!(
                        "Deployment {} to {} waits until {} (the environment's wait timer)",
                        d.id, d.environment, until
                    ),
                )
                .await;
                return hold(app, lease, JobStatus::Scheduled, Some(until)).await;
            }
            resource(app, lease, job, Some(&d)).await
        }
    }
}

/// Step 4, then the deployment runs.
async fn resource(
    app: &AppState,
    lease: &Lease,
    job: &Job,
    d: Option<&Deployment>,
) -> Result<Gate, slipway_db::Error> {
    if let Some(group) = &job.resource_group {
        if !app.store.acquire_resource(job.id).await? {
            if let Some(d) = d {
                app.store
                    .set_deployment_status(
                        &Actor::system("gate"),
                        d.id,
                        &[DeploymentStatus::Created],
                        DeploymentStatus::Waiting,
                        Some(&format!("waiting for resource group {group}")),
                    )
                    .await?;
            }
            log(
                app,
                job,
                &format!("Waiting for the resource group {group:?} (another job holds it)"),
            )
            .await;
            return hold(app, lease, JobStatus::WaitingForResource, None).await;
        }
    }
    let Some(d) = d else {
        return Ok(Gate::Run(None));
    };
    app.store
        .set_deployment_status(
            &Actor::system("gate"),
            d.id,
            &[DeploymentStatus::Created, DeploymentStatus::Waiting],
            DeploymentStatus::Running,
            None,
        )
        .await?;
    if d.settings.is_none() {
        // The job's script deploys: its notifications come from here.
        super::notify(app, d, slipway_deploy::notify::NotificationKind::Started).await;
    }
    Ok(Gate::Run(Some(d.id)))
}

async fn hold(
    app: &AppState,
    lease: &Lease,
    to: JobStatus,
    until: Option<slipway_db::Timestamp>,
) -> Result<Gate, slipway_db::Error> {
    match app.store.hold_claimed_job(lease, to, until).await {
        Ok(_) | Err(slipway_db::Error::LeaseLost { .. }) => Ok(Gate::Held),
        Err(e) => Err(e),
    }
}

/// Records the deployment job `job` makes, with the checks that can refuse it at once.
async fn create(
    app: &AppState,
    job: &Job,
    p: &JobPayload,
    env_name: &str,
) -> Result<Deployment, slipway_db::Error> {
    let pipeline = app.store.pipeline(job.pipeline_id).await?;
    let project = app.store.project(job.project_id).await?;
    let doc = app.documents.get(&app.store, pipeline.id).await?;
    let def = doc
        .deploy
        .as_ref()
        .and_then(|s| s.environment(env_name))
        .cloned();
    let keyword = p.definition.environment.as_ref();
    let tier = keyword
        .and_then(|e| e.deployment_tier.clone())
        .or_else(|| def.as_ref().map(|d| d.tier.as_str().to_string()))
        .unwrap_or_else(|| Tier::guess(env_name).as_str().to_string());
    let look = lookup(p);
    let url = keyword
        .and_then(|e| e.url.as_deref())
        .map(|u| slipway_core::variables::expand_server(u, &look))
        .filter(|u| !u.is_empty())
        .or_else(|| def.as_ref().and_then(|d| d.url.clone()));
    let env = app
        .store
        .ensure_environment(
            project.id,
            env_name,
            &tier,
            url.as_deref(),
            &format!("{}/{env_name}", project.name),
        )
        .await?;
    let rule = app.store.protection_rule(project.id, env_name).await?;
    let artifacts: Vec<String> = p
        .dependencies
        .iter()
        .filter_map(|d| d.artifacts.clone())
        .collect();
    let mut status = DeploymentStatus::Created;
    let mut why: Option<String> = None;
    let digest = if artifacts.is_empty() && def.is_none() {
        None
    } else {
        let (store, ids) = (app.artifacts.clone(), artifacts.clone());
        match tokio::task::spawn_blocking(move || super::release::digest(&store, &ids)).await {
            Ok(Ok(d)) => Some(d),
            Ok(Err(e)) => {
                status = DeploymentStatus::Failed;
                why = Some(e.to_string());
                None
            }
            Err(e) => return Err(slipway_db::Error::Task(e.to_string())),
        }
    };
    if status == DeploymentStatus::Created {
        if let Some(r) = rule
            .as_ref()
            .filter(|r| !ref_allowed(r, &pipeline.ref_name, pipeline.tag))
        {
            status = DeploymentStatus::Failed;
            why = Some(format!(
                "environment {env_name} is protected: only {} may deploy to it, not {} {}",
                describe_refs(r),
                if pipeline.tag { "tag" } else { "branch" },
                pipeline.ref_name
            ));
        }
    }
    if status == DeploymentStatus::Created {
        if let Some(promo) = def.as_ref().and_then(|d| d.promotion.as_ref()) {
            let allowed = match &digest {
                Some(dg) => {
                    app.store
                        .digest_deployed(project.id, &promo.from, dg)
                        .await?
                }
                None => false,
            };
            if !allowed {
                status = DeploymentStatus::Failed;
                why = Some(promo.refusal(env_name, digest.as_deref().unwrap_or("(no artifacts)")));
            }
        }
    }
    let now = app.store.now();
    let wait_until = rule
        .as_ref()
        .filter(|r| r.wait_timer_ms > 0)
        .map(|r| now.plus(Duration::from_millis(r.wait_timer_ms as u64)));
    if status == DeploymentStatus::Created
        && rule.as_ref().is_some_and(|r| r.required_approvals > 0)
    {
        status = DeploymentStatus::AwaitingApproval;
    }
    let settings = def.as_ref().map(ReleaseSettings::from_def);
    let triggered_by = job.triggered_by.or(pipeline.user_id);
    let triggered_by_name = match triggered_by {
        Some(u) => app
            .store
            .user(u)
            .await
            .map(|u| u.username)
            .unwrap_or_else(|_| format!("user {u}")),
        None => format!("{} pipeline", pipeline.source.as_str()),
    };
    let actor = Actor {
        user_id: triggered_by,
        name: triggered_by_name.clone(),
    };
    let version = if pipeline.tag {
        pipeline.ref_name.clone()
    } else {
        pipeline.sha.chars().take(8).collect()
    };
    let d = app
        .store
        .create_deployment(
            &actor,
            NewDeployment {
                environment: env.id,
                pipeline: Some(pipeline.id),
                job: Some(job.id),
                ref_name: pipeline.ref_name.clone(),
                tag: pipeline.tag,
                sha: pipeline.sha.clone(),
                version,
                digest,
                release_artifacts: artifacts,
                strategy: settings.as_ref().map(|s| s.strategy.name().to_string()),
                settings: settings
                    .as_ref()
                    .map(serde_json::to_value)
                    .transpose()
                    .map_err(|e| slipway_db::Error::Corrupt(e.to_string()))?,
                triggered_by,
                triggered_by_name,
                status,
                reason: why,
                rollback_of: None,
                wait_until,
                variables: None,
            },
        )
        .await?;
    tracing::info!(
        deployment = d.id.0,
        environment = %d.environment,
        project = %project.name,
        status = d.status.as_str(),
        "deployment recorded"
    );
    super::pins(app, project.id).await;
    Ok(d)
}
