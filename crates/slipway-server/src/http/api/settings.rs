//! A project's settings beyond the project record: CI/CD variables and secrets (secret
//! values are never returned), members and their roles, pipeline schedules, webhook
//! secrets and trigger tokens. Every change is audited by the store.

use crate::app::AppState;
use crate::http::auth::{project_access, Caller, Writer};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Body, Page, Path, Query};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_db::{
    Action, KeyValue, NewSchedule, Role, ScheduleId, ScheduleUpdate, SecretString, TriggerTokenId,
    UserId, VariableInput, WebhookProvider,
};

// ---- variables ----

/// `GET /projects/{project}/variables` (maintainers): secrets without their values.
pub async fn variables(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Page<slipway_db::Variable>>> {
    let p = project_access(&app, &caller, &key, Action::ManageSettings).await?;
    Ok(Json(Page::all(app.store.variables(p.id).await?)))
}

#[derive(Deserialize)]
pub struct VariableBody {
    pub value: String,
    /// Sealed at rest and never returned; implies masked.
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub masked: bool,
    /// Only for pipelines on protected branches and tags.
    #[serde(default)]
    pub protected: bool,
    #[serde(default)]
    pub raw: bool,
    /// The job gets a path to a file holding the value.
    #[serde(default)]
    pub file: bool,
    pub environment_scope: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// `PUT /projects/{project}/variables/{key}` (maintainers): creates or replaces it.
pub async fn set_variable(
    State(app): State<AppState>,
    w: Writer,
    Path((key, name)): Path<(String, String)>,
    Body(b): Body<VariableBody>,
) -> ApiResult<Json<slipway_db::Variable>> {
    let action = if b.secret || b.masked || b.protected {
        Action::ManageSecrets
    } else {
        Action::ManageSettings
    };
    let p = project_access(&app, &w, &key, action).await?;
    let v = app
        .store
        .set_variable(
            &w.actor(),
            p.id,
            VariableInput {
                key: name,
                value: SecretString::new(b.value),
                secret: b.secret,
                masked: b.masked || b.secret,
                protected: b.protected,
                raw: b.raw,
                file: b.file,
                environment_scope: b.environment_scope.unwrap_or_else(|| "*".into()),
                description: b.description,
            },
        )
        .await?;
    Ok(Json(v))
}

#[derive(Deserialize, Default)]
pub struct ScopeQuery {
    pub environment_scope: Option<String>,
}

/// `DELETE /projects/{project}/variables/{key}?environment_scope=` (maintainers).
pub async fn delete_variable(
    State(app): State<AppState>,
    w: Writer,
    Path((key, name)): Path<(String, String)>,
    Query(q): Query<ScopeQuery>,
) -> ApiResult<StatusCode> {
    let p = project_access(&app, &w, &key, Action::ManageSecrets).await?;
    app.store
        .delete_variable(
            &w.actor(),
            p.id,
            &name,
            q.environment_scope.as_deref().unwrap_or("*"),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- members ----

/// `GET /projects/{project}/members`.
pub async fn members(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Page<slipway_db::Member>>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    Ok(Json(Page::all(app.store.members(p.id).await?)))
}

#[derive(Deserialize)]
pub struct MemberBody {
    /// `viewer`, `developer`, `maintainer` or `admin`.
    pub role: String,
}

async fn user_ref(app: &AppState, user: &str) -> ApiResult<slipway_db::User> {
    let found = match user.parse::<i64>() {
        Ok(id) => app.store.user(UserId(id)).await.ok(),
        Err(_) => app.store.user_by_name(user).await?,
    };
    found.ok_or_else(|| ApiError::not_found(format!("user {user} not found")))
}

/// `PUT /projects/{project}/members/{user}` (project admins): adds a member or changes
/// their role (`{user}` is a user id or name).
pub async fn set_member(
    State(app): State<AppState>,
    w: Writer,
    Path((key, user)): Path<(String, String)>,
    Body(b): Body<MemberBody>,
) -> ApiResult<Json<Value>> {
    let p = project_access(&app, &w, &key, Action::ManageMembers).await?;
    let role = Role::parse(&b.role).ok_or_else(|| {
        ApiError::invalid(format!(
            "unknown role {:?}: viewer, developer, maintainer or admin",
            b.role
        ))
    })?;
    let u = user_ref(&app, &user).await?;
    app.store.set_member(&w.actor(), p.id, u.id, role).await?;
    Ok(Json(
        json!({"user_id": u.id, "username": u.username, "role": role}),
    ))
}

/// `DELETE /projects/{project}/members/{user}` (project admins).
pub async fn remove_member(
    State(app): State<AppState>,
    w: Writer,
    Path((key, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let p = project_access(&app, &w, &key, Action::ManageMembers).await?;
    let u = user_ref(&app, &user).await?;
    app.store.remove_member(&w.actor(), p.id, u.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- schedules ----

/// `GET /projects/{project}/schedules`.
pub async fn schedules(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Page<slipway_db::Schedule>>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    Ok(Json(Page::all(app.store.schedules(p.id).await?)))
}

#[derive(Deserialize)]
pub struct ScheduleBody {
    pub description: Option<String>,
    /// GitLab's cron syntax (`0 2 * * *`).
    pub cron: Option<String>,
    /// `UTC` (default), an offset (`+05:30`) or an IANA zone (`Europe/Berlin`).
    pub cron_timezone: Option<String>,
    #[serde(rename = "ref")]
    pub ref_name: Option<String>,
    pub variables: Option<Vec<KeyValue>>,
    pub active: Option<bool>,
}

fn next_of(app: &AppState, cron: &str, zone: &str) -> ApiResult<slipway_db::Timestamp> {
    crate::triggers::next_run(cron, zone, app.store.now())
        .map_err(|e| ApiError::invalid(format!("cron {cron:?}: {e}")))
}

/// `POST /projects/{project}/schedules` (maintainers): the pipelines run as the caller.
pub async fn create_schedule(
    State(app): State<AppState>,
    w: Writer,
    Path(key): Path<String>,
    Body(b): Body<ScheduleBody>,
) -> ApiResult<(StatusCode, Json<slipway_db::Schedule>)> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    let cron = b
        .cron
        .ok_or_else(|| ApiError::invalid("cron is required"))?;
    let zone = b.cron_timezone.unwrap_or_else(|| "UTC".into());
    let next = next_of(&app, &cron, &zone)?;
    let s = app
        .store
        .create_schedule(
            &w.actor(),
            p.id,
            NewSchedule {
                description: b.description.unwrap_or_default(),
                cron,
                cron_timezone: zone,
                ref_name: b.ref_name.unwrap_or_else(|| p.default_branch.clone()),
                variables: b.variables.unwrap_or_default(),
                next_run_at: next,
                active: b.active.unwrap_or(true),
                owner_id: Some(w.user.id),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(s)))
}

async fn schedule_of(
    app: &AppState,
    project: &slipway_db::Project,
    id: i64,
) -> ApiResult<slipway_db::Schedule> {
    match app.store.schedule(ScheduleId(id)).await {
        Ok(s) if s.project_id == project.id => Ok(s),
        Ok(_) | Err(slipway_db::Error::NotFound { .. }) => {
            Err(ApiError::not_found(format!("schedule {id} not found")))
        }
        Err(e) => Err(e.into()),
    }
}

/// `PATCH /projects/{project}/schedules/{id}` (maintainers).
pub async fn update_schedule(
    State(app): State<AppState>,
    w: Writer,
    Path((key, id)): Path<(String, i64)>,
    Body(b): Body<ScheduleBody>,
) -> ApiResult<Json<slipway_db::Schedule>> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    let cur = schedule_of(&app, &p, id).await?;
    let cron = b.cron.clone().unwrap_or(cur.cron.clone());
    let zone = b.cron_timezone.clone().unwrap_or(cur.cron_timezone.clone());
    let next = if b.cron.is_some() || b.cron_timezone.is_some() || b.active == Some(true) {
        Some(next_of(&app, &cron, &zone)?)
    } else {
        None
    };
    let s = app
        .store
        .update_schedule(
            &w.actor(),
            cur.id,
            ScheduleUpdate {
                description: b.description,
                cron: b.cron,
                cron_timezone: b.cron_timezone,
                ref_name: b.ref_name,
                variables: b.variables,
                next_run_at: next,
                active: b.active,
                owner_id: None,
            },
        )
        .await?;
    Ok(Json(s))
}

/// `DELETE /projects/{project}/schedules/{id}` (maintainers).
pub async fn delete_schedule(
    State(app): State<AppState>,
    w: Writer,
    Path((key, id)): Path<(String, i64)>,
) -> ApiResult<StatusCode> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    let s = schedule_of(&app, &p, id).await?;
    app.store.delete_schedule(&w.actor(), s.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- webhooks ----

fn provider(name: &str) -> ApiResult<WebhookProvider> {
    WebhookProvider::parse(name).ok_or_else(|| {
        ApiError::not_found(format!(
            "unknown webhook provider {name:?}: github, gitlab or gitea"
        ))
    })
}

/// `GET /projects/{project}/webhooks` (maintainers): which providers are set up (never
/// their secrets) and the URL to give them.
pub async fn webhooks(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = project_access(&app, &caller, &key, Action::ManageSettings).await?;
    let hooks = app.store.webhooks(p.id).await?;
    Ok(Json(json!({
        "items": hooks,
        "next_cursor": null,
        "url": format!("{}{}/projects/{}/webhook", app.base_url, crate::http::API_PREFIX, p.id),
    })))
}

#[derive(Deserialize)]
pub struct WebhookBody {
    /// GitHub's and Gitea's HMAC secret, or GitLab's secret token.
    pub secret: String,
    pub active: Option<bool>,
}

/// `PUT /projects/{project}/webhooks/{provider}` (maintainers).
pub async fn set_webhook(
    State(app): State<AppState>,
    w: Writer,
    Path((key, name)): Path<(String, String)>,
    Body(b): Body<WebhookBody>,
) -> ApiResult<Json<slipway_db::Webhook>> {
    let p = project_access(&app, &w, &key, Action::ManageSecrets).await?;
    let h = app
        .store
        .set_webhook(
            &w.actor(),
            p.id,
            provider(&name)?,
            &SecretString::new(b.secret),
            b.active.unwrap_or(true),
        )
        .await?;
    Ok(Json(h))
}

/// `DELETE /projects/{project}/webhooks/{provider}` (maintainers).
pub async fn delete_webhook(
    State(app): State<AppState>,
    w: Writer,
    Path((key, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let p = project_access(&app, &w, &key, Action::ManageSecrets).await?;
    app.store
        .delete_webhook(&w.actor(), p.id, provider(&name)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- trigger tokens ----

/// `GET /projects/{project}/triggers` (maintainers): never the tokens themselves.
pub async fn triggers(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<Page<slipway_db::TriggerToken>>> {
    let p = project_access(&app, &caller, &key, Action::ManageSettings).await?;
    Ok(Json(Page::all(app.store.trigger_tokens(p.id).await?)))
}

#[derive(Deserialize)]
pub struct TriggerBody {
    pub description: String,
}

/// `POST /projects/{project}/triggers` (maintainers): a trigger token, shown once.
pub async fn create_trigger(
    State(app): State<AppState>,
    w: Writer,
    Path(key): Path<String>,
    Body(b): Body<TriggerBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    let (token, info) = app
        .store
        .create_trigger_token(&w.actor(), p.id, &b.description)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token.expose(), "info": info})),
    ))
}

/// `DELETE /projects/{project}/triggers/{id}` (maintainers).
pub async fn revoke_trigger(
    State(app): State<AppState>,
    w: Writer,
    Path((key, id)): Path<(String, i64)>,
) -> ApiResult<StatusCode> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    if !app
        .store
        .trigger_tokens(p.id)
        .await?
        .iter()
        .any(|t| t.id == TriggerTokenId(id))
    {
        return Err(ApiError::not_found(format!("trigger token {id} not found")));
    }
    app.store
        .revoke_trigger_token(&w.actor(), TriggerTokenId(id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
