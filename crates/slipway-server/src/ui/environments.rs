//! Environment pages: a project's environments with what runs where (version, commit,
//! since when, deployed and approved by whom, the router's address), one environment
//! with its traffic, protection and deployment history, one deployment with its
//! approvals, and the approve, reject and rollback buttons for those allowed (the same
//! checks as the API, `crate::deployments::actions`, run again when a form is sent).

use crate::app::AppState;
use crate::deployments::actions;
use crate::http::api::environments::{rollback_env, serving};
use crate::ui::page::{
    back_to, csrf_field, find_project, notice, problem, project_access, redirect_with, url_encode,
    Layout, PageError, ProjectTab, SignedIn, Viewer,
};
use crate::ui::view::{self, Status};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use slipway_db::{
    Approval, Decision, Deployment, DeploymentId, DeploymentStatus, Environment, Project,
    ProtectionRule, Timestamp,
};

/// A deployment's status as a badge.
pub fn status(s: DeploymentStatus) -> Status {
    match s {
        DeploymentStatus::Created => Status::Created,
        DeploymentStatus::Waiting => Status::Pending,
        DeploymentStatus::AwaitingApproval => Status::Approval,
        DeploymentStatus::Running => Status::Running,
        DeploymentStatus::Success => Status::Success,
        DeploymentStatus::Failed => Status::Failed,
        DeploymentStatus::Canceled => Status::Canceled,
        DeploymentStatus::RolledBack => Status::RolledBack,
        DeploymentStatus::Skipped => Status::Skipped,
    }
}

fn env_href(project: &str, env: &str) -> String {
    format!("/projects/{project}/environments/{}", url_encode(env))
}

fn deployment_href(project: &str, id: DeploymentId) -> String {
    format!("/projects/{project}/deployments/{id}")
}

fn approved_by(approvals: &[Approval]) -> Vec<&str> {
    approvals
        .iter()
        .filter(|a| a.decision == Decision::Approved)
        .map(|a| a.username.as_str())
        .collect()
}

fn people(names: &[&str]) -> Markup {
    html! {
        @if names.is_empty() { span.muted { "—" } }
        @else { @for (i, n) in names.iter().enumerate() { @if i > 0 { ", " } span.user { (n) } } }
    }
}

fn commit(project: &str, d: &Deployment) -> Markup {
    html! {
        code.sha title=(d.sha) { (view::short_sha(&d.sha)) }
        @if let Some(p) = d.pipeline_id {
            " " a.muted.small href=(format!("/projects/{project}/pipelines/-/id/{p}")) title="pipeline" { "pipeline" }
        }
    }
}

fn protection_summary(rule: &Option<ProtectionRule>) -> Markup {
    html! {
        @match rule {
            None => { p.muted { "Not protected: every deployment starts by itself." } }
            Some(r) => {
                dl.facts {
                    dt { "Approvals" }
                    dd {
                        @if r.required_approvals == 0 { "none needed" } @else {
                            (r.required_approvals) " from "
                            @if r.approver_users.is_empty() && r.approver_groups.is_empty() { "the project's maintainers" } @else {
                                @for (i, u) in r.approver_users.iter().enumerate() { @if i > 0 { ", " } span.user { (u.username) } }
                                @if !r.approver_users.is_empty() && !r.approver_groups.is_empty() { ", " }
                                @for (i, g) in r.approver_groups.iter().enumerate() { @if i > 0 { ", " } "group " span.user { (g.name) } }
                            }
                            @if !r.allow_self_approval { " (not whoever triggered it)" }
                        }
                    }
                    dt { "Refs" }
                    dd {
                        @if r.allowed_branches.is_empty() && r.allowed_tags.is_empty() { "any branch or tag" } @else {
                            @if !r.allowed_branches.is_empty() { "branches " code { (r.allowed_branches.join(", ")) } }
                            @if !r.allowed_branches.is_empty() && !r.allowed_tags.is_empty() { "; " }
                            @if !r.allowed_tags.is_empty() { "tags " code { (r.allowed_tags.join(", ")) } }
                        }
                    }
                    @if r.wait_timer_ms > 0 {
                        dt { "Wait timer" } dd { (view::duration_ms(r.wait_timer_ms)) }
                    }
                }
            }
        }
    }
}

/// The approve and reject forms for a deployment awaiting approval, as the viewer may
/// use them (or why not).
async fn decision_forms(
    app: &AppState,
    viewer: &Viewer,
    project: &Project,
    d: &Deployment,
) -> Result<Markup, PageError> {
    if d.status != DeploymentStatus::AwaitingApproval {
        return Ok(html! {});
    }
    let approve =
        actions::approval_refusal(app, &viewer.user, project, d, Decision::Approved).await?;
    let reject =
        actions::approval_refusal(app, &viewer.user, project, d, Decision::Rejected).await?;
    let base = deployment_href(&project.name, d.id);
    Ok(html! {
        @if approve.is_none() || reject.is_none() {
            form.decision method="post" action=(format!("{base}/approve")) {
                (csrf_field(viewer))
                label.visually-hidden for=(format!("comment-{}", d.id)) { "Comment" }
                input id=(format!("comment-{}", d.id)) type="text" name="comment" placeholder="Comment (optional)" autocomplete="off";
                @if approve.is_none() {
                    " " button.btn.primary.small type="submit" { "Approve" }
                }
                @if reject.is_none() {
                    " " button.btn.danger.small type="submit" formaction=(format!("{base}/reject")) { "Reject" }
                }
            }
        }
        @if let Some(why) = &approve {
            p.muted.small { "You cannot approve: " (why) "." }
        }
    })
}

/// The job page's note about the deployment a job makes, with the decision forms.
pub async fn job_panel(
    app: &AppState,
    viewer: &Viewer,
    project: &Project,
    d: &Deployment,
) -> Result<Markup, PageError> {
    let forms = decision_forms(app, viewer, project, d).await?;
    Ok(html! {
        section.panel.deployment-note aria-label="Deployment" {
            p {
                "This job deploys to "
                a href=(env_href(&project.name, &d.environment)) { strong { (d.environment) } } ": "
                a href=(deployment_href(&project.name, d.id)) { "deployment #" (d.id) }
                " " (view::badge(status(d.status)))
                @if let Some(r) = &d.reason { " " span.muted.small { (r) } }
            }
            (forms)
        }
    })
}

/// `GET /projects/{project}/environments`.
pub async fn list(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let project = find_project(&app, &name).await?;
    project_access(&app, &viewer, &project).await?;
    let envs = app.store.environments(project.id).await?;
    let now = app.store.now();
    let mut rows = Vec::new();
    for e in &envs {
        let history = app.store.deployments(e.id, None, 30).await?;
        let current = serving(&history).cloned();
        let approvals = match &current {
            Some(d) => app.store.approvals(d.id).await?,
            None => Vec::new(),
        };
        let awaiting = history
            .iter()
            .filter(|d| d.status == DeploymentStatus::AwaitingApproval)
            .count();
        let rule = app.store.protection_rule(project.id, &e.name).await?;
        rows.push((
            e.clone(),
            history.first().cloned(),
            current,
            approvals,
            awaiting,
            rule,
        ));
    }
    Ok(Layout::new(format!("Environments · {}", project.name), &viewer)
        .project(&project.name, ProjectTab::Environments)
        .crumb("Environments", None)
        .watch(format!("project:{}", project.id))
        .render(html! {
            div.page-head { h1 { "Environments" } }
            div data-live id="environments" {
                @if rows.is_empty() {
                    p.empty { "No deployments yet. A job with " code { "environment:" } " creates its environment when it first runs." }
                } @else {
                    table.list.environments {
                        caption.visually-hidden { "Environments and what runs there" }
                        thead { tr {
                            th scope="col" { "Environment" }
                            th scope="col" { "Running" }
                            th scope="col" { "Commit" }
                            th scope="col" { "Since" }
                            th scope="col" { "Deployed by" }
                            th scope="col" { "Approved by" }
                            th scope="col" { "Latest" }
                            th scope="col" { "Address" }
                        } }
                        tbody {
                            @for (e, latest, current, approvals, awaiting, rule) in &rows {
                                tr id=(format!("env-{}", e.name)) {
                                    td {
                                        a.env-link href=(env_href(&project.name, &e.name)) { strong { (e.name) } }
                                        " " span.tag { (e.tier) }
                                        @if rule.is_some() { " " span.tag title="protected" { "protected" } }
                                    }
                                    @match current {
                                        Some(d) => {
                                            td { a href=(deployment_href(&project.name, d.id)) { strong { (d.version) } } }
                                            td { (commit(&project.name, d)) }
                                            td { (view::time(d.finished_at.unwrap_or(d.updated_at), now)) }
                                            td { span.user { (d.triggered_by_name) } }
                                            td { (people(&approved_by(approvals))) }
                                        }
                                        None => { td.muted colspan="5" { "nothing deployed yet" } }
                                    }
                                    td {
                                        @if let Some(d) = latest {
                                            a href=(deployment_href(&project.name, d.id)) { (view::badge(status(d.status))) }
                                        }
                                        @if *awaiting > 0 { " " a.tag href=(env_href(&project.name, &e.name)) { (awaiting) " awaiting approval" } }
                                    }
                                    td {
                                        @if let Some(l) = &e.listen { a href=(format!("http://{l}/")) { code { (l) } } }
                                        @if let Some(u) = &e.url { div.small { a href=(u) { (u) } } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }))
}

fn history_table(
    project: &str,
    rows: &[(Deployment, Vec<Approval>)],
    current: Option<DeploymentId>,
    can_rollback: bool,
    viewer: &Viewer,
    env: &Environment,
    now: Timestamp,
) -> Markup {
    html! {
        table.list.deployments {
            caption.visually-hidden { "Deployment history" }
            thead { tr {
                th scope="col" { "Deployment" } th scope="col" { "Status" } th scope="col" { "Version" }
                th scope="col" { "Commit" } th scope="col" { "Strategy" } th scope="col" { "Created" }
                th scope="col" { "By" } th scope="col" { "Approved by" } th scope="col" { "Notes" }
                th scope="col" { span.visually-hidden { "Actions" } }
            } }
            tbody {
                @for (d, approvals) in rows {
                    tr id=(format!("deployment-{}", d.id)) data-status=(d.status.as_str()) {
                        td { a href=(deployment_href(project, d.id)) { "#" (d.id) } }
                        td { (view::badge(status(d.status))) @if Some(d.id) == current { " " span.tag { "serving" } } }
                        td { (d.version) }
                        td { (commit(project, d)) }
                        td { (d.strategy.as_deref().unwrap_or("script")) }
                        td { (view::time(d.created_at, now)) }
                        td { span.user { (d.triggered_by_name) } }
                        td { (people(&approved_by(approvals))) }
                        td.small {
                            @if let Some(r) = d.rollback_of { "rollback to " a href=(deployment_href(project, r)) { "#" (r) } "; " }
                            @if let Some(us) = d.switch_us { "switch " (format!("{:.1}", us as f64 / 1000.0)) " ms; " }
                            @if let Some(r) = &d.reason { span.muted { (r) } }
                        }
                        td.actions {
                            @if can_rollback && d.settings.is_some() && Some(d.id) != current
                                && matches!(d.status, DeploymentStatus::Success | DeploymentStatus::RolledBack) {
                                form.inline method="post" action=(format!("{}/rollback", env_href(project, &env.name))) {
                                    (csrf_field(viewer))
                                    input type="hidden" name="to" value=(d.id);
                                    button.btn.small type="submit" title=(format!("Deploy {} again with its own variables", d.version)) { "Roll back to this" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /projects/{project}/environments/{name}`.
pub async fn show(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, env_name)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let project = find_project(&app, &name).await?;
    project_access(&app, &viewer, &project).await?;
    let env = app
        .store
        .environment_by_name(project.id, &env_name)
        .await?
        .ok_or_else(|| PageError::not_found(format!("There is no environment {env_name:?}.")))?;
    let now = app.store.now();
    let history = app.store.deployments(env.id, None, 30).await?;
    let mut rows = Vec::with_capacity(history.len());
    for d in &history {
        rows.push((d.clone(), app.store.approvals(d.id).await?));
    }
    let current = serving(&history).cloned();
    let rule = app.store.protection_rule(project.id, &env.name).await?;
    let can_rollback = actions::rollback_refusal(&app, &viewer.user, &project, &env)
        .await?
        .is_none();
    let previous = if can_rollback {
        actions::rollback_target(&app, &env, None)
            .await
            .ok()
            .map(|(_, t)| t)
    } else {
        None
    };
    let status = match app.deployer.engine() {
        Ok(e) => e.status(&env.engine_name).await.ok(),
        Err(_) => None,
    };
    let mut awaiting = Vec::new();
    for (d, approvals) in rows
        .iter()
        .filter(|(d, _)| d.status == DeploymentStatus::AwaitingApproval)
    {
        awaiting.push((
            d.clone(),
            approvals.clone(),
            decision_forms(&app, &viewer, &project, d).await?,
        ));
    }
    let current_approvals = rows
        .iter()
        .find(|(d, _)| Some(d.id) == current.as_ref().map(|c| c.id))
        .map(|(_, a)| a.clone())
        .unwrap_or_default();
    let base = env_href(&project.name, &env.name);
    Ok(Layout::new(format!("{} · {}", env.name, project.name), &viewer)
        .project(&project.name, ProjectTab::Environments)
        .crumb("Environments", Some(format!("/projects/{}/environments", project.name)))
        .crumb(env.name.clone(), None)
        .watch(format!("project:{}", project.id))
        .render(html! {
            div data-live id="environment-head" {
                div.page-head {
                    h1 { (env.name) " " span.tag { (env.tier) } }
                    div.actions {
                        @if let Some(t) = &previous {
                            form.inline method="post" action=(format!("{base}/rollback")) {
                                (csrf_field(&viewer))
                                button.btn.danger type="submit" title=(format!("Deploy {} (deployment {}) again with its own variables", t.version, t.id)) {
                                    "Roll back to " (t.version)
                                }
                            }
                        }
                    }
                }
                p.sub {
                    @if let Some(l) = &env.listen { "Served by Slipway's router at " a href=(format!("http://{l}/")) { code { "http://" (l) } } }
                    @if let Some(u) = &env.url { " · " a href=(u) { (u) } }
                }
            }
            div data-live id="environment-now" {
                section.panel aria-labelledby="now-title" {
                    h2 #now-title { "Running now" }
                    @match &current {
                        None => { p.muted { "Nothing has been deployed here successfully yet." } }
                        Some(d) => {
                            dl.facts {
                                dt { "Version" } dd { a href=(deployment_href(&project.name, d.id)) { strong { (d.version) } } " (deployment #" (d.id) ")" }
                                dt { "Commit" } dd { (commit(&project.name, d)) " on " (d.ref_name) }
                                @if let Some(dg) = &d.digest { dt { "Release" } dd { code.small title=(dg) { (dg.chars().take(19).collect::<String>()) "…" } } }
                                dt { "Since" } dd { (view::time(d.finished_at.unwrap_or(d.updated_at), now)) }
                                dt { "Deployed by" } dd { span.user { (d.triggered_by_name) } }
                                dt { "Approved by" } dd { (people(&approved_by(&current_approvals))) }
                                @if let Some(st) = &status {
                                    dt { "Traffic" }
                                    dd {
                                        @if st.routes.is_empty() { span.muted { "none (the router answers 503)" } }
                                        @for (i, r) in st.routes.iter().enumerate() {
                                            @if i > 0 { ", " }
                                            "release " (r.release) " (weight " (r.weight) ")"
                                        }
                                    }
                                    @if let Some(w) = &st.record.warm {
                                        dt { "Kept warm" }
                                        dd {
                                            "release " (w.release.release) " (" (w.release.version.as_deref().unwrap_or("?")) ") until "
                                            (view::absolute(Timestamp::from_millis(w.until_ms as i64)))
                                            ": a rollback to it is a traffic switch"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if !awaiting.is_empty() {
                    section.panel.awaiting aria-labelledby="awaiting-title" {
                        h2 #awaiting-title { "Awaiting approval" }
                        @for (d, approvals, forms) in &awaiting {
                            div.awaiting-deployment id=(format!("awaiting-{}", d.id)) {
                                p {
                                    a href=(deployment_href(&project.name, d.id)) { "Deployment #" (d.id) }
                                    " of " strong { (d.version) } " (" (commit(&project.name, d)) ") by " span.user { (d.triggered_by_name) }
                                    " · approved by " (people(&approved_by(approvals)))
                                }
                                (forms)
                            }
                        }
                    }
                }
                section.panel aria-labelledby="protection-title" {
                    h2 #protection-title { "Protection" }
                    (protection_summary(&rule))
                }
            }
            h2 { "Deployments" }
            div data-live id="environment-history" {
                @if rows.is_empty() { p.empty { "No deployments yet." } }
                @else { (history_table(&project.name, &rows, current.as_ref().map(|c| c.id), can_rollback, &viewer, &env, now)) }
            }
        }))
}

/// `GET /projects/{project}/deployments/{id}`.
pub async fn deployment(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Response, PageError> {
    let project = find_project(&app, &name).await?;
    project_access(&app, &viewer, &project).await?;
    let d = match app.store.deployment(DeploymentId(id)).await {
        Ok(d) if d.project_id == project.id => d,
        Ok(_) | Err(slipway_db::Error::NotFound { .. }) => {
            return Err(PageError::not_found(format!(
                "There is no deployment {id}."
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let approvals = app.store.approvals(d.id).await?;
    let forms = decision_forms(&app, &viewer, &project, &d).await?;
    let now = app.store.now();
    Ok(Layout::new(format!("Deployment {} · {}", d.id, project.name), &viewer)
        .project(&project.name, ProjectTab::Environments)
        .crumb("Environments", Some(format!("/projects/{}/environments", project.name)))
        .crumb(d.environment.clone(), Some(env_href(&project.name, &d.environment)))
        .crumb(format!("#{}", d.id), None)
        .watch(format!("project:{}", project.id))
        .render(html! {
            div data-live id="deployment" {
                div.page-head {
                    h1 { "Deployment #" (d.id) " " (view::badge(status(d.status))) }
                }
                p.sub {
                    (d.version) " to " a href=(env_href(&project.name, &d.environment)) { (d.environment) }
                    @if let Some(r) = d.rollback_of { " · a rollback to " a href=(deployment_href(&project.name, r)) { "#" (r) } }
                }
                (forms)
                section.panel {
                    dl.facts {
                        dt { "Commit" } dd { (commit(&project.name, &d)) " on " (d.ref_name) }
                        @if let Some(j) = d.job_id { dt { "Job" } dd { a href=(format!("/projects/{}/jobs/{j}", project.name)) { "job " (j) } } }
                        @if let Some(dg) = &d.digest { dt { "Release digest" } dd { code.small { (dg) } } }
                        dt { "Strategy" } dd { (d.strategy.as_deref().unwrap_or("the job's script")) }
                        @if let Some(ph) = d.phase.as_ref().and_then(|p| p.get("phase")).and_then(|p| p.as_str()) {
                            dt { "Phase" } dd { (ph.replace('_', " ")) }
                        }
                        dt { "Triggered by" } dd { span.user { (d.triggered_by_name) } }
                        dt { "Created" } dd { (view::time(d.created_at, now)) }
                        @if let Some(t) = d.started_at { dt { "Started" } dd { (view::time(t, now)) } }
                        @if let Some(t) = d.finished_at { dt { "Finished" } dd { (view::time(t, now)) } }
                        @if let Some(us) = d.switch_us { dt { "Switch" } dd { (format!("{:.1}", us as f64 / 1000.0)) " ms from the request to all traffic on it" } }
                        @if let Some(t) = d.wait_until { dt { "Wait timer" } dd { "until " (view::absolute(t)) } }
                        @if let Some(r) = &d.reason { dt { "Reason" } dd.failure { (r) } }
                        @if d.has_variables { dt { "Variables" } dd { "recorded" @if d.secret_variables { " (sealed: some are secret)" } } }
                    }
                }
                h2 { "Approvals" }
                @if approvals.is_empty() { p.muted { "None." } } @else {
                    ul.approvals {
                        @for a in &approvals {
                            li {
                                span.user { (a.username) } " "
                                @if a.decision == Decision::Approved { span.badge.st-success { span { "approved" } } } @else { span.badge.st-failed { span { "rejected" } } }
                                " " (view::time(a.created_at, now))
                                @if let Some(c) = &a.comment { ": " q { (c) } }
                            }
                        }
                    }
                }
            }
        }))
}

#[derive(Debug, Deserialize)]
pub struct DecisionForm {
    #[serde(rename = "_csrf", default)]
    pub csrf: String,
    #[serde(default)]
    pub comment: String,
}

async fn decide(
    app: AppState,
    viewer: Viewer,
    headers: HeaderMap,
    name: String,
    id: i64,
    form: DecisionForm,
    decision: Decision,
) -> Result<Response, PageError> {
    viewer.check_csrf(&form.csrf)?;
    let project = find_project(&app, &name).await?;
    project_access(&app, &viewer, &project).await?;
    let d = match app.store.deployment(DeploymentId(id)).await {
        Ok(d) if d.project_id == project.id => d,
        Ok(_) | Err(slipway_db::Error::NotFound { .. }) => {
            return Err(PageError::not_found(format!(
                "There is no deployment {id}."
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let back = back_to(&headers, &env_href(&project.name, &d.environment));
    let comment = Some(form.comment.trim()).filter(|c| !c.is_empty());
    match actions::decide(&app, &viewer.user, &project, &d, decision, comment).await {
        Ok(done) => {
            let what = match (decision, done.settled) {
                (Decision::Approved, true) => format!("Deployment {id} approved: it proceeds."),
                (Decision::Approved, false) => {
                    format!("Deployment {id} approved; it needs more approvals.")
                }
                (Decision::Rejected, _) => format!("Deployment {id} rejected and canceled."),
            };
            Ok(redirect_with(&back, notice(what)))
        }
        Err(e) if e.status == StatusCode::FORBIDDEN || e.status == StatusCode::CONFLICT => {
            Ok(redirect_with(&back, problem(e.message)))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /projects/{project}/deployments/{id}/approve`.
pub async fn approve(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
    Form(form): Form<DecisionForm>,
) -> Result<Response, PageError> {
    decide(app, viewer, headers, name, id, form, Decision::Approved).await
}

/// `POST /projects/{project}/deployments/{id}/reject`.
pub async fn reject(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
    Form(form): Form<DecisionForm>,
) -> Result<Response, PageError> {
    decide(app, viewer, headers, name, id, form, Decision::Rejected).await
}

#[derive(Debug, Deserialize)]
pub struct RollbackForm {
    #[serde(rename = "_csrf", default)]
    pub csrf: String,
    #[serde(default)]
    pub to: Option<i64>,
}

/// `POST /projects/{project}/environments/{name}/rollback`: waits until traffic is on
/// the release brought back (a switch, when it is still warm), then shows the page.
pub async fn rollback(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, env_name)): Path<(String, String)>,
    Form(form): Form<RollbackForm>,
) -> Result<Response, PageError> {
    viewer.check_csrf(&form.csrf)?;
    let project = find_project(&app, &name).await?;
    project_access(&app, &viewer, &project).await?;
    let env = app
        .store
        .environment_by_name(project.id, &env_name)
        .await?
        .ok_or_else(|| PageError::not_found(format!("There is no environment {env_name:?}.")))?;
    let back = env_href(&project.name, &env.name);
    match rollback_env(&app, &viewer.user, &project, &env, form.to).await {
        Ok(v) if v["status"] == "success" => Ok(redirect_with(
            &back,
            notice(format!(
                "Rolled back to deployment {} ({}): all traffic on it after {} ms.",
                v["rolled_back_to"],
                v["deployment"]["version"].as_str().unwrap_or(""),
                v["switch_ms"]
                    .as_f64()
                    .map(|ms| format!("{ms:.1}"))
                    .unwrap_or_else(|| "?".into())
            )),
        )),
        Ok(v) => Ok(redirect_with(
            &back,
            problem(format!(
                "The rollback {}: {}",
                v["status"].as_str().unwrap_or("failed"),
                v["reason"].as_str().unwrap_or("no reason given")
            )),
        )),
        Err(e) if e.status.is_client_error() => Ok(redirect_with(&back, problem(e.message))),
        Err(e) => Err(e.into()),
    }
}

/// `GET /projects/{project}/pipelines/-/id/{id}`: to the pipeline's page (deployments know
/// their pipeline's id, pages use its number in the project).
pub async fn pipeline_by_id(
    State(app): State<AppState>,
    SignedIn(viewer): SignedIn,
    Path((name, id)): Path<(String, i64)>,
) -> Result<Response, PageError> {
    let project = find_project(&app, &name).await?;
    project_access(&app, &viewer, &project).await?;
    match app.store.pipeline(slipway_db::PipelineId(id)).await {
        Ok(p) if p.project_id == project.id => Ok(crate::ui::page::redirect(&format!(
            "/projects/{}/pipelines/{}",
            project.name, p.iid
        ))),
        Ok(_) | Err(slipway_db::Error::NotFound { .. }) => {
            Err(PageError::not_found(format!("There is no pipeline {id}.")))
        }
        Err(e) => Err(e.into()),
    }
}
