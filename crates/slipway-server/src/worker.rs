//! Local workers: `concurrency` tasks that each claim a job from the queue
//! ([`crate::queue::JobQueue`]), run one attempt of it with the runner's
//! [`slipway_runner::job::run_attempt`], and report how it ended.
//!
//! For each job: the commit's export is the workspace's source (exported once per
//! commit), the workspace is the slot's directory for the project (reused, reset by the
//! runner to exactly the commit's files), dependencies' artifacts come from the
//! content-addressed store and their dotenv variables from the store, secrets are masked
//! by the runner's masker before a byte leaves the job, and the output goes to the store
//! first and then to the live log hub. A heartbeat renews the lease and stops the job as
//! soon as someone cancels it (an event wakes it; the heartbeat covers other servers'
//! cancels too).
//!
//! Shell jobs carry `SLIPWAY_SERVER_JOB=<holder>:<job>` in their environment, so a
//! restarted server can find and kill what its previous process left running (see
//! `crate::recovery`).

use crate::app::AppState;
use crate::queue::{
    Assignment, JobPayload, JobQueue, JobReport, LocalQueue, QueueError, SavedArtifacts,
};
use slipway_core::job::{self as rules, EnvironmentParts};
use slipway_core::model::JobKind;
use slipway_core::schedule::JobStatus;
use slipway_core::variables::{EnvironmentContext, JobContext, JobRun};
use slipway_db::{Event, JobOutcome, Lease, Timestamp};
use slipway_runner::container::ContainerExecutor;
use slipway_runner::job::{run_attempt, Attempt, Dependency};
use slipway_runner::logs::{LineListener, LogSink, Masker};
use slipway_runner::pipeline::{ExecutorChoice, Executors};
use slipway_runner::shell::ShellExecutor;
use slipway_runner::workspace::{GitInfo, Source, Workspace};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The failure reason of jobs stopped because their server shut down.
pub const FAILURE_SERVER_STOPPED: &str = "server stopped";
/// The environment variable that marks a job's processes as this server's.
pub const JOB_MARKER: &str = "SLIPWAY_SERVER_JOB";
/// Output waiting to be stored, per job, before the job is made to wait.
const LOG_BUFFER_LIMIT: usize = 8 << 20;

/// Everything the workers share.
pub struct Workers {
    pub app: AppState,
    pub queue: Arc<dyn JobQueue>,
    pub executors: Executors,
}

/// Starts the local workers.
pub fn start(app: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let data = &app.config.data_dir;
    let container = ContainerExecutor::from_env()
        .with_labels([("slipway.server", app.holder.clone())])
        .with_scripts_dir(&data.join("tmp"));
    let executors = Executors {
        shell: Arc::new(ShellExecutor::new(&data.join("scripts"))),
        container: Arc::new(container),
        choice: app.config.executor,
    };
    let executor = match app.config.executor {
        ExecutorChoice::Shell => "shell",
        ExecutorChoice::Docker => "docker",
        ExecutorChoice::Auto => "auto",
    };
    let workers = Arc::new(Workers {
        app: app.clone(),
        queue: Arc::new(LocalQueue {
            app: app.clone(),
            executor: executor.into(),
        }),
        executors,
    });
    (0..app.config.concurrency.max(1))
        .map(|slot| {
            let w = workers.clone();
            tokio::spawn(async move { worker_loop(w, slot).await })
        })
        .collect()
}

/// One slot's workspaces, by project: (the commit its source is, the workspace).
type SlotWorkspaces = HashMap<i64, (String, Workspace)>;

async fn worker_loop(w: Arc<Workers>, slot: usize) {
    let mut workspaces: SlotWorkspaces = HashMap::new();
    loop {
        let claimed = tokio::select! {
            _ = w.app.shutdown.cancelled() => return,
            c = w.queue.claim(Duration::from_secs(30)) => c,
        };
        match claimed {
            Ok(Some(a)) => {
                run_job(&w, slot, &mut workspaces, a).await;
                if w.app.running.count() == 0 {
                    // A moment later: the job's log writer, publisher and blocking
                    // tasks free their buffers after the attempt returns.
                    let app = w.app.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if app.running.count() == 0 {
                            release_free_memory();
                        }
                    });
                }
            }
            Ok(None) => {}
            Err(QueueError::Unrunnable(e)) => {
                tracing::error!(error = %e, "a claimed job could not run");
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming a job failed");
                tokio::select! {
                    _ = w.app.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Fixes glibc's thresholds for giving memory back. By default freeing one large block
/// (a job's log batch, a read buffer) raises them to that block's size, after which
/// an idle server keeps tens of megabytes at the top of a thread's heap that even
/// `malloc_trim` does not return. Fixed values keep large blocks in their own mappings
/// (unmapped on free) and let heaps shrink once a megabyte is free at their top.
pub(crate) fn fix_allocator_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; any value is valid for these two.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

/// Gives memory freed by finished jobs back to the system once none runs: glibc keeps
/// freed heap in each thread's arena otherwise (tens of megabytes after a busy job).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Output between the job and the store: the runner's sink hands lines here, the job's
/// writer task takes them in batches, stores them, then publishes them.
struct LogBuffer {
    state: Mutex<(Vec<u8>, bool)>,
    space: Condvar,
    ready: tokio::sync::Notify,
}

impl LogBuffer {
    fn new() -> Arc<LogBuffer> {
        Arc::new(LogBuffer {
            state: Mutex::new((Vec::new(), false)),
            space: Condvar::new(),
            ready: tokio::sync::Notify::new(),
        })
    }

    fn push(&self, line: &str) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Back-pressure: a job that writes faster than the store commits waits here
        // (on its output reader's thread), never losing a line.
        while st.0.len() > LOG_BUFFER_LIMIT && !st.1 {
            st = blocking_wait(&self.space, st);
        }
        st.0.extend_from_slice(line.as_bytes());
        st.0.push(b'\n');
    }

    fn take(&self) -> (Vec<u8>, bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let data = std::mem::take(&mut st.0);
        let closed = st.1;
        drop(st);
        self.space.notify_all();
        (data, closed)
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.space.notify_all();
        self.ready.notify_one();
    }
}

/// Waits on `cv`, handing the async worker thread over first when there is one.
fn blocking_wait<'a, T>(
    cv: &Condvar,
    guard: std::sync::MutexGuard<'a, T>,
) -> std::sync::MutexGuard<'a, T> {
    let wait = |g| {
        cv.wait_timeout(g, Duration::from_millis(200))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| wait(guard))
        }
        _ => wait(guard),
    }
}

struct Forward(Arc<LogBuffer>);

impl LineListener for Forward {
    fn line(&self, line: &str) {
        self.0.push(line);
    }

    fn chunk_done(&self) {
        self.0.ready.notify_one();
    }
}

/// Stores the job's output as it comes, then publishes it to live subscribers.
async fn write_logs(
    queue: Arc<dyn JobQueue>,
    app: AppState,
    lease: Lease,
    buffer: Arc<LogBuffer>,
    start: i64,
) -> Result<crate::loghub::LogPublisher, QueueError> {
    let mut publisher = app
        .hub
        .publisher(lease.job.0.max(0) as u64, start.max(0) as u64);
    loop {
        let (data, closed) = buffer.take();
        if !data.is_empty() {
            queue.append_log(&lease, &data).await?;
            publisher.publish(&data);
        }
        if closed {
            let (rest, _) = buffer.take();
            if !rest.is_empty() {
                queue.append_log(&lease, &rest).await?;
                publisher.publish(&rest);
            }
            // The publisher finishes once the outcome is stored (see `run_job`), so live
            // subscribers see the log end only when it is complete.
            return Ok(publisher);
        }
        buffer.ready.notified().await;
    }
}

/// Renews the lease until `done`; cancels `cancel` when the job is canceled or the lease
/// is lost (then returns true).
async fn heartbeat(
    app: AppState,
    queue: Arc<dyn JobQueue>,
    mut lease: Lease,
    cancel: CancellationToken,
    done: CancellationToken,
) -> bool {
    let mut events = app.store.subscribe();
    let every = app.config.heartbeat;
    loop {
        let wake = tokio::select! {
            _ = done.cancelled() => return false,
            _ = tokio::time::sleep(every) => true,
            e = events.recv() => match e {
                Ok(Event::JobChanged { job, .. }) => job == lease.job,
                Ok(_) => false,
                Err(_) => true,
            },
        };
        if !wake {
            continue;
        }
        match queue.heartbeat(&mut lease).await {
            Ok(st) if st.cancel_requested => {
                cancel.cancel();
            }
            Ok(_) => {}
            Err(QueueError::LeaseLost) => {
                if !done.is_cancelled() {
                    tracing::warn!(job = lease.job.0, "lease lost: stopping the job");
                    cancel.cancel();
                    return true;
                }
                return false;
            }
            Err(e) => tracing::warn!(job = lease.job.0, error = %e, "heartbeat failed"),
        }
    }
}

async fn run_job(w: &Arc<Workers>, slot: usize, workspaces: &mut SlotWorkspaces, a: Assignment) {
    let app = &w.app;
    let Assignment {
        lease,
        job,
        payload,
    } = a;
    let job_id = job.id;
    tracing::info!(
        job = job_id.0,
        name = %job.name,
        pipeline = job.pipeline_id.0,
        attempt = job.attempt,
        slot,
        "job started"
    );
    let cancel = CancellationToken::new();
    app.running.insert(job_id.0, cancel.clone());
    let done = CancellationToken::new();
    let hb = tokio::spawn(heartbeat(
        app.clone(),
        w.queue.clone(),
        lease.clone(),
        cancel.clone(),
        done.clone(),
    ));
    let stop_on_shutdown = {
        let (c, s) = (cancel.clone(), app.shutdown.clone());
        tokio::spawn(async move {
            s.cancelled().await;
            c.cancel();
        })
    };

    let masker = Masker::new(
        payload
            .project_variables
            .iter()
            .filter(|v| v.masked)
            .map(|v| v.value.as_str()),
    );
    let buffer = LogBuffer::new();
    let log = Arc::new(LogSink::detached(
        masker,
        Some(Box::new(Forward(buffer.clone()))),
    ));
    let writer = tokio::spawn(write_logs(
        w.queue.clone(),
        app.clone(),
        lease.clone(),
        buffer.clone(),
        job.log_size,
    ));

    let (mut report, artifacts_id, job_env) =
        execute(w, slot, workspaces, &payload, &log, &cancel).await;
    // A deployment job: once its script passed, its release goes out (when the commit's
    // `.slipway` defines the environment) and the job ends as the deployment does.
    if let Some(d) = payload.deployment {
        if report.outcome.status == JobStatus::Success && !cancel.is_cancelled() {
            if let Some(outcome) = crate::deployments::deploy_after_script(
                app,
                &payload,
                slipway_db::DeploymentId(d),
                &job_env,
                &log,
                &cancel,
            )
            .await
            {
                report.outcome = outcome;
            }
        }
    }
    log.finish();
    buffer.close();
    let stored = match writer.await {
        Ok(r) => r,
        Err(e) => Err(QueueError::Other(e.to_string())),
    };
    done.cancel();
    stop_on_shutdown.abort();
    let lost = hb.await.unwrap_or(false);
    app.running.remove(job_id.0);
    if let Some(id) = artifacts_id {
        report.artifacts = saved_artifacts(app, &payload, &id);
    }
    if report.outcome.status == JobStatus::Canceled && app.shutdown.is_cancelled() {
        report.outcome = JobOutcome::failed(None, FAILURE_SERVER_STOPPED);
    }
    if lost {
        return;
    }
    if let Err(e) = &stored {
        tracing::error!(job = job_id.0, error = %e, "storing the log failed");
        if matches!(e, QueueError::LeaseLost) {
            return;
        }
        report.outcome = JobOutcome::failed(
            report.outcome.exit_code,
            rules::reason::RUNNER_SYSTEM_FAILURE,
        );
    }
    match w.queue.finish(&lease, &report).await {
        Ok(j) => {
            tracing::info!(
                job = job_id.0,
                status = j.status.as_str(),
                reason = j.failure_reason.as_deref().unwrap_or(""),
                "job finished"
            );
            if let Ok(publisher) = stored {
                publisher.finish();
            }
            crate::deployments::job_ended(app, &j).await;
        }
        Err(e) => tracing::warn!(job = job_id.0, error = %e, "recording the outcome failed"),
    }
}

fn saved_artifacts(app: &AppState, payload: &JobPayload, id: &str) -> Option<SavedArtifacts> {
    let set = app.artifacts.load_artifacts(id).ok()?;
    let expire_at = app
        .artifacts
        .artifacts_expire_at(id)
        .ok()
        .flatten()
        .map(|t| Timestamp::from_system(t).as_millis());
    Some(SavedArtifacts {
        store_id: id.to_string(),
        name: payload
            .definition
            .artifacts
            .as_ref()
            .and_then(|a| a.name.clone())
            .unwrap_or_else(|| "artifacts".into()),
        size: i64::try_from(set.total_size()).unwrap_or(i64::MAX),
        expire_at_ms: expire_at,
    })
}

fn failed(reason: &str) -> JobReport {
    JobReport {
        outcome: JobOutcome::failed(None, reason),
        artifacts: None,
        dotenv: Vec::new(),
    }
}

/// Runs the attempt; returns the report (without artifacts), the artifacts id used and
/// the job's environment variables.
async fn execute(
    w: &Arc<Workers>,
    slot: usize,
    workspaces: &mut SlotWorkspaces,
    p: &JobPayload,
    log: &Arc<LogSink>,
    cancel: &CancellationToken,
) -> (JobReport, Option<String>, Vec<(String, String)>) {
    let app = &w.app;
    let def = &p.definition;
    if p.attempt > 1 {
        log.system(&format!("Retrying job (attempt {})", p.attempt));
    }
    if def.kind == JobKind::Trigger {
        log.system("ERROR: downstream pipelines (trigger:) are not supported by this server yet");
        return (failed(rules::reason::SCRIPT_FAILURE), None, Vec::new());
    }
    log.system(&format!(
        "Running with Slipway {} on {} (slot {slot})",
        env!("CARGO_PKG_VERSION"),
        app.holder
    ));
    let project = match app.store.project(slipway_db::ProjectId(p.project_id)).await {
        Ok(pr) => pr,
        Err(e) => {
            log.system(&format!("ERROR: {e}"));
            return (
                failed(rules::reason::RUNNER_SYSTEM_FAILURE),
                None,
                Vec::new(),
            );
        }
    };
    let mirror = match app.mirrors.get(&project).await {
        Ok(m) => m,
        Err(e) => {
            log.system(&format!(
                "ERROR: the repository's mirror is not available: {e}"
            ));
            return (
                failed(rules::reason::RUNNER_SYSTEM_FAILURE),
                None,
                Vec::new(),
            );
        }
    };
    let data = &app.config.data_dir;
    let export_start = std::time::Instant::now();
    let export = match app
        .exports
        .get(&data.join("exports"), &mirror, &p.sha)
        .await
    {
        Ok(e) => e,
        Err(e) => {
            log.system(&format!(
                "ERROR: cannot check out commit {}: {e}",
                &p.sha[..p.sha.len().min(8)]
            ));
            return (
                failed(rules::reason::RUNNER_SYSTEM_FAILURE),
                None,
                Vec::new(),
            );
        }
    };
    tracing::debug!(
        job = p.job_id,
        files = export.files.len(),
        export_ms = export_start.elapsed().as_secs_f64() * 1e3,
        "commit exported"
    );
    // The job's `.git` shows the pipeline's ref, as GitLab Runner's fetch of one ref does.
    let packed_refs = {
        let kind = if p.context.tag { "tags" } else { "heads" };
        format!("{} refs/{kind}/{}\n", p.sha, p.context.ref_name)
    };
    let git = GitInfo {
        git_dir: mirror.path().to_path_buf(),
        commit: p.sha.clone(),
        packed_refs,
    };
    let source = Source::new(export.root.clone(), export.files.clone());

    // The slot's workspace for this project; another commit is a new source, compared
    // in full by a fresh workspace (the runner only tracks changes against one source).
    let builds_dir = data.join("builds");
    let dir = builds_dir
        .join(slot.to_string())
        .join(slipway_runner::shell::sanitize(&p.project_name));
    let entry = workspaces
        .entry(p.project_id)
        .or_insert_with(|| (p.sha.clone(), Workspace::new(dir.clone())));
    if entry.0 != p.sha {
        *entry = (p.sha.clone(), Workspace::new(dir.clone()));
    }

    // File variables become files; masked values are already in the masker.
    let files_dir = data.join("tmp").join(format!("job-{}", p.job_id));
    let mut project_vars = Vec::with_capacity(p.project_variables.len());
    for v in &p.project_variables {
        if v.file {
            match write_secret_file(&files_dir, &v.key, &v.value) {
                Ok(path) => project_vars.push((v.key.clone(), path.display().to_string())),
                Err(e) => {
                    log.system(&format!(
                        "ERROR: cannot write the file variable {}: {e}",
                        v.key
                    ));
                    return (
                        failed(rules::reason::RUNNER_SYSTEM_FAILURE),
                        None,
                        Vec::new(),
                    );
                }
            }
        } else {
            project_vars.push((v.key.clone(), v.value.clone()));
        }
    }

    let container = w.executors.uses_container(def);
    let pj = &p.planned;
    let job_ctx = JobContext {
        name: pj.name.clone(),
        stage: pj.stage.clone(),
        manual: p.manual,
        node_index: pj.node_index,
        node_total: pj.node_total,
        environment: def.environment.as_ref().map(|e| EnvironmentContext {
            name: e.name.clone(),
            url: e.url.clone(),
            action: Some(e.action.clone()),
            tier: e.deployment_tier.clone(),
        }),
        run: Some(JobRun {
            job_id: p.job_id.max(0) as u64,
            started_at: slipway_runner::pipeline::iso8601(SystemTime::now()),
            project_dir: dir.display().to_string(),
            builds_dir: builds_dir.display().to_string(),
            image: def
                .image
                .as_ref()
                .filter(|_| container)
                .map(|i| i.name.clone()),
            timeout_secs: Some(
                def.timeout
                    .unwrap_or(slipway_runner::job::DEFAULT_TIMEOUT.as_secs()),
            ),
            disposable: container,
        }),
    };
    let predefined: Vec<(String, String)> = slipway_core::variables::pipeline_variables(&p.context)
        .iter()
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    let inherited: Vec<(String, String)> = p
        .dependencies
        .iter()
        .flat_map(|d| d.dotenv.iter().cloned())
        .collect();
    let mut env = rules::environment(&EnvironmentParts {
        pipeline: &p.context,
        predefined: &predefined,
        job: &job_ctx,
        concurrent_id: Some(slot),
        yaml: &pj.variables,
        dotenv: &inherited,
        project: &project_vars,
        pipeline_variables: &p.run_variables,
    });
    env.push((JOB_MARKER.into(), format!("{}:{}", app.holder, p.job_id)));
    let dependencies: Vec<Dependency> = p
        .dependencies
        .iter()
        .filter_map(|d| {
            Some(Dependency {
                job: d.job.clone(),
                artifacts: d.artifacts.clone()?,
            })
        })
        .collect();
    let artifacts_id = format!("job-{}", p.job_id);
    tracing::debug!(job = p.job_id, "source and environment ready");
    let result = run_attempt(Attempt {
        name: &pj.name,
        job: def,
        workspace: &mut entry.1,
        source: &source,
        git: Some(&git),
        variables: &env,
        dependencies: &dependencies,
        artifacts_id: &artifacts_id,
        store: &app.artifacts,
        executor: w.executors.for_job(def).as_ref(),
        log,
        cancel,
    })
    .await;
    let _ = std::fs::remove_dir_all(&files_dir);
    let outcome = match result.status {
        JobStatus::Success => JobOutcome::success(),
        JobStatus::Canceled => JobOutcome::canceled(),
        _ => JobOutcome::failed(
            result.exit_code,
            result
                .failure_reason
                .clone()
                .unwrap_or_else(|| rules::reason::UNKNOWN_FAILURE.into()),
        ),
    };
    let outcome = JobOutcome {
        exit_code: result.exit_code,
        ..outcome
    };
    (
        JobReport {
            outcome,
            artifacts: None,
            dotenv: result.dotenv,
        },
        result.artifacts,
        env,
    )
}

fn write_secret_file(dir: &std::path::Path, key: &str, value: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(key);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(value.as_bytes())?;
    Ok(path)
}
