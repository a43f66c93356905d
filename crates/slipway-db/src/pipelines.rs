//! Pipelines and their jobs: creation from a plan (with GitLab's per-project `iid`),
//! status changes driven by the server's scheduler, play / retry / cancel, and the
//! queries behind `workflow:auto_cancel`.

use crate::audit::{append, Actor};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::row::{flag, to_json, RowExt};
use crate::store::{Store, WriteTx};
use crate::triggers::KeyValue;
use crate::types::{JobId, PipelineId, ProjectId, ScheduleId, Timestamp, UserId};
use serde::Serialize;
use serde_json::{json, Value};
use slipway_core::model::When;
use slipway_core::schedule::{JobStatus, PipelineStatus};

/// GitLab's `CI_PIPELINE_SOURCE` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineSource {
    Push,
    Web,
    Schedule,
    Api,
    Trigger,
    MergeRequestEvent,
    ExternalPullRequestEvent,
    Pipeline,
    ParentPipeline,
    Chat,
    External,
    Webide,
    OndemandDastScan,
    OndemandDastValidation,
    SecurityOrchestrationPolicy,
}

impl PipelineSource {
    pub const ALL: [PipelineSource; 15] = [
        PipelineSource::Push,
        PipelineSource::Web,
        PipelineSource::Schedule,
        PipelineSource::Api,
        PipelineSource::Trigger,
        PipelineSource::MergeRequestEvent,
        PipelineSource::ExternalPullRequestEvent,
        PipelineSource::Pipeline,
        PipelineSource::ParentPipeline,
        PipelineSource::Chat,
        PipelineSource::External,
        PipelineSource::Webide,
        PipelineSource::OndemandDastScan,
        PipelineSource::OndemandDastValidation,
        PipelineSource::SecurityOrchestrationPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineSource::Push => "push",
            PipelineSource::Web => "web",
            PipelineSource::Schedule => "schedule",
            PipelineSource::Api => "api",
            PipelineSource::Trigger => "trigger",
            PipelineSource::MergeRequestEvent => "merge_request_event",
            PipelineSource::ExternalPullRequestEvent => "external_pull_request_event",
            PipelineSource::Pipeline => "pipeline",
            PipelineSource::ParentPipeline => "parent_pipeline",
            PipelineSource::Chat => "chat",
            PipelineSource::External => "external",
            PipelineSource::Webide => "webide",
            PipelineSource::OndemandDastScan => "ondemand_dast_scan",
            PipelineSource::OndemandDastValidation => "ondemand_dast_validation",
            PipelineSource::SecurityOrchestrationPolicy => "security_orchestration_policy",
        }
    }

    pub fn parse(s: &str) -> Option<PipelineSource> {
        PipelineSource::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

pub(crate) fn pipeline_status_parse(s: &str) -> Option<PipelineStatus> {
    Some(match s {
        "created" => PipelineStatus::Created,
        "running" => PipelineStatus::Running,
        "success" => PipelineStatus::Success,
        "failed" => PipelineStatus::Failed,
        "canceled" => PipelineStatus::Canceled,
        "blocked" => PipelineStatus::Blocked,
        "skipped" => PipelineStatus::Skipped,
        _ => return None,
    })
}

/// Whether a pipeline in `s` is done for good.
pub fn pipeline_finished(s: PipelineStatus) -> bool {
    matches!(
        s,
        PipelineStatus::Success
            | PipelineStatus::Failed
            | PipelineStatus::Canceled
            | PipelineStatus::Skipped
    )
}

pub(crate) fn when_parse(s: &str) -> Option<When> {
    Some(match s {
        "on_success" => When::OnSuccess,
        "on_failure" => When::OnFailure,
        "always" => When::Always,
        "manual" => When::Manual,
        "delayed" => When::Delayed,
        "never" => When::Never,
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pipeline {
    pub id: PipelineId,
    pub project_id: ProjectId,
    /// Per-project number (GitLab's `CI_PIPELINE_IID`).
    pub iid: i64,
    pub ref_name: String,
    pub tag: bool,
    pub sha: String,
    pub before_sha: Option<String>,
    pub source: PipelineSource,
    pub status: PipelineStatus,
    pub name: Option<String>,
    pub commit_message: Option<String>,
    pub user_id: Option<UserId>,
    pub schedule_id: Option<ScheduleId>,
    pub variables: Vec<KeyValue>,
    pub error_message: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: JobId,
    pub pipeline_id: PipelineId,
    pub project_id: ProjectId,
    /// Index of the job in the pipeline's plan (shared by its retries).
    pub plan_index: usize,
    pub name: String,
    pub stage: String,
    pub stage_index: usize,
    pub status: JobStatus,
    pub when: When,
    pub allow_failure: bool,
    pub interruptible: bool,
    pub tags: Vec<String>,
    /// 1 for the first run, 2 for the first retry, ...
    pub attempt: u32,
    pub retry_of: Option<JobId>,
    /// A newer attempt replaced this one.
    pub retried: bool,
    pub exit_code: Option<i32>,
    pub failure_reason: Option<String>,
    /// Variables given when a manual job was played.
    pub variables: Vec<KeyValue>,
    pub triggered_by: Option<UserId>,
    pub created_at: Timestamp,
    pub queued_at: Option<Timestamp>,
    pub scheduled_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// The server or agent running the job.
    pub lease_holder: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    /// Which executor runs it (`shell`, `docker`, an agent's name).
    pub executor: Option<String>,
    /// Cancel was asked while it ran; the holder sees it on its next heartbeat.
    pub cancel_requested: bool,
    pub log_size: i64,
    /// Variables its `artifacts:reports:dotenv` exported, for the jobs that depend on it.
    pub dotenv: Vec<KeyValue>,
    /// Its `resource_group` (expanded): jobs of one group run one at a time.
    pub resource_group: Option<String>,
    /// The resource group was given to this attempt (it may run).
    pub resource_assigned: bool,
}

/// A pipeline to create, with its jobs in plan order.
#[derive(Debug, Clone)]
pub struct NewPipeline {
    pub project: ProjectId,
    pub ref_name: String,
    pub tag: bool,
    pub sha: String,
    pub before_sha: Option<String>,
    pub source: PipelineSource,
    pub user: Option<UserId>,
    pub schedule: Option<ScheduleId>,
    pub variables: Vec<KeyValue>,
    /// The plan as JSON (`serde_json::to_value(&plan)`), kept for scheduling.
    pub plan: Option<Value>,
    pub name: Option<String>,
    pub commit_message: Option<String>,
    /// Set when the configuration is invalid (the pipeline is then `failed`, no jobs).
    pub error_message: Option<String>,
    pub status: PipelineStatus,
    pub jobs: Vec<NewJob>,
}

impl NewPipeline {
    pub fn new(
        project: ProjectId,
        ref_name: impl Into<String>,
        sha: impl Into<String>,
        source: PipelineSource,
    ) -> NewPipeline {
        NewPipeline {
            project,
            ref_name: ref_name.into(),
            tag: false,
            sha: sha.into(),
            before_sha: None,
            source,
            user: None,
            schedule: None,
            variables: Vec::new(),
            plan: None,
            name: None,
            commit_message: None,
            error_message: None,
            status: PipelineStatus::Created,
            jobs: Vec::new(),
        }
    }
}

/// A job of a new pipeline; its plan index is its position.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    pub stage: String,
    pub stage_index: usize,
    pub when: When,
    pub allow_failure: bool,
    pub interruptible: bool,
    pub tags: Vec<String>,
    /// Usually `created`; `pending` for jobs that may start at once.
    pub status: JobStatus,
    pub scheduled_at: Option<Timestamp>,
    /// Its `resource_group`, expanded.
    pub resource_group: Option<String>,
}

impl NewJob {
    pub fn new(name: impl Into<String>, stage: impl Into<String>, stage_index: usize) -> NewJob {
        NewJob {
            name: name.into(),
            stage: stage.into(),
            stage_index,
            when: When::OnSuccess,
            allow_failure: false,
            interruptible: false,
            tags: Vec::new(),
            status: JobStatus::Created,
            scheduled_at: None,
            resource_group: None,
        }
    }

    /// From a planned job of `slipway_core::plan`.
    pub fn from_planned(j: &slipway_core::plan::PlannedJob) -> NewJob {
        NewJob {
            name: j.name.clone(),
            stage: j.stage.clone(),
            stage_index: j.stage_index,
            when: j.when,
            allow_failure: j.allow_failure,
            interruptible: j.interruptible,
            tags: Vec::new(),
            status: JobStatus::Created,
            scheduled_at: None,
            resource_group: None,
        }
    }
}

/// Filters for [`Store::pipelines`]; newest first.
#[derive(Debug, Clone, Default)]
pub struct PipelineQuery {
    pub project: Option<ProjectId>,
    pub ref_name: Option<String>,
    pub status: Option<PipelineStatus>,
    /// Only pipelines older than this one (for paging).
    pub before: Option<PipelineId>,
    /// At most this many (default 50).
    pub limit: Option<i64>,
}

/// An older, unfinished pipeline on the same ref, for `workflow:auto_cancel`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoCancelCandidate {
    pub pipeline: Pipeline,
    /// Unfinished jobs with `interruptible: true`.
    pub interruptible_jobs: Vec<JobId>,
    /// Every unfinished job (what `conservative` cancels).
    pub unfinished_jobs: Vec<JobId>,
    /// A job with `interruptible: false` has started (is running or finished after
    /// running): GitLab's `conservative` mode then leaves the pipeline alone.
    pub non_interruptible_started: bool,
}

pub(crate) fn pipeline_from(r: &sqlx::any::AnyRow) -> Result<Pipeline> {
    let source = r.text("source")?;
    let status = r.text("status")?;
    Ok(Pipeline {
        id: PipelineId(r.i64("id")?),
        project_id: ProjectId(r.i64("project_id")?),
        iid: r.i64("iid")?,
        ref_name: r.text("ref_name")?,
        tag: r.flag("is_tag")?,
        sha: r.text("sha")?,
        before_sha: r.opt_text("before_sha")?,
        source: PipelineSource::parse(&source)
            .ok_or_else(|| Error::Corrupt(format!("pipeline source {source:?}")))?,
        status: pipeline_status_parse(&status)
            .ok_or_else(|| Error::Corrupt(format!("pipeline status {status:?}")))?,
        name: r.opt_text("name")?,
        commit_message: r.opt_text("commit_message")?,
        user_id: r.opt_i64("user_id")?.map(UserId),
        schedule_id: r.opt_i64("schedule_id")?.map(ScheduleId),
        variables: r.json("variables")?,
        error_message: r.opt_text("error_message")?,
        created_at: r.ts("created_at")?,
        started_at: r.opt_ts("started_at")?,
        finished_at: r.opt_ts("finished_at")?,
        updated_at: r.ts("updated_at")?,
    })
}

pub(crate) fn job_from(r: &sqlx::any::AnyRow) -> Result<Job> {
    let status = r.text("status")?;
    let when = r.text("job_when")?;
    Ok(Job {
        id: JobId(r.i64("id")?),
        pipeline_id: PipelineId(r.i64("pipeline_id")?),
        project_id: ProjectId(r.i64("project_id")?),
        plan_index: r.i64("plan_index")?.max(0) as usize,
        name: r.text("name")?,
        stage: r.text("stage")?,
        stage_index: r.i64("stage_index")?.max(0) as usize,
        status: JobStatus::parse(&status)
            .ok_or_else(|| Error::Corrupt(format!("job status {status:?}")))?,
        when: when_parse(&when).ok_or_else(|| Error::Corrupt(format!("job when {when:?}")))?,
        allow_failure: r.flag("allow_failure")?,
        interruptible: r.flag("interruptible")?,
        tags: r.json("tags")?,
        attempt: r.i64("attempt")?.clamp(0, u32::MAX as i64) as u32,
        retry_of: r.opt_i64("retry_of")?.map(JobId),
        retried: r.flag("retried")?,
        exit_code: r.opt_i64("exit_code")?.map(|c| c as i32),
        failure_reason: r.opt_text("failure_reason")?,
        variables: r.json("variables")?,
        triggered_by: r.opt_i64("triggered_by")?.map(UserId),
        created_at: r.ts("created_at")?,
        queued_at: r.opt_ts("queued_at")?,
        scheduled_at: r.opt_ts("scheduled_at")?,
        started_at: r.opt_ts("started_at")?,
        finished_at: r.opt_ts("finished_at")?,
        updated_at: r.ts("updated_at")?,
        lease_holder: r.opt_text("lease_holder")?,
        lease_expires_at: r.opt_ts("lease_expires_at")?,
        executor: r.opt_text("executor")?,
        cancel_requested: r.flag("cancel_requested")?,
        log_size: r.i64("log_size")?,
        dotenv: r.json("dotenv")?,
        resource_group: r.opt_text("resource_group")?,
        resource_assigned: r.flag("resource_assigned")?,
    })
}

pub(crate) async fn job_in(tx: &mut WriteTx, id: JobId) -> Result<Job> {
    let r = sqlx::query("SELECT * FROM jobs WHERE id = $1")
        .bind(id.0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("job", id))?;
    job_from(&r)
}

/// Sets a job's status inside `tx` if it is still `from`; maintains the timestamps and
/// emits the events. Returns whether it changed.
pub(crate) async fn transition(tx: &mut WriteTx, job: &Job, to: JobStatus) -> Result<bool> {
    let now = tx.now();
    let n = sqlx::query(
        "UPDATE jobs SET status = $1, updated_at = $2, \
         queued_at = CASE WHEN $1 = 'pending' THEN $2 ELSE queued_at END, \
         finished_at = CASE WHEN $1 IN ('success', 'failed', 'canceled', 'skipped') THEN $2 ELSE finished_at END \
         WHERE id = $3 AND status = $4",
    )
    .bind(to.as_str())
    .bind(now.0)
    .bind(job.id.0)
    .bind(job.status.as_str())
    .execute(tx.conn())
    .await?
    .rows_affected();
    if n == 1 {
        tx.emit(Event::JobChanged {
            job: job.id,
            pipeline: job.pipeline_id,
        });
        if to == JobStatus::Pending {
            tx.emit(Event::JobsQueued);
        }
    }
    Ok(n == 1)
}

/// A new attempt of `old` (pending), marking `old` as retried.
pub(crate) async fn insert_retry(tx: &mut WriteTx, old: &Job, by: Option<UserId>) -> Result<Job> {
    let now = tx.now();
    sqlx::query("UPDATE jobs SET retried = 1, updated_at = $1 WHERE id = $2")
        .bind(now.0)
        .bind(old.id.0)
        .execute(tx.conn())
        .await?;
    let r = sqlx::query(
        "INSERT INTO jobs (pipeline_id, project_id, plan_index, name, stage, stage_index, status, job_when, \
         allow_failure, interruptible, tags, attempt, retry_of, variables, triggered_by, created_at, \
         queued_at, updated_at, resource_group) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $15, $16) RETURNING *",
    )
    .bind(old.pipeline_id.0)
    .bind(old.project_id.0)
    .bind(old.plan_index as i64)
    .bind(&old.name)
    .bind(&old.stage)
    .bind(old.stage_index as i64)
    .bind(old.when.as_str())
    .bind(flag(old.allow_failure))
    .bind(flag(old.interruptible))
    .bind(to_json(&old.tags)?)
    .bind(i64::from(old.attempt) + 1)
    .bind(old.id.0)
    .bind(to_json(&old.variables)?)
    .bind(by.or(old.triggered_by).map(|u| u.0))
    .bind(now.0)
    .bind(old.resource_group.as_deref())
    .fetch_one(tx.conn())
    .await?;
    let job = job_from(&r)?;
    tx.emit(Event::JobChanged {
        job: old.id,
        pipeline: old.pipeline_id,
    });
    tx.emit(Event::JobChanged {
        job: job.id,
        pipeline: job.pipeline_id,
    });
    tx.emit(Event::JobsQueued);
    Ok(job)
}

/// Cancels one unfinished job inside `tx`: at once if it is not running, by request to
/// its holder if it is. Returns whether anything changed.
async fn cancel_in(tx: &mut WriteTx, job: &Job) -> Result<bool> {
    match job.status {
        JobStatus::Running => {
            if job.cancel_requested {
                return Ok(false);
            }
            let n = sqlx::query("UPDATE jobs SET cancel_requested = 1, updated_at = $1 WHERE id = $2 AND status = 'running'")
                .bind(tx.now().0)
                .bind(job.id.0)
                .execute(tx.conn())
                .await?
                .rows_affected();
            if n == 1 {
                tx.emit(Event::JobChanged {
                    job: job.id,
                    pipeline: job.pipeline_id,
                });
            }
            Ok(n == 1)
        }
        s if s.is_finished() => Ok(false),
        _ => {
            if transition(tx, job, JobStatus::Canceled).await? {
                return Ok(true);
            }
            // It changed under us (on PostgreSQL a claimer may have taken it between our
            // read and our update): decide again on what it is now.
            let now = job_in(tx, job.id).await?;
            if !now.status.is_finished() {
                Box::pin(cancel_in(tx, &now)).await
            } else {
                Ok(false)
            }
        }
    }
}

impl Store {
    /// Creates a pipeline and its jobs in one transaction, numbering it with the
    /// project's next `iid`. Audited as `pipeline.create`.
    pub async fn create_pipeline(
        &self,
        actor: &Actor,
        p: NewPipeline,
    ) -> Result<(Pipeline, Vec<Job>)> {
        if p.ref_name.is_empty() {
            return Err(Error::invalid("ref", "must not be empty"));
        }
        if p.sha.is_empty() {
            return Err(Error::invalid("sha", "must not be empty"));
        }
        if p.jobs.iter().any(|j| {
            j.status == JobStatus::Running
                || j.status.is_finished() && j.status != JobStatus::Skipped
        }) {
            return Err(Error::invalid(
                "jobs",
                "new jobs start as created, pending, manual, scheduled or skipped",
            ));
        }
        let mut tx = self.write().await?;
        let now = tx.now();
        let iid = sqlx::query("UPDATE projects SET pipeline_counter = pipeline_counter + 1 WHERE id = $1 RETURNING pipeline_counter")
            .bind(p.project.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| Error::not_found("project", p.project))?
            .i64("pipeline_counter")?;
        let plan = match &p.plan {
            Some(v) => Some(to_json(v)?),
            None => None,
        };
        let r = sqlx::query(
            "INSERT INTO pipelines (project_id, iid, ref_name, is_tag, sha, before_sha, source, status, name, \
             commit_message, user_id, schedule_id, variables, plan, error_message, created_at, updated_at, \
             started_at, finished_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16, $17, $18) RETURNING *",
        )
        .bind(p.project.0)
        .bind(iid)
        .bind(&p.ref_name)
        .bind(flag(p.tag))
        .bind(&p.sha)
        .bind(p.before_sha.as_deref())
        .bind(p.source.as_str())
        .bind(p.status.as_str())
        .bind(p.name.as_deref())
        .bind(p.commit_message.as_deref())
        .bind(p.user.map(|u| u.0))
        .bind(p.schedule.map(|s| s.0))
        .bind(to_json(&p.variables)?)
        .bind(plan)
        .bind(p.error_message.as_deref())
        .bind(now.0)
        .bind((p.status == PipelineStatus::Running).then_some(now.0))
        .bind(pipeline_finished(p.status).then_some(now.0))
        .fetch_one(tx.conn())
        .await?;
        let pipeline = pipeline_from(&r)?;
        let mut jobs = Vec::with_capacity(p.jobs.len());
        let mut queued = false;
        for (i, j) in p.jobs.iter().enumerate() {
            queued |= j.status == JobStatus::Pending;
            let r = sqlx::query(
                "INSERT INTO jobs (pipeline_id, project_id, plan_index, name, stage, stage_index, status, job_when, \
                 allow_failure, interruptible, tags, created_at, updated_at, queued_at, scheduled_at, finished_at, \
                 resource_group) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14, $15, $16) RETURNING *",
            )
            .bind(pipeline.id.0)
            .bind(p.project.0)
            .bind(i as i64)
            .bind(&j.name)
            .bind(&j.stage)
            .bind(j.stage_index as i64)
            .bind(j.status.as_str())
            .bind(j.when.as_str())
            .bind(flag(j.allow_failure))
            .bind(flag(j.interruptible))
            .bind(to_json(&j.tags)?)
            .bind(now.0)
            .bind((j.status == JobStatus::Pending).then_some(now.0))
            .bind(j.scheduled_at.map(|t| t.0))
            .bind(j.status.is_finished().then_some(now.0))
            .bind(j.resource_group.as_deref())
            .fetch_one(tx.conn())
            .await?;
            jobs.push(job_from(&r)?);
        }
        if let Some(s) = p.schedule {
            sqlx::query("UPDATE schedules SET last_pipeline_id = $1 WHERE id = $2")
                .bind(pipeline.id.0)
                .bind(s.0)
                .execute(tx.conn())
                .await?;
        }
        append(
            &mut tx,
            actor,
            "pipeline.create",
            "pipeline",
            &pipeline.id.to_string(),
            json!({"project": p.project.0, "iid": iid, "ref": p.ref_name, "sha": p.sha,
                   "source": p.source.as_str(), "jobs": jobs.len(),
                   "variables": p.variables.iter().map(|v| v.key.as_str()).collect::<Vec<_>>()}),
        )
        .await?;
        tx.emit(Event::PipelineChanged {
            pipeline: pipeline.id,
            project: p.project,
        });
        if queued {
            tx.emit(Event::JobsQueued);
        }
        tx.commit().await?;
        Ok((pipeline, jobs))
    }

    pub async fn pipeline(&self, id: PipelineId) -> Result<Pipeline> {
        let r = sqlx::query("SELECT * FROM pipelines WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("pipeline", id))?;
        pipeline_from(&r)
    }

    pub async fn pipeline_by_iid(&self, project: ProjectId, iid: i64) -> Result<Option<Pipeline>> {
        let r = sqlx::query("SELECT * FROM pipelines WHERE project_id = $1 AND iid = $2")
            .bind(project.0)
            .bind(iid)
            .fetch_optional(self.pool())
            .await?;
        r.as_ref().map(pipeline_from).transpose()
    }

    /// The plan stored with the pipeline.
    pub async fn pipeline_plan(&self, id: PipelineId) -> Result<Option<Value>> {
        let r = sqlx::query("SELECT plan FROM pipelines WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("pipeline", id))?;
        match r.opt_text("plan")? {
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("plan of pipeline {id}: {e}"))),
            None => Ok(None),
        }
    }

    pub async fn pipelines(&self, q: &PipelineQuery) -> Result<Vec<Pipeline>> {
        let rows = sqlx::query(
            "SELECT * FROM pipelines WHERE ($1 < 0 OR project_id = $1) AND ($2 = '' OR ref_name = $2) \
             AND ($3 = '' OR status = $3) AND ($4 < 0 OR id < $4) ORDER BY id DESC LIMIT $5",
        )
        .bind(q.project.map(|p| p.0).unwrap_or(-1))
        .bind(q.ref_name.clone().unwrap_or_default())
        .bind(q.status.map(|s| s.as_str()).unwrap_or(""))
        .bind(q.before.map(|p| p.0).unwrap_or(-1))
        .bind(q.limit.unwrap_or(50).clamp(1, 1000))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(pipeline_from).collect()
    }

    /// Pipelines not finished yet, oldest first (what a restarted server resumes).
    pub async fn unfinished_pipelines(&self) -> Result<Vec<Pipeline>> {
        let rows = sqlx::query(
            "SELECT * FROM pipelines WHERE status IN ('created', 'running', 'blocked') ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(pipeline_from).collect()
    }

    /// Sets the pipeline's status; `started_at` is set the first time it runs,
    /// `finished_at` when it finishes (and cleared if a retry makes it run again).
    pub async fn set_pipeline_status(
        &self,
        id: PipelineId,
        status: PipelineStatus,
    ) -> Result<Pipeline> {
        let mut tx = self.write().await?;
        let now = tx.now();
        let finished = pipeline_finished(status);
        let r = sqlx::query(
            "UPDATE pipelines SET status = $1, updated_at = $2, \
             started_at = CASE WHEN $1 = 'running' THEN COALESCE(started_at, $2) ELSE started_at END, \
             finished_at = CASE WHEN $3 = 1 THEN COALESCE(finished_at, $2) ELSE NULL END \
             WHERE id = $4 RETURNING *",
        )
        .bind(status.as_str())
        .bind(now.0)
        .bind(flag(finished))
        .bind(id.0)
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("pipeline", id))?;
        let p = pipeline_from(&r)?;
        tx.emit(Event::PipelineChanged {
            pipeline: id,
            project: p.project_id,
        });
        tx.commit().await?;
        Ok(p)
    }

    pub async fn job(&self, id: JobId) -> Result<Job> {
        let r = sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?
            .ok_or_else(|| Error::not_found("job", id))?;
        job_from(&r)
    }

    /// Every job of the pipeline, retried attempts included, in plan order then attempt.
    pub async fn jobs(&self, pipeline: PipelineId) -> Result<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE pipeline_id = $1 ORDER BY plan_index, attempt, id",
        )
        .bind(pipeline.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from).collect()
    }

    /// The latest attempt of each job, in plan order: index `i` is plan job `i`, so the
    /// statuses feed `slipway_core::schedule` directly.
    pub async fn current_jobs(&self, pipeline: PipelineId) -> Result<Vec<Job>> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE pipeline_id = $1 AND retried = 0 ORDER BY plan_index, id",
        )
        .bind(pipeline.0)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from).collect()
    }

    /// Moves `job` from `from` to `to` (compare-and-set); false if it was no longer
    /// `from`. For the scheduler: `running` comes only from claiming the job and
    /// `success` only from finishing it.
    pub async fn set_job_status(&self, job: JobId, from: JobStatus, to: JobStatus) -> Result<bool> {
        Ok(self.set_job_statuses(&[(job, from, to)]).await?[0])
    }

    /// Several [`Store::set_job_status`] in one transaction (one scheduler step).
    pub async fn set_job_statuses(
        &self,
        changes: &[(JobId, JobStatus, JobStatus)],
    ) -> Result<Vec<bool>> {
        if changes
            .iter()
            .any(|(_, _, to)| matches!(to, JobStatus::Running | JobStatus::Success))
        {
            return Err(Error::invalid(
                "status",
                "running and success are set by claiming and finishing a job",
            ));
        }
        let mut tx = self.write().await?;
        let mut out = Vec::with_capacity(changes.len());
        for (id, from, to) in changes {
            let job = job_in(&mut tx, *id).await?;
            if job.status != *from {
                out.push(false);
                continue;
            }
            out.push(transition(&mut tx, &job, *to).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Plays a manual job (it becomes pending) with optional job variables.
    pub async fn play_job(
        &self,
        actor: &Actor,
        id: JobId,
        variables: Vec<KeyValue>,
    ) -> Result<Job> {
        let mut tx = self.write().await?;
        let job = job_in(&mut tx, id).await?;
        if job.status != JobStatus::Manual {
            return Err(Error::State(format!(
                "job {id} is {}, not manual",
                job.status.as_str()
            )));
        }
        let now = tx.now();
        sqlx::query(
            "UPDATE jobs SET variables = $1, triggered_by = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(to_json(&variables)?)
        .bind(actor.user_id.map(|u| u.0))
        .bind(now.0)
        .bind(id.0)
        .execute(tx.conn())
        .await?;
        transition(&mut tx, &job, JobStatus::Pending).await?;
        append(
            &mut tx,
            actor,
            "job.play",
            "job",
            &id.to_string(),
            json!({"pipeline": job.pipeline_id.0, "name": job.name,
                   "variables": variables.iter().map(|v| v.key.as_str()).collect::<Vec<_>>()}),
        )
        .await?;
        let job = job_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Retries a finished job: a new pending attempt; the old one is marked retried.
    pub async fn retry_job(&self, actor: &Actor, id: JobId) -> Result<Job> {
        let mut tx = self.write().await?;
        let job = job_in(&mut tx, id).await?;
        if !job.status.is_finished() || job.status == JobStatus::Skipped {
            return Err(Error::State(format!(
                "job {id} is {}: only finished jobs can be retried",
                job.status.as_str()
            )));
        }
        if job.retried {
            return Err(Error::State(format!("job {id} was already retried")));
        }
        let new = insert_retry(&mut tx, &job, actor.user_id).await?;
        append(
            &mut tx,
            actor,
            "job.retry",
            "job",
            &id.to_string(),
            json!({"pipeline": job.pipeline_id.0, "name": job.name, "new_job": new.id.0}),
        )
        .await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Cancels a job: at once unless it runs; a running job gets a cancel request that
    /// its holder sees on the next heartbeat (and by an event), and finishes as
    /// canceled.
    pub async fn cancel_job(&self, actor: &Actor, id: JobId) -> Result<Job> {
        let mut tx = self.write().await?;
        let job = job_in(&mut tx, id).await?;
        if job.status.is_finished() {
            return Err(Error::State(format!(
                "job {id} is already {}",
                job.status.as_str()
            )));
        }
        cancel_in(&mut tx, &job).await?;
        append(
            &mut tx,
            actor,
            "job.cancel",
            "job",
            &id.to_string(),
            json!({"pipeline": job.pipeline_id.0, "name": job.name, "was": job.status.as_str()}),
        )
        .await?;
        let job = job_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Cancels every unfinished job of the pipeline; returns the jobs changed.
    pub async fn cancel_pipeline(&self, actor: &Actor, id: PipelineId) -> Result<Vec<JobId>> {
        self.cancel_pipeline_jobs(actor, id, false, "pipeline.cancel", json!({}))
            .await
    }

    /// `workflow:auto_cancel`: cancels the unfinished jobs of an older pipeline (only
    /// the interruptible ones when `interruptible_only`) because `by` superseded it.
    pub async fn auto_cancel(
        &self,
        id: PipelineId,
        by: PipelineId,
        interruptible_only: bool,
    ) -> Result<Vec<JobId>> {
        self.cancel_pipeline_jobs(
            &Actor::system("auto_cancel"),
            id,
            interruptible_only,
            "pipeline.auto_cancel",
            json!({"by": by.0, "interruptible_only": interruptible_only}),
        )
        .await
    }

    async fn cancel_pipeline_jobs(
        &self,
        actor: &Actor,
        id: PipelineId,
        interruptible_only: bool,
        action: &str,
        details: Value,
    ) -> Result<Vec<JobId>> {
        let mut tx = self.write().await?;
        let project = sqlx::query("SELECT project_id FROM pipelines WHERE id = $1")
            .bind(id.0)
            .fetch_optional(tx.conn())
            .await?
            .ok_or_else(|| Error::not_found("pipeline", id))?
            .i64("project_id")?;
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE pipeline_id = $1 AND retried = 0 ORDER BY plan_index",
        )
        .bind(id.0)
        .fetch_all(tx.conn())
        .await?;
        let jobs: Vec<Job> = rows.iter().map(job_from).collect::<Result<_>>()?;
        let mut changed = Vec::new();
        for j in &jobs {
            if interruptible_only && !j.interruptible {
                continue;
            }
            if cancel_in(&mut tx, j).await? {
                changed.push(j.id);
            }
        }
        let mut details = details;
        if let Value::Object(m) = &mut details {
            m.insert(
                "jobs".into(),
                json!(changed.iter().map(|j| j.0).collect::<Vec<_>>()),
            );
        }
        append(&mut tx, actor, action, "pipeline", &id.to_string(), details).await?;
        tx.emit(Event::PipelineChanged {
            pipeline: id,
            project: ProjectId(project),
        });
        tx.commit().await?;
        Ok(changed)
    }

    /// Older unfinished pipelines of `project` on `ref_name` than `newer`, with what
    /// `workflow:auto_cancel:on_new_commit` needs to decide (`conservative`: cancel
    /// when no non-interruptible job has started; `interruptible`: cancel only the
    /// interruptible jobs).
    pub async fn auto_cancel_candidates(
        &self,
        project: ProjectId,
        ref_name: &str,
        newer: PipelineId,
    ) -> Result<Vec<AutoCancelCandidate>> {
        let rows = sqlx::query(
            "SELECT * FROM pipelines WHERE project_id = $1 AND ref_name = $2 AND id < $3 \
             AND status IN ('created', 'running', 'blocked') ORDER BY id",
        )
        .bind(project.0)
        .bind(ref_name)
        .bind(newer.0)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let pipeline = pipeline_from(r)?;
            let jobs = self.current_jobs(pipeline.id).await?;
            let unfinished: Vec<&Job> = jobs.iter().filter(|j| !j.status.is_finished()).collect();
            out.push(AutoCancelCandidate {
                interruptible_jobs: unfinished
                    .iter()
                    .filter(|j| j.interruptible)
                    .map(|j| j.id)
                    .collect(),
                unfinished_jobs: unfinished.iter().map(|j| j.id).collect(),
                non_interruptible_started: jobs
                    .iter()
                    .any(|j| !j.interruptible && j.started_at.is_some()),
                pipeline,
            });
        }
        Ok(out)
    }
}
