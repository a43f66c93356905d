//! The scheduler: moves each pipeline forward when one of its jobs changes, with
//! `slipway_core::schedule` (the same state machine as `slipway run`).
//!
//! It wakes on the store's events (a job or pipeline changed, on this server or, with
//! PostgreSQL, another), never by polling alone: one step reads the pipeline's latest job
//! attempts, retries failed jobs their `retry:` allows (a new attempt linked to the old,
//! as GitLab does), applies `workflow:auto_cancel:on_job_failure`, computes which jobs
//! become pending, skipped, manual or scheduled, writes those changes as
//! compare-and-set transitions, and sets the pipeline's status. Several schedulers (two
//! servers) may step the same pipeline at once: each transition applies once, and a
//! retry is created once (the store refuses a second retry of the same attempt).
//!
//! Delayed jobs (`when: delayed`) wait in `scheduled` until `start_in` has passed since
//! they became scheduled; a timer moves them to pending.

use crate::app::AppState;
use slipway_core::job as rules;
use slipway_core::schedule::{self, JobStatus, PipelineStatus};
use slipway_db::{Actor, Event, Job, PipelineId, Timestamp};
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Failure reasons that mean "the machine failed, not the script", for `retry:when`.
fn retry_reason(reason: Option<&str>) -> Option<&str> {
    match reason {
        Some(slipway_db::queue::FAILURE_SERVER_RESTARTED)
        | Some(slipway_db::queue::FAILURE_LEASE_EXPIRED)
        | Some(crate::worker::FAILURE_SERVER_STOPPED) => Some(rules::reason::RUNNER_SYSTEM_FAILURE),
        other => other,
    }
}

/// Whether the failed attempt `job` is retried by its definition's `retry:`.
pub fn retry_allowed(retry: &slipway_core::model::Retry, job: &Job) -> bool {
    job.status == JobStatus::Failed
        && !job.retried
        && job.attempt <= retry.max
        && rules::should_retry(
            retry,
            retry_reason(job.failure_reason.as_deref()),
            job.exit_code,
        )
}

/// When a delayed job is due: `start_in` after it became scheduled.
fn due_at(job: &Job, start_in: Option<&str>) -> Timestamp {
    if let Some(t) = job.scheduled_at {
        return t;
    }
    let secs = start_in
        .and_then(slipway_core::duration::parse_seconds)
        .unwrap_or(0);
    job.updated_at.plus(Duration::from_secs(secs))
}

/// One scheduling step of pipeline `id`. Returns when its next delayed job is due.
pub async fn step(app: &AppState, id: PipelineId) -> slipway_db::Result<Option<Timestamp>> {
    let pipeline = app.store.pipeline(id).await?;
    let doc = app.documents.get(&app.store, id).await?;
    let Some(plan) = doc.plan.as_ref() else {
        // An invalid configuration: failed from the start, nothing to run.
        return Ok(None);
    };
    if doc.skip_reason.is_some() {
        return Ok(None);
    }
    let mut jobs = app.store.current_jobs(id).await?;
    if jobs.len() != plan.jobs.len() || jobs.iter().enumerate().any(|(i, j)| j.plan_index != i) {
        return Err(slipway_db::Error::Corrupt(format!(
            "pipeline {id}: {} jobs stored for {} planned",
            jobs.len(),
            plan.jobs.len()
        )));
    }
    // Automatic retries first: a retried job is pending again, not failed.
    let canceling = pipeline.status == PipelineStatus::Canceled;
    for j in jobs.iter_mut() {
        let Some(def) = doc.definition(j.plan_index) else {
            continue;
        };
        if !canceling && retry_allowed(&def.retry, j) {
            match app.store.retry_job(&Actor::system("retry"), j.id).await {
                Ok(new) => {
                    tracing::info!(
                        job = j.id.0,
                        new_job = new.id.0,
                        attempt = new.attempt,
                        "retrying job as its retry: allows"
                    );
                    *j = new;
                }
                // Another scheduler retried it first.
                Err(slipway_db::Error::State(_)) => {
                    *j = app.store.job(j.id).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let live = doc.live_plan(&jobs).unwrap_or_else(|| plan.clone());
    let mut statuses: Vec<JobStatus> = jobs.iter().map(|j| j.status).collect();

    // workflow:auto_cancel:on_job_failure: all: a failure that stops the pipeline cancels
    // everything else at once.
    if doc.auto_cancel_on_job_failure.as_deref() == Some("all")
        && statuses
            .iter()
            .enumerate()
            .any(|(i, s)| *s == JobStatus::Failed && !live.jobs[i].allow_failure)
        && statuses.iter().any(|s| !s.is_finished())
    {
        let canceled = app
            .store
            .cancel_pipeline(&Actor::system("auto_cancel"), id)
            .await?;
        for j in &canceled {
            app.running.cancel(j.0);
        }
        tracing::info!(
            pipeline = id.0,
            jobs = canceled.len(),
            "a job failed: canceled the rest (workflow:auto_cancel:on_job_failure: all)"
        );
        jobs = app.store.current_jobs(id).await?;
        statuses = jobs.iter().map(|j| j.status).collect();
    }

    let before = statuses.clone();
    schedule::advance(&live, &mut statuses);
    let changes: Vec<_> = (0..statuses.len())
        .filter(|&i| statuses[i] != before[i])
        .map(|i| (jobs[i].id, before[i], statuses[i]))
        .collect();
    if !changes.is_empty() {
        let applied = app.store.set_job_statuses(&changes).await?;
        if applied.iter().any(|a| !a) {
            // Someone moved a job meanwhile: the event that caused will step again.
            return Ok(None);
        }
    }
    let status = schedule::pipeline_status(&live, &statuses);
    if status != pipeline.status {
        app.store.set_pipeline_status(id, status).await?;
        tracing::info!(
            pipeline = id.0,
            from = pipeline.status.as_str(),
            to = status.as_str(),
            "pipeline status"
        );
    }
    // The next delayed job, if any.
    let jobs = if changes.is_empty() {
        jobs
    } else {
        app.store.current_jobs(id).await?
    };
    Ok(jobs
        .iter()
        .filter(|j| j.status == JobStatus::Scheduled)
        .map(|j| due_at(j, live.jobs[j.plan_index].start_in.as_deref()))
        .min())
}

/// Delayed jobs of `id` whose time has come become pending.
async fn release_due(app: &AppState, id: PipelineId) -> slipway_db::Result<()> {
    let doc = app.documents.get(&app.store, id).await?;
    let Some(plan) = doc.plan.as_ref() else {
        return Ok(());
    };
    let now = app.store.now();
    let due: Vec<_> = app
        .store
        .current_jobs(id)
        .await?
        .into_iter()
        .filter(|j| {
            j.status == JobStatus::Scheduled
                && plan
                    .jobs
                    .get(j.plan_index)
                    .is_some_and(|pj| due_at(j, pj.start_in.as_deref()) <= now)
        })
        .map(|j| (j.id, JobStatus::Scheduled, JobStatus::Pending))
        .collect();
    if !due.is_empty() {
        app.store.set_job_statuses(&due).await?;
    }
    Ok(())
}

/// Runs the scheduler until shutdown.
pub async fn run(app: AppState) {
    let mut events = app.store.subscribe();
    let mut dirty: BTreeSet<PipelineId> = BTreeSet::new();
    // Delayed jobs: (due, pipeline).
    let mut timers: BTreeSet<(Timestamp, PipelineId)> = BTreeSet::new();
    let mut rescan = true;
    loop {
        if rescan {
            rescan = false;
            match app.store.unfinished_pipelines().await {
                Ok(ps) => dirty.extend(ps.into_iter().map(|p| p.id)),
                Err(e) => tracing::error!(error = %e, "cannot list unfinished pipelines"),
            }
        }
        // Everything that changed since the last step, coalesced per pipeline.
        loop {
            match events.try_recv() {
                Ok(e) => note(&mut dirty, e),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                    rescan = true;
                    break;
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Closed) => return,
            }
        }
        if rescan {
            continue;
        }
        let now = app.store.now();
        while let Some(&(due, id)) = timers.first() {
            if due > now {
                break;
            }
            timers.pop_first();
            if let Err(e) = release_due(&app, id).await {
                tracing::warn!(pipeline = id.0, error = %e, "releasing delayed jobs failed");
            }
            dirty.insert(id);
        }
        let batch: Vec<PipelineId> = std::mem::take(&mut dirty).into_iter().collect();
        let mut failed: HashSet<PipelineId> = HashSet::new();
        for id in batch {
            match step(&app, id).await {
                Ok(Some(due)) => {
                    timers.retain(|(_, p)| *p != id);
                    timers.insert((due, id));
                }
                Ok(None) => timers.retain(|(_, p)| *p != id),
                Err(e) => {
                    tracing::warn!(pipeline = id.0, error = %e, "scheduling step failed");
                    failed.insert(id);
                }
            }
        }
        if !dirty.is_empty() {
            continue;
        }
        let wait = match timers.first() {
            Some((due, _)) => Duration::from_millis(
                u64::try_from(due.as_millis() - app.store.now().as_millis()).unwrap_or(0),
            ),
            // A step that failed (the database was busy) is tried again soon.
            None if !failed.is_empty() => Duration::from_secs(1),
            None => Duration::from_secs(60),
        };
        let wait = if failed.is_empty() {
            wait
        } else {
            dirty.extend(failed);
            wait.min(Duration::from_secs(1))
        };
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            r = events.recv() => match r {
                Ok(e) => note(&mut dirty, e),
                Err(RecvError::Lagged(_)) => rescan = true,
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(wait) => {
                // Every minute without events: look at everything unfinished again, in
                // case an event from another server was lost.
                if timers.is_empty() && dirty.is_empty() {
                    rescan = true;
                }
            }
        }
    }
}

fn note(dirty: &mut BTreeSet<PipelineId>, e: Event) {
    match e {
        Event::JobChanged { pipeline, .. } | Event::PipelineChanged { pipeline, .. } => {
            dirty.insert(pipeline);
        }
        Event::JobsQueued
        | Event::LogAppended { .. }
        | Event::DeploymentChanged { .. }
        | Event::ResourceGroupChanged { .. } => {}
    }
}
