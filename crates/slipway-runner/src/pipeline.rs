//! Running a planned pipeline on this machine: the loop behind `slipway run`. It asks
//! `slipway_core::schedule` what can start, runs up to `concurrency` jobs at once (each
//! one attempt after another through [`crate::job::run_attempt`], retried as `retry`
//! says), in workspaces reused per slot, plays the manual jobs it was asked to, waits for
//! delayed jobs, passes artifacts and dotenv variables to later jobs, and stops everything
//! on cancel. Everything a job prints goes to its log file and to the observer.

use crate::executor::Executor;
use crate::job::{self, Attempt, Dependency};
use crate::logs::{LineListener, LogSink, Masker};
use crate::shell::sanitize;
use crate::store::Store;
use crate::workspace::{GitInfo, Source, Workspace};
use serde::{Deserialize, Serialize};
use slipway_core::job::{self as rules, EnvironmentParts};
use slipway_core::model::{Job, JobKind, Pipeline};
use slipway_core::plan::Plan;
use slipway_core::schedule::{self, JobStatus, PipelineStatus};
use slipway_core::variables::{EnvironmentContext, JobContext, JobRun, PipelineContext};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which executor runs a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorChoice {
    /// Every job in a shell on this machine (`image:` is ignored).
    Shell,
    /// Every job in a container (jobs need `image:`).
    Docker,
    /// Jobs with `image:` (their own or `default:image`) in containers, others in a shell.
    Auto,
}

/// The executors a run uses.
#[derive(Clone)]
pub struct Executors {
    pub shell: Arc<dyn Executor>,
    pub container: Arc<dyn Executor>,
    pub choice: ExecutorChoice,
}

impl Executors {
    /// Whether `job` runs in a container.
    pub fn uses_container(&self, job: &Job) -> bool {
        match self.choice {
            ExecutorChoice::Shell => false,
            ExecutorChoice::Docker => true,
            ExecutorChoice::Auto => job
                .image
                .as_ref()
                .is_some_and(|i| !i.name.trim().is_empty()),
        }
    }

    pub fn for_job(&self, job: &Job) -> &Arc<dyn Executor> {
        if self.uses_container(job) {
            &self.container
        } else {
            &self.shell
        }
    }
}

/// What the pipeline runs on and where it keeps its files.
pub struct RunContext {
    pub pipeline: Arc<Pipeline>,
    pub plan: Plan,
    /// The files every job workspace starts from.
    pub source: Source,
    pub git: Option<GitInfo>,
    /// The pipeline as predefined variables describe it (`CI_PIPELINE_ID`, ...).
    pub pipeline_context: PipelineContext,
    /// Pipeline-level predefined variables (`CI_COMMIT_*`, `CI_PIPELINE_*`, ...).
    pub predefined: Vec<(String, String)>,
    /// Variables given for this run (`--variable`): above the file's variables.
    pub variables: Vec<(String, String)>,
    /// Masked variables given for this run (`--secret`).
    pub secrets: Vec<(String, String)>,
    /// `CI_BUILDS_DIR`: where the workspaces live.
    pub builds_dir: PathBuf,
    /// One workspace per slot (`CI_CONCURRENT_ID`), at least one; jobs run in at most
    /// `min(concurrency, workspaces)` at once. The caller makes sure no other process
    /// uses them.
    pub workspaces: Vec<(usize, Workspace)>,
    /// Where this pipeline's logs go (`<job>.log`).
    pub logs_dir: PathBuf,
    /// The artifact and cache store.
    pub store: Arc<Store>,
    /// Prefix of this run's artifact ids (`<run_id>-<job>`).
    pub run_id: String,
    /// The latest artifacts of each job, kept across runs: a job whose dependency is not
    /// part of this run gets that job's artifacts from an earlier one.
    pub latest_artifacts: Option<PathBuf>,
    /// Delete expired artifacts (and unreferenced blobs) before running. Every manifest is
    /// read, so callers do it now and then rather than on every run.
    pub expire_artifacts: bool,
    pub concurrency: usize,
    /// Manual jobs to play when they become playable.
    pub play: Vec<String>,
}

/// How one job ended.
#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub name: String,
    pub stage: String,
    pub status: JobStatus,
    pub allow_failure: bool,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// Attempts made (more than 1 when `retry` re-ran it).
    pub attempts: u32,
    /// Why it failed, in GitLab's terms (`script_failure`, `job_execution_timeout`...).
    pub failure_reason: Option<String>,
    /// The id of the artifacts it saved.
    pub artifacts: Option<String>,
    /// Whether it ran in a container.
    pub container: bool,
    #[serde(skip)]
    pub log_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub status: PipelineStatus,
    pub duration_ms: u64,
    pub jobs: Vec<JobResult>,
}

/// What the runner tells its observer.
pub enum Event<'a> {
    JobStarted {
        index: usize,
        name: &'a str,
        attempt: u32,
    },
    JobLine {
        index: usize,
        name: &'a str,
        line: &'a str,
    },
    /// A chunk of output was passed on line by line: a buffering console may flush now.
    Flush,
    JobFinished {
        index: usize,
        result: &'a JobResult,
    },
}

pub type Observer = Arc<dyn Fn(Event<'_>) + Send + Sync>;

struct Finished {
    index: usize,
    result: JobResult,
    dotenv: Vec<(String, String)>,
}

/// The latest artifacts id of each job name, kept in a small JSON file.
#[derive(Default, Serialize, Deserialize)]
struct Latest {
    jobs: BTreeMap<String, String>,
}

fn read_latest(path: &Path) -> Latest {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_latest(path: &Path, latest: &Latest) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(latest).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// An artifacts id for a job of a run: the run id and a file-name-safe job name, cut and
/// hashed when long.
pub fn artifacts_id(run_id: &str, job: &str) -> String {
    let name = sanitize(job);
    let id = format!("{run_id}-{name}");
    if name == job && id.len() <= 150 {
        return id;
    }
    // Names that sanitise alike (`a b`, `a-b`) must not share artifacts.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in job.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let cut: String = id.chars().take(120).collect();
    format!("{cut}-{:08x}", h >> 32)
}

/// The free workspaces, by slot; a running job takes one out and puts it back.
type Slots = Mutex<Vec<Option<(usize, Workspace)>>>;

/// Run the plan to the end (or until `cancel`).
pub async fn run(
    mut ctx: RunContext,
    executors: Executors,
    observer: Observer,
    cancel: CancellationToken,
) -> RunResult {
    let started = Instant::now();
    let n = ctx.plan.jobs.len();
    let mut statuses = vec![JobStatus::Created; n];
    let mut results: Vec<Option<JobResult>> = vec![None; n];
    let mut dotenvs: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut produced: HashMap<String, String> = HashMap::new();
    let mut latest = ctx
        .latest_artifacts
        .as_deref()
        .map(read_latest)
        .unwrap_or_default();
    // Expired artifacts of earlier runs go; the latest of each job is kept, as GitLab
    // keeps the most recent artifacts.
    if ctx.expire_artifacts {
        let keep: HashSet<String> = latest.jobs.values().cloned().collect();
        let _ = ctx.store.expire(SystemTime::now(), &|id| keep.contains(id));
    }
    // allow_failure can turn true after the fact (allow_failure:exit_codes).
    let mut live_plan = ctx.plan.clone();
    let mut workspaces = std::mem::take(&mut ctx.workspaces);
    let limit = ctx.concurrency.max(1).min(workspaces.len().max(1));
    // Bring every workspace up to date at once, a thread each, while nothing else runs:
    // each slot's first job then pays only for what changed since (changes are tracked),
    // instead of a full comparison in the middle of the pipeline.
    if workspaces.len() > 1 {
        let (source, git) = (&ctx.source, ctx.git.as_ref());
        job::blocking(|| {
            std::thread::scope(|s| {
                for (_, ws) in workspaces.iter_mut() {
                    s.spawn(move || {
                        // A failure shows again, with its message, at the slot's first job.
                        let _ = ws.prepare(source, git);
                    });
                }
            })
        });
    }
    let ctx = Arc::new(ctx);
    let slots: Arc<Slots> = Arc::new(Mutex::new(workspaces.into_iter().map(Some).collect()));
    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<usize>();
    let mut running = 0usize;
    let mut queue: Vec<usize> = Vec::new();
    let mut waiting_delay: HashSet<usize> = HashSet::new();
    let mut played: HashSet<usize> = HashSet::new();
    let mut canceled = false;

    loop {
        if !canceled {
            queue.extend(schedule::advance(&live_plan, &mut statuses));
            for (i, pj) in live_plan.jobs.iter().enumerate() {
                match statuses[i] {
                    // Manual jobs asked for are played as soon as they may be.
                    JobStatus::Manual
                        if !played.contains(&i)
                            && ctx.play.iter().any(|p| p == &pj.name || p == &pj.job) =>
                    {
                        played.insert(i);
                        statuses[i] = JobStatus::Pending;
                        queue.push(i);
                    }
                    // Delayed jobs: wait for `start_in`, then start.
                    JobStatus::Scheduled if !waiting_delay.contains(&i) => {
                        waiting_delay.insert(i);
                        let delay = pj
                            .start_in
                            .as_deref()
                            .and_then(slipway_core::duration::parse_seconds)
                            .unwrap_or(0);
                        let due = due_tx.clone();
                        let c = cancel.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(delay)) => { let _ = due.send(i); }
                                _ = c.cancelled() => {}
                            }
                        });
                    }
                    _ => {}
                }
            }
        }
        while !canceled && running < limit && !queue.is_empty() {
            let i = queue.remove(0);
            let pj = &live_plan.jobs[i];
            let def = &ctx.pipeline.jobs[pj.definition];
            if def.kind == JobKind::Trigger {
                // Downstream pipelines need a server; locally the job is skipped.
                statuses[i] = JobStatus::Skipped;
                let mut r = placeholder(&live_plan, i);
                r.status = JobStatus::Skipped;
                observer(Event::JobLine {
                    index: i,
                    name: &pj.name,
                    line: "trigger: jobs start downstream pipelines, which `slipway run` does not do: skipped",
                });
                observer(Event::JobFinished {
                    index: i,
                    result: &r,
                });
                results[i] = Some(r);
                queue.extend(schedule::advance(&live_plan, &mut statuses));
                continue;
            }
            statuses[i] = JobStatus::Running;
            running += 1;
            let mut deps = Vec::new();
            for d in &pj.dependencies {
                let in_run = live_plan.jobs.iter().any(|j| &j.name == d);
                let id = if in_run {
                    produced.get(d).cloned()
                } else {
                    latest.jobs.get(d).cloned()
                };
                if let Some(id) = id {
                    deps.push(Dependency {
                        job: if in_run {
                            d.clone()
                        } else {
                            format!("{d} (from an earlier run)")
                        },
                        artifacts: id,
                    });
                }
            }
            let inherited: Vec<(String, String)> = pj
                .dependencies
                .iter()
                .filter_map(|d| dotenvs.get(d))
                .flatten()
                .cloned()
                .collect();
            let manual = played.contains(&i);
            let ctx2 = ctx.clone();
            let exec = executors.clone();
            let obs = observer.clone();
            let tx2 = tx.clone();
            let c = cancel.clone();
            let slots2 = slots.clone();
            let plan_job = live_plan.jobs[i].clone();
            tokio::spawn(async move {
                let slot = slots2
                    .lock()
                    .ok()
                    .and_then(|mut s| s.iter_mut().find_map(|x| x.take()));
                let (result, dotenv, slot) = match slot {
                    Some((id, mut ws)) => {
                        let (r, d) = run_job(JobInput {
                            ctx: &ctx2,
                            index: i,
                            plan_job: &plan_job,
                            slot: id,
                            workspace: &mut ws,
                            inherited,
                            dependencies: deps,
                            manual,
                            executors: &exec,
                            observer: obs,
                            cancel: c,
                        })
                        .await;
                        (r, d, Some((id, ws)))
                    }
                    None => {
                        let mut r = placeholder(&ctx2.plan, i);
                        r.status = JobStatus::Failed;
                        r.failure_reason = Some("runner_system_failure".into());
                        (r, Vec::new(), None)
                    }
                };
                if let (Some(slot), Ok(mut s)) = (slot, slots2.lock()) {
                    if let Some(free) = s.iter_mut().find(|x| x.is_none()) {
                        *free = Some(slot);
                    }
                }
                let _ = tx2.send(Finished {
                    index: i,
                    result,
                    dotenv,
                });
            });
        }
        let idle = running == 0 && queue.is_empty() && !statuses.contains(&JobStatus::Scheduled);
        if idle {
            break;
        }
        tokio::select! {
            Some(done) = rx.recv() => {
                running -= 1;
                let i = done.index;
                statuses[i] = done.result.status;
                if done.result.allow_failure {
                    live_plan.jobs[i].allow_failure = true;
                }
                observer(Event::JobFinished { index: i, result: &done.result });
                let name = live_plan.jobs[i].name.clone();
                if let Some(id) = &done.result.artifacts {
                    produced.insert(name.clone(), id.clone());
                    latest.jobs.insert(name.clone(), id.clone());
                    if let Some(path) = &ctx.latest_artifacts {
                        let _ = write_latest(path, &latest);
                    }
                }
                dotenvs.insert(name, done.dotenv);
                results[i] = Some(done.result);
            }
            Some(i) = due_rx.recv() => {
                if statuses[i] == JobStatus::Scheduled {
                    statuses[i] = JobStatus::Pending;
                    queue.push(i);
                }
            }
            _ = cancel.cancelled(), if !canceled => {
                canceled = true;
                queue.clear();
                for s in statuses.iter_mut() {
                    if matches!(s, JobStatus::Created | JobStatus::Pending | JobStatus::Scheduled | JobStatus::Manual) {
                        *s = JobStatus::Canceled;
                    }
                }
            }
        }
    }
    schedule::settle(&live_plan, &mut statuses);
    // `statuses` is authoritative: a finished job's status was copied there.
    let jobs: Vec<JobResult> = (0..n)
        .map(|i| {
            let mut r = results[i]
                .take()
                .unwrap_or_else(|| placeholder(&live_plan, i));
            r.status = statuses[i];
            r
        })
        .collect();
    let statuses: Vec<JobStatus> = jobs.iter().map(|j| j.status).collect();
    RunResult {
        status: schedule::pipeline_status(&live_plan, &statuses),
        duration_ms: started.elapsed().as_millis() as u64,
        jobs,
    }
}

fn placeholder(plan: &Plan, i: usize) -> JobResult {
    let j = &plan.jobs[i];
    JobResult {
        name: j.name.clone(),
        stage: j.stage.clone(),
        status: JobStatus::Created,
        allow_failure: j.allow_failure,
        exit_code: None,
        duration_ms: 0,
        attempts: 0,
        failure_reason: None,
        artifacts: None,
        container: false,
        log_path: None,
    }
}

struct JobInput<'a> {
    ctx: &'a RunContext,
    index: usize,
    plan_job: &'a slipway_core::plan::PlannedJob,
    slot: usize,
    workspace: &'a mut Workspace,
    inherited: Vec<(String, String)>,
    dependencies: Vec<Dependency>,
    manual: bool,
    executors: &'a Executors,
    observer: Observer,
    cancel: CancellationToken,
}

/// Forwards a job's lines to the observer.
struct Forward {
    index: usize,
    name: String,
    observer: Observer,
}

impl LineListener for Forward {
    fn line(&self, line: &str) {
        (self.observer)(Event::JobLine {
            index: self.index,
            name: &self.name,
            line,
        })
    }

    fn chunk_done(&self) {
        (self.observer)(Event::Flush)
    }
}

/// A UTC timestamp as GitLab prints them: `2024-05-01T12:00:00Z`.
pub fn iso8601(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn run_job(input: JobInput<'_>) -> (JobResult, Vec<(String, String)>) {
    let JobInput {
        ctx,
        index: i,
        plan_job: pj,
        slot,
        workspace,
        inherited,
        dependencies,
        manual,
        executors,
        observer,
        cancel,
    } = input;
    let job = &ctx.pipeline.jobs[pj.definition];
    let started = Instant::now();
    let log_path = ctx.logs_dir.join(format!("{}.log", sanitize(&pj.name)));
    let container = executors.uses_container(job);
    let mut result = JobResult {
        name: pj.name.clone(),
        stage: pj.stage.clone(),
        status: JobStatus::Failed,
        allow_failure: pj.allow_failure,
        exit_code: None,
        duration_ms: 0,
        attempts: 0,
        failure_reason: None,
        artifacts: None,
        container,
        log_path: Some(log_path.clone()),
    };
    let masker = Masker::new(ctx.secrets.iter().map(|(_, v)| v.as_str()));
    let listener = Box::new(Forward {
        index: i,
        name: pj.name.clone(),
        observer: observer.clone(),
    });
    let log = match LogSink::to_file(&log_path, masker, Some(listener)) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            observer(Event::JobLine {
                index: i,
                name: &pj.name,
                line: &format!("ERROR: cannot write the log {}: {e}", log_path.display()),
            });
            result.failure_reason = Some("runner_system_failure".into());
            return (result, Vec::new());
        }
    };
    let image = job
        .image
        .as_ref()
        .filter(|_| container)
        .map(|img| img.name.clone());
    let job_ctx = JobContext {
        name: pj.name.clone(),
        stage: pj.stage.clone(),
        manual: manual || pj.when == slipway_core::model::When::Delayed,
        node_index: pj.node_index,
        node_total: pj.node_total,
        environment: job.environment.as_ref().map(|e| EnvironmentContext {
            name: e.name.clone(),
            url: e.url.clone(),
            action: Some(e.action.clone()),
            tier: e.deployment_tier.clone(),
        }),
        run: Some(JobRun {
            job_id: (i + 1) as u64,
            started_at: iso8601(SystemTime::now()),
            project_dir: workspace.dir().display().to_string(),
            builds_dir: ctx.builds_dir.display().to_string(),
            image,
            timeout_secs: Some(job.timeout.unwrap_or(job::DEFAULT_TIMEOUT.as_secs())),
            disposable: container,
        }),
    };
    let env = rules::environment(&EnvironmentParts {
        pipeline: &ctx.pipeline_context,
        predefined: &ctx.predefined,
        job: &job_ctx,
        concurrent_id: Some(slot),
        yaml: &pj.variables,
        dotenv: &inherited,
        project: &ctx.secrets,
        pipeline_variables: &ctx.variables,
    });
    let max_attempts = 1 + job.retry.max;
    let artifacts_id = artifacts_id(&ctx.run_id, &pj.name);
    let mut dotenv;
    loop {
        result.attempts += 1;
        observer(Event::JobStarted {
            index: i,
            name: &pj.name,
            attempt: result.attempts,
        });
        if result.attempts > 1 {
            log.system(&format!(
                "Retrying job (attempt {} of {max_attempts})",
                result.attempts
            ));
        }
        let outcome = job::run_attempt(Attempt {
            name: &pj.name,
            job,
            workspace,
            source: &ctx.source,
            git: ctx.git.as_ref(),
            variables: &env,
            dependencies: &dependencies,
            artifacts_id: &artifacts_id,
            store: &ctx.store,
            executor: executors.for_job(job).as_ref(),
            log: &log,
            cancel: &cancel,
        })
        .await;
        result.status = outcome.status;
        result.exit_code = outcome.exit_code;
        result.failure_reason = outcome.failure_reason.clone();
        result.artifacts = outcome.artifacts.clone();
        dotenv = outcome.dotenv;
        if outcome.status != JobStatus::Failed {
            break;
        }
        if result.attempts < max_attempts
            && rules::should_retry(
                &job.retry,
                outcome.failure_reason.as_deref(),
                outcome.exit_code,
            )
            && !cancel.is_cancelled()
        {
            continue;
        }
        if let Some(code) = outcome.exit_code {
            if pj.allow_failure_exit_codes.contains(&code) {
                result.allow_failure = true;
            }
        }
        break;
    }
    log.finish();
    result.duration_ms = started.elapsed().as_millis() as u64;
    (result, dotenv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(iso8601(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_294_400);
        assert_eq!(iso8601(t), "2024-03-01T12:00:00Z");
    }

    #[test]
    fn artifact_ids_are_store_safe() {
        assert_eq!(artifacts_id("r1", "build"), "r1-build");
        assert!(artifacts_id("r1", "test 1/3").starts_with("r1-test-1-3-"));
        assert_ne!(artifacts_id("r1", "a b"), artifacts_id("r1", "a-b"));
        let long = artifacts_id("r1", &"x".repeat(400));
        assert!(long.len() <= 150, "{long}");
        assert_ne!(long, artifacts_id("r1", &"x".repeat(401)));
    }
}
