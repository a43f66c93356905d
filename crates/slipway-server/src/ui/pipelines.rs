//! Pipeline pages: the list (per branch or tag, by status, paged), one pipeline with its
//! graph and jobs, the "Run pipeline" form, and the pipeline's cancel and retry buttons.
//! Every list costs a fixed number of queries (`slipway_db::listings`).

use crate::app::AppState;
use crate::http::api::pipelines::{cancel_all, retry_failed, run_for, RunBody, RunVariable};
use crate::pipelines::Created;
use crate::ui::graph::{self, CardActions};
use crate::ui::page::{
    csrf_field, notice, open_project, problem, redirect_with, require, url_encode, Layout,
    PageError, ProjectTab, SignedIn, Viewer,
};
use crate::ui::view::{self, Status};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use slipway_core::schedule::{JobStatus, PipelineStatus};
use slipway_db::{
    Action, Pipeline, PipelineId, PipelineQuery, PipelineRow, Project, StageStatus, Timestamp,
};
use std::collections::HashMap;

/// Pipelines per page of the list.
pub const PAGE_SIZE: i64 = 30;

/// A stage of a list's mini graph: index, name, its jobs' statuses and `allow_failure`.
type StageJobs<'a> = (usize, &'a str, Vec<(JobStatus, bool)>);

/// The stages of a pipeline as small icons, from its stage statuses.
pub fn mini_graph(project: &str, p: &Pipeline, stages: &[StageStatus]) -> Markup {
    // Rows come by stage; each stage's composite status from its statuses.
    let mut grouped: Vec<StageJobs> = Vec::new();
    for s in stages {
        match grouped.last_mut() {
            Some((i, n, v)) if *i == s.stage_index && *n == s.stage => {
                v.push((s.status, s.allow_failure))
            }
            _ => grouped.push((s.stage_index, &s.stage, vec![(s.status, s.allow_failure)])),
        }
    }
    html! {
        span.mini-graph {
            @for (_, name, st) in &grouped {
                @let s = view::composite(st.iter().copied());
                a href=(format!("/projects/{project}/pipelines/{}#stage-{name}", p.iid)) title=(format!("{name}: {}", s.label())) {
                    (view::icon(s))
                }
            }
        }
    }
}

/// The ref, marked as a tag when it is one.
pub fn ref_label(project: &str, p: &Pipeline) -> Markup {
    html! {
        a.ref href=(format!("/projects/{project}/pipelines?ref={}", url_encode(&p.ref_name))) title=(if p.tag { "tag" } else { "branch" }) {
            @if p.tag { span.tag { "tag" } " " }
            (p.ref_name)
        }
    }
}

/// The commit: short SHA and the first line of its message.
pub fn commit_cell(p: &Pipeline) -> Markup {
    html! {
        code.sha title=(p.sha) { (view::short_sha(&p.sha)) }
        @if let Some(m) = &p.commit_message {
            " " span.commit-title title=(view::title_line(m, 500)) { (view::title_line(m, 60)) }
        }
    }
}

/// Who or what started it.
pub fn trigger_cell(row: &PipelineRow) -> Markup {
    html! {
        span.source { (view::source_label(row.pipeline.source)) }
        @if let Some(u) = &row.username {
            " by " span.user { (u) }
        }
    }
}

/// A table of pipelines with status, pipeline, commit, trigger, stages and times.
pub fn table(
    project: &str,
    rows: &[PipelineRow],
    stages: &HashMap<PipelineId, Vec<StageStatus>>,
    now: Timestamp,
    caption: &str,
) -> Markup {
    html! {
        table.list.pipelines {
            caption.visually-hidden { (caption) }
            thead {
                tr {
                    th scope="col" { "Status" }
                    th scope="col" { "Pipeline" }
                    th scope="col" { "Commit" }
                    th scope="col" { "Trigger" }
                    th scope="col" { "Stages" }
                    th scope="col" { "Duration" }
                    th scope="col" { "Created" }
                }
            }
            tbody {
                @for row in rows {
                    @let p = &row.pipeline;
                    tr id=(format!("pipeline-{}", p.iid)) data-status=(p.status.as_str()) {
                        td { a href=(format!("/projects/{project}/pipelines/{}", p.iid)) { (view::badge(Status::of_pipeline(p.status))) } }
                        td {
                            a.pipeline-link href=(format!("/projects/{project}/pipelines/{}", p.iid)) { "#" (p.iid) }
                            " " (ref_label(project, p))
                            @if let Some(n) = &p.name { div.muted.small { (n) } }
                        }
                        td { (commit_cell(p)) }
                        td { (trigger_cell(row)) }
                        td { (mini_graph(project, p, stages.get(&p.id).map(Vec::as_slice).unwrap_or(&[]))) }
                        td { (view::duration_cell(p.started_at, p.finished_at, now)) }
                        td { (view::time(p.created_at, now)) }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default, rename = "ref")]
    pub ref_name: String,
    #[serde(default)]
    pub status: String,
    /// Show pipelines older than this one (paging).
    #[serde(default)]
    pub before: Option<i64>,
}

fn parse_status(s: &str) -> Option<PipelineStatus> {
    use PipelineStatus as S;
    [
        S::Created,
        S::Running,
        S::Success,
        S::Failed,
        S::Canceled,
        S::Blocked,
        S::Skipped,
    ]
    .into_iter()
    .find(|x| x.as_str() == s)
}

/// `GET /projects/{project}/pipelines`: filtered by ref and status, newest first.
pub async fn list(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, PageError> {
    let (project, access) = open_project(&app, &viewer, &name).await?;
    let status = parse_status(&q.status);
    let mut rows = app
        .store
        .pipeline_rows(&PipelineQuery {
            project: Some(project.id),
            ref_name: Some(q.ref_name.clone()).filter(|r| !r.is_empty()),
            status,
            before: q.before.map(PipelineId),
            limit: Some(PAGE_SIZE + 1),
        })
        .await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let ids: Vec<PipelineId> = rows.iter().map(|r| r.pipeline.id).collect();
    let stages = app.store.stage_statuses(&ids).await?;
    let refs = app.store.latest_pipeline_per_ref(project.id, 200).await?;
    let now = app.store.now();
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(format!(
            "/projects/{}/pipelines?ref={}&status={}&before={}",
            project.name,
            url_encode(&q.ref_name),
            url_encode(&q.status),
            last.pipeline.id
        )),
        _ => None,
    };
    let title = if q.ref_name.is_empty() {
        "Pipelines".to_string()
    } else {
        format!("Pipelines on {}", q.ref_name)
    };
    Ok(Layout::new(format!("{title} · {}", project.name), &viewer)
        .project(&project.name, ProjectTab::Pipelines)
        .crumb("Pipelines", None)
        .watch(format!("project:{}", project.id))
        .render(html! {
            div.page-head {
                h1 { (title) }
                @if access.can(Action::Trigger) {
                    a.btn.primary href=(format!("/projects/{}/pipelines/new", project.name)) { "Run pipeline" }
                }
            }
            form.filters method="get" action=(format!("/projects/{}/pipelines", project.name)) {
                div.field.inline {
                    label for="ref" { "Branch or tag" }
                    select #ref name="ref" {
                        option value="" selected[q.ref_name.is_empty()] { "All" }
                        @for r in &refs {
                            option value=(r.pipeline.ref_name) selected[r.pipeline.ref_name == q.ref_name] {
                                (r.pipeline.ref_name) @if r.pipeline.tag { " (tag)" }
                            }
                        }
                    }
                }
                div.field.inline {
                    label for="status" { "Status" }
                    select #status name="status" {
                        option value="" selected[status.is_none()] { "Any" }
                        @for s in ["running", "success", "failed", "canceled", "blocked", "skipped", "created"] {
                            option value=(s) selected[q.status == s] { (s) }
                        }
                    }
                }
                button.btn type="submit" { "Filter" }
            }
            div data-live id="pipeline-list" {
                @if rows.is_empty() {
                    p.empty { "No pipelines yet. Push to the repository, or run one." }
                } @else {
                    (table(&project.name, &rows, &stages, now, &title))
                }
                @if let Some(n) = next {
                    p.pager { a href=(n) { "Older pipelines →" } }
                }
            }
        }))
}

/// The pipeline `iid` of `project`.
async fn pipeline_of(app: &AppState, project: &Project, iid: i64) -> Result<Pipeline, PageError> {
    app.store
        .pipeline_by_iid(project.id, iid)
        .await?
        .ok_or_else(|| {
            PageError::not_found(format!("Project {} has no pipeline #{iid}.", project.name))
        })
}

/// `GET /projects/{project}/pipelines/{iid}`: status, commit, trigger, actions, the
/// graph by stage with its `needs`, and the jobs as a table.
pub async fn show(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, iid)): Path<(String, i64)>,
) -> Result<Response, PageError> {
    let (project, access) = open_project(&app, &viewer, &name).await?;
    let pipeline = pipeline_of(&app, &project, iid).await?;
    let row = app.store.pipeline_row(pipeline.id).await?;
    let jobs = app.store.current_jobs(pipeline.id).await?;
    let doc = app.documents.get(&app.store, pipeline.id).await.ok();
    let plan = doc.as_ref().and_then(|d| d.plan.as_ref());
    let now = app.store.now();
    let p = &row.pipeline;
    let can_cancel = access.can(Action::CancelJob)
        && jobs.iter().any(|j| {
            matches!(
                j.status,
                JobStatus::Created
                    | JobStatus::Pending
                    | JobStatus::Running
                    | JobStatus::Scheduled
                    | JobStatus::WaitingForApproval
                    | JobStatus::WaitingForResource
            )
        });
    let can_retry = access.can(Action::RetryJob)
        && jobs
            .iter()
            .any(|j| matches!(j.status, JobStatus::Failed | JobStatus::Canceled));
    let card_actions = |j: &slipway_db::Job| {
        let possible = graph::possible(j);
        CardActions {
            play: possible.play && access.can(Action::PlayJob),
            cancel: possible.cancel && access.can(Action::CancelJob),
            retry: possible.retry && access.can(Action::RetryJob),
        }
    };
    let status = Status::of_pipeline(p.status);
    Ok(Layout::new(format!("Pipeline #{} · {}", p.iid, project.name), &viewer)
        .project(&project.name, ProjectTab::Pipelines)
        .crumb("Pipelines", Some(format!("/projects/{}/pipelines", project.name)))
        .crumb(format!("#{}", p.iid), None)
        .watch(format!("pipeline:{}", p.id))
        .render(html! {
            div data-live id="pipeline-head" {
                div.page-head {
                    h1 { "Pipeline #" (p.iid) " " (view::badge(status)) }
                    div.actions {
                        @if can_retry {
                            form.inline method="post" action=(format!("/projects/{}/pipelines/{}/retry", project.name, p.iid)) {
                                (csrf_field(&viewer)) button.btn type="submit" { "Retry failed jobs" }
                            }
                        }
                        @if can_cancel {
                            form.inline method="post" action=(format!("/projects/{}/pipelines/{}/cancel", project.name, p.iid)) {
                                (csrf_field(&viewer)) button.btn.danger type="submit" { "Cancel pipeline" }
                            }
                        }
                    }
                }
                dl.facts {
                    @if let Some(n) = &p.name { dt { "Name" } dd { (n) } }
                    dt { "Ref" } dd { (ref_label(&project.name, p)) }
                    dt { "Commit" } dd { (commit_cell(p)) }
                    dt { "Trigger" } dd { (trigger_cell(&row)) }
                    dt { "Created" } dd { (view::time(p.created_at, now)) }
                    dt { "Duration" } dd { (view::duration_cell(p.started_at, p.finished_at, now)) }
                    @if !p.variables.is_empty() {
                        dt { "Variables" }
                        dd { @for v in &p.variables { code.var title="value hidden" { (v.key) } " " } }
                    }
                }
                @if let Some(e) = &p.error_message {
                    div.flash.error role="alert" {
                        p { strong { "The pipeline configuration is not valid:" } }
                        pre.errors { (e) }
                    }
                }
                @if let Some(r) = doc.as_ref().and_then(|d| d.skip_reason.as_deref()) {
                    p.flash { "Skipped: " (r) }
                }
            }
            @if !jobs.is_empty() {
                section aria-labelledby="graph-title" {
                    h2 #graph-title { "Jobs by stage" }
                    p.muted.small { "Lines show each job's " code { "needs" } "; jobs without them wait for the stages before theirs." }
                    div data-live id="pipeline-graph" {
                        (graph::render(&viewer, &project.name, plan, &jobs, &card_actions))
                    }
                }
                section aria-labelledby="jobs-title" {
                    h2 #jobs-title { "Jobs" }
                    div data-live id="pipeline-jobs" {
                        (job_table(&viewer, &project.name, &jobs, now, &card_actions))
                    }
                }
            }
        }))
}

fn job_table(
    viewer: &Viewer,
    project: &str,
    jobs: &[slipway_db::Job],
    now: Timestamp,
    actions: &dyn Fn(&slipway_db::Job) -> CardActions,
) -> Markup {
    html! {
        table.list.jobs {
            caption.visually-hidden { "Jobs of the pipeline" }
            thead { tr {
                th scope="col" { "Status" } th scope="col" { "Job" } th scope="col" { "Stage" }
                th scope="col" { "Duration" } th scope="col" { "Finished" } th scope="col" { span.visually-hidden { "Actions" } }
            } }
            tbody {
                @for j in jobs {
                    @let a = actions(j);
                    tr data-job=(j.name) data-status=(j.status.as_str()) {
                        td { (view::badge(Status::of_job(j.status, j.allow_failure))) }
                        td {
                            a href=(format!("/projects/{project}/jobs/{}", j.id)) { (j.name) }
                            @if j.attempt > 1 { " " span.muted.small { "attempt " (j.attempt) } }
                        }
                        td { (j.stage) }
                        td { (view::duration_cell(j.started_at, j.finished_at, now)) }
                        td { @if let Some(f) = j.finished_at { (view::time(f, now)) } @else { span.muted { "—" } } }
                        td.actions {
                            @if a.play { (crate::ui::page::action_button(viewer, &format!("/projects/{project}/jobs/{}/play", j.id), "Run", "small")) }
                            @if a.cancel { (crate::ui::page::action_button(viewer, &format!("/projects/{project}/jobs/{}/cancel", j.id), "Cancel", "small")) }
                            @if a.retry { (crate::ui::page::action_button(viewer, &format!("/projects/{project}/jobs/{}/retry", j.id), "Retry", "small")) }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default, rename = "_csrf")]
    pub csrf: String,
}

/// `POST /projects/{project}/pipelines/{iid}/cancel` (developers).
pub async fn cancel(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, iid)): Path<(String, i64)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.check_csrf(&f.csrf)?;
    let (project, access) = open_project(&app, &viewer, &name).await?;
    require(&access, Action::CancelJob, "cancel pipelines")?;
    let p = pipeline_of(&app, &project, iid).await?;
    let back = format!("/projects/{}/pipelines/{}", project.name, p.iid);
    Ok(match cancel_all(&app, &viewer.actor(), p.id).await {
        Ok(jobs) => redirect_with(
            &back,
            notice(format!("Pipeline #{iid} canceled ({} jobs).", jobs.len())),
        ),
        Err(e) => redirect_with(&back, problem(e.message)),
    })
}

/// `POST /projects/{project}/pipelines/{iid}/retry` (developers).
pub async fn retry(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, iid)): Path<(String, i64)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.check_csrf(&f.csrf)?;
    let (project, access) = open_project(&app, &viewer, &name).await?;
    require(&access, Action::RetryJob, "retry jobs")?;
    let p = pipeline_of(&app, &project, iid).await?;
    let back = format!("/projects/{}/pipelines/{}", project.name, p.iid);
    Ok(match retry_failed(&app, &viewer.actor(), p.id).await {
        Ok(jobs) => redirect_with(
            &back,
            notice(format!("Retrying {} jobs of pipeline #{iid}.", jobs.len())),
        ),
        Err(e) => redirect_with(&back, problem(e.message)),
    })
}

/// Rows the "Run pipeline" form has for variables (the script adds more).
const VARIABLE_ROWS: usize = 3;

/// The branches and tags of the project's mirror, for the form's suggestions.
async fn known_refs(app: &AppState, project: &Project) -> Vec<(String, bool)> {
    let Ok(m) = app.mirrors.get(project).await else {
        return Vec::new();
    };
    match crate::mirrors::blocking(move || m.refs()).await {
        Ok(snap) => snap
            .refs
            .keys()
            .filter_map(|r| match crate::git::split_ref(r) {
                Some((crate::git::RefKind::Branch, n)) => Some((n.to_string(), false)),
                Some((crate::git::RefKind::Tag, n)) => Some((n.to_string(), true)),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn run_form(
    viewer: &Viewer,
    project: &Project,
    refs: &[(String, bool)],
    ref_name: &str,
    variables: &[(String, String)],
    error: Option<&str>,
) -> Response {
    let rows = variables.len().max(VARIABLE_ROWS);
    Layout::new(format!("Run pipeline · {}", project.name), viewer)
        .project(&project.name, ProjectTab::Pipelines)
        .crumb("Pipelines", Some(format!("/projects/{}/pipelines", project.name)))
        .crumb("Run pipeline", None)
        .render(html! {
            section.panel.narrow {
                h1 { "Run pipeline" }
                @if let Some(e) = error {
                    div.flash.error role="alert" { (e) }
                }
                form method="post" action=(format!("/projects/{}/pipelines", project.name)) {
                    (csrf_field(viewer))
                    div.field {
                        label for="ref" { "Run for branch or tag" }
                        input #ref type="text" name="ref" value=(ref_name) list="known-refs" required autocomplete="off";
                        datalist #known-refs {
                            @for (r, tag) in refs { option value=(r) { @if *tag { "tag" } @else { "branch" } } }
                        }
                    }
                    fieldset.variables {
                        legend { "Variables" }
                        p.muted.small { "Given to every job of this pipeline, like GitLab's pipeline variables. Keys: letters, digits and _." }
                        div #variable-rows {
                            @for i in 0..rows {
                                @let (k, v) = variables.get(i).cloned().unwrap_or_default();
                                div.var-row {
                                    label.visually-hidden for=(format!("vk{i}")) { "Variable " (i + 1) " key" }
                                    input id=(format!("vk{i}")) type="text" name="variable_key" value=(k) placeholder="KEY" autocomplete="off" pattern="[A-Za-z0-9_]+";
                                    label.visually-hidden for=(format!("vv{i}")) { "Variable " (i + 1) " value" }
                                    input id=(format!("vv{i}")) type="text" name="variable_value" value=(v) placeholder="value" autocomplete="off";
                                }
                            }
                        }
                        button.btn.small type="button" data-add-row="variable-rows" hidden { "Add variable" }
                    }
                    div.form-actions {
                        button.btn.primary type="submit" { "Run pipeline" }
                        a.btn href=(format!("/projects/{}/pipelines", project.name)) { "Cancel" }
                    }
                }
            }
        })
}

/// `GET /projects/{project}/pipelines/new` (developers).
pub async fn new_form(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let (project, access) = open_project(&app, &viewer, &name).await?;
    require(&access, Action::Trigger, "run pipelines")?;
    let refs = known_refs(&app, &project).await;
    Ok(run_form(
        &viewer,
        &project,
        &refs,
        &project.default_branch,
        &[],
        None,
    ))
}

/// `POST /projects/{project}/pipelines` (developers): `CI_PIPELINE_SOURCE=web`.
pub async fn run(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path(name): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let field = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    viewer.check_csrf(field("_csrf"))?;
    let (project, access) = open_project(&app, &viewer, &name).await?;
    require(&access, Action::Trigger, "run pipelines")?;
    let ref_name = field("ref").trim().to_string();
    let keys = fields.iter().filter(|(n, _)| n == "variable_key");
    let values = fields.iter().filter(|(n, _)| n == "variable_value");
    let entered: Vec<(String, String)> = keys
        .zip(values)
        .map(|((_, k), (_, v))| (k.trim().to_string(), v.clone()))
        .filter(|(k, v)| !k.is_empty() || !v.is_empty())
        .collect();
    let body = RunBody {
        ref_name: Some(ref_name.clone()),
        variables: entered
            .iter()
            .map(|(k, v)| RunVariable {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    };
    let message = match run_for(&app, &viewer.caller(), &project, body).await {
        Ok(Created::Pipeline(p, _)) => {
            return Ok(redirect_with(
                &format!("/projects/{}/pipelines/{}", project.name, p.iid),
                notice(format!("Pipeline #{} created for {}.", p.iid, p.ref_name)),
            ))
        }
        Ok(Created::NotCreated(reason)) => format!("No pipeline created: {reason}"),
        Err(e) if e.status.is_client_error() => e.message,
        Err(e) => return Err(e.into()),
    };
    let refs = known_refs(&app, &project).await;
    let mut r = run_form(
        &viewer,
        &project,
        &refs,
        &ref_name,
        &entered,
        Some(&message),
    );
    *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    Ok(r)
}

/// The stage statuses of `rows`' pipelines, in one query.
pub async fn stage_statuses(
    app: &AppState,
    rows: &[PipelineRow],
) -> Result<HashMap<PipelineId, Vec<StageStatus>>, PageError> {
    let ids: Vec<PipelineId> = rows.iter().map(|r| r.pipeline.id).collect();
    Ok(app.store.stage_statuses(&ids).await?)
}
