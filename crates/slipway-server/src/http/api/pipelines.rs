//! Pipelines: lists per project and branch, a pipeline with its stages, jobs and needs,
//! manual runs (`POST /projects/{project}/pipelines`), cancel and retry.

use crate::app::AppState;
use crate::http::auth::{project_access, require_project, AuthMethod, Caller, Writer};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Body, Page, PageQuery, Path, Query};
use crate::pipelines::{self, Created, Origin};
use crate::request::{PipelineRequest, PipelineSource};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use slipway_core::schedule::{self, JobStatus};
use slipway_db::{Action, Job, Pipeline, PipelineId, PipelineQuery, Timestamp};

/// A pipeline as listed.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineView {
    #[serde(flatten)]
    pub pipeline: Pipeline,
    /// From start to finish (or to now while it runs), in milliseconds.
    pub duration_ms: Option<i64>,
}

pub fn duration(
    started: Option<Timestamp>,
    finished: Option<Timestamp>,
    now: Timestamp,
) -> Option<i64> {
    let s = started?;
    Some((finished.unwrap_or(now).as_millis() - s.as_millis()).max(0))
}

pub fn pipeline_view(app: &AppState, p: Pipeline) -> PipelineView {
    PipelineView {
        duration_ms: duration(p.started_at, p.finished_at, app.store.now()),
        pipeline: p,
    }
}

/// A job as shown in a pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    pub duration_ms: Option<i64>,
    /// The jobs it waits for: its `needs`, or `null` when it follows stage order.
    pub needs: Option<Vec<Value>>,
    /// Whether `when: manual` jobs may be played now.
    pub playable: bool,
}

pub fn job_view(
    app: &AppState,
    job: Job,
    doc: Option<&crate::pipelines::PipelineDocument>,
) -> JobView {
    let needs = doc
        .and_then(|d| d.plan.as_ref())
        .and_then(|p| p.jobs.get(job.plan_index))
        .and_then(|pj| pj.needs.as_ref())
        .map(|n| {
            n.iter()
                .map(|n| json!({"job": n.job, "artifacts": n.artifacts, "optional": n.optional}))
                .collect()
        });
    JobView {
        duration_ms: duration(job.started_at, job.finished_at, app.store.now()),
        playable: job.status == JobStatus::Manual,
        needs,
        job,
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(rename = "ref")]
    pub ref_name: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// `GET /projects/{project}/pipelines?ref=&status=&limit=&cursor=`: newest first.
pub async fn list(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<PipelineView>>> {
    let p = project_access(&app, &caller, &key, Action::View).await?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor.clone(),
    };
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(parse_status(s)?),
    };
    let limit = page.limit();
    let items = app
        .store
        .pipelines(&PipelineQuery {
            project: Some(p.id),
            ref_name: q.ref_name.clone().filter(|r| !r.is_empty()),
            status,
            before: page.cursor_i64()?.map(PipelineId),
            limit: Some(limit + 1),
        })
        .await?;
    Ok(Json(paged(&app, items, limit)))
}

fn paged(app: &AppState, mut items: Vec<Pipeline>, limit: i64) -> Page<PipelineView> {
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|p| p.id.0.to_string())
    } else {
        None
    };
    Page {
        items: items.into_iter().map(|p| pipeline_view(app, p)).collect(),
        next_cursor,
    }
}

fn parse_status(s: &str) -> ApiResult<slipway_core::schedule::PipelineStatus> {
    use slipway_core::schedule::PipelineStatus as S;
    Ok(match s {
        "created" => S::Created,
        "running" => S::Running,
        "success" => S::Success,
        "failed" => S::Failed,
        "canceled" => S::Canceled,
        "blocked" => S::Blocked,
        "skipped" => S::Skipped,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown pipeline status {other:?}"
            )))
        }
    })
}

/// A variable given with a run: `{"key": ..., "value": ...}`.
#[derive(Debug, Clone, Deserialize)]
pub struct RunVariable {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
pub struct RunBody {
    /// Branch or tag; default: the project's default branch.
    #[serde(rename = "ref")]
    pub ref_name: Option<String>,
    #[serde(default)]
    pub variables: Vec<RunVariable>,
}

/// Checks run variables' keys as GitLab does.
pub fn check_variables(vars: &[RunVariable]) -> ApiResult<Vec<(String, String)>> {
    vars.iter()
        .map(|v| {
            if v.key.is_empty()
                || v.key.len() > 255
                || !v.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                Err(ApiError::invalid(format!(
                    "variable key {:?}: use letters, digits and '_'",
                    v.key
                )))
            } else {
                Ok((v.key.clone(), v.value.clone()))
            }
        })
        .collect()
}

/// What a trigger answered: the pipeline with its jobs, or why none was made.
pub fn created_response(app: &AppState, created: Created) -> ApiResult<(StatusCode, Json<Value>)> {
    match created {
        Created::Pipeline(p, jobs) => {
            let jobs: Vec<JobView> = jobs.into_iter().map(|j| job_view(app, j, None)).collect();
            Ok((
                StatusCode::CREATED,
                Json(json!({"pipeline": pipeline_view(app, *p), "jobs": jobs})),
            ))
        }
        Created::NotCreated(reason) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_pipeline",
            reason,
        )),
    }
}

/// The ref to run: given, or the default branch; a tag when only a tag has that name.
pub async fn resolve_ref(
    app: &AppState,
    project: &slipway_db::Project,
    ref_name: Option<&str>,
) -> ApiResult<(String, bool)> {
    let name = ref_name
        .filter(|r| !r.is_empty())
        .unwrap_or(&project.default_branch)
        .to_string();
    if let Some(t) = name.strip_prefix("refs/tags/") {
        return Ok((t.to_string(), true));
    }
    let name = name
        .strip_prefix("refs/heads/")
        .unwrap_or(&name)
        .to_string();
    let mirror = app.mirrors.get(project).await?;
    let branch = format!("refs/heads/{name}");
    let tag = format!("refs/tags/{name}");
    let (has_branch, has_tag) = crate::mirrors::blocking(move || {
        Ok((
            mirror.resolve_commit(&branch)?.is_some(),
            mirror.resolve_commit(&tag)?.is_some(),
        ))
    })
    .await?;
    match (has_branch, has_tag) {
        (true, _) => Ok((name, false)),
        (false, true) => Ok((name, true)),
        (false, false) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_ref",
            format!("{name}: no such branch or tag"),
        )),
    }
}

/// `POST /projects/{project}/pipelines` (developers): runs the pipeline for a ref, with
/// variables. `CI_PIPELINE_SOURCE` is `web` from the UI (a session) and `api` otherwise.
pub async fn run(
    State(app): State<AppState>,
    w: Writer,
    Path(key): Path<String>,
    Body(body): Body<RunBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let project = project_access(&app, &w, &key, Action::Trigger).await?;
    let created = run_for(&app, &w, &project, body).await?;
    created_response(&app, created)
}

/// Runs the pipeline of `project` for a ref (the caller's right to trigger is checked
/// by the caller of this), as `POST /projects/{project}/pipelines` and the UI's "Run
/// pipeline" form do.
pub async fn run_for(
    app: &AppState,
    w: &Caller,
    project: &slipway_db::Project,
    body: RunBody,
) -> ApiResult<Created> {
    let variables = check_variables(&body.variables)?;
    // The latest commit: fetch first, as a "Run pipeline" on GitLab uses the ref's head.
    app.mirrors.fetch(project).await?;
    let (ref_name, tag) = resolve_ref(app, project, body.ref_name.as_deref()).await?;
    let source = match w.method {
        AuthMethod::Session { .. } => PipelineSource::Web,
        AuthMethod::Token { .. } => PipelineSource::Api,
    };
    let mut request = PipelineRequest::new(source, ref_name, tag);
    request.variables = variables;
    request.user = Some(crate::triggers::user_context(&w.user));
    Ok(pipelines::create(app, project, request, Origin::user(&w.user)).await?)
}

async fn pipeline_for(
    app: &AppState,
    caller: &Caller,
    id: i64,
    action: Action,
) -> ApiResult<(slipway_db::Project, Pipeline)> {
    let pipeline = match app.store.pipeline(PipelineId(id)).await {
        Ok(p) => p,
        Err(slipway_db::Error::NotFound { .. }) => {
            return Err(ApiError::not_found(format!("pipeline {id} not found")))
        }
        Err(e) => return Err(e.into()),
    };
    let project = app.store.project(pipeline.project_id).await?;
    require_project(app, caller, &project, action)
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::not_found(format!("pipeline {id} not found"))
            } else {
                e
            }
        })?;
    Ok((project, pipeline))
}

/// `GET /pipelines/{id}`: the pipeline, its stages and jobs (latest attempts) with their
/// needs, and the configuration's errors when it is invalid.
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let (project, pipeline) = pipeline_for(&app, &caller, id, Action::View).await?;
    let doc = app.documents.get(&app.store, pipeline.id).await.ok();
    let jobs = app.store.current_jobs(pipeline.id).await?;
    let stages: Vec<String> = doc
        .as_ref()
        .and_then(|d| d.plan.as_ref())
        .map(|p| {
            let mut s: Vec<String> = Vec::new();
            for j in &p.jobs {
                if !s.contains(&j.stage) {
                    s.push(j.stage.clone());
                }
            }
            s
        })
        .unwrap_or_default();
    let errors: Vec<Value> = doc
        .as_ref()
        .map(|d| {
            d.errors
                .iter()
                .map(|e| json!({"path": e.path, "line": e.line, "col": e.col, "message": e.message, "text": e.positioned()}))
                .collect()
        })
        .unwrap_or_default();
    let jobs: Vec<JobView> = jobs
        .into_iter()
        .map(|j| job_view(&app, j, doc.as_deref()))
        .collect();
    Ok(Json(json!({
        "pipeline": pipeline_view(&app, pipeline),
        "project": {"id": project.id, "name": project.name},
        "stages": stages,
        "jobs": jobs,
        "errors": errors,
        "skip_reason": doc.as_ref().and_then(|d| d.skip_reason.clone()),
    })))
}

#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    /// Also list attempts that were retried.
    #[serde(default)]
    pub include_retried: bool,
}

/// `GET /pipelines/{id}/jobs`.
pub async fn jobs(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<Page<JobView>>> {
    let (_, pipeline) = pipeline_for(&app, &caller, id, Action::View).await?;
    let doc = app.documents.get(&app.store, pipeline.id).await.ok();
    let jobs = if q.include_retried {
        app.store.jobs(pipeline.id).await?
    } else {
        app.store.current_jobs(pipeline.id).await?
    };
    Ok(Json(Page::all(
        jobs.into_iter()
            .map(|j| job_view(&app, j, doc.as_deref()))
            .collect(),
    )))
}

/// `POST /pipelines/{id}/cancel` (developers): every unfinished job; running ones are
/// stopped.
pub async fn cancel(
    State(app): State<AppState>,
    w: Writer,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let (_, pipeline) = pipeline_for(&app, &w, id, Action::CancelJob).await?;
    let jobs = cancel_all(&app, &w.actor(), pipeline.id).await?;
    Ok(Json(json!({"canceled": jobs})))
}

/// Cancels every unfinished job of the pipeline and stops those running here (the API
/// and the UI's button).
pub async fn cancel_all(
    app: &AppState,
    actor: &slipway_db::Actor,
    pipeline: PipelineId,
) -> ApiResult<Vec<slipway_db::JobId>> {
    let jobs = app.store.cancel_pipeline(actor, pipeline).await?;
    for j in &jobs {
        app.running.cancel(j.0);
    }
    Ok(jobs)
}

/// `POST /pipelines/{id}/retry` (developers): new attempts of its failed and canceled
/// jobs; the jobs after them wait again.
pub async fn retry(
    State(app): State<AppState>,
    w: Writer,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let (_, pipeline) = pipeline_for(&app, &w, id, Action::RetryJob).await?;
    let retried = retry_failed(&app, &w.actor(), pipeline.id).await?;
    Ok(Json(json!({"retried": retried})))
}

/// New attempts of the pipeline's failed and canceled jobs, and the jobs after them wait
/// again (the API and the UI's button).
pub async fn retry_failed(
    app: &AppState,
    actor: &slipway_db::Actor,
    pipeline: PipelineId,
) -> ApiResult<Vec<Job>> {
    let jobs = app.store.current_jobs(pipeline).await?;
    let mut retried = Vec::new();
    for j in jobs
        .iter()
        .filter(|j| matches!(j.status, JobStatus::Failed | JobStatus::Canceled))
    {
        retried.push(app.store.retry_job(actor, j.id).await?);
    }
    if retried.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            "the pipeline has no failed or canceled job to retry",
        ));
    }
    let indices: Vec<usize> = retried.iter().map(|j| j.plan_index).collect();
    reopen_after(app, pipeline, &indices).await?;
    Ok(retried)
}

/// Jobs skipped because of the retried ones wait again (`created`), so the scheduler
/// decides them anew once the retries finish, as GitLab resets dependent jobs.
pub async fn reopen_after(
    app: &AppState,
    pipeline: PipelineId,
    retried: &[usize],
) -> ApiResult<()> {
    let doc = app.documents.get(&app.store, pipeline).await?;
    let Some(plan) = doc.plan.as_ref() else {
        return Ok(());
    };
    let n = plan.jobs.len();
    let mut after = vec![false; n];
    for &r in retried {
        if r < n {
            after[r] = true;
        }
    }
    // Successors, transitively.
    let preds: Vec<Vec<usize>> = (0..n).map(|i| schedule::predecessors(plan, i)).collect();
    loop {
        let mut changed = false;
        for i in 0..n {
            if !after[i] && preds[i].iter().any(|p| after[*p]) {
                after[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let jobs = app.store.current_jobs(pipeline).await?;
    let changes: Vec<_> = jobs
        .iter()
        .filter(|j| {
            j.plan_index < n
                && after[j.plan_index]
                && !retried.contains(&j.plan_index)
                && matches!(j.status, JobStatus::Skipped | JobStatus::Canceled)
        })
        .map(|j| (j.id, j.status, JobStatus::Created))
        .collect();
    if !changes.is_empty() {
        app.store.set_job_statuses(&changes).await?;
    }
    Ok(())
}
