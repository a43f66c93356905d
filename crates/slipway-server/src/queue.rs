//! The job lifecycle a worker drives, behind one small trait so that the server's own
//! workers and, later, remote `slipway agent`s use the same protocol:
//!
//! 1. **claim**: take a pending job under a lease (waiting up to a limit for one), and
//!    receive an [`Assignment`]: the lease and a [`JobPayload`] with everything needed to
//!    run the job (definition, planned variables, pipeline context, project variables
//!    and secrets, dependencies' artifacts and dotenv variables, commit);
//! 2. **heartbeat**: renew the lease every few seconds and learn about cancel requests;
//! 3. **append_log**: send the job's output, in order; each call returns the log's
//!    committed size;
//! 4. **finish**: report the outcome (and the artifacts and dotenv variables it made).
//!
//! [`LocalQueue`] implements it on the store in process. The HTTP shape for agents is in
//! ARCHITECTURE.md ("agent protocol"); the payload is serialisable for that reason.

use crate::app::AppState;
use crate::pipelines::PipelineDocument;
use serde::{Deserialize, Serialize};
use slipway_core::model;
use slipway_core::plan::PlannedJob;
use slipway_core::variables::PipelineContext;
use slipway_db::{
    ClaimFilter, Job, JobOutcome, KeyValue, Lease, LeaseState, NewArtifact, Timestamp,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A variable from the project's settings, with its clear value.
#[derive(Clone, Serialize, Deserialize)]
pub struct ProjectVariable {
    pub key: String,
    pub value: String,
    /// Hidden in the job's log.
    pub masked: bool,
    /// GitLab's file type: the job gets a path to a file holding the value.
    pub file: bool,
    /// `$` references are not expanded.
    pub raw: bool,
}

impl std::fmt::Debug for ProjectVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectVariable")
            .field("key", &self.key)
            .field("value", &"***")
            .field("masked", &self.masked)
            .field("file", &self.file)
            .finish()
    }
}

/// A job this one receives artifacts or dotenv variables from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dependency {
    pub job: String,
    pub job_id: i64,
    /// Its artifacts' id in the artifact store, if it saved any.
    pub artifacts: Option<String>,
    /// Its dotenv report's variables.
    pub dotenv: Vec<(String, String)>,
}

/// Everything needed to run one job attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobPayload {
    pub job_id: i64,
    pub pipeline_id: i64,
    pub project_id: i64,
    pub project_name: String,
    pub attempt: u32,
    /// The commit to check out.
    pub sha: String,
    pub planned: PlannedJob,
    pub definition: model::Job,
    /// The pipeline's context with its ids filled in.
    pub context: PipelineContext,
    pub project_variables: Vec<ProjectVariable>,
    /// Variables given to the pipeline (trigger, manual run, schedule) and, for a played
    /// manual job, to the job; later ones win.
    pub run_variables: Vec<(String, String)>,
    pub dependencies: Vec<Dependency>,
    /// `when: manual` (played) or `when: delayed`.
    pub manual: bool,
    /// The deployment this job makes (set by the gate once it may run): after a
    /// successful script the server deploys its release.
    #[serde(default)]
    pub deployment: Option<i64>,
}

/// Artifacts a job saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedArtifacts {
    pub store_id: String,
    pub name: String,
    pub size: i64,
    /// Milliseconds since the epoch.
    pub expire_at_ms: Option<i64>,
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub outcome: JobOutcome,
    pub artifacts: Option<SavedArtifacts>,
    pub dotenv: Vec<(String, String)>,
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub lease: Lease,
    pub job: Job,
    pub payload: Arc<JobPayload>,
}

/// Why a queue call failed.
#[derive(Debug)]
pub enum QueueError {
    /// The lease is gone (finished, canceled and handed on, or expired): stop the job
    /// and report nothing more.
    LeaseLost,
    /// The job cannot be run as stored (its document is missing or broken).
    Unrunnable(String),
    Other(String),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::LeaseLost => f.write_str("the job's lease was lost"),
            QueueError::Unrunnable(m) | QueueError::Other(m) => f.write_str(m),
        }
    }
}

impl From<slipway_db::Error> for QueueError {
    fn from(e: slipway_db::Error) -> QueueError {
        match e {
            slipway_db::Error::LeaseLost { .. } => QueueError::LeaseLost,
            e => QueueError::Other(e.to_string()),
        }
    }
}

/// The worker's side of the job lifecycle.
pub trait JobQueue: Send + Sync {
    /// A pending job, waiting up to `wait` for one.
    fn claim(&self, wait: Duration) -> BoxFuture<'_, Result<Option<Assignment>, QueueError>>;
    /// Renews the lease; reports a cancel request.
    fn heartbeat<'a>(
        &'a self,
        lease: &'a mut Lease,
    ) -> BoxFuture<'a, Result<LeaseState, QueueError>>;
    /// Appends to the job's log; returns the committed size.
    fn append_log<'a>(
        &'a self,
        lease: &'a Lease,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<i64, QueueError>>;
    /// Records the outcome and gives the lease back.
    fn finish<'a>(
        &'a self,
        lease: &'a Lease,
        report: &'a JobReport,
    ) -> BoxFuture<'a, Result<Job, QueueError>>;
}

/// The queue on this server's store.
pub struct LocalQueue {
    pub app: AppState,
    /// `shell`, `docker` or `auto`: recorded on each claimed job.
    pub executor: String,
}

impl JobQueue for LocalQueue {
    fn claim(&self, wait: Duration) -> BoxFuture<'_, Result<Option<Assignment>, QueueError>> {
        Box::pin(async move {
            let app = &self.app;
            let Some((lease, job)) = app
                .store
                .claim_job_wait(
                    &app.holder,
                    &self.executor,
                    &ClaimFilter::any(),
                    app.config.lease,
                    wait,
                )
                .await?
            else {
                return Ok(None);
            };
            let gated = match payload(app, &job).await {
                Ok(mut p) => match crate::deployments::gate::check(app, &lease, &job, &p).await {
                    Ok(crate::deployments::gate::Gate::Run(d)) => {
                        p.deployment = d.map(|d| d.0);
                        Ok(Some(p))
                    }
                    // Held or refused: the claim went back.
                    Ok(crate::deployments::gate::Gate::Held) => Ok(None),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match gated {
                Ok(Some(p)) => Ok(Some(Assignment {
                    lease,
                    job,
                    payload: Arc::new(p),
                })),
                Ok(None) => Ok(None),
                Err(e) => {
                    // A job that cannot even be described is failed at once, with the
                    // reason in its log.
                    let msg = format!("ERROR: this job cannot run: {e}\n");
                    let _ = app.store.append_log(job.id, msg.as_bytes()).await;
                    let _ = app
                        .store
                        .finish_job(
                            &lease,
                            &JobOutcome::failed(
                                None,
                                slipway_core::job::reason::RUNNER_SYSTEM_FAILURE,
                            ),
                        )
                        .await;
                    Err(QueueError::Unrunnable(e.to_string()))
                }
            }
        })
    }

    fn heartbeat<'a>(
        &'a self,
        lease: &'a mut Lease,
    ) -> BoxFuture<'a, Result<LeaseState, QueueError>> {
        Box::pin(async move {
            Ok(self
                .app
                .store
                .heartbeat(lease, self.app.config.lease)
                .await?)
        })
    }

    fn append_log<'a>(
        &'a self,
        lease: &'a Lease,
        data: &'a [u8],
    ) -> BoxFuture<'a, Result<i64, QueueError>> {
        Box::pin(async move { Ok(self.app.store.append_log(lease.job, data).await?) })
    }

    fn finish<'a>(
        &'a self,
        lease: &'a Lease,
        report: &'a JobReport,
    ) -> BoxFuture<'a, Result<Job, QueueError>> {
        Box::pin(async move {
            let store = &self.app.store;
            if let Some(a) = &report.artifacts {
                store
                    .add_artifact(
                        lease.job,
                        NewArtifact {
                            file_type: "archive".into(),
                            name: a.name.clone(),
                            store_id: a.store_id.clone(),
                            size: a.size,
                            expire_at: a.expire_at_ms.map(Timestamp::from_millis),
                        },
                    )
                    .await?;
            }
            if !report.dotenv.is_empty() {
                let kv: Vec<KeyValue> = report
                    .dotenv
                    .iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect();
                store.set_job_dotenv(lease, &kv).await?;
            }
            Ok(store.finish_job(lease, &report.outcome).await?)
        })
    }
}

/// The payload of `job`, from its pipeline's document and the project's settings.
pub async fn payload(app: &AppState, job: &Job) -> Result<JobPayload, slipway_db::Error> {
    let pipeline = app.store.pipeline(job.pipeline_id).await?;
    let project = app.store.project(job.project_id).await?;
    let doc: Arc<PipelineDocument> = app.documents.get(&app.store, pipeline.id).await?;
    let plan = doc
        .plan
        .as_ref()
        .ok_or_else(|| slipway_db::Error::Corrupt("the pipeline has no plan".into()))?;
    let planned =
        plan.jobs.get(job.plan_index).cloned().ok_or_else(|| {
            slipway_db::Error::Corrupt(format!("no planned job {}", job.plan_index))
        })?;
    let definition = doc
        .definition(job.plan_index)
        .cloned()
        .ok_or_else(|| slipway_db::Error::Corrupt(format!("no definition for {}", job.name)))?;
    let mut context = doc.context.clone();
    context.pipeline_id = pipeline.id.0.max(0) as u64;
    context.pipeline_iid = pipeline.iid.max(0) as u64;
    let environment = definition.environment.as_ref().map(|e| e.name.clone());
    let protected = crate::pipelines::is_protected(&project, &pipeline.ref_name, pipeline.tag);
    let project_variables = app
        .store
        .variables_for_job(project.id, protected, environment.as_deref())
        .await?
        .into_iter()
        .map(|v| ProjectVariable {
            key: v.key,
            masked: v.masked || v.secret,
            file: v.file,
            raw: v.raw,
            value: v.value.into_inner(),
        })
        .collect();
    let mut run_variables: Vec<(String, String)> = pipeline
        .variables
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    run_variables.extend(
        job.variables
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone())),
    );
    // Dependencies: the latest attempt of each job named in `dependencies`.
    let current = app.store.current_jobs(pipeline.id).await?;
    let artifacts = app.store.pipeline_artifacts(pipeline.id).await?;
    let mut dependencies = Vec::new();
    for name in &planned.dependencies {
        let Some(dep) = current.iter().find(|j| &j.name == name) else {
            continue;
        };
        dependencies.push(Dependency {
            job: name.clone(),
            job_id: dep.id.0,
            artifacts: artifacts
                .iter()
                .filter(|a| a.job_id == dep.id && a.file_type == "archive")
                .map(|a| a.store_id.clone())
                .next_back(),
            dotenv: dep
                .dotenv
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
        });
    }
    Ok(JobPayload {
        job_id: job.id.0,
        pipeline_id: pipeline.id.0,
        project_id: project.id.0,
        project_name: project.name.clone(),
        attempt: job.attempt,
        sha: pipeline.sha.clone(),
        manual: job.when == slipway_core::model::When::Manual
            || job.when == slipway_core::model::When::Delayed,
        planned,
        definition,
        context,
        project_variables,
        run_variables,
        dependencies,
        deployment: None,
    })
}
