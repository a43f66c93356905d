//! The deployments' background work: when a job ends, close its deployment (unless the
//! engine owns it) and give its resource group to the next job; when a group's mode
//! changes, let a waiting job go; every few seconds the same for anything an event
//! missed (another server's change, a lagging receiver); and artifact expiry, which
//! never touches a pinned (`keep`) artifact: those of recent deployments.

use crate::app::AppState;
use slipway_db::Event;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

/// Runs until shutdown.
pub async fn run(app: AppState) {
    let mut events = app.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expired_at = Instant::now();
    // The first pass finds what a previous process left.
    let mut full = true;
    loop {
        if full {
            full = false;
            pass(&app).await;
        }
        if expired_at.elapsed() >= app.config.artifact_expiry {
            expired_at = Instant::now();
            if let Err(e) = expire_artifacts(&app).await {
                tracing::warn!(error = %e, "artifact expiry failed");
            }
        }
        let wake = app
            .config
            .artifact_expiry
            .saturating_sub(expired_at.elapsed());
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => full = true,
            _ = tokio::time::sleep(wake) => {}
            e = events.recv() => match e {
                Ok(Event::JobChanged { job, .. }) => {
                    if let Ok(j) = app.store.job(job).await {
                        if j.status.is_finished() {
                            super::job_ended(&app, &j).await;
                        }
                    }
                }
                Ok(Event::ResourceGroupChanged { project }) => {
                    release_groups(&app, Some(project)).await;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => full = true,
                Err(RecvError::Closed) => return,
            },
        }
    }
}

async fn pass(app: &AppState) {
    match app.store.unfinished_deployments().await {
        Ok(ds) => {
            for d in ds {
                let Some(job) = d.job_id else { continue };
                if let Ok(j) = app.store.job(job).await {
                    if j.status.is_finished() {
                        super::job_ended(app, &j).await;
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list unfinished deployments"),
    }
    release_groups(app, None).await;
}

async fn release_groups(app: &AppState, project: Option<slipway_db::ProjectId>) {
    let groups = match app.store.waiting_resource_groups().await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list resource groups");
            return;
        }
    };
    for (p, name) in groups {
        if project.is_some_and(|want| want != p) {
            continue;
        }
        if let Err(e) = app.store.release_next_in_group(p, &name).await {
            tracing::warn!(group = %name, error = %e, "cannot release the resource group");
        }
    }
}

/// Deletes expired artifacts that nothing keeps (their manifests, then their index
/// rows), then the blobs no manifest names. Pinned artifacts stay whatever their
/// `expire_in`. Returns how many were deleted.
pub async fn expire_artifacts(app: &AppState) -> Result<usize, String> {
    // The pins first, so a deployment that just finished keeps its window right.
    let mut projects: Vec<slipway_db::ProjectId> = app
        .store
        .all_environments()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|e| e.project_id)
        .collect();
    projects.dedup();
    for p in projects {
        app.store
            .refresh_artifact_pins(p, app.deployer.keep_deployments)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut deleted = 0;
    loop {
        let expired = app
            .store
            .expired_artifacts(500)
            .await
            .map_err(|e| e.to_string())?;
        if expired.is_empty() {
            break;
        }
        let store = app.artifacts.clone();
        let ids: Vec<String> = expired.iter().map(|a| a.store_id.clone()).collect();
        tokio::task::spawn_blocking(move || {
            for id in ids {
                if let Err(e) = store.delete_artifacts(&id) {
                    tracing::warn!(artifacts = %id, error = %e, "cannot delete expired artifacts");
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        let rows: Vec<_> = expired.iter().map(|a| a.id).collect();
        let n = app
            .store
            .delete_artifacts(&rows)
            .await
            .map_err(|e| e.to_string())? as usize;
        deleted += n;
        if expired.len() < 500 || n == 0 {
            break;
        }
    }
    let store = app.artifacts.clone();
    tokio::task::spawn_blocking(move || store.gc())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if deleted > 0 {
        tracing::info!(deleted, "expired artifacts deleted");
    }
    Ok(deleted)
}
