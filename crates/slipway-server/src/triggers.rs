//! What turns events into pipelines: the post-receive hook's notifications and push
//! webhooks ([`on_push`]), polling of remote repositories ([`poll_loop`]), schedules
//! ([`schedule_loop`]); manual runs and trigger tokens come through the API. All of them
//! end in [`crate::pipelines::create`].
//!
//! With several servers on one PostgreSQL database, each poll result and each due
//! schedule run is taken by exactly one server (compare-and-set in the store), so a
//! change or a due time makes one pipeline.

use crate::app::AppState;
use crate::cron::CronSchedule;
use crate::git::{GitError, Mirror, RefSnapshot, RefTarget, RefUpdate};
use crate::pipelines::{self, Created, Origin, TriggerError};
use crate::request::{PipelineRequest, PipelineSource};
use slipway_db::{PipelineQuery, Project, Schedule, Timestamp};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The mirror's branches and tags as the store keeps them for polling
/// (`refs/heads/main` to the ref's object).
pub async fn snapshot_map(mirror: &Arc<Mirror>) -> Result<BTreeMap<String, String>, GitError> {
    let m = mirror.clone();
    let snap = crate::mirrors::blocking(move || m.refs()).await?;
    Ok(snap.refs.into_iter().map(|(k, v)| (k, v.sha)).collect())
}

fn snapshot_from(map: &BTreeMap<String, String>) -> RefSnapshot {
    RefSnapshot {
        refs: map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    RefTarget {
                        sha: v.clone(),
                        commit: v.clone(),
                    },
                )
            })
            .collect(),
    }
}

/// A push of `updates` (from the hook, a webhook or polling): the mirror is fetched, then
/// each created or moved branch and tag gets its push pipeline. Deletions make none.
pub async fn on_push(
    app: &AppState,
    project: &Project,
    updates: &[RefUpdate],
    push_options: &[String],
    user: Option<slipway_core::variables::UserContext>,
    origin: &Origin,
) -> Result<Vec<Created>, TriggerError> {
    let requests: Vec<PipelineRequest> = updates
        .iter()
        .filter_map(|u| PipelineRequest::for_ref_update(u, push_options))
        .map(|mut r| {
            r.user = user.clone();
            r
        })
        .collect();
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let _serial = app.mirrors.trigger_lock(project.id).await;
    // Only the pushed refs: one `git fetch` (a full fetch also follows the source's
    // default branch and lists every ref twice; polling does that).
    let mirror = app.mirrors.get(project).await?;
    let specs: Vec<String> = updates
        .iter()
        .filter(|u| u.new.is_some() && crate::git::split_ref(&u.ref_name).is_some())
        .map(|u| format!("+{0}:{0}", u.ref_name))
        .collect();
    let fetch_start = std::time::Instant::now();
    let fetched = {
        let m = mirror.clone();
        let specs = specs.clone();
        crate::mirrors::blocking(move || {
            let refs: Vec<&str> = specs.iter().map(String::as_str).collect();
            m.fetch_refspecs(&refs)
        })
        .await
    };
    tracing::debug!(
        project = %project.name,
        refs = specs.len(),
        fetch_ms = fetch_start.elapsed().as_secs_f64() * 1e3,
        "pushed refs fetched"
    );
    if fetched.is_err() {
        // A ref the source no longer has (pushed and deleted at once): a full fetch
        // brings the mirror to what the source holds.
        app.mirrors.fetch(project).await?;
    }
    let mut out = Vec::new();
    for r in requests {
        if already_built(app, project, &r).await? {
            out.push(Created::NotCreated(format!(
                "{}: a push pipeline for this commit exists already",
                r.ref_name
            )));
            continue;
        }
        out.push(pipelines::create(app, project, r, origin.clone()).await?);
    }
    Ok(out)
}

/// Polls every project whose interval has passed, until shutdown.
pub async fn poll_loop(app: AppState) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(app.config.tick) => {}
        }
        let due = match app.store.projects_due_for_poll().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "listing projects to poll failed");
                continue;
            }
        };
        for project in due {
            if app.shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = poll_project(&app, &project).await {
                tracing::warn!(project = %project.name, error = %crate::http::error::redact_credentials(&e.to_string()), "polling failed");
            }
        }
    }
}

/// One poll: fetch, compare with the refs seen last time, and (if this server is the one
/// that records the poll) create pipelines for what changed.
pub async fn poll_project(app: &AppState, project: &Project) -> Result<usize, TriggerError> {
    let _serial = app.mirrors.trigger_lock(project.id).await;
    let previous = project.last_polled_at;
    let seen = app.store.poll_refs(project.id).await?;
    let mirror = app.mirrors.fetch(project).await?;
    let now = snapshot_map(&mirror).await?;
    if !app.store.record_poll(project.id, previous, &now).await? {
        // Another server recorded this poll: it acts on the changes.
        return Ok(0);
    }
    if previous.is_none() && seen.is_empty() {
        // The first poll only learns what is there.
        return Ok(0);
    }
    let changes = snapshot_from(&seen).changes_to(&snapshot_from(&now));
    let mut made = 0;
    for u in changes {
        let Some(request) = PipelineRequest::for_ref_update(&u, &[]) else {
            continue;
        };
        // The hook or a webhook may have made this pipeline already.
        if already_built(app, project, &request).await? {
            continue;
        }
        tracing::info!(project = %project.name, r#ref = %u.ref_name, "poll: ref changed");
        if let Created::Pipeline(..) =
            pipelines::create(app, project, request, Origin::system("poll")).await?
        {
            made += 1;
        }
    }
    Ok(made)
}

async fn already_built(
    app: &AppState,
    project: &Project,
    request: &PipelineRequest,
) -> Result<bool, TriggerError> {
    let Some(sha) = &request.sha else {
        return Ok(false);
    };
    let recent = app
        .store
        .pipelines(&PipelineQuery {
            project: Some(project.id),
            ref_name: Some(request.ref_name.clone()),
            limit: Some(5),
            ..PipelineQuery::default()
        })
        .await?;
    Ok(recent
        .iter()
        .any(|p| &p.sha == sha && p.source == slipway_db::PipelineSource::Push))
}

/// The next run of a schedule after `after`.
pub fn next_run(
    cron: &str,
    zone: &str,
    after: Timestamp,
) -> Result<Timestamp, crate::cron::CronError> {
    let schedule = CronSchedule::parse(cron, zone)?;
    let after = jiff::Timestamp::from_millisecond(after.as_millis())
        .map_err(|e| crate::cron::CronError(e.to_string()))?;
    let next = schedule
        .next_after(after)
        .ok_or_else(|| crate::cron::CronError(format!("{cron:?} never fires")))?;
    Ok(Timestamp::from_millis(next.as_millisecond()))
}

/// Runs due schedules, until shutdown.
pub async fn schedule_loop(app: AppState) {
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(app.config.tick) => {}
        }
        let due = match app.store.due_schedules().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "listing due schedules failed");
                continue;
            }
        };
        for s in due {
            if let Err(e) = run_schedule(&app, &s).await {
                tracing::warn!(schedule = s.id.0, error = %e, "schedule run failed");
            }
        }
    }
}

/// Takes the due run of `s` (one server wins it), moves the schedule to its next run, and
/// starts the pipeline. Runs missed while no server was up collapse into this one, as on
/// GitLab.
pub async fn run_schedule(app: &AppState, s: &Schedule) -> Result<bool, TriggerError> {
    let now = app.store.now();
    let next = match next_run(&s.cron, &s.cron_timezone, now) {
        Ok(n) => n,
        // A schedule that cannot fire again is pushed far out rather than retried each
        // second.
        Err(_) => now.plus(Duration::from_secs(365 * 24 * 3600)),
    };
    if !app
        .store
        .claim_schedule_run(s.id, s.next_run_at, next)
        .await?
    {
        return Ok(false);
    }
    let project = app.store.project(s.project_id).await?;
    let (name, tag) = match s.ref_name.strip_prefix("refs/tags/") {
        Some(t) => (t.to_string(), true),
        None => (
            s.ref_name
                .strip_prefix("refs/heads/")
                .unwrap_or(&s.ref_name)
                .to_string(),
            false,
        ),
    };
    let mut request = PipelineRequest::new(PipelineSource::Schedule, name, tag);
    request.variables = s
        .variables
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    request.schedule_description = Some(s.description.clone());
    let mut origin = Origin::system("schedule");
    if let Some(owner) = s.owner_id {
        if let Ok(u) = app.store.user(owner).await {
            origin = Origin::user(&u);
            request.user = Some(user_context(&u));
        }
    }
    origin.schedule = Some(s.id);
    app.mirrors.fetch(&project).await?;
    tracing::info!(schedule = s.id.0, project = %project.name, "schedule due");
    pipelines::create(app, &project, request, origin).await?;
    Ok(true)
}

/// `GITLAB_USER_*` for a Slipway user.
pub fn user_context(u: &slipway_db::User) -> slipway_core::variables::UserContext {
    slipway_core::variables::UserContext {
        id: u.id.0.max(0) as u64,
        login: u.username.clone(),
        name: u.username.clone(),
        email: String::new(),
    }
}
