//! What a server does about jobs it can no longer watch.
//!
//! On start ([`recover`]): the jobs its previous process held (same holder name, kept in
//! the data directory) cannot be re-attached: a shell job's output went through pipes
//! to the dead process, so nobody can read the rest of it or learn its exit status. So
//! the server first kills what is left of them (every process whose environment carries
//! this server's `SLIPWAY_SERVER_JOB` marker, with its process group), then marks each
//! such job failed with the reason "server restarted" and, when the job's `retry:`
//! allows a runner system failure, queues a new attempt (GitLab's retry on
//! `runner_system_failure`). The job's log says so on its last line.
//!
//! While running ([`expire_loop`]): jobs whose holder stopped renewing its lease (another
//! server on the same PostgreSQL that died) are failed with "lease expired", retried the
//! same way. Expired UI sessions are deleted on the way.

use crate::app::AppState;
use crate::scheduler::retry_allowed;
use crate::server::StartError;
use slipway_core::schedule::JobStatus;
use slipway_db::{Job, Recovery};
use std::collections::HashMap;
use std::time::Duration;

/// Kills the processes of this server's earlier jobs; returns how many were found.
pub fn kill_leftover_jobs(holder: &str) -> usize {
    let marker = format!("{}={holder}:", crate::worker::JOB_MARKER);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let me = std::process::id() as i32;
    let mut found = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let ours = env
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(marker.as_bytes()));
        if ours {
            found += 1;
            // SAFETY: getpgid and kill have no memory-safety preconditions; the pid was
            // just read from /proc and, at worst, names a process that already exited.
            unsafe {
                let pgid = libc::getpgid(pid);
                if pgid > 1 && pgid != libc::getpgid(0) {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    found
}

/// Whether a job that lost its holder gets a new attempt.
async fn retry_decisions(app: &AppState, jobs: &[Job], reason: &str) -> HashMap<i64, bool> {
    let mut out = HashMap::new();
    for j in jobs {
        let retry = match app.documents.get(&app.store, j.pipeline_id).await {
            Ok(doc) => doc.definition(j.plan_index).is_some_and(|def| {
                let mut failed = j.clone();
                failed.status = JobStatus::Failed;
                failed.failure_reason = Some(reason.to_string());
                failed.exit_code = None;
                retry_allowed(&def.retry, &failed)
            }),
            Err(_) => false,
        };
        out.insert(j.id.0, retry);
    }
    out
}

/// Deals with what the previous process of this server left running.
pub async fn recover(app: &AppState) -> Result<(), StartError> {
    let killed = tokio::task::spawn_blocking({
        let holder = app.holder.clone();
        move || kill_leftover_jobs(&holder)
    })
    .await
    .unwrap_or(0);
    let held = app.store.jobs_held_by(&app.holder).await?;
    if held.is_empty() && killed == 0 {
        return Ok(());
    }
    let reason = slipway_db::queue::FAILURE_SERVER_RESTARTED;
    let retry = retry_decisions(app, &held, reason).await;
    for j in &held {
        let line = format!(
            "\nERROR: the server restarted while this job ran; its processes were stopped ({})\n",
            if retry.get(&j.id.0) == Some(&true) {
                "a new attempt is queued, as its retry: allows"
            } else {
                "failed"
            }
        );
        let _ = app.store.append_log(j.id, line.as_bytes()).await;
    }
    let report = app
        .store
        .recover_after_restart(&app.holder, |j| Recovery::Fail {
            retry: retry.get(&j.id.0).copied().unwrap_or(false),
        })
        .await?;
    tracing::warn!(
        processes_killed = killed,
        jobs_failed = report.failed.len(),
        jobs_retried = report.retried.len(),
        "recovered from a restart: jobs that were running are failed (server restarted)"
    );
    Ok(())
}

/// Fails jobs of holders that went silent, every half lease, until shutdown.
pub async fn expire_loop(app: AppState) {
    let every = (app.config.lease / 2).max(Duration::from_secs(1));
    let mut sessions_swept = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = expire_once(&app).await {
            tracing::warn!(error = %e, "expiring leases failed");
        }
        if sessions_swept.elapsed() > Duration::from_secs(3600) {
            sessions_swept = std::time::Instant::now();
            let _ = app.store.delete_expired_sessions().await;
        }
    }
}

async fn expire_once(app: &AppState) -> slipway_db::Result<()> {
    let now = app.store.now();
    // Which jobs are about to expire: their retry decisions are made first.
    let running: Vec<Job> = {
        let mut out = Vec::new();
        for p in app.store.unfinished_pipelines().await? {
            out.extend(app.store.current_jobs(p.id).await?.into_iter().filter(|j| {
                j.status == JobStatus::Running && j.lease_expires_at.is_some_and(|t| t < now)
            }));
        }
        out
    };
    if running.is_empty() {
        return Ok(());
    }
    let retry = retry_decisions(app, &running, slipway_db::queue::FAILURE_LEASE_EXPIRED).await;
    let report = app
        .store
        .expire_leases(|j| Recovery::Fail {
            retry: retry.get(&j.id.0).copied().unwrap_or(false),
        })
        .await?;
    if !report.failed.is_empty() {
        tracing::warn!(
            jobs_failed = report.failed.len(),
            jobs_retried = report.retried.len(),
            "jobs whose holder stopped renewing its lease were failed (lease expired)"
        );
    }
    Ok(())
}
