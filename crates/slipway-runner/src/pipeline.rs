//! Running a planned pipeline: the loop that asks `slipway_core::schedule` what can start,
//! starts jobs up to the concurrency limit, prepares each job (workspace, dependency
//! artifacts, dotenv variables, caches), runs it on the executor, retries it when `retry`
//! says so, and records how it ended. Everything a job prints goes to its log file and to
//! the observer (the console, a live stream).

use crate::executor::{ExecStatus, Executor, JobSpec};
use crate::logs::{LogSink, Masker};
use crate::shell::sanitize;
use crate::workspace::{self, Source};
use serde::Serialize;
use slipway_core::model::Pipeline;
use slipway_core::plan::{expand_existing, Plan};
use slipway_core::schedule::{self, JobStatus, PipelineStatus};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// GitLab's default job timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// GitLab Runner's default `after_script` timeout.
pub const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The repository's git data, so workspaces can show the commit being built.
#[derive(Debug, Clone)]
pub struct GitInfo {
    pub git_dir: PathBuf,
    pub commit: String,
    pub packed_refs: String,
}

/// What the pipeline runs on and where it keeps its files.
pub struct RunContext {
    pub pipeline: Arc<Pipeline>,
    pub plan: Plan,
    /// The files every job workspace starts from.
    pub source: Source,
    pub git: Option<GitInfo>,
    /// Pipeline-level predefined variables (`CI_COMMIT_*`, `CI_PIPELINE_*`, ...).
    pub predefined: Vec<(String, String)>,
    /// Variables given for this run (`--variable`): above the file's variables.
    pub variables: Vec<(String, String)>,
    /// Masked variables given for this run (`--secret`).
    pub secrets: Vec<(String, String)>,
    /// Where job workspaces live (one directory per job name).
    pub builds_dir: PathBuf,
    /// Where this pipeline's logs go.
    pub logs_dir: PathBuf,
    /// Scratch space for generated scripts.
    pub scratch_dir: PathBuf,
    pub concurrency: usize,
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

/// Run the plan to the end (or until `cancel`).
pub async fn run(
    ctx: RunContext,
    executor: Arc<dyn Executor>,
    observer: Observer,
    cancel: CancellationToken,
) -> RunResult {
    let started = Instant::now();
    let ctx = Arc::new(ctx);
    let plan = &ctx.plan;
    let n = plan.jobs.len();
    let mut statuses = vec![JobStatus::Created; n];
    let mut results: Vec<Option<JobResult>> = vec![None; n];
    let mut dotenvs: HashMap<String, Vec<(String, String)>> = HashMap::new();
    // allow_failure can turn true after the fact (allow_failure:exit_codes).
    let mut live_plan = plan.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<usize>();
    let mut running = 0usize;
    let mut queue: Vec<usize> = Vec::new();
    let mut canceled = false;

    loop {
        if !canceled {
            for i in schedule::advance(&live_plan, &mut statuses) {
                queue.push(i);
            }
            // Delayed jobs: wait for `start_in`, then start.
            for i in 0..n {
                if statuses[i] == JobStatus::Scheduled
                    && results[i].is_none()
                    && !queue.contains(&i)
                {
                    let delay = live_plan.jobs[i]
                        .start_in
                        .as_deref()
                        .and_then(slipway_core::duration::parse_seconds)
                        .unwrap_or(0);
                    results[i] = Some(placeholder(&live_plan, i));
                    let due = due_tx.clone();
                    let c = cancel.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(delay)) => { let _ = due.send(i); }
                            _ = c.cancelled() => {}
                        }
                    });
                }
            }
        }
        while !canceled && running < ctx.concurrency.max(1) && !queue.is_empty() {
            let i = queue.remove(0);
            statuses[i] = JobStatus::Running;
            running += 1;
            let inherited = inherited_dotenv(&live_plan, i, &dotenvs);
            let ctx2 = ctx.clone();
            let exec = executor.clone();
            let obs = observer.clone();
            let tx2 = tx.clone();
            let c = cancel.clone();
            tokio::spawn(async move {
                let (result, dotenv) = run_job(&ctx2, i, inherited, exec, obs, c).await;
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
                dotenvs.insert(live_plan.jobs[i].name.clone(), done.dotenv);
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
        log_path: None,
    }
}

/// dotenv variables from the jobs this job takes artifacts from, in dependency order.
fn inherited_dotenv(
    plan: &Plan,
    i: usize,
    dotenvs: &HashMap<String, Vec<(String, String)>>,
) -> Vec<(String, String)> {
    plan.jobs[i]
        .dependencies
        .iter()
        .filter_map(|d| dotenvs.get(d))
        .flatten()
        .cloned()
        .collect()
}

/// The job's environment: predefined, then the file's variables (global, job, matrix,
/// rules), then dotenv from dependencies, then this run's variables and secrets; values
/// referencing other variables expanded as GitLab Runner does.
fn job_environment(
    ctx: &RunContext,
    i: usize,
    inherited: &[(String, String)],
    workdir: &Path,
) -> Vec<(String, String)> {
    let pj = &ctx.plan.jobs[i];
    let mut env: Vec<(String, String)> = ctx.predefined.clone();
    let set = |k: &str, v: String, env: &mut Vec<(String, String)>| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v));
    };
    set("CI_JOB_NAME", pj.name.clone(), &mut env);
    set("CI_JOB_NAME_SLUG", slug(&pj.name), &mut env);
    set("CI_JOB_STAGE", pj.stage.clone(), &mut env);
    set("CI_PROJECT_DIR", workdir.display().to_string(), &mut env);
    set(
        "CI_BUILDS_DIR",
        ctx.builds_dir.display().to_string(),
        &mut env,
    );
    set("CI_NODE_TOTAL", pj.node_total.to_string(), &mut env);
    if let Some(idx) = pj.node_index {
        set("CI_NODE_INDEX", idx.to_string(), &mut env);
    }
    let job = &ctx.pipeline.jobs[pj.definition];
    if let Some(e) = &job.environment {
        set("CI_ENVIRONMENT_NAME", e.name.clone(), &mut env);
        set("CI_ENVIRONMENT_ACTION", e.action.clone(), &mut env);
        if let Some(u) = &e.url {
            set("CI_ENVIRONMENT_URL", u.clone(), &mut env);
        }
    }
    // File variables in order, each expanded against what is defined so far.
    for d in ctx
        .plan
        .workflow_variables
        .iter()
        .chain(pj.variables.iter())
    {
        let value = if d.expand {
            let snapshot = env.clone();
            expand_existing(&d.value, &|n| {
                snapshot
                    .iter()
                    .rev()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            })
        } else {
            d.value.clone()
        };
        set(&d.key, value, &mut env);
    }
    for (k, v) in inherited
        .iter()
        .chain(ctx.variables.iter())
        .chain(ctx.secrets.iter())
    {
        set(k, v.clone(), &mut env);
    }
    // `$$` is GitLab's escape for a literal `$`.
    env.into_iter()
        .map(|(k, v)| (k, v.replace("$$", "$")))
        .collect()
}

fn slug(s: &str) -> String {
    let mut out: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    out.trim_matches('-').to_string()
}

async fn run_job(
    ctx: &RunContext,
    i: usize,
    inherited: Vec<(String, String)>,
    executor: Arc<dyn Executor>,
    observer: Observer,
    cancel: CancellationToken,
) -> (JobResult, Vec<(String, String)>) {
    let pj = &ctx.plan.jobs[i];
    let job = &ctx.pipeline.jobs[pj.definition];
    let started = Instant::now();
    let dir_name = sanitize(&pj.name);
    let workdir = ctx.builds_dir.join(&dir_name);
    let log_path = ctx.logs_dir.join(format!("{dir_name}.log"));
    let mut result = JobResult {
        name: pj.name.clone(),
        stage: pj.stage.clone(),
        status: JobStatus::Failed,
        allow_failure: pj.allow_failure,
        exit_code: None,
        duration_ms: 0,
        attempts: 0,
        failure_reason: None,
        log_path: Some(log_path.clone()),
    };
    let env = job_environment(ctx, i, &inherited, &workdir);
    let masker = Masker::new(ctx.secrets.iter().map(|(_, v)| v.as_str()));
    let name = pj.name.clone();
    let obs2 = observer.clone();
    let listener = Box::new(move |line: &str| {
        obs2(Event::JobLine {
            index: i,
            name: &name,
            line,
        })
    });
    let log = match LogSink::to_file(&log_path, masker, Some(listener)) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            result.failure_reason = Some(format!(
                "runner_system_failure: cannot write the log {}: {e}",
                log_path.display()
            ));
            return (result, Vec::new());
        }
    };
    let max_attempts = 1 + job.retry.max;
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
        if let Err(e) = prepare_workspace(ctx, &workdir) {
            log.system(&format!("ERROR: preparing the workspace failed: {e}"));
            result.status = JobStatus::Failed;
            result.failure_reason = Some("runner_system_failure".into());
            break;
        }
        let spec = JobSpec {
            name: pj.name.clone(),
            workdir: workdir.clone(),
            image: job.image.clone(),
            services: job.services.clone(),
            before_script: job.before_script.clone(),
            script: job.script.clone(),
            after_script: job.after_script.clone(),
            variables: env.clone(),
            timeout: job
                .timeout
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_TIMEOUT),
            after_script_timeout: AFTER_SCRIPT_TIMEOUT,
        };
        let outcome = executor.run(&spec, log.clone(), cancel.clone()).await;
        result.exit_code = outcome.exit_code;
        let reason = match &outcome.status {
            ExecStatus::Success => None,
            ExecStatus::Failed => Some("script_failure".to_string()),
            ExecStatus::TimedOut => Some("job_execution_timeout".to_string()),
            ExecStatus::Canceled => None,
            ExecStatus::SystemFailure(msg) => {
                log.system(&format!("ERROR: {msg}"));
                Some("runner_system_failure".to_string())
            }
        };
        match outcome.status {
            ExecStatus::Success => {
                result.status = JobStatus::Success;
                result.failure_reason = None;
                break;
            }
            ExecStatus::Canceled => {
                result.status = JobStatus::Canceled;
                break;
            }
            _ => {
                result.status = JobStatus::Failed;
                result.failure_reason = reason.clone();
                if outcome.status == ExecStatus::TimedOut {
                    log.system(&format!(
                        "ERROR: Job failed: execution took longer than {:?} seconds",
                        spec.timeout.as_secs()
                    ));
                } else if let Some(code) = outcome.exit_code {
                    log.system(&format!("ERROR: Job failed: exit code {code}"));
                }
                if result.attempts < max_attempts
                    && should_retry(&job.retry, reason.as_deref(), outcome.exit_code)
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
        }
    }
    let dotenv = if result.status == JobStatus::Success {
        read_dotenv(
            &workdir,
            &job.artifacts
                .as_ref()
                .map(|a| a.reports.dotenv.clone())
                .unwrap_or_default(),
            &log,
        )
    } else {
        Vec::new()
    };
    log.finish();
    result.duration_ms = started.elapsed().as_millis() as u64;
    (result, dotenv)
}

/// GitLab's `retry:when` reasons and `retry:exit_codes`: retry when either matches (with
/// neither given, any failure is retried).
fn should_retry(
    retry: &slipway_core::model::Retry,
    reason: Option<&str>,
    exit_code: Option<i32>,
) -> bool {
    if retry.max == 0 {
        return false;
    }
    if retry.when.is_empty() && retry.exit_codes.is_empty() {
        return true;
    }
    let by_reason = retry.when.iter().any(|w| {
        w == "always"
            || Some(w.as_str()) == reason
            || (w == "stuck_or_timeout_failure" && reason == Some("job_execution_timeout"))
            || (w == "unknown_failure" && reason.is_none())
    });
    let by_code = exit_code.is_some_and(|c| retry.exit_codes.contains(&c));
    by_reason || by_code
}

fn prepare_workspace(ctx: &RunContext, workdir: &Path) -> std::io::Result<()> {
    workspace::sync(&ctx.source, workdir, &[".git"])?;
    if let Some(git) = &ctx.git {
        workspace::link_git(workdir, &git.git_dir, &git.commit, &git.packed_refs)?;
    }
    Ok(())
}

/// Parse `artifacts:reports:dotenv` files: `KEY=VALUE` lines, as GitLab accepts them.
fn read_dotenv(workdir: &Path, files: &[String], log: &LogSink) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in files {
        let path = workdir.join(f);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                log.system(&format!("WARNING: dotenv report {f}: {e}"));
                continue;
            }
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((k, v))
                    if !k.trim().is_empty()
                        && k.trim()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|s| s.strip_suffix('"'))
                        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                        .unwrap_or(v);
                    out.push((k.trim().to_string(), v.to_string()));
                }
                _ => log.system(&format!(
                    "WARNING: dotenv report {f}:{}: not KEY=VALUE, ignored",
                    n + 1
                )),
            }
        }
    }
    out
}
