//! Projects: list, add (by local path or clone URL; the server mirrors it), read, change
//! settings, delete.

use crate::app::AppState;
use crate::git::RepoSource;
use crate::http::auth::{project_access, Caller, Writer};
use crate::http::error::{redact_credentials, ApiError, ApiResult};
use crate::http::extract::{Body, Page, Path};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_db::{Action, NewProject, Project, ProjectUpdate};
use std::time::Duration;

/// A project as the API shows it (credentials in a clone URL are hidden).
#[derive(Debug, Clone, Serialize)]
pub struct ProjectView {
    #[serde(flatten)]
    pub project: Project,
    /// The caller's role, when a member.
    pub role: Option<slipway_db::Role>,
}

pub fn view(mut project: Project, role: Option<slipway_db::Role>) -> ProjectView {
    project.repository = redact_credentials(&project.repository);
    ProjectView { project, role }
}

/// `GET /projects`: the projects the caller may see.
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Page<ProjectView>>> {
    let mut out = Vec::new();
    for p in app.store.projects().await? {
        let role = app.store.member_role(p.id, caller.user.id).await?;
        if caller.user.is_admin || role.is_some() {
            out.push(view(p, role));
        }
    }
    Ok(Json(Page::all(out)))
}

#[derive(Debug, Deserialize)]
pub struct NewProjectBody {
    pub name: String,
    /// A local path (bare or not) or a clone URL.
    pub repository: String,
    /// Default: the repository's own default branch.
    pub default_branch: Option<String>,
    /// Seconds between polls; 0 turns polling off. Default: 60 (for local paths a safety
    /// net beside the post-receive hook).
    pub poll_interval_secs: Option<u64>,
    #[serde(default)]
    pub settings: Option<Value>,
}

/// `POST /projects` (administrators): records the project and mirrors its repository.
pub async fn create(
    State(app): State<AppState>,
    w: Writer,
    Body(body): Body<NewProjectBody>,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    let project = add(&app, &w, body).await?;
    Ok((StatusCode::CREATED, Json(view(project, None))))
}

/// Adds a project (administrators), as `POST /projects` and the UI's form do.
pub async fn add(app: &AppState, w: &Caller, body: NewProjectBody) -> ApiResult<Project> {
    w.require_admin()?;
    let source = RepoSource::parse(&body.repository)
        .map_err(|e| ApiError::invalid(redact_credentials(&e.to_string())))?;
    let repository = match &source {
        RepoSource::Local(p) => p.display().to_string(),
        RepoSource::Url(u) => u.clone(),
    };
    let poll = match body.poll_interval_secs {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        // Local repositories are polled too, slowly: a safety net for pushes whose hook
        // could not reach the server (the hook says so to the pusher).
        None => Some(Duration::from_secs(60)),
    };
    let mut new = NewProject::new(body.name.clone(), repository);
    if let Some(b) = &body.default_branch {
        new.default_branch = b.clone();
    }
    new.poll_interval = poll;
    if let Some(s) = body.settings {
        new.settings = s;
    }
    let project = app.store.create_project(&w.actor(), new).await?;
    let mirror = match app.mirrors.get(&project).await {
        Ok(m) => m,
        Err(e) => {
            // Without its repository the project is of no use: take it back.
            app.mirrors.remove(project.id).await;
            app.store.delete_project(&w.actor(), project.id).await?;
            return Err(ApiError::invalid(redact_credentials(&format!(
                "cannot mirror {}: {e}",
                body.repository
            ))));
        }
    };
    let mut project = project;
    if body.default_branch.is_none() {
        if let Some(head) = mirror.default_branch() {
            if head != project.default_branch {
                project = app
                    .store
                    .update_project(
                        &w.actor(),
                        project.id,
                        ProjectUpdate {
                            default_branch: Some(head),
                            ..ProjectUpdate::default()
                        },
                    )
                    .await?;
            }
        }
    }
    // Polling starts from what the mirror holds now: only later pushes make pipelines.
    if project.poll_interval.is_some() {
        let refs = crate::triggers::snapshot_map(&mirror).await?;
        app.store.record_poll(project.id, None, &refs).await?;
    }
    tracing::info!(project = %project.name, id = project.id.0, "project added");
    Ok(project)
}

/// `GET /projects/{project}`.
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<ProjectView>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    let role = app.store.member_role(p.id, caller.user.id).await?;
    Ok(Json(view(p, role)))
}

#[derive(Debug, Deserialize)]
pub struct ProjectPatch {
    pub repository: Option<String>,
    pub default_branch: Option<String>,
    /// 0 turns polling off.
    pub poll_interval_secs: Option<u64>,
    /// Keys to set in the settings object (`null` removes a key).
    pub settings: Option<serde_json::Map<String, Value>>,
}

/// `PATCH /projects/{project}` (maintainers): repository, default branch, polling,
/// settings (`protected_branches`, `protected_tags`, `ci_config_path`,
/// `auto_cancel_pending_pipelines`, ...).
pub async fn update(
    State(app): State<AppState>,
    w: Writer,
    Path(key): Path<String>,
    Body(body): Body<ProjectPatch>,
) -> ApiResult<Json<ProjectView>> {
    let p = project_access(&app, &w, &key, Action::ManageSettings).await?;
    let repository = match &body.repository {
        Some(r) => Some(
            match RepoSource::parse(r)
                .map_err(|e| ApiError::invalid(redact_credentials(&e.to_string())))?
            {
                RepoSource::Local(p) => p.display().to_string(),
                RepoSource::Url(u) => u,
            },
        ),
        None => None,
    };
    let settings = body.settings.map(|changes| {
        let mut s = p.settings.as_object().cloned().unwrap_or_default();
        for (k, v) in changes {
            if v.is_null() {
                s.remove(&k);
            } else {
                s.insert(k, v);
            }
        }
        Value::Object(s)
    });
    let updated = app
        .store
        .update_project(
            &w.actor(),
            p.id,
            ProjectUpdate {
                repository: repository.clone(),
                default_branch: body.default_branch,
                poll_interval: body
                    .poll_interval_secs
                    .map(|s| (s > 0).then(|| Duration::from_secs(s))),
                settings,
            },
        )
        .await?;
    if repository.is_some() {
        app.mirrors
            .set_source(&updated)
            .await
            .map_err(|e| ApiError::invalid(redact_credentials(&e.to_string())))?;
    }
    let role = app.store.member_role(updated.id, w.user.id).await?;
    Ok(Json(view(updated, role)))
}

/// `DELETE /projects/{project}` (project admins): the project, its pipelines, logs,
/// settings and mirror.
pub async fn delete(
    State(app): State<AppState>,
    w: Writer,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    let p = project_access(&app, &w, &key, Action::DeleteProject).await?;
    app.store.delete_project(&w.actor(), p.id).await?;
    app.mirrors.remove(p.id).await;
    Ok(StatusCode::NO_CONTENT)
}
