//! Jobs: detail, the log (from any offset, and live as server-sent events), artifacts,
//! and the actions play, retry and cancel.

use crate::app::AppState;
use crate::http::api::pipelines::{job_view, reopen_after, JobView, RunVariable};
use crate::http::auth::{require_project, Caller, Writer};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Page, Path, Query};
use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use slipway_db::{Action, Job, JobId, KeyValue, Project};
use std::convert::Infallible;
use std::time::Duration;

async fn job_for(
    app: &AppState,
    caller: &Caller,
    id: i64,
    action: Action,
) -> ApiResult<(Project, Job)> {
    let job = match app.store.job(JobId(id)).await {
        Ok(j) => j,
        Err(slipway_db::Error::NotFound { .. }) => {
            return Err(ApiError::not_found(format!("job {id} not found")))
        }
        Err(e) => return Err(e.into()),
    };
    let project = app.store.project(job.project_id).await?;
    require_project(app, caller, &project, action)
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::not_found(format!("job {id} not found"))
            } else {
                e
            }
        })?;
    Ok((project, job))
}

async fn view(app: &AppState, job: Job) -> JobView {
    let doc = app.documents.get(&app.store, job.pipeline_id).await.ok();
    job_view(app, job, doc.as_deref())
}

/// `GET /jobs/{id}`: the job and its artifacts.
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let (project, job) = job_for(&app, &caller, id, Action::View).await?;
    let artifacts = app.store.job_artifacts(job.id).await?;
    let v = view(&app, job).await;
    Ok(Json(json!({
        "job": v,
        "project": {"id": project.id, "name": project.name},
        "artifacts": artifacts,
    })))
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    pub offset: i64,
    /// At most this many bytes (default and maximum 4 MiB).
    pub limit: Option<usize>,
}

const LOG_PAGE: usize = 4 << 20;

/// `GET /jobs/{id}/log?offset=&limit=`: the log's bytes from `offset`, as text.
/// `X-Log-Offset` is where they start, `X-Log-Next-Offset` where the next read starts,
/// `X-Log-Size` the log's size now and `X-Log-Complete` whether the job has finished and
/// nothing follows.
pub async fn log(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let (_, job) = job_for(&app, &caller, id, Action::View).await?;
    if q.offset < 0 {
        return Err(ApiError::bad_request("offset must not be negative"));
    }
    let max = q.limit.unwrap_or(LOG_PAGE).clamp(1, LOG_PAGE);
    let slice = app.store.read_log(job.id, q.offset, max).await?;
    let complete = job.status.is_finished() && slice.next_offset() >= slice.total_size;
    let mut resp = (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        slice.data.clone(),
    )
        .into_response();
    let h = resp.headers_mut();
    let num = |n: i64| HeaderValue::from(n);
    h.insert("x-log-offset", num(slice.offset));
    h.insert("x-log-next-offset", num(slice.next_offset()));
    h.insert("x-log-size", num(slice.total_size));
    h.insert(
        "x-log-complete",
        HeaderValue::from_static(if complete { "true" } else { "false" }),
    );
    Ok(resp)
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    #[serde(default)]
    pub offset: Option<u64>,
}

/// The longest prefix of `bytes` that is whole UTF-8 characters: a multi-byte character
/// cut between two pieces waits for the rest.
fn utf8_prefix(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // Invalid bytes (not a cut character) go as they are (lossily).
        Err(_) => bytes.len(),
    }
}

/// `GET /jobs/{id}/log/stream?offset=`: the log as server-sent events, from `offset` (or
/// the `Last-Event-ID` a reconnecting browser sends): `log` events whose data is text and
/// whose id is the offset after it, then one `end` event with the job's status once the
/// log is complete. What is stored comes first, then what the job writes, with no gap.
pub async fn stream(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, job) = job_for(&app, &caller, id, Action::View).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = resume.or(q.offset).unwrap_or(0);
    let sub = app.hub.subscribe(job.id.0.max(0) as u64, from);
    let shutdown = app.shutdown.clone();
    struct St {
        sub: crate::loghub::LogSubscription,
        carry: Vec<u8>,
        ended: bool,
    }
    let state = St {
        sub,
        carry: Vec::new(),
        ended: false,
    };
    let app2 = app.clone();
    let events = futures_util::stream::unfold(state, move |mut st| {
        let shutdown = shutdown.clone();
        let app = app2.clone();
        async move {
            if st.ended {
                return None;
            }
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    n = st.sub.next() => n,
                };
                match next {
                    Some(Ok(chunk)) => {
                        st.carry.extend_from_slice(&chunk.data);
                        let n = utf8_prefix(&st.carry);
                        if n == 0 {
                            continue;
                        }
                        let text: Vec<u8> = st.carry.drain(..n).collect();
                        let id = chunk.end() - st.carry.len() as u64;
                        let ev = SseEvent::default()
                            .event("log")
                            .id(id.to_string())
                            .data(String::from_utf8_lossy(&text));
                        return Some((Ok::<_, Infallible>(ev), st));
                    }
                    Some(Err(e)) => {
                        st.ended = true;
                        let ev = SseEvent::default()
                            .event("error")
                            .data(json!({"message": e.to_string()}).to_string());
                        return Some((Ok(ev), st));
                    }
                    None => {
                        st.ended = true;
                        let job = app.store.job(JobId(id)).await.ok();
                        let ev = SseEvent::default().event("end").data(
                            json!({
                                "status": job.as_ref().map(|j| j.status.as_str()),
                                "size": st.sub.offset(),
                            })
                            .to_string(),
                        );
                        return Some((Ok(ev), st));
                    }
                }
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct PlayBody {
    #[serde(default)]
    pub variables: Vec<RunVariable>,
}

/// `POST /jobs/{id}/play` (developers): starts a manual job, with job variables.
pub async fn play(
    State(app): State<AppState>,
    w: Writer,
    Path(id): Path<i64>,
    raw: axum::body::Bytes,
) -> ApiResult<Json<JobView>> {
    let (_, job) = job_for(&app, &w, id, Action::PlayJob).await?;
    // The body is optional: `{"variables": [...]}`.
    let body: PlayBody = if raw.iter().all(u8::is_ascii_whitespace) {
        PlayBody::default()
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let vars: Vec<KeyValue> = crate::http::api::pipelines::check_variables(&body.variables)?
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect();
    let job = app.store.play_job(&w.actor(), job.id, vars).await?;
    Ok(Json(view(&app, job).await))
}

/// `POST /jobs/{id}/retry` (developers): a new attempt of a finished job (the old one
/// stays, marked retried); the jobs after it wait again.
pub async fn retry(
    State(app): State<AppState>,
    w: Writer,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let (_, job) = job_for(&app, &w, id, Action::RetryJob).await?;
    let new = retry_job(&app, &w.actor(), job.id).await?;
    Ok((StatusCode::CREATED, Json(view(&app, new).await)))
}

/// A new attempt of a finished job; the jobs after it wait again (the API and the UI).
pub async fn retry_job(app: &AppState, actor: &slipway_db::Actor, job: JobId) -> ApiResult<Job> {
    let new = app.store.retry_job(actor, job).await?;
    reopen_after(app, new.pipeline_id, &[new.plan_index]).await?;
    Ok(new)
}

/// `POST /jobs/{id}/cancel` (developers): a running job is stopped (its processes or
/// containers), a waiting one canceled at once.
pub async fn cancel(
    State(app): State<AppState>,
    w: Writer,
    Path(id): Path<i64>,
) -> ApiResult<Json<JobView>> {
    let (_, job) = job_for(&app, &w, id, Action::CancelJob).await?;
    let job = cancel_job(&app, &w.actor(), job.id).await?;
    Ok(Json(view(&app, job).await))
}

/// Cancels a job, stopping it if it runs here (the API and the UI).
pub async fn cancel_job(app: &AppState, actor: &slipway_db::Actor, job: JobId) -> ApiResult<Job> {
    let job = app.store.cancel_job(actor, job).await?;
    app.running.cancel(job.id.0);
    Ok(job)
}

/// `GET /jobs/{id}/artifacts`: the job's artifacts and the files in them.
pub async fn artifacts(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<Page<Value>>> {
    let (_, job) = job_for(&app, &caller, id, Action::View).await?;
    let mut out = Vec::new();
    for a in app.store.job_artifacts(job.id).await? {
        let store = app.artifacts.clone();
        let sid = a.store_id.clone();
        let files: Vec<Value> = tokio::task::spawn_blocking(move || store.load_artifacts(&sid))
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|set| {
                set.entries
                    .iter()
                    .filter_map(|e| match &e.kind {
                        slipway_runner::store::EntryKind::File { size, .. } => {
                            Some(json!({"path": e.path, "size": size}))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(json!({"artifact": a, "files": files}));
    }
    Ok(Json(Page::all(out)))
}

/// `GET /jobs/{id}/artifacts/archive`: the job's artifacts as a tar archive.
pub async fn archive(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    let (_, job) = job_for(&app, &caller, id, Action::View).await?;
    let Some(a) = app
        .store
        .job_artifacts(job.id)
        .await?
        .into_iter()
        .rfind(|a| a.file_type == "archive")
    else {
        return Err(ApiError::not_found(format!("job {id} has no artifacts")));
    };
    let store = app.artifacts.clone();
    let tmp = app.config.data_dir.join("tmp");
    let sid = a.store_id.clone();
    let file = tokio::task::spawn_blocking(move || crate::artifacts::tar_of(&store, &sid, &tmp))
        .await
        .map_err(|e| ApiError::internal("packing the artifacts", &e))?
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ApiError::not_found(format!("the artifacts of job {id} have expired"))
            } else {
                ApiError::internal("packing the artifacts", &e)
            }
        })?;
    let len = file
        .metadata()
        .map_err(|e| ApiError::internal("packing the artifacts", &e))?
        .len();
    let body = HttpBody::from_stream(tokio_util::io::ReaderStream::new(
        tokio::fs::File::from_std(file),
    ));
    let name = format!(
        "{}-{}.tar",
        slipway_runner::shell::sanitize(&a.name),
        job.id
    );
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
