//! The job queue: pending jobs are claimed atomically by an executor (the server itself
//! or, later, a remote agent) under a lease that the holder renews by heartbeat and
//! gives back when the job finishes.
//!
//! - Claiming is one write transaction: PostgreSQL picks candidates with
//!   `FOR UPDATE SKIP LOCKED` (concurrent claimers on any number of servers skip each
//!   other's rows instead of queueing on them); SQLite's single writer makes the same
//!   statements atomic.
//! - A lease is a random token plus an expiry. Heartbeats extend it and report a cancel
//!   request; finishing needs the token, so a holder that lost its lease cannot
//!   overwrite the job's outcome.
//! - Waiters block on the store's events ([`crate::Event::JobsQueued`], sent by every
//!   commit that makes a job pending, across servers with `LISTEN/NOTIFY`), so pickup
//!   takes milliseconds; a slow fallback poll covers a lost notification.
//! - A restarted server calls [`Store::recover_after_restart`] for the jobs its previous
//!   process held; jobs of holders that vanished are handled by
//!   [`Store::expire_leases`].

use crate::error::{Error, Result};
use crate::events::Event;
use crate::pipelines::{insert_retry, job_from, Job};
use crate::row::{to_json, RowExt};
use crate::store::{Dialect, Store, WriteTx};
use crate::triggers::KeyValue;
use crate::types::{JobId, PipelineId, Timestamp};
use serde::Serialize;
use slipway_core::schedule::JobStatus;
use std::time::Duration;

/// The failure reason of jobs that were running when their server stopped.
pub const FAILURE_SERVER_RESTARTED: &str = "server restarted";
/// The failure reason of jobs whose holder stopped renewing the lease.
pub const FAILURE_LEASE_EXPIRED: &str = "lease expired";

/// Which pending jobs a claimer takes (GitLab Runner's tags).
#[derive(Debug, Clone, Default)]
pub struct ClaimFilter {
    /// Take every job, whatever its tags (the server's own executor).
    pub any: bool,
    /// The claimer's tags: a tagged job is taken when all its tags are among these.
    pub tags: Vec<String>,
    /// Also take jobs without tags.
    pub run_untagged: bool,
}

impl ClaimFilter {
    pub fn any() -> ClaimFilter {
        ClaimFilter {
            any: true,
            ..ClaimFilter::default()
        }
    }

    pub fn accepts(&self, job_tags: &[String]) -> bool {
        if self.any {
            return true;
        }
        if job_tags.is_empty() {
            return self.run_untagged;
        }
        job_tags.iter().all(|t| self.tags.contains(t))
    }
}

/// The right to run a job until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub job: JobId,
    pub pipeline: PipelineId,
    pub holder: String,
    #[serde(skip)]
    pub(crate) token: String,
    pub expires_at: Timestamp,
}

impl Lease {
    /// The lease's secret token, for handing the lease to a remote agent that later
    /// presents it back (see [`Lease::from_parts`]).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Rebuilds a lease from what an agent presented; the store checks the token.
    pub fn from_parts(
        job: JobId,
        pipeline: PipelineId,
        holder: impl Into<String>,
        token: impl Into<String>,
        expires_at: Timestamp,
    ) -> Lease {
        Lease {
            job,
            pipeline,
            holder: holder.into(),
            token: token.into(),
            expires_at,
        }
    }
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    pub expires_at: Timestamp,
    /// Someone canceled the job: stop it and finish as canceled.
    pub cancel_requested: bool,
}

/// How a job ended, as its holder reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// `success`, `failed` or `canceled`.
    pub status: JobStatus,
    pub exit_code: Option<i32>,
    /// GitLab's reasons: `script_failure`, `job_execution_timeout`,
    /// `runner_system_failure`, ...
    pub failure_reason: Option<String>,
}

impl JobOutcome {
    pub fn success() -> JobOutcome {
        JobOutcome {
            status: JobStatus::Success,
            exit_code: Some(0),
            failure_reason: None,
        }
    }

    pub fn failed(exit_code: Option<i32>, reason: impl Into<String>) -> JobOutcome {
        JobOutcome {
            status: JobStatus::Failed,
            exit_code,
            failure_reason: Some(reason.into()),
        }
    }

    pub fn canceled() -> JobOutcome {
        JobOutcome {
            status: JobStatus::Canceled,
            exit_code: None,
            failure_reason: None,
        }
    }
}

/// What to do with a job found running after a restart (or with an expired lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Mark it failed; with `retry`, also queue a new attempt (the caller decides from
    /// the job's `retry:` in the plan and its attempt number).
    Fail { retry: bool },
    /// The job still runs (an executor that survives the server): keep it, under a new
    /// lease for this holder.
    Reattach,
}

/// What [`Store::recover_after_restart`] or [`Store::expire_leases`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Jobs marked failed (retried or not).
    pub failed: Vec<JobId>,
    /// (failed job, its new attempt).
    pub retried: Vec<(JobId, JobId)>,
    /// Jobs kept running, with their new leases.
    pub reattached: Vec<Lease>,
}

const CLAIM_CANDIDATES: i64 = 64;

/// Fallback poll while waiting for a job, in case a notification was lost.
const WAIT_POLL: Duration = Duration::from_secs(5);

fn new_lease_token() -> String {
    crate::crypto::new_token("").into_inner()
}

fn lease_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Takes the oldest pending job that `filter` accepts and marks it running under a
    /// lease of `lease` for `holder` (a stable name of this server or agent, so a
    /// restart can find its jobs). `executor` is recorded on the job. `None` when no
    /// job is waiting.
    pub async fn claim_job(
        &self,
        holder: &str,
        executor: &str,
        filter: &ClaimFilter,
        lease: Duration,
    ) -> Result<Option<(Lease, Job)>> {
        let mut tx = self.write().await?;
        let select = match tx.dialect() {
            Dialect::Postgres => {
                "SELECT id, tags FROM jobs WHERE status = 'pending' ORDER BY queued_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
            }
            Dialect::Sqlite => "SELECT id, tags FROM jobs WHERE status = 'pending' ORDER BY queued_at, id LIMIT $1",
        };
        let rows = sqlx::query(select)
            .bind(CLAIM_CANDIDATES)
            .fetch_all(tx.conn())
            .await?;
        let mut chosen = None;
        for r in &rows {
            let tags: Vec<String> = r.json("tags")?;
            if filter.accepts(&tags) {
                chosen = Some(r.i64("id")?);
                break;
            }
        }
        let Some(id) = chosen else {
            tx.commit().await?;
            return Ok(None);
        };
        let now = tx.now();
        let token = new_lease_token();
        let expires = now.0.saturating_add(lease_millis(lease));
        let r = sqlx::query(
            "UPDATE jobs SET status = 'running', started_at = $1, updated_at = $1, lease_holder = $2, \
             lease_token = $3, lease_expires_at = $4, executor = $5 WHERE id = $6 AND status = 'pending' RETURNING *",
        )
        .bind(now.0)
        .bind(holder)
        .bind(&token)
        .bind(expires)
        .bind(executor)
        .bind(id)
        .fetch_optional(tx.conn())
        .await?;
        let Some(r) = r else {
            tx.commit().await?;
            return Ok(None);
        };
        let job = job_from(&r)?;
        tx.emit(Event::JobChanged {
            job: job.id,
            pipeline: job.pipeline_id,
        });
        if rows.len() > 1 {
            // Other claimers may have skipped the rows this one held locked for a
            // moment: tell them to look again.
            tx.emit(Event::JobsQueued);
        }
        tx.commit().await?;
        Ok(Some((
            Lease {
                job: job.id,
                pipeline: job.pipeline_id,
                holder: holder.to_string(),
                token,
                expires_at: Timestamp(expires),
            },
            job,
        )))
    }

    /// [`Store::claim_job`], waiting up to `timeout` for a job to be queued.
    pub async fn claim_job_wait(
        &self,
        holder: &str,
        executor: &str,
        filter: &ClaimFilter,
        lease: Duration,
        timeout: Duration,
    ) -> Result<Option<(Lease, Job)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.subscribe();
        loop {
            if let Some(c) = self.claim_job(holder, executor, filter, lease).await? {
                return Ok(Some(c));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).min(WAIT_POLL);
            // Wake on the first queue event (any other event is ignored); lagging is a
            // reason to look again too.
            let _ = tokio::time::timeout(wait, async {
                loop {
                    match events.recv().await {
                        Ok(Event::JobsQueued) => return,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            })
            .await;
        }
    }

    /// Renews the lease for `extend` from now.
    pub async fn heartbeat(&self, lease: &mut Lease, extend: Duration) -> Result<LeaseState> {
        let mut tx = self.write().await?;
        let expires = tx.now().0.saturating_add(lease_millis(extend));
        let r = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND lease_token = $3 AND status = 'running' \
             RETURNING cancel_requested",
        )
        .bind(expires)
        .bind(lease.job.0)
        .bind(&lease.token)
        .fetch_optional(tx.conn())
        .await?;
        tx.commit().await?;
        match r {
            Some(r) => {
                lease.expires_at = Timestamp(expires);
                Ok(LeaseState {
                    expires_at: lease.expires_at,
                    cancel_requested: r.flag("cancel_requested")?,
                })
            }
            None => Err(Error::LeaseLost { job: lease.job.0 }),
        }
    }

    /// Records how the job ended and gives the lease back.
    pub async fn finish_job(&self, lease: &Lease, outcome: &JobOutcome) -> Result<Job> {
        if !matches!(
            outcome.status,
            JobStatus::Success | JobStatus::Failed | JobStatus::Canceled
        ) {
            return Err(Error::invalid(
                "outcome",
                "a job finishes as success, failed or canceled",
            ));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        let r = sqlx::query(
            "UPDATE jobs SET status = $1, exit_code = $2, failure_reason = $3, finished_at = $4, updated_at = $4, \
             lease_token = NULL, lease_expires_at = NULL WHERE id = $5 AND lease_token = $6 AND status = 'running' \
             RETURNING *",
        )
        .bind(outcome.status.as_str())
        .bind(outcome.exit_code.map(i64::from))
        .bind(outcome.failure_reason.as_deref())
        .bind(now.0)
        .bind(lease.job.0)
        .bind(&lease.token)
        .fetch_optional(tx.conn())
        .await?
        .ok_or(Error::LeaseLost { job: lease.job.0 })?;
        let job = job_from(&r)?;
        tx.emit(Event::JobChanged {
            job: job.id,
            pipeline: job.pipeline_id,
        });
        tx.commit().await?;
        Ok(job)
    }

    /// Records the variables the job's dotenv report exported (before finishing it).
    pub async fn set_job_dotenv(&self, lease: &Lease, dotenv: &[KeyValue]) -> Result<()> {
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "UPDATE jobs SET dotenv = $1 WHERE id = $2 AND lease_token = $3 AND status = 'running'",
        )
        .bind(to_json(&dotenv)?)
        .bind(lease.job.0)
        .bind(&lease.token)
        .execute(tx.conn())
        .await?
        .rows_affected();
        tx.commit().await?;
        if n == 1 {
            Ok(())
        } else {
            Err(Error::LeaseLost { job: lease.job.0 })
        }
    }

    /// Jobs currently running under a lease of `holder`.
    pub async fn jobs_held_by(&self, holder: &str) -> Result<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE status = 'running' AND lease_holder = $1 ORDER BY id",
        )
        .bind(holder)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from).collect()
    }

    /// On start, before claiming anything: deals with every job that was running under
    /// a lease of `holder` (this server's previous process). `decide` says, per job,
    /// whether to re-attach it or fail it with reason "server restarted" (and retry).
    pub async fn recover_after_restart(
        &self,
        holder: &str,
        decide: impl Fn(&Job) -> Recovery + Sync,
    ) -> Result<RecoveryReport> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE status = 'running' AND lease_holder = $1 ORDER BY id",
        )
        .bind(holder)
        .fetch_all(tx.conn())
        .await?;
        let jobs: Vec<Job> = rows.iter().map(job_from).collect::<Result<_>>()?;
        let report = recover(
            &mut tx,
            &jobs,
            FAILURE_SERVER_RESTARTED,
            Some(holder),
            &decide,
        )
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    /// Jobs of any holder whose lease ran out (the holder died or lost contact): failed
    /// with reason "lease expired", retried when `decide` says so. Call periodically.
    pub async fn expire_leases(
        &self,
        decide: impl Fn(&Job) -> Recovery + Sync,
    ) -> Result<RecoveryReport> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE status = 'running' AND lease_expires_at < $1 ORDER BY id",
        )
        .bind(tx.now().0)
        .fetch_all(tx.conn())
        .await?;
        let jobs: Vec<Job> = rows.iter().map(job_from).collect::<Result<_>>()?;
        // Re-attaching makes no sense for a holder that is gone.
        let fail_only = |j: &Job| match decide(j) {
            Recovery::Reattach => Recovery::Fail { retry: false },
            r => r,
        };
        let report = recover(&mut tx, &jobs, FAILURE_LEASE_EXPIRED, None, &fail_only).await?;
        tx.commit().await?;
        Ok(report)
    }
}

async fn recover(
    tx: &mut WriteTx,
    jobs: &[Job],
    reason: &str,
    holder: Option<&str>,
    decide: &(dyn Fn(&Job) -> Recovery + Sync),
) -> Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    let now = tx.now();
    for job in jobs {
        match (decide(job), holder) {
            (Recovery::Reattach, Some(holder)) => {
                let token = new_lease_token();
                // The holder must heartbeat soon; the default grace is one minute.
                let expires = now.0.saturating_add(60_000);
                sqlx::query("UPDATE jobs SET lease_token = $1, lease_expires_at = $2, updated_at = $3 WHERE id = $4")
                    .bind(&token)
                    .bind(expires)
                    .bind(now.0)
                    .bind(job.id.0)
                    .execute(tx.conn())
                    .await?;
                report.reattached.push(Lease {
                    job: job.id,
                    pipeline: job.pipeline_id,
                    holder: holder.to_string(),
                    token,
                    expires_at: Timestamp(expires),
                });
            }
            (decision, _) => {
                let retry = matches!(decision, Recovery::Fail { retry: true });
                sqlx::query(
                    "UPDATE jobs SET status = 'failed', failure_reason = $1, finished_at = $2, updated_at = $2, \
                     lease_token = NULL, lease_expires_at = NULL WHERE id = $3 AND status = 'running'",
                )
                .bind(reason)
                .bind(now.0)
                .bind(job.id.0)
                .execute(tx.conn())
                .await?;
                tx.emit(Event::JobChanged {
                    job: job.id,
                    pipeline: job.pipeline_id,
                });
                report.failed.push(job.id);
                if retry {
                    let mut failed = job.clone();
                    failed.status = JobStatus::Failed;
                    let new = insert_retry(tx, &failed, None).await?;
                    report.retried.push((job.id, new.id));
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::ClaimFilter;

    #[test]
    fn tag_matching() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(ClaimFilter::any().accepts(&t(&["gpu"])));
        let f = ClaimFilter {
            any: false,
            tags: t(&["docker", "linux"]),
            run_untagged: false,
        };
        assert!(f.accepts(&t(&["docker"])));
        assert!(f.accepts(&t(&["docker", "linux"])));
        assert!(!f.accepts(&t(&["docker", "gpu"])));
        assert!(!f.accepts(&[]));
        let f = ClaimFilter {
            run_untagged: true,
            ..f
        };
        assert!(f.accepts(&[]));
    }
}
