//! Creating pipelines from requests, the way GitLab does: plan at the commit, write the
//! pipeline with its jobs (and the document the scheduler and workers run it from) in
//! one transaction, then apply `workflow:auto_cancel:on_new_commit` to older pipelines on
//! the same ref. Every trigger (hook, polling, webhooks, the API, schedules, trigger
//! tokens) comes through [`create`].
//!
//! An invalid configuration still makes a pipeline: `failed`, no jobs, its positioned
//! errors (`file:line:col: message`) in `error_message`, as GitLab shows "yaml invalid".
//! `workflow:rules` that match nothing, and commits without a pipeline file, make none.

use crate::app::App;
use crate::git::GitError;
use crate::request::{
    plan_at_commit, PipelineRequest, PlanError, PlanOutcome, PositionedError, ProjectInfo,
};
use serde::{Deserialize, Serialize};
use slipway_core::deploy::DeploySettings;
use slipway_core::model;
use slipway_core::plan::Plan;
use slipway_core::schedule::{self, JobStatus, PipelineStatus};
use slipway_core::variables::PipelineContext;
use slipway_db::{
    Actor, Job, KeyValue, NewJob, NewPipeline, Pipeline, PipelineId, Project, ScheduleId,
    Timestamp, UserId,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the server keeps with each pipeline (the `plan` column): everything needed to
/// schedule and run its jobs without re-reading the repository, on this server, after a
/// restart, or (later) on an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineDocument {
    /// `None` for an invalid configuration.
    pub plan: Option<Plan>,
    /// The job definitions the plan uses (scripts, image, artifacts, caches, retry...).
    #[serde(default)]
    pub definitions: Vec<model::Job>,
    /// For each planned job, the index of its definition in `definitions`.
    #[serde(default)]
    pub definition_index: Vec<usize>,
    /// The inputs of the predefined variables (pipeline ids are filled in at run time).
    #[serde(default)]
    pub context: PipelineContext,
    #[serde(default)]
    pub config_path: String,
    /// `workflow:auto_cancel:on_new_commit` (`conservative` when not given).
    #[serde(default)]
    pub auto_cancel_on_new_commit: Option<String>,
    /// `workflow:auto_cancel:on_job_failure` (`none` when not given).
    #[serde(default)]
    pub auto_cancel_on_job_failure: Option<String>,
    /// The configuration's errors, when it is invalid.
    #[serde(default)]
    pub errors: Vec<ConfigError>,
    /// Why a push pipeline was skipped (`[skip ci]`, `-o ci.skip`).
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// The commit's environment definitions (`.slipway`): how its deployments run.
    #[serde(default)]
    pub deploy: Option<DeploySettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    pub path: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
}

impl From<&PositionedError> for ConfigError {
    fn from(e: &PositionedError) -> ConfigError {
        ConfigError {
            path: e.path.clone(),
            line: e.line,
            col: e.col,
            message: e.message.clone(),
        }
    }
}

impl ConfigError {
    /// `path:line:col: message`, or `path: message` without a place.
    pub fn positioned(&self) -> String {
        if self.line == 0 {
            format!("{}: {}", self.path, self.message)
        } else {
            format!("{}:{}:{}: {}", self.path, self.line, self.col, self.message)
        }
    }
}

impl PipelineDocument {
    /// The definition of planned job `index`.
    pub fn definition(&self, index: usize) -> Option<&model::Job> {
        self.definitions.get(*self.definition_index.get(index)?)
    }

    /// The plan with `allow_failure` as it turned out: a job that failed with one of its
    /// `allow_failure:exit_codes` counts as allowed to fail.
    pub fn live_plan(&self, jobs: &[Job]) -> Option<Plan> {
        let mut plan = self.plan.clone()?;
        for j in jobs {
            if let (Some(pj), Some(code)) = (plan.jobs.get_mut(j.plan_index), j.exit_code) {
                if j.status == JobStatus::Failed && pj.allow_failure_exit_codes.contains(&code) {
                    pj.allow_failure = true;
                }
            }
        }
        Some(plan)
    }
}

/// Pipeline documents by pipeline, parsed once. Bounded: a restart or an eviction just
/// reads the document again.
#[derive(Default)]
pub struct DocumentCache {
    docs: Mutex<HashMap<PipelineId, Arc<PipelineDocument>>>,
}

const DOCUMENT_CACHE: usize = 512;

impl DocumentCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PipelineId, Arc<PipelineDocument>>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: PipelineId, doc: Arc<PipelineDocument>) {
        let mut m = self.lock();
        if m.len() >= DOCUMENT_CACHE {
            m.clear();
        }
        m.insert(id, doc);
    }

    pub async fn get(
        &self,
        store: &slipway_db::Store,
        id: PipelineId,
    ) -> slipway_db::Result<Arc<PipelineDocument>> {
        if let Some(d) = self.lock().get(&id) {
            return Ok(d.clone());
        }
        let value = store.pipeline_plan(id).await?.ok_or_else(|| {
            slipway_db::Error::Corrupt(format!("pipeline {id} has no stored document"))
        })?;
        let doc: PipelineDocument = serde_json::from_value(value)
            .map_err(|e| slipway_db::Error::Corrupt(format!("document of pipeline {id}: {e}")))?;
        let doc = Arc::new(doc);
        self.insert(id, doc.clone());
        Ok(doc)
    }
}

/// What a trigger led to.
#[derive(Debug)]
pub enum Created {
    /// A pipeline (running, skipped, or failed for an invalid configuration).
    Pipeline(Box<Pipeline>, Vec<Job>),
    /// No pipeline, and why (`workflow:rules`, no pipeline file).
    NotCreated(String),
}

/// Why a trigger could not be acted on.
#[derive(Debug)]
pub enum TriggerError {
    /// The ref or commit is not in the repository.
    UnknownRef(String),
    Git(GitError),
    Store(slipway_db::Error),
}

impl std::fmt::Display for TriggerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TriggerError::UnknownRef(r) => write!(f, "{r}: no such branch, tag or commit"),
            TriggerError::Git(e) => write!(f, "git: {e}"),
            TriggerError::Store(e) => e.fmt(f),
        }
    }
}

impl From<slipway_db::Error> for TriggerError {
    fn from(e: slipway_db::Error) -> TriggerError {
        TriggerError::Store(e)
    }
}

impl From<GitError> for TriggerError {
    fn from(e: GitError) -> TriggerError {
        TriggerError::Git(e)
    }
}

/// Who and what started a pipeline, beyond the request itself.
#[derive(Debug, Clone)]
pub struct Origin {
    pub actor: Actor,
    pub user: Option<UserId>,
    pub schedule: Option<ScheduleId>,
}

impl Origin {
    pub fn system(name: &str) -> Origin {
        Origin {
            actor: Actor::system(name),
            user: None,
            schedule: None,
        }
    }

    pub fn user(user: &slipway_db::User) -> Origin {
        Origin {
            actor: Actor::user(user),
            user: Some(user.id),
            schedule: None,
        }
    }
}

/// A project setting, if it is a string.
fn setting<'a>(project: &'a Project, key: &str) -> Option<&'a str> {
    project.settings.get(key).and_then(|v| v.as_str())
}

/// Whether `ref_name` is protected: the project's `protected_branches` (default: the
/// default branch) or `protected_tags` (default: none), `*` matching any characters.
pub fn is_protected(project: &Project, ref_name: &str, tag: bool) -> bool {
    let key = if tag {
        "protected_tags"
    } else {
        "protected_branches"
    };
    match project.settings.get(key).and_then(|v| v.as_array()) {
        Some(patterns) => patterns
            .iter()
            .filter_map(|p| p.as_str())
            .any(|p| slipway_db::variables::scope_matches(p, Some(ref_name))),
        None => !tag && ref_name == project.default_branch,
    }
}

/// What the predefined variables say about the project.
pub fn project_info(app: &App, project: &Project) -> ProjectInfo {
    ProjectInfo {
        id: project.id.0.max(0) as u64,
        path: setting(project, "path")
            .map(str::to_string)
            .unwrap_or_else(|| project.name.clone()),
        title: Some(project.name.clone()),
        description: setting(project, "description").map(str::to_string),
        server_url: app.base_url.clone(),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        default_branch: Some(project.default_branch.clone()),
        config_path: setting(project, "ci_config_path").map(str::to_string),
        visibility: Some("private".into()),
    }
}

/// Plans `request` in the project's mirror and records the pipeline. The mirror must
/// already hold the commit (fetch first for pushes).
pub async fn create(
    app: &crate::app::AppState,
    project: &Project,
    mut request: PipelineRequest,
    origin: Origin,
) -> Result<Created, TriggerError> {
    let t0 = std::time::Instant::now();
    let mirror = app.mirrors.get(project).await?;
    request.ref_protected = is_protected(project, &request.ref_name, request.tag);
    let info = project_info(app, project);
    let req = request.clone();
    let planned = tokio::task::spawn_blocking(move || plan_at_commit(&mirror, &info, &req))
        .await
        .map_err(|e| {
            TriggerError::Git(GitError::Io {
                context: "planning".into(),
                error: std::io::Error::other(e.to_string()),
            })
        })?;
    let planned_in = t0.elapsed();
    let variables: Vec<KeyValue> = request
        .variables
        .iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect();
    let source = slipway_db::PipelineSource::parse(request.source.as_str())
        .unwrap_or(slipway_db::PipelineSource::Push);
    let mut new = NewPipeline::new(project.id, request.ref_name.clone(), String::new(), source);
    new.tag = request.tag;
    new.before_sha = request.before_sha.clone();
    new.user = origin.user;
    new.schedule = origin.schedule;
    new.variables = variables;
    let doc = match planned {
        Err(PlanError::UnknownRef(r)) => return Err(TriggerError::UnknownRef(r)),
        Err(PlanError::Git(e)) => return Err(TriggerError::Git(e)),
        Err(PlanError::NoPipelineFile { path, sha }) => {
            return Ok(Created::NotCreated(format!(
                "{path}: no such file at commit {}",
                &sha[..sha.len().min(8)]
            )))
        }
        Err(PlanError::Config(errors)) => {
            // The commit is known even though its configuration is not valid.
            let sha = match &request.sha {
                Some(s) => s.clone(),
                None => {
                    let full = if request.tag {
                        format!("refs/tags/{}", request.ref_name)
                    } else {
                        format!("refs/heads/{}", request.ref_name)
                    };
                    let m = app.mirrors.get(project).await?;
                    crate::mirrors::blocking(move || m.resolve_commit(&full))
                        .await?
                        .unwrap_or_default()
                }
            };
            let errors: Vec<ConfigError> = errors.errors.iter().map(ConfigError::from).collect();
            new.sha = sha;
            new.status = PipelineStatus::Failed;
            new.error_message = Some(
                errors
                    .iter()
                    .map(ConfigError::positioned)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            PipelineDocument {
                plan: None,
                definitions: Vec::new(),
                definition_index: Vec::new(),
                context: PipelineContext::default(),
                config_path: String::new(),
                auto_cancel_on_new_commit: None,
                auto_cancel_on_job_failure: None,
                errors,
                skip_reason: None,
                deploy: None,
            }
        }
        Ok(p) => {
            new.sha = p.sha.clone();
            new.commit_message = Some(p.context.commit_message.clone());
            let (plan, skip) = match p.outcome {
                PlanOutcome::FilteredByWorkflow => {
                    return Ok(Created::NotCreated(
                        "workflow:rules create no pipeline for this ref and source".into(),
                    ))
                }
                PlanOutcome::Skipped(reason) => (None, Some(reason)),
                PlanOutcome::Planned(plan) => (Some(plan), None),
            };
            let plan = match (plan, &skip) {
                (Some(plan), _) => plan,
                // A skipped pipeline still lists its jobs, all skipped, as on GitLab.
                (None, _) => match slipway_core::plan::plan(&p.pipeline, &p.trigger) {
                    Ok(Ok(mut plan)) => {
                        slipway_core::deploy::mapping::map_plan(
                            &p.deploy,
                            &p.pipeline,
                            &mut plan,
                            &p.trigger,
                        );
                        plan
                    }
                    _ => Plan {
                        name: None,
                        stages: Vec::new(),
                        workflow_variables: Vec::new(),
                        jobs: Vec::new(),
                    },
                },
            };
            let mut definitions: Vec<model::Job> = Vec::new();
            let mut by_def: HashMap<usize, usize> = HashMap::new();
            let mut definition_index = Vec::with_capacity(plan.jobs.len());
            for pj in &plan.jobs {
                let at = *by_def.entry(pj.definition).or_insert_with(|| {
                    definitions.push(p.pipeline.jobs[pj.definition].clone());
                    definitions.len() - 1
                });
                definition_index.push(at);
            }
            let mut statuses = vec![JobStatus::Created; plan.jobs.len()];
            if skip.is_some() {
                statuses.fill(JobStatus::Skipped);
                new.status = PipelineStatus::Skipped;
            } else {
                // The first jobs are pending at once: no scheduler round trip before
                // the first job can be claimed.
                schedule::advance(&plan, &mut statuses);
                new.status = schedule::pipeline_status(&plan, &statuses);
            }
            new.name = plan.name.clone();
            let now = app.store.now();
            new.jobs = plan
                .jobs
                .iter()
                .zip(&statuses)
                .enumerate()
                .map(|(i, (pj, status))| {
                    let mut j = NewJob::from_planned(pj);
                    j.status = *status;
                    if let Some(def) = definitions.get(definition_index[i]) {
                        j.tags = def.tags.clone();
                        j.resource_group = def
                            .resource_group
                            .as_deref()
                            .map(|g| expand_job_value(g, pj, &p.trigger))
                            .filter(|g| !g.is_empty());
                    }
                    if *status == JobStatus::Scheduled {
                        let secs = pj
                            .start_in
                            .as_deref()
                            .and_then(slipway_core::duration::parse_seconds)
                            .unwrap_or(0);
                        j.scheduled_at = Some(now.plus(std::time::Duration::from_secs(secs)));
                    }
                    j
                })
                .collect();
            PipelineDocument {
                plan: Some(plan),
                definitions,
                definition_index,
                context: p.context,
                config_path: p.config_path,
                auto_cancel_on_new_commit: p.pipeline.workflow.auto_cancel_on_new_commit.clone(),
                auto_cancel_on_job_failure: p.pipeline.workflow.auto_cancel_on_job_failure.clone(),
                errors: Vec::new(),
                skip_reason: skip,
                deploy: Some(p.deploy.clone()),
            }
        }
    };
    new.plan = Some(
        serde_json::to_value(&doc)
            .map_err(|e| slipway_db::Error::Corrupt(format!("pipeline document: {e}")))?,
    );
    // The first jobs will need the commit checked out: start now, beside the write, so
    // the claim finds it ready.
    if jobs_will_run(&new) {
        let (app2, mirror, sha) = (
            app.clone(),
            app.mirrors.get(project).await?,
            new.sha.clone(),
        );
        tokio::spawn(async move {
            let dir = app2.config.data_dir.join("exports");
            let _ = app2.exports.get(&dir, &mirror, &sha).await;
        });
    }
    let (pipeline, jobs) = app.store.create_pipeline(&origin.actor, new).await?;
    app.documents.insert(pipeline.id, Arc::new(doc));
    tracing::info!(
        project = %project.name,
        pipeline = pipeline.id.0,
        iid = pipeline.iid,
        r#ref = %pipeline.ref_name,
        source = pipeline.source.as_str(),
        status = pipeline.status.as_str(),
        jobs = jobs.len(),
        planned_ms = planned_in.as_secs_f64() * 1e3,
        stored_ms = (t0.elapsed() - planned_in).as_secs_f64() * 1e3,
        "pipeline created"
    );
    if matches!(
        pipeline.source,
        slipway_db::PipelineSource::Push | slipway_db::PipelineSource::MergeRequestEvent
    ) && !pipeline.tag
        && project
            .settings
            .get("auto_cancel_pending_pipelines")
            .and_then(|v| v.as_bool())
            != Some(false)
    {
        if let Err(e) = auto_cancel_older(app, &pipeline).await {
            tracing::warn!(pipeline = pipeline.id.0, error = %e, "auto-cancel failed");
        }
    }
    Ok(Created::Pipeline(Box::new(pipeline), jobs))
}

fn jobs_will_run(p: &NewPipeline) -> bool {
    p.jobs.iter().any(|j| j.status == JobStatus::Pending)
}

/// A job's keyword value with variables expanded as GitLab does on the server (the
/// job's variables, then the pipeline's and the predefined ones; unknown ones removed):
/// `resource_group: deploy-$CI_ENVIRONMENT_NAME`.
pub fn expand_job_value(
    value: &str,
    job: &slipway_core::plan::PlannedJob,
    trigger: &slipway_core::plan::Trigger,
) -> String {
    slipway_core::variables::expand_server(value, &|key| {
        job.variables
            .iter()
            .rev()
            .find(|v| v.key == key)
            .map(|v| v.value.clone())
            .or_else(|| {
                trigger
                    .variables
                    .iter()
                    .rev()
                    .chain(trigger.predefined.iter().rev())
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            })
    })
}

/// `workflow:auto_cancel:on_new_commit` of each older unfinished pipeline on the same ref
/// for another commit: `conservative` (the default) cancels it unless a
/// non-interruptible job has started, `interruptible` cancels its interruptible jobs
/// only, `none` leaves it. As on GitLab, the older pipeline's own setting decides.
pub async fn auto_cancel_older(app: &App, newer: &Pipeline) -> slipway_db::Result<()> {
    let candidates = app
        .store
        .auto_cancel_candidates(newer.project_id, &newer.ref_name, newer.id)
        .await?;
    for c in candidates {
        if c.pipeline.sha == newer.sha {
            continue;
        }
        let mode = match app.documents.get(&app.store, c.pipeline.id).await {
            Ok(d) => d
                .auto_cancel_on_new_commit
                .clone()
                .unwrap_or_else(|| "conservative".into()),
            Err(_) => "conservative".into(),
        };
        let canceled = match mode.as_str() {
            "interruptible" if !c.interruptible_jobs.is_empty() => {
                app.store.auto_cancel(c.pipeline.id, newer.id, true).await?
            }
            "conservative" if !c.non_interruptible_started => {
                app.store
                    .auto_cancel(c.pipeline.id, newer.id, false)
                    .await?
            }
            _ => Vec::new(),
        };
        for j in &canceled {
            app.running.cancel(j.0);
        }
        if !canceled.is_empty() {
            tracing::info!(
                pipeline = c.pipeline.id.0,
                by = newer.id.0,
                mode = %mode,
                jobs = canceled.len(),
                "auto-canceled an older pipeline"
            );
        }
    }
    Ok(())
}

/// A timestamp as predefined variables print it (`2024-05-01T12:00:00Z`).
pub fn iso8601(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    // `...:00.123Z` to `...:00Z`.
    match s.rfind('.') {
        Some(dot) => format!("{}Z", &s[..dot]),
        None => s,
    }
}
