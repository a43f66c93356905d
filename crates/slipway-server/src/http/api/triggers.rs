//! Endpoints that start pipelines on a secret of their own rather than a user session:
//! the post-receive hook (`POST /projects/{project}/hook`, the project's hook token as
//! bearer), push webhooks from GitHub, GitLab and Gitea (`POST /projects/{project}/webhook`,
//! verified by signature or token; refusals answered 401 and audited), and trigger
//! tokens (`POST /projects/{project}/trigger/pipeline`, GitLab's form). Also the hook
//! token itself (`POST /projects/{project}/hook-token`, maintainers), which
//! `slipway hook install` asks for.

use crate::app::AppState;
use crate::http::api::pipelines::{created_response, resolve_ref, JobView, PipelineView};
use crate::http::auth::{bearer, find_project, project_access, Writer};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Path;
use crate::pipelines::{self, Created, Origin};
use crate::request::{PipelineRequest, PipelineSource};
use crate::webhook::{self, WebhookError, WebhookEvent};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use slipway_db::{Action, Actor, Project, WebhookProvider};
use std::net::SocketAddr;

/// The description that marks a project's hook token among its trigger tokens.
pub const HOOK_TOKEN_DESCRIPTION: &str = "post-receive hook";

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
}

/// What a push made, for the hook's and webhooks' answers.
fn push_answer(app: &AppState, created: Vec<Created>) -> Value {
    let mut pipelines = Vec::new();
    let mut skipped = Vec::new();
    for c in created {
        match c {
            Created::Pipeline(p, jobs) => {
                let jobs: Vec<JobView> = jobs
                    .into_iter()
                    .map(|j| crate::http::api::pipelines::job_view(app, j, None))
                    .collect();
                let v: PipelineView = crate::http::api::pipelines::pipeline_view(app, *p);
                pipelines.push(json!({"pipeline": v, "jobs": jobs}));
            }
            Created::NotCreated(reason) => skipped.push(reason),
        }
    }
    json!({"pipelines": pipelines, "not_created": skipped})
}

/// `POST /projects/{project}/hook`: the post-receive hook reports a push (`OLD NEW REF`
/// lines, then `option VALUE` lines for push options). Answered once the pipelines are
/// recorded.
pub async fn hook(
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: String,
) -> ApiResult<Json<Value>> {
    let Some(token) = bearer(&headers) else {
        return Err(refused(
            "the hook must send the project's hook token as a bearer token",
        ));
    };
    let project = find_project(&app, &key).await?;
    if app
        .store
        .authenticate_trigger_token(project.id, token)
        .await?
        .is_none()
    {
        app.store
            .audit(
                &Actor::system("hook"),
                "hook.refused",
                "project",
                &project.id.to_string(),
                json!({"from": addr.ip().to_string(), "reason": "bad hook token"}),
            )
            .await?;
        tracing::warn!(project = %project.name, from = %addr.ip(), "hook refused: bad token");
        return Err(refused("the hook token is not valid for this project"));
    }
    let n = crate::hook::parse_notification(&body)
        .map_err(|e| ApiError::bad_request(format!("hook body: {e}")))?;
    let created = crate::triggers::on_push(
        &app,
        &project,
        &n.updates,
        &n.push_options,
        None,
        &Origin::system("hook"),
    )
    .await?;
    Ok(Json(push_answer(&app, created)))
}

/// `POST /projects/{project}/webhook`: a GitHub, GitLab or Gitea delivery. The signature
/// (or GitLab's token) is checked against the project's secret for that provider before
/// anything in the body is read; a refused delivery is answered 401 and written to the
/// audit log.
pub async fn webhook(
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let project = find_project(&app, &key).await?;
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let provider = webhook::detect(&pairs)
        .ok_or_else(|| ApiError::bad_request(WebhookError::UnknownProvider.to_string()))?;
    let db_provider = match provider {
        webhook::Provider::GitHub => WebhookProvider::Github,
        webhook::Provider::GitLab => WebhookProvider::Gitlab,
        webhook::Provider::Gitea => WebhookProvider::Gitea,
    };
    let secret = app.store.webhook_secret(project.id, db_provider).await?;
    let secret = secret.as_ref().map(|s| s.expose()).unwrap_or("");
    let delivery = match webhook::receive(&pairs, &body, secret) {
        Ok(d) => d,
        Err(WebhookError::Signature(e)) => {
            app.store
                .audit(
                    &Actor::system(format!("webhook:{}", provider.as_str())),
                    "webhook.refused",
                    "project",
                    &project.id.to_string(),
                    json!({"provider": provider.as_str(), "from": addr.ip().to_string(), "reason": e.to_string()}),
                )
                .await?;
            tracing::warn!(project = %project.name, provider = provider.as_str(), from = %addr.ip(), reason = %e, "webhook refused");
            return Err(refused(format!("webhook refused: {e}")));
        }
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    };
    let origin = Origin::system(&format!("webhook:{}", provider.as_str()));
    match delivery.event {
        WebhookEvent::Push(push) => {
            let user = push.pusher.as_ref().map(|a| a.to_context());
            let created =
                crate::triggers::on_push(&app, &project, &[push.ref_update()], &[], user, &origin)
                    .await?;
            Ok((StatusCode::OK, Json(push_answer(&app, created))))
        }
        WebhookEvent::MergeRequest(mr) => {
            let Some(request) = PipelineRequest::for_merge_request(&mr) else {
                return Ok((
                    StatusCode::OK,
                    Json(
                        json!({"pipelines": [], "not_created": ["this merge request event starts no pipeline"]}),
                    ),
                ));
            };
            let _serial = app.mirrors.trigger_lock(project.id).await;
            let mirror = app.mirrors.fetch(&project).await?;
            // A fork's commits are fetched from the target's merge request ref.
            let head = mr.head_ref();
            let spec = format!("+{head}:refs/slipway/mr/{}", mr.iid);
            let _ = crate::mirrors::blocking(move || mirror.fetch_refspecs(&[spec.as_str()])).await;
            let created = pipelines::create(&app, &project, request, origin).await?;
            Ok((StatusCode::OK, Json(push_answer(&app, vec![created]))))
        }
        WebhookEvent::Ping => Ok((StatusCode::OK, Json(json!({"pong": true})))),
        WebhookEvent::Ignored(name) => Ok((StatusCode::ACCEPTED, Json(json!({"ignored": name})))),
    }
}

/// A trigger-token run's fields: token, ref, variables.
type TriggerParams = (Option<String>, Option<String>, Vec<(String, String)>);

/// The parameters of a trigger-token run, as JSON or as GitLab's form fields
/// (`token`, `ref`, `variables[KEY]=VALUE`).
fn trigger_params(headers: &HeaderMap, body: &[u8]) -> ApiResult<TriggerParams> {
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        let mut vars = Vec::new();
        if let Some(m) = v.get("variables").and_then(|m| m.as_object()) {
            for (k, x) in m {
                vars.push((
                    k.clone(),
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string()),
                ));
            }
        }
        return Ok((
            v.get("token").and_then(|t| t.as_str()).map(str::to_string),
            v.get("ref").and_then(|t| t.as_str()).map(str::to_string),
            vars,
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| ApiError::bad_request(format!("invalid form body: {e}")))?;
    let mut token = None;
    let mut r = None;
    let mut vars = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "token" => token = Some(v),
            "ref" => r = Some(v),
            _ => {
                if let Some(name) = k
                    .strip_prefix("variables[")
                    .and_then(|n| n.strip_suffix(']'))
                {
                    vars.push((name.to_string(), v));
                }
            }
        }
    }
    Ok((token, r, vars))
}

/// `POST /projects/{project}/trigger/pipeline`: GitLab's pipeline trigger API. The
/// trigger token goes in the `token` field (form or JSON) and the ref in `ref`;
/// variables as `variables[KEY]=VALUE`. `CI_PIPELINE_SOURCE` is `trigger`.
pub async fn trigger(
    State(app): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (token, ref_name, vars) = trigger_params(&headers, &body)?;
    let project: Project = find_project(&app, &key).await?;
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(refused("give the trigger token in the `token` field"));
    };
    let Some(t) = app
        .store
        .authenticate_trigger_token(project.id, &token)
        .await?
    else {
        app.store
            .audit(
                &Actor::system("trigger"),
                "trigger.refused",
                "project",
                &project.id.to_string(),
                json!({"from": addr.ip().to_string()}),
            )
            .await?;
        return Err(refused("the trigger token is not valid for this project"));
    };
    let checked = crate::http::api::pipelines::check_variables(
        &vars
            .iter()
            .map(|(k, v)| crate::http::api::pipelines::RunVariable {
                key: k.clone(),
                value: v.clone(),
            })
            .collect::<Vec<_>>(),
    )?;
    let _serial = app.mirrors.trigger_lock(project.id).await;
    app.mirrors.fetch(&project).await?;
    let (name, tag) = resolve_ref(&app, &project, ref_name.as_deref()).await?;
    let mut request = PipelineRequest::new(PipelineSource::Trigger, name, tag);
    request.variables = checked;
    let mut origin = Origin::system(&format!("trigger:{}", t.id));
    if let Some(owner) = t.owner_id {
        if let Ok(u) = app.store.user(owner).await {
            request.user = Some(crate::triggers::user_context(&u));
            origin.user = Some(u.id);
        }
    }
    let created = pipelines::create(&app, &project, request, origin).await?;
    created_response(&app, created)
}

/// `POST /projects/{project}/hook-token` (maintainers): a new token for the project's
/// post-receive hook (older hook tokens are revoked) and the URL the hook posts to.
pub async fn hook_token(
    State(app): State<AppState>,
    w: Writer,
    Path(key): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let project = project_access(&app, &w, &key, Action::ManageSettings).await?;
    for t in app.store.trigger_tokens(project.id).await? {
        if t.description == HOOK_TOKEN_DESCRIPTION && t.revoked_at.is_none() {
            app.store.revoke_trigger_token(&w.actor(), t.id).await?;
        }
    }
    let (token, _) = app
        .store
        .create_trigger_token(&w.actor(), project.id, HOOK_TOKEN_DESCRIPTION)
        .await?;
    let url = format!(
        "{}{}/projects/{}/hook",
        app.base_url,
        crate::http::API_PREFIX,
        project.id
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token.expose(), "url": url, "project": project.id})),
    ))
}
