//! The job page: status and facts, the play / retry / cancel buttons (for roles that
//! allow them, and checked again when pressed), artifacts to download, other attempts,
//! and the log with its colours and collapsible sections, live while the job runs (see
//! [`crate::ui::log`]).

use crate::app::AppState;
use crate::http::api::jobs::{cancel_job, retry_job};
use crate::http::api::pipelines::{check_variables, RunVariable};
use crate::ui::graph;
use crate::ui::log;
use crate::ui::page::{
    back_to, csrf_field, notice, open_project, problem, redirect_with, require, Layout, PageError,
    ProjectTab, SignedIn, Viewer,
};
use crate::ui::pipelines::{commit_cell, ref_label};
use crate::ui::view::{self, Status};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Form;
use maud::{html, Markup, PreEscaped};
use slipway_core::schedule::JobStatus;
use slipway_db::{Action, Job, JobId, KeyValue, Project};

/// Job `id`, if it belongs to `project`.
pub async fn job_of(app: &AppState, project: &Project, id: i64) -> Result<Job, PageError> {
    match app.store.job(JobId(id)).await {
        Ok(j) if j.project_id == project.id => Ok(j),
        Ok(_) | Err(slipway_db::Error::NotFound { .. }) => Err(PageError::not_found(format!(
            "Project {} has no job {id}.",
            project.name
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The files of an artifact, from the runner's store (at most `max`, and how many).
async fn artifact_files(
    app: &AppState,
    store_id: &str,
    max: usize,
) -> Option<(Vec<(String, u64)>, usize)> {
    let store = app.artifacts.clone();
    let sid = store_id.to_string();
    let set = tokio::task::spawn_blocking(move || store.load_artifacts(&sid))
        .await
        .ok()?
        .ok()?;
    let files: Vec<(String, u64)> = set
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            slipway_runner::store::EntryKind::File { size, .. } => Some((e.path.clone(), *size)),
            _ => None,
        })
        .collect();
    let n = files.len();
    Some((files.into_iter().take(max).collect(), n))
}

/// `GET /projects/{project}/jobs/{id}`.
pub async fn show(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Response, PageError> {
    let (project, access) = open_project(&app, &viewer, &name).await?;
    let job = job_of(&app, &project, id).await?;
    let pipeline = app.store.pipeline(job.pipeline_id).await?;
    let attempts: Vec<Job> = app
        .store
        .jobs(job.pipeline_id)
        .await?
        .into_iter()
        .filter(|j| j.plan_index == job.plan_index)
        .collect();
    let artifacts = app.store.job_artifacts(job.id).await?;
    let mut artifact_views = Vec::new();
    for a in &artifacts {
        artifact_views.push((a, artifact_files(&app, &a.store_id, 50).await));
    }
    let doc = app.documents.get(&app.store, job.pipeline_id).await.ok();
    let needs: Option<Vec<String>> = doc
        .as_ref()
        .and_then(|d| d.plan.as_ref())
        .and_then(|p| p.jobs.get(job.plan_index))
        .and_then(|pj| pj.needs.as_ref())
        .map(|n| n.iter().map(|n| n.job.clone()).collect());
    let triggered_by = match job.triggered_by {
        Some(u) => app.store.usernames(&[u]).await?.remove(&u),
        None => None,
    };
    let log = log::for_page(&app, &job).await?;
    let now = app.store.now();
    let possible = graph::possible(&job);
    let play = possible.play && access.can(Action::PlayJob);
    let retry = possible.retry && access.can(Action::RetryJob) && !job.retried;
    let cancel = possible.cancel && access.can(Action::CancelJob);
    let status = Status::of_job(job.status, job.allow_failure);
    let deployment = match app.store.deployment_for_job(job.id).await? {
        Some(d) => Some(crate::ui::environments::job_panel(&app, &viewer, &project, &d).await?),
        None => None,
    };
    let base = format!("/projects/{}/jobs/{}", project.name, job.id);
    let live = !job.status.is_finished();
    let head = html! {
        div data-live id="job-head" {
            div.page-head {
                h1 { (job.name) " " (view::badge(status)) }
                div.actions {
                    @if retry { (crate::ui::page::action_button(&viewer, &format!("{base}/retry"), "Retry", "")) }
                    @if cancel { (crate::ui::page::action_button(&viewer, &format!("{base}/cancel"), "Cancel", "danger")) }
                }
            }
            p.sub {
                "Job " (job.id) " in stage " strong { (job.stage) } " of "
                a href=(format!("/projects/{}/pipelines/{}", project.name, pipeline.iid)) { "pipeline #" (pipeline.iid) }
                " · " (ref_label(&project.name, &pipeline)) " · " (commit_cell(&pipeline))
            }
            @if job.retried {
                p.flash { "A newer attempt of this job exists." }
            }
            @if job.status == JobStatus::Manual {
                (manual_panel(&viewer, &base, play))
            }
            @if let Some(panel) = &deployment { (panel) }
        }
    };
    let facts = html! {
        aside.job-facts data-live id="job-facts" aria-label="Job details" {
            dl.facts.vertical {
                dt { "Status" } dd { (view::badge(status)) }
                dt { "Duration" } dd { (view::duration_cell(job.started_at, job.finished_at, now)) }
                @if let Some(t) = job.queued_at { dt { "Queued" } dd { (view::time(t, now)) } }
                @if let Some(t) = job.started_at { dt { "Started" } dd { (view::time(t, now)) } }
                @if let Some(t) = job.finished_at { dt { "Finished" } dd { (view::time(t, now)) } }
                @if let Some(t) = job.scheduled_at { @if job.status == JobStatus::Scheduled { dt { "Starts" } dd { (view::absolute(t)) } } }
                @if let Some(c) = job.exit_code { dt { "Exit code" } dd { code { (c) } } }
                @if let Some(r) = &job.failure_reason { dt { "Failure" } dd.failure { (r) } }
                @if job.allow_failure { dt { "Allowed to fail" } dd { "yes" } }
                @if let Some(e) = &job.executor { dt { "Executor" } dd { (e) } }
                @if let Some(u) = &triggered_by { dt { "Run by" } dd { (u) } }
                @if !job.tags.is_empty() { dt { "Tags" } dd { @for t in &job.tags { span.tag { (t) } " " } } }
                @if let Some(n) = &needs {
                    dt { "Needs" }
                    dd { @if n.is_empty() { span.muted { "nothing (starts at once)" } } @else { (n.join(", ")) } }
                }
            }
            @if attempts.len() > 1 {
                h2.small-head { "Attempts" }
                ol.attempts {
                    @for a in &attempts {
                        li {
                            @if a.id == job.id { strong { "#" (a.attempt) } } @else {
                                a href=(format!("/projects/{}/jobs/{}", project.name, a.id)) { "#" (a.attempt) }
                            }
                            " " (view::icon(Status::of_job(a.status, a.allow_failure)))
                        }
                    }
                }
            }
            h2.small-head { "Artifacts" }
            @if artifact_views.is_empty() {
                p.muted.small { "None." }
            } @else {
                ul.artifacts {
                    @for (a, files) in &artifact_views {
                        li {
                            @if a.file_type == "archive" {
                                a.btn.small href=(format!("/api/v1/jobs/{}/artifacts/archive", job.id)) download { "Download " (a.name) }
                            } @else {
                                span { (a.file_type) " report" }
                            }
                            " " span.muted.small { (view::size(a.size)) }
                            @if let Some(t) = a.expire_at { div.muted.small title=(view::absolute(t)) { "Kept until " (view::absolute(t)) } }
                            @if let Some((list, total)) = files {
                                @if !list.is_empty() {
                                    details.files {
                                        summary { (total) @if *total == 1 { " file" } @else { " files" } }
                                        ul { @for (p, s) in list { li { code { (p) } " " span.muted.small { (view::size(*s as i64)) } } } }
                                        @if *total > list.len() { p.muted.small { "and " (total - list.len()) " more" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let log_html = html! {
        section.log-panel aria-labelledby="log-title" {
            div.log-bar {
                h2 #log-title { "Log" }
                span.muted.small #log-size { (view::size(log.size as i64)) }
                div.log-tools {
                    a.btn.small href=(format!("/api/v1/jobs/{}/log", job.id)) { "Raw log" }
                    button.btn.small type="button" data-log-top hidden { "Top" }
                    button.btn.small type="button" data-log-follow hidden aria-pressed="true" { "Follow" }
                }
            }
            @if log.start > 0 {
                p.flash { "Showing the last " (view::size((log.size - log.start) as i64)) " of the log; the "
                    a href=(format!("/api/v1/jobs/{}/log", job.id)) { "raw log" } " has all of it." }
            }
            div.log #log role="log" aria-live="off" tabindex="0"
                data-stream=[live.then(|| format!("{base}/log.events?start={}&offset={}", log.start, log.offset))]
                data-running=[(job.status == JobStatus::Running).then_some("true")]
                data-complete=(if live { "false" } else { "true" }) {
                (PreEscaped(&log.html))
                @if log.size == 0 {
                    div.log-placeholder.muted {
                        @match job.status {
                            JobStatus::Manual => "The job has not run: it waits for someone to start it.",
                            JobStatus::Created => "The job waits for the jobs before it.",
                            JobStatus::Pending => "The job waits for a free executor.",
                            JobStatus::Scheduled => "The job waits for its delay to pass.",
                            JobStatus::Running => "The job has started; its output appears here.",
                            JobStatus::Skipped => "The job was skipped.",
                            _ => "(no output)",
                        }
                    }
                }
            }
            @if live {
                p.muted.small.log-waiting #log-waiting { "The log continues live while the job runs." }
            }
        }
    };
    Ok(
        Layout::new(format!("{} · {}", job.name, project.name), &viewer)
            .project(&project.name, ProjectTab::Pipelines)
            .crumb(
                "Pipelines",
                Some(format!("/projects/{}/pipelines", project.name)),
            )
            .crumb(
                format!("#{}", pipeline.iid),
                Some(format!(
                    "/projects/{}/pipelines/{}",
                    project.name, pipeline.iid
                )),
            )
            .crumb(job.name.clone(), None)
            .watch(format!("pipeline:{}", pipeline.id))
            .render(html! {
                (head)
                div.job-layout {
                    div.job-main { (log_html) }
                    (facts)
                }
            }),
    )
}

/// The manual job's "run" panel, with job variables (GitLab's form).
fn manual_panel(viewer: &Viewer, base: &str, can_play: bool) -> Markup {
    html! {
        section.panel.manual aria-labelledby="manual-title" {
            h2 #manual-title { "This job runs when someone starts it" }
            @if can_play {
                form method="post" action=(format!("{base}/play")) {
                    (csrf_field(viewer))
                    fieldset.variables {
                        legend { "Variables for this run " span.muted { "(optional)" } }
                        div #play-rows {
                            @for i in 0..2 {
                                div.var-row {
                                    label.visually-hidden for=(format!("pk{i}")) { "Variable " (i + 1) " key" }
                                    input id=(format!("pk{i}")) type="text" name="variable_key" placeholder="KEY" autocomplete="off" pattern="[A-Za-z0-9_]+";
                                    label.visually-hidden for=(format!("pv{i}")) { "Variable " (i + 1) " value" }
                                    input id=(format!("pv{i}")) type="text" name="variable_value" placeholder="value" autocomplete="off";
                                }
                            }
                        }
                        button.btn.small type="button" data-add-row="play-rows" hidden { "Add variable" }
                    }
                    button.btn.primary type="submit" { "Run job" }
                }
            } @else {
                p.muted { "Your role does not allow you to start it." }
            }
        }
    }
}

/// `POST /projects/{project}/jobs/{id}/play` (developers), with job variables.
pub async fn play(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, id)): Path<(String, i64)>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "_csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    viewer.check_csrf(csrf)?;
    let (project, access) = open_project(&app, &viewer, &name).await?;
    require(&access, Action::PlayJob, "run manual jobs")?;
    let job = job_of(&app, &project, id).await?;
    let back = back_to(
        &headers,
        &format!("/projects/{}/jobs/{}", project.name, job.id),
    );
    let keys = fields.iter().filter(|(n, _)| n == "variable_key");
    let values = fields.iter().filter(|(n, _)| n == "variable_value");
    let given: Vec<RunVariable> = keys
        .zip(values)
        .filter(|((_, k), _)| !k.trim().is_empty())
        .map(|((_, k), (_, v))| RunVariable {
            key: k.trim().to_string(),
            value: v.clone(),
        })
        .collect();
    let vars = match check_variables(&given) {
        Ok(v) => v,
        Err(e) => return Ok(redirect_with(&back, problem(e.message))),
    };
    let vars: Vec<KeyValue> = vars.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
    Ok(
        match app.store.play_job(&viewer.actor(), job.id, vars).await {
            Ok(j) => redirect_with(&back, notice(format!("Job {} started.", j.name))),
            Err(e) => redirect_with(
                &back,
                problem(crate::http::error::ApiError::from(e).message),
            ),
        },
    )
}

#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default, rename = "_csrf")]
    pub csrf: String,
}

/// `POST /projects/{project}/jobs/{id}/retry` (developers): to the new attempt's page.
pub async fn retry(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, id)): Path<(String, i64)>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.check_csrf(&f.csrf)?;
    let (project, access) = open_project(&app, &viewer, &name).await?;
    require(&access, Action::RetryJob, "retry jobs")?;
    let job = job_of(&app, &project, id).await?;
    let page = format!("/projects/{}/jobs/{}", project.name, job.id);
    let back = back_to(&headers, &page);
    Ok(match retry_job(&app, &viewer.actor(), job.id).await {
        Ok(new) => redirect_with(
            // From the old attempt's page to the new one's; from a list back to it.
            &if back == page {
                format!("/projects/{}/jobs/{}", project.name, new.id)
            } else {
                back
            },
            notice(format!("Retrying {} (attempt {}).", new.name, new.attempt)),
        ),
        Err(e) => redirect_with(&back, problem(e.message)),
    })
}

/// `POST /projects/{project}/jobs/{id}/cancel` (developers).
pub async fn cancel(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, id)): Path<(String, i64)>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.check_csrf(&f.csrf)?;
    let (project, access) = open_project(&app, &viewer, &name).await?;
    require(&access, Action::CancelJob, "cancel jobs")?;
    let job = job_of(&app, &project, id).await?;
    let back = back_to(
        &headers,
        &format!("/projects/{}/jobs/{}", project.name, job.id),
    );
    Ok(match cancel_job(&app, &viewer.actor(), job.id).await {
        Ok(j) => redirect_with(&back, notice(format!("Job {} canceled.", j.name))),
        Err(e) => redirect_with(&back, problem(e.message)),
    })
}
