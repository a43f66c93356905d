//! Environments and deployments: what runs where, deployment history, approvals and
//! rejections, rollback, and the settings around them (protection rules, resource
//! groups' process modes, notification webhooks). Who may approve and roll back is
//! decided in `crate::deployments::actions`; every change is audited by the store.

use crate::app::AppState;
use crate::deployments::actions;
use crate::http::auth::{project_access, require_project, Caller, Writer};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Body, Page, PageQuery, Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_db::{
    Action, Decision, Deployment, DeploymentId, DeploymentStatus, DeploymentWebhookId, Environment,
    ProcessMode, Project, ProtectionInput, SecretString, User,
};

/// A deployment as the API shows it: the record, who approved it, and the switch time in
/// milliseconds.
pub async fn deployment_view(app: &AppState, d: &Deployment) -> ApiResult<Value> {
    let approvals = app.store.approvals(d.id).await?;
    let mut v = serde_json::to_value(d).map_err(|e| ApiError::internal("encoding", &e))?;
    v["approvals"] = serde_json::to_value(&approvals).unwrap_or(Value::Null);
    v["approved_by"] = json!(approvals
        .iter()
        .filter(|a| a.decision == Decision::Approved)
        .map(|a| a.username.clone())
        .collect::<Vec<_>>());
    v["switch_ms"] = json!(d.switch_us.map(|us| us as f64 / 1000.0));
    v["is_rollback"] = json!(d.rollback_of.is_some());
    Ok(v)
}

/// The deployment serving an environment now: its newest successful one.
pub fn serving(history: &[Deployment]) -> Option<&Deployment> {
    history
        .iter()
        .find(|d| d.status == DeploymentStatus::Success)
}

/// An environment with what runs there.
pub async fn environment_view(
    app: &AppState,
    project: &Project,
    env: &Environment,
) -> ApiResult<Value> {
    let history = app.store.deployments(env.id, None, 50).await?;
    let current = match serving(&history) {
        Some(d) => Some(deployment_view(app, d).await?),
        None => None,
    };
    let latest = match history.first() {
        Some(d) => Some(deployment_view(app, d).await?),
        None => None,
    };
    let awaiting = history
        .iter()
        .filter(|d| d.status == DeploymentStatus::AwaitingApproval)
        .map(|d| d.id)
        .collect::<Vec<_>>();
    let rule = app.store.protection_rule(project.id, &env.name).await?;
    Ok(json!({
        "id": env.id,
        "project": project.name,
        "name": env.name,
        "tier": env.tier,
        "url": env.url,
        "router": env.listen.as_ref().map(|l| format!("http://{l}")),
        "listen": env.listen,
        "protected": rule.is_some(),
        "protection": rule,
        "current": current,
        "latest": latest,
        "awaiting_approval": awaiting,
        "created_at": env.created_at,
    }))
}

async fn find_env(app: &AppState, project: &Project, name: &str) -> ApiResult<Environment> {
    app.store
        .environment_by_name(project.id, name)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "project {} has no environment {name}",
                project.name
            ))
        })
}

/// `GET /environments`: every environment the caller may see, across projects.
pub async fn all(State(app): State<AppState>, caller: Caller) -> ApiResult<Json<Page<Value>>> {
    let mut out = Vec::new();
    for env in app.store.all_environments().await? {
        if !app
            .store
            .can(&caller.user, env.project_id, Action::View)
            .await?
        {
            continue;
        }
        let project = app.store.project(env.project_id).await?;
        out.push(environment_view(&app, &project, &env).await?);
    }
    Ok(Json(Page::all(out)))
}

/// `GET /projects/{project}/environments`.
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Page<Value>>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    let mut out = Vec::new();
    for env in app.store.environments(p.id).await? {
        out.push(environment_view(&app, &p, &env).await?);
    }
    Ok(Json(Page::all(out)))
}

/// `GET /projects/{project}/environments/{name}`: the environment, its router's routes
/// and warm release, and its recent deployments.
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path((key, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    let env = find_env(&app, &p, &name).await?;
    let mut v = environment_view(&app, &p, &env).await?;
    let mut deployments = Vec::new();
    for d in app.store.deployments(env.id, None, 20).await? {
        deployments.push(deployment_view(&app, &d).await?);
    }
    v["deployments"] = json!(deployments);
    if let Ok(engine) = app.deployer.engine() {
        if let Ok(st) = engine.status(&env.engine_name).await {
            v["routes"] = json!(st.routes);
            v["warm"] = json!(st.record.warm.map(|w| json!({
                "release": w.release.release,
                "version": w.release.version,
                "until": slipway_db::Timestamp::from_millis(w.until_ms as i64),
            })));
            v["queued"] = json!(st.queued);
        }
    }
    Ok(Json(v))
}

/// `GET /projects/{project}/environments/{name}/deployments?limit=&cursor=`: newest first.
pub async fn deployments(
    State(app): State<AppState>,
    caller: Caller,
    Path((key, name)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<Value>>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    let env = find_env(&app, &p, &name).await?;
    let limit = q.limit();
    let ds = app
        .store
        .deployments(env.id, q.cursor_i64()?.map(DeploymentId), limit)
        .await?;
    let next = (ds.len() as i64 == limit)
        .then(|| ds.last().map(|d| d.id.to_string()))
        .flatten();
    let mut items = Vec::with_capacity(ds.len());
    for d in &ds {
        items.push(deployment_view(&app, d).await?);
    }
    Ok(Json(Page {
        items,
        next_cursor: next,
    }))
}

async fn deployment_for(
    app: &AppState,
    caller: &Caller,
    id: i64,
) -> ApiResult<(Project, Deployment)> {
    let d = match app.store.deployment(DeploymentId(id)).await {
        Ok(d) => d,
        Err(slipway_db::Error::NotFound { .. }) => {
            return Err(ApiError::not_found(format!("deployment {id} not found")))
        }
        Err(e) => return Err(e.into()),
    };
    let project = app.store.project(d.project_id).await?;
    require_project(app, caller, &project, Action::View)
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::not_found(format!("deployment {id} not found"))
            } else {
                e
            }
        })?;
    Ok((project, d))
}

/// What the caller may do with a deployment (the pages show buttons from it).
pub async fn permissions(
    app: &AppState,
    user: &User,
    project: &Project,
    d: &Deployment,
) -> ApiResult<Value> {
    let (approve, reject) = if d.status == DeploymentStatus::AwaitingApproval {
        (
            actions::approval_refusal(app, user, project, d, Decision::Approved).await?,
            actions::approval_refusal(app, user, project, d, Decision::Rejected).await?,
        )
    } else {
        let why = Some(format!("deployment {} is {}", d.id, d.status.as_str()));
        (why.clone(), why)
    };
    Ok(json!({
        "approve": approve.is_none(),
        "approve_refused": approve,
        "reject": reject.is_none(),
        "reject_refused": reject,
    }))
}

/// `GET /deployments/{id}`: the deployment, its approvals, and what the caller may do.
pub async fn deployment(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let (project, d) = deployment_for(&app, &caller, id).await?;
    let mut v = json!({"deployment": deployment_view(&app, &d).await?});
    v["project"] = json!({"id": project.id, "name": project.name});
    v["can"] = permissions(&app, &caller.user, &project, &d).await?;
    Ok(Json(v))
}

#[derive(Debug, Default, Deserialize)]
pub struct DecisionBody {
    #[serde(default)]
    pub comment: Option<String>,
}

fn optional_body<T: serde::de::DeserializeOwned + Default>(raw: &[u8]) -> ApiResult<T> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn decide(
    app: AppState,
    w: Writer,
    id: i64,
    raw: axum::body::Bytes,
    decision: Decision,
) -> ApiResult<Json<Value>> {
    let (project, d) = deployment_for(&app, &w, id).await?;
    let body: DecisionBody = optional_body(&raw)?;
    let decided = actions::decide(
        &app,
        &w.user,
        &project,
        &d,
        decision,
        body.comment.as_deref(),
    )
    .await?;
    let mut v = json!({"deployment": deployment_view(&app, &decided.deployment).await?});
    v["settled"] = json!(decided.settled);
    Ok(Json(v))
}

/// `POST /deployments/{id}/approve` (`{"comment": ...}` optional): an approver's approval;
/// the one that completes the count lets the deployment proceed.
pub async fn approve(
    State(app): State<AppState>,
    w: Writer,
    Path(id): Path<i64>,
    raw: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    decide(app, w, id, raw, Decision::Approved).await
}

/// `POST /deployments/{id}/reject`: an approver's rejection cancels the deployment.
pub async fn reject(
    State(app): State<AppState>,
    w: Writer,
    Path(id): Path<i64>,
    raw: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    decide(app, w, id, raw, Decision::Rejected).await
}

#[derive(Debug, Default, Deserialize)]
pub struct RollbackBody {
    /// The deployment to bring back (default: the previous successful one).
    #[serde(default)]
    pub to: Option<i64>,
}

/// Rolls an environment back (the API and the pages share it).
pub async fn rollback_env(
    app: &AppState,
    user: &User,
    project: &Project,
    env: &Environment,
    to: Option<i64>,
) -> ApiResult<Value> {
    if let Some(why) = actions::rollback_refusal(app, user, project, env).await? {
        return Err(ApiError::forbidden(why));
    }
    let (_, target) = actions::rollback_target(app, env, to.map(DeploymentId)).await?;
    let (d, report) = actions::rollback(app, user, project, env, &target).await?;
    Ok(json!({
        "deployment": deployment_view(app, &d).await?,
        "rolled_back_to": target.id,
        "status": report.status.as_str(),
        "switch_ms": report.switch_ms,
        "reason": report.reason,
    }))
}

/// `POST /projects/{project}/environments/{name}/rollback` (`{"to": DEPLOYMENT}`
/// optional): deploys the previous successful deployment's release (or `to`'s) with its
/// own variables, as a new deployment marked as a rollback; answers once traffic is on
/// it. On a protected environment only its approvers may; elsewhere developers.
pub async fn rollback(
    State(app): State<AppState>,
    w: Writer,
    Path((key, name)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = project_access(&app, &w, &key, Action::View).await?;
    let body: RollbackBody = optional_body(&raw)?;
    let env = find_env(&app, &p, &name).await?;
    let v = rollback_env(&app, &w.user, &p, &env, body.to).await?;
    let status = if v["status"] == "success" {
        StatusCode::CREATED
    } else {
        StatusCode::CONFLICT
    };
    Ok((status, Json(v)))
}

// ---- protection rules ----

/// `GET /projects/{project}/protected-environments`.
pub async fn protections(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Page<slipway_db::ProtectionRule>>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    Ok(Json(Page::all(app.store.protection_rules(p.id).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectionBody {
    #[serde(default)]
    pub required_approvals: u32,
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub approver_groups: Vec<String>,
    #[serde(default)]
    pub allow_self_approval: bool,
    #[serde(default)]
    pub allowed_branches: Vec<String>,
    #[serde(default)]
    pub allowed_tags: Vec<String>,
    /// `30s`, `5m`, `1h`, or seconds.
    #[serde(default)]
    pub wait_timer: Option<Value>,
}

fn wait_timer_ms(v: &Option<Value>) -> ApiResult<i64> {
    let ms = match v {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| ApiError::invalid("wait_timer: a number of seconds"))?,
        Some(Value::String(s)) => slipway_core::deploy::settings::parse_millis(s)
            .ok_or_else(|| ApiError::invalid(format!("wait_timer {s:?}: use 30s, 5m, 1h")))?,
        Some(_) => return Err(ApiError::invalid("wait_timer: a duration")),
    };
    i64::try_from(ms).map_err(|_| ApiError::invalid("wait_timer is too long"))
}

/// `PUT /projects/{project}/protected-environments/{name}` (maintainers): creates or
/// replaces the rule. A push cannot change it: it lives on the server only.
pub async fn set_protection(
    State(app): State<AppState>,
    w: Writer,
    Path((key, name)): Path<(String, String)>,
    Body(b): Body<ProtectionBody>,
) -> ApiResult<Json<slipway_db::ProtectionRule>> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    let rule = app
        .store
        .set_protection_rule(
            &w.actor(),
            p.id,
            &name,
            &ProtectionInput {
                required_approvals: b.required_approvals,
                allow_self_approval: b.allow_self_approval,
                allowed_branches: b.allowed_branches,
                allowed_tags: b.allowed_tags,
                wait_timer_ms: wait_timer_ms(&b.wait_timer)?,
                approver_users: b.approvers,
                approver_groups: b.approver_groups,
            },
        )
        .await?;
    Ok(Json(rule))
}

/// `DELETE /projects/{project}/protected-environments/{name}` (maintainers).
pub async fn delete_protection(
    State(app): State<AppState>,
    w: Writer,
    Path((key, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    app.store
        .delete_protection_rule(&w.actor(), p.id, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- resource groups ----

/// `GET /projects/{project}/resource-groups`.
pub async fn resource_groups(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Page<slipway_db::ResourceGroup>>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    Ok(Json(Page::all(app.store.resource_groups(p.id).await?)))
}

#[derive(Debug, Deserialize)]
pub struct ResourceGroupBody {
    pub process_mode: String,
}

/// `PUT /projects/{project}/resource-groups/{name}` (maintainers): the process mode
/// (`unordered`, `oldest_first`, `newest_first`), as GitLab's API sets it.
pub async fn set_resource_group(
    State(app): State<AppState>,
    w: Writer,
    Path((key, name)): Path<(String, String)>,
    Body(b): Body<ResourceGroupBody>,
) -> ApiResult<Json<slipway_db::ResourceGroup>> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    let mode = ProcessMode::parse(&b.process_mode).ok_or_else(|| {
        ApiError::invalid(format!(
            "process_mode {:?}: use unordered, oldest_first or newest_first",
            b.process_mode
        ))
    })?;
    Ok(Json(
        app.store
            .set_resource_group_mode(&w.actor(), p.id, &name, mode)
            .await?,
    ))
}

// ---- notification webhooks ----

/// `GET /projects/{project}/deployment-webhooks` (maintainers): without URLs or secrets.
pub async fn webhooks(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Page<slipway_db::DeploymentWebhook>>> {
    let p = project_access(&app, &caller, &key, Action::ManageSettings).await?;
    Ok(Json(Page::all(app.store.deployment_webhooks(p.id).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// `slack` (Slack-compatible incoming webhook) or `json` (signed with `secret`).
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub secret: Option<String>,
    /// Only this environment's deployments (default: all).
    #[serde(default)]
    pub environment: Option<String>,
}

/// `POST /projects/{project}/deployment-webhooks` (maintainers): where deployment
/// started, succeeded, failed and rolled back are posted. The URL and secret are sealed.
pub async fn create_webhook(
    State(app): State<AppState>,
    w: Writer,
    Path(key): Path<String>,
    Body(b): Body<WebhookBody>,
) -> ApiResult<(StatusCode, Json<slipway_db::DeploymentWebhook>)> {
    let p = project_access(&app, &w, &key, Action::ManageSecrets).await?;
    slipway_deploy::notify::check_url(&b.url).map_err(ApiError::invalid)?;
    if b.kind == "slack" && b.secret.is_some() {
        return Err(ApiError::invalid(
            "Slack webhooks are not signed: their URL is the secret",
        ));
    }
    let hook = app
        .store
        .add_deployment_webhook(
            &w.actor(),
            p.id,
            b.environment.as_deref(),
            &b.kind,
            &SecretString::new(b.url),
            b.secret.map(SecretString::new).as_ref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(hook)))
}

/// `DELETE /projects/{project}/deployment-webhooks/{id}` (maintainers).
pub async fn delete_webhook(
    State(app): State<AppState>,
    w: Writer,
    Path((key, id)): Path<(String, i64)>,
) -> ApiResult<StatusCode> {
    let p = project_access(&app, &w, &key, Action::ManageSecrets).await?;
    app.store
        .delete_deployment_webhook(&w.actor(), p.id, DeploymentWebhookId(id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
