//! Project pages: the list (with each default branch's latest status), adding a project
//! by local path or clone URL (administrators), and a project's overview: its branches and
//! tags with their latest pipeline, and the latest pipelines.

use crate::app::AppState;
use crate::http::api::projects::{add, NewProjectBody};
use crate::http::error::redact_credentials;
use crate::ui::page::{
    csrf_field, notice, open_project, redirect_with, Layout, PageError, ProjectTab, SignedIn,
    Viewer,
};
use crate::ui::pipelines::{self, commit_cell, ref_label, trigger_cell};
use crate::ui::view::{self, Status};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use maud::html;
use serde::Deserialize;
use slipway_db::{permits, Action, PipelineQuery};

/// `GET /projects`: the projects the viewer may see.
pub async fn list(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
) -> Result<Response, PageError> {
    let projects = app.store.projects().await?;
    let roles = app.store.member_roles(viewer.user.id).await?;
    let latest = app.store.latest_default_branch_pipelines().await?;
    let now = app.store.now();
    let visible: Vec<_> = projects
        .into_iter()
        .filter(|p| permits(&viewer.user, roles.get(&p.id).copied(), Action::View))
        .collect();
    Ok(Layout::new("Projects", &viewer)
        .watch("projects".into())
        .render(html! {
            div.page-head {
                h1 { "Projects" }
                @if viewer.user.is_admin {
                    a.btn.primary href="/projects/-/new" { "Add project" }
                }
            }
            div data-live id="project-list" {
                @if visible.is_empty() {
                    p.empty {
                        @if viewer.user.is_admin { "No projects yet: add one from a local repository or a clone URL." }
                        @else { "You are not a member of any project yet. Ask an administrator to add you." }
                    }
                } @else {
                    table.list.projects {
                        caption.visually-hidden { "Projects" }
                        thead { tr {
                            th scope="col" { "Project" } th scope="col" { "Default branch" }
                            th scope="col" { "Latest pipeline" } th scope="col" { "Your role" }
                        } }
                        tbody {
                            @for p in &visible {
                                tr {
                                    td {
                                        a.project-link href=(format!("/projects/{}", p.name)) { (p.name) }
                                        div.muted.small.repo { (redact_credentials(&p.repository)) }
                                    }
                                    td { code { (p.default_branch) } }
                                    td {
                                        @match latest.get(&p.id) {
                                            Some(pl) => {
                                                a href=(format!("/projects/{}/pipelines/{}", p.name, pl.iid)) { (view::badge(Status::of_pipeline(pl.status))) }
                                                " " span.muted.small { "#" (pl.iid) " · " (view::time(pl.created_at, now)) }
                                            }
                                            None => span.muted { "none yet" },
                                        }
                                    }
                                    td {
                                        @match roles.get(&p.id) {
                                            Some(r) => (r.as_str()),
                                            None if viewer.user.is_admin => "administrator",
                                            None => "—",
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }))
}

fn new_form(viewer: &Viewer, f: &NewProjectForm, error: Option<&str>) -> Response {
    Layout::new("Add project", viewer)
        .crumb("Projects", Some("/projects".into()))
        .crumb("Add project", None)
        .render(html! {
            section.panel.narrow {
                h1 { "Add a project" }
                @if let Some(e) = error { div.flash.error role="alert" { (e) } }
                form method="post" action="/projects/-/new" {
                    (csrf_field(viewer))
                    div.field {
                        label for="name" { "Name" }
                        input #name type="text" name="name" value=(f.name) required pattern="[A-Za-z0-9_][A-Za-z0-9_.\\-]*" maxlength="100" autocomplete="off" aria-describedby="name-help";
                        p.help #name-help { "Letters, digits, '-', '_' and '.'. It names the project in URLs and the CLI." }
                    }
                    div.field {
                        label for="repository" { "Repository" }
                        input #repository type="text" name="repository" value=(f.repository) required autocomplete="off" aria-describedby="repo-help";
                        p.help #repo-help {
                            "A local path (a bare repository or a working copy), or a clone URL. Local repositories report pushes through a "
                            code { "post-receive" } " hook; URLs are polled."
                        }
                    }
                    div.field {
                        label for="default_branch" { "Default branch " span.muted { "(optional)" } }
                        input #default_branch type="text" name="default_branch" value=(f.default_branch) autocomplete="off" aria-describedby="branch-help";
                        p.help #branch-help { "Leave empty to use the repository's own default branch." }
                    }
                    div.field {
                        label for="poll" { "Poll every (seconds) " span.muted { "(optional)" } }
                        input #poll type="number" min="0" name="poll_interval_secs" value=(f.poll_interval_secs) aria-describedby="poll-help";
                        p.help #poll-help { "0 turns polling off. Default: 60." }
                    }
                    div.form-actions {
                        button.btn.primary type="submit" { "Add project" }
                        a.btn href="/projects" { "Cancel" }
                    }
                }
            }
        })
}

#[derive(Debug, Default, Deserialize)]
pub struct NewProjectForm {
    #[serde(default, rename = "_csrf")]
    pub csrf: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub repository: String,
    #[serde(default)]
    pub default_branch: String,
    #[serde(default)]
    pub poll_interval_secs: String,
}

fn admins_only() -> PageError {
    PageError::new(
        StatusCode::FORBIDDEN,
        "Not allowed",
        "Only instance administrators may add projects.",
    )
}

/// `GET /projects/-/new` (administrators). (`-` cannot start a project name, so no
/// project's page is hidden by this one.)
pub async fn new_page(SignedIn(viewer): SignedIn) -> Result<Response, PageError> {
    if !viewer.user.is_admin {
        return Err(admins_only());
    }
    Ok(new_form(&viewer, &NewProjectForm::default(), None))
}

/// `POST /projects/-/new` (administrators): mirrors the repository, as the API does.
pub async fn create(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Form(f): Form<NewProjectForm>,
) -> Result<Response, PageError> {
    viewer.check_csrf(&f.csrf)?;
    if !viewer.user.is_admin {
        return Err(admins_only());
    }
    let poll = match f.poll_interval_secs.trim() {
        "" => None,
        s => match s.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                let mut r = new_form(
                    &viewer,
                    &f,
                    Some("The polling interval must be a whole number of seconds."),
                );
                *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                return Ok(r);
            }
        },
    };
    let body = NewProjectBody {
        name: f.name.trim().to_string(),
        repository: f.repository.trim().to_string(),
        default_branch: Some(f.default_branch.trim().to_string()).filter(|b| !b.is_empty()),
        poll_interval_secs: poll,
        settings: None,
    };
    match add(&app, &viewer.caller(), body).await {
        Ok(p) => Ok(redirect_with(
            &format!("/projects/{}", p.name),
            notice(format!("Project {} added.", p.name)),
        )),
        Err(e) if e.status.is_client_error() => {
            let mut r = new_form(&viewer, &f, Some(&e.message));
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /projects/{project}`: branches and tags with their latest pipeline, then the
/// latest pipelines.
pub async fn show(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let (project, access) = open_project(&app, &viewer, &name).await?;
    let refs = app.store.latest_pipeline_per_ref(project.id, 50).await?;
    let recent = app
        .store
        .pipeline_rows(&PipelineQuery {
            project: Some(project.id),
            limit: Some(10),
            ..Default::default()
        })
        .await?;
    let mut all = refs.clone();
    all.extend(recent.iter().cloned());
    let stages = pipelines::stage_statuses(&app, &all).await?;
    let now = app.store.now();
    let pname = project.name.as_str();
    Ok(Layout::new(pname.to_string(), &viewer)
        .project(pname, ProjectTab::Overview)
        .watch(format!("project:{}", project.id))
        .render(html! {
            div.page-head {
                div {
                    h1 { (pname) }
                    p.muted.repo { (redact_credentials(&project.repository)) " · default branch " code { (project.default_branch) }
                        @if let Some(r) = access.role { " · your role: " (r.as_str()) }
                    }
                }
                @if access.can(Action::Trigger) {
                    a.btn.primary href=(format!("/projects/{pname}/pipelines/new")) { "Run pipeline" }
                }
            }
            div data-live id="project-overview" {
                section aria-labelledby="refs-title" {
                    h2 #refs-title { "Branches and tags" }
                    @if refs.is_empty() {
                        p.empty { "No pipeline has run yet. Push to the repository, or run one." }
                    } @else {
                        table.list.refs {
                            caption.visually-hidden { "Latest pipeline of each branch and tag" }
                            thead { tr {
                                th scope="col" { "Branch or tag" } th scope="col" { "Status" } th scope="col" { "Pipeline" }
                                th scope="col" { "Commit" } th scope="col" { "Stages" } th scope="col" { "Duration" } th scope="col" { "Created" }
                            } }
                            tbody {
                                @for row in &refs {
                                    @let p = &row.pipeline;
                                    tr data-ref=(p.ref_name) {
                                        td { (ref_label(pname, p)) @if !p.tag && p.ref_name == project.default_branch { " " span.tag { "default" } } }
                                        td { (view::badge(Status::of_pipeline(p.status))) }
                                        td { a href=(format!("/projects/{pname}/pipelines/{}", p.iid)) { "#" (p.iid) } " " span.muted.small { (trigger_cell(row)) } }
                                        td { (commit_cell(p)) }
                                        td { (pipelines::mini_graph(pname, p, stages.get(&p.id).map(Vec::as_slice).unwrap_or(&[]))) }
                                        td { (view::duration_cell(p.started_at, p.finished_at, now)) }
                                        td { (view::time(p.created_at, now)) }
                                    }
                                }
                            }
                        }
                    }
                }
                @if !recent.is_empty() {
                    section aria-labelledby="recent-title" {
                        h2 #recent-title { "Latest pipelines" }
                        (pipelines::table(pname, &recent, &stages, now, "Latest pipelines"))
                        p.pager { a href=(format!("/projects/{pname}/pipelines")) { "All pipelines →" } }
                    }
                }
            }
        }))
}
