//! One job attempt, end to end, the way GitLab Runner runs a job: reset the workspace to
//! the source (a working tree or a commit's checkout), restore caches, extract the
//! artifacts of the jobs it depends on, run the scripts on an executor, then save caches
//! and artifacts as `cache:when`/`artifacts:when` say and read its dotenv report.
//!
//! This is the unit every shell drives: `slipway run` loops over the plan with it
//! (`pipeline.rs`), the server runs it for each job it takes from its queue. It decides
//! nothing about the pipeline; retries, `allow_failure` and what runs next are the
//! caller's (with `slipway_core::job` and `slipway_core::schedule`).

use crate::executor::{ExecStatus, Executor, JobSpec};
use crate::logs::LogSink;
use crate::store::{self, cache_key_in, ArtifactSet, Store};
use crate::workspace::{GitInfo, Laying, Source, SyncStats, Workspace};
use slipway_core::job::{self as rules, reason, CachePolicy};
use slipway_core::model::{Artifacts, Job};
use slipway_core::schedule::JobStatus;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// GitLab's default job timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// GitLab Runner's default `after_script` timeout.
pub const AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// GitLab's default artifact expiry when `expire_in` is not given.
pub const DEFAULT_EXPIRE_IN: Duration = Duration::from_secs(30 * 24 * 3600);
/// A failure reason of GitLab's: the artifacts of a dependency are gone.
pub const MISSING_DEPENDENCY: &str = "missing_dependency_failure";

/// The artifacts of an earlier job to extract before the script.
#[derive(Debug, Clone)]
pub struct Dependency {
    /// The job's name, for the log.
    pub job: String,
    /// Its artifacts id in the store.
    pub artifacts: String,
}

/// Everything one attempt needs.
pub struct Attempt<'a> {
    /// The job's display name (`test 1/3`).
    pub name: &'a str,
    /// The job's definition: scripts, image, services, artifacts, caches, timeout.
    pub job: &'a Job,
    /// Where it runs; reset to `source` first.
    pub workspace: &'a mut Workspace,
    pub source: &'a Source,
    /// The commit the workspace's `.git` shows.
    pub git: Option<&'a GitInfo>,
    /// The job's environment for this workspace (`slipway_core::job::environment`).
    pub variables: &'a [(String, String)],
    /// Artifacts to extract, in order (later ones overwrite earlier ones).
    pub dependencies: &'a [Dependency],
    /// The id this attempt's artifacts are saved under.
    pub artifacts_id: &'a str,
    pub store: &'a Store,
    pub executor: &'a dyn Executor,
    pub log: &'a Arc<LogSink>,
    pub cancel: &'a CancellationToken,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// `Success`, `Failed` or `Canceled`.
    pub status: JobStatus,
    /// Exit code of `before_script` + `script`.
    pub exit_code: Option<i32>,
    /// GitLab's failure reason (`script_failure`, `job_execution_timeout`, ...).
    pub failure_reason: Option<String>,
    /// The artifacts saved (their id), when the job had some to save.
    pub artifacts: Option<String>,
    /// Variables from `artifacts:reports:dotenv`.
    pub dotenv: Vec<(String, String)>,
    /// What resetting the workspace took.
    pub workspace: SyncStats,
    /// What laying the dependencies' artifacts over it took.
    pub laying: Laying,
}

impl AttemptResult {
    fn failed(reason: &str) -> AttemptResult {
        AttemptResult {
            status: JobStatus::Failed,
            exit_code: None,
            failure_reason: Some(reason.to_string()),
            artifacts: None,
            dotenv: Vec::new(),
            workspace: SyncStats::default(),
            laying: Laying::default(),
        }
    }
}

/// File-system work from async code: on a multi-threaded runtime the worker is handed
/// over while it runs, so other jobs' output keeps flowing.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A cache of the job, with its key and policy resolved.
struct ResolvedCache {
    key: String,
    fallback: Vec<String>,
    policy: CachePolicy,
    paths: Vec<String>,
    untracked: bool,
    when: String,
}

/// Run one attempt of a job.
pub async fn run_attempt(a: Attempt<'_>) -> AttemptResult {
    let log = a.log;
    let lookup = |name: &str| {
        a.variables
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let expand = |s: &str| slipway_core::variables::expand(s, &lookup);

    // The dependencies' manifests first: a missing one fails the job before anything runs.
    let mut sets = Vec::with_capacity(a.dependencies.len());
    for d in a.dependencies {
        match blocking(|| a.store.load_artifacts(&d.artifacts)) {
            Ok(set) => sets.push(set),
            Err(e) => {
                log.system(&format!(
                    "ERROR: the artifacts of {} cannot be found: {e}",
                    d.job
                ));
                return AttemptResult::failed(MISSING_DEPENDENCY);
            }
        }
    }
    // Caches: keys from the source (the checkout), as GitLab computes them, before
    // anything is extracted.
    let mut caches = Vec::new();
    for (i, c) in a.job.cache.iter().enumerate() {
        let policy = match CachePolicy::parse(&expand(&c.policy)) {
            Ok(p) => p,
            Err(e) => {
                log.system(&format!("ERROR: cache {i}: {e}"));
                return AttemptResult::failed(reason::SCRIPT_FAILURE);
            }
        };
        let key = blocking(|| cache_key_in(c, i, a.source.root(), Some(a.source.files()), &expand));
        let fallback =
            rules::fallback_keys(c, &key, &expand, lookup("CACHE_FALLBACK_KEY").as_deref());
        caches.push(ResolvedCache {
            key,
            fallback,
            policy,
            paths: c.paths.iter().map(|p| expand(p)).collect(),
            untracked: c.untracked,
            when: c.when.clone(),
        });
    }

    // The workspace: exactly the source's files, then the caches, then the artifacts,
    // in GitLab Runner's order.
    let set_refs: Vec<&ArtifactSet> = sets.iter().collect();
    let prepared = blocking(|| {
        a.workspace
            .prepare_with(a.source, a.git, &set_refs, Some(a.store), |dir| {
                let mut lines = Vec::new();
                for c in caches.iter().filter(|c| c.policy.restores()) {
                    lines.push(format!("Checking cache for {}...", c.key));
                    lines.push(match a.store.restore_cache(&c.key, &c.fallback, dir) {
                        Ok(Some(k)) if k == c.key => format!("Restored cache {k}"),
                        Ok(Some(k)) => format!("Restored cache {k} (fallback key)"),
                        Ok(None) => format!(
                            "No cache found for {}{}",
                            c.key,
                            if c.fallback.is_empty() {
                                String::new()
                            } else {
                                format!(" nor for {}", c.fallback.join(", "))
                            }
                        ),
                        // As GitLab Runner: a cache that cannot be restored does not fail
                        // the job.
                        Err(e) => format!("WARNING: restoring cache {} failed: {e}", c.key),
                    });
                }
                lines
            })
    });
    let (workspace, cache_lines, laying) = match prepared {
        Ok(x) => x,
        Err(e) => {
            log.system(&format!("ERROR: preparing the workspace failed: {e}"));
            return AttemptResult::failed(reason::RUNNER_SYSTEM_FAILURE);
        }
    };
    let workdir = a.workspace.dir().to_path_buf();
    log.system(&format!(
        "Workspace {} ready ({} copied, {} removed)",
        workdir.display(),
        workspace.copied,
        workspace.removed
    ));
    for l in cache_lines {
        log.system(&l);
    }
    for (d, set) in a.dependencies.iter().zip(&sets) {
        let n = set.file_count();
        log.system(&format!(
            "Downloaded artifacts of {} ({n} file{})",
            d.job,
            if n == 1 { "" } else { "s" }
        ));
    }
    // 4. The scripts.
    let spec = JobSpec {
        name: a.name.to_string(),
        workdir: workdir.clone(),
        image: a.job.image.clone(),
        services: a.job.services.clone(),
        before_script: a.job.before_script.clone(),
        script: a.job.script.clone(),
        after_script: a.job.after_script.clone(),
        variables: a.variables.to_vec(),
        timeout: a
            .job
            .timeout
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT),
        after_script_timeout: AFTER_SCRIPT_TIMEOUT,
    };
    let outcome = a.executor.run(&spec, log.clone(), a.cancel.clone()).await;
    let mut result = AttemptResult {
        status: JobStatus::Failed,
        exit_code: outcome.exit_code,
        failure_reason: None,
        artifacts: None,
        dotenv: Vec::new(),
        workspace,
        laying,
    };
    match &outcome.status {
        ExecStatus::Success => result.status = JobStatus::Success,
        ExecStatus::Canceled => {
            result.status = JobStatus::Canceled;
            // Nothing is uploaded for a canceled job.
            return result;
        }
        ExecStatus::Failed => result.failure_reason = Some(reason::SCRIPT_FAILURE.into()),
        ExecStatus::TimedOut => {
            log.system(&format!(
                "ERROR: Job failed: execution took longer than {} seconds",
                spec.timeout.as_secs()
            ));
            result.failure_reason = Some(reason::JOB_EXECUTION_TIMEOUT.into());
        }
        ExecStatus::SystemFailure(_) => {
            result.failure_reason = Some(reason::RUNNER_SYSTEM_FAILURE.into())
        }
    }
    let succeeded = result.status == JobStatus::Success;

    // 5. Caches, as `cache:when` says.
    for c in caches
        .iter()
        .filter(|c| c.policy.saves() && rules::uploads_when(&c.when, succeeded))
    {
        log.system(&format!("Saving cache {}...", c.key));
        let untracked = c.untracked.then(|| a.source.files());
        match blocking(|| a.store.save_cache(&c.key, &workdir, &c.paths, untracked)) {
            Ok(warnings) => {
                for w in warnings {
                    log.system(&format!("WARNING: {w}"));
                }
                log.system(&format!("Saved cache {}", c.key));
            }
            Err(e) => log.system(&format!("WARNING: saving cache {} failed: {e}", c.key)),
        }
    }

    // 6. Artifacts and the dotenv report, as `artifacts:when` says.
    if let Some(arts) = a
        .job
        .artifacts
        .as_ref()
        .filter(|x| rules::uploads_when(&x.when, succeeded))
    {
        if !arts.paths.is_empty() || arts.untracked {
            match blocking(|| {
                save_artifacts(
                    a.store,
                    &workdir,
                    arts,
                    a.source,
                    a.artifacts_id,
                    &expand,
                    log,
                )
            }) {
                Ok(saved) => result.artifacts = saved,
                Err(e) => {
                    log.system(&format!("ERROR: uploading artifacts failed: {e}"));
                    result.status = JobStatus::Failed;
                    result.failure_reason = Some(reason::RUNNER_SYSTEM_FAILURE.into());
                }
            }
        }
        if !arts.reports.dotenv.is_empty() {
            let files: Vec<String> = arts.reports.dotenv.iter().map(|f| expand(f)).collect();
            result.dotenv = read_dotenv(&workdir, &files, log);
        }
    }
    if let (JobStatus::Failed, Some(code)) = (result.status, result.exit_code) {
        if result.failure_reason.as_deref() == Some(reason::SCRIPT_FAILURE) {
            log.system(&format!("ERROR: Job failed: exit code {code}"));
        }
    }
    result
}

fn save_artifacts(
    store: &Store,
    workdir: &Path,
    arts: &Artifacts,
    source: &Source,
    id: &str,
    expand: &dyn Fn(&str) -> String,
    log: &LogSink,
) -> std::io::Result<Option<String>> {
    let expanded = Artifacts {
        paths: arts.paths.iter().map(|p| expand(p)).collect(),
        exclude: arts.exclude.iter().map(|p| expand(p)).collect(),
        ..arts.clone()
    };
    log.system("Uploading artifacts...");
    let set: ArtifactSet = store.collect_artifacts(workdir, &expanded, source.files())?;
    for n in &set.notes {
        log.system(n);
    }
    for w in &set.warnings {
        log.system(&format!("WARNING: {w}"));
    }
    if set.is_empty() {
        log.system("ERROR: No files to upload");
        return Ok(None);
    }
    let expire = store::expire_at(
        arts.expire_in.as_deref(),
        SystemTime::now(),
        Some(DEFAULT_EXPIRE_IN),
    );
    store.save_artifacts(id, &set, expire)?;
    log.system(&format!(
        "Uploaded {} file{} ({} bytes) as artifacts {id}",
        set.file_count(),
        if set.file_count() == 1 { "" } else { "s" },
        set.total_size()
    ));
    Ok(Some(id.to_string()))
}

/// Parse `artifacts:reports:dotenv` files: `KEY=VALUE` lines, as GitLab accepts them
/// (blank lines and `#` comments skipped, one level of quotes removed).
pub fn read_dotenv(workdir: &Path, files: &[String], log: &LogSink) -> Vec<(String, String)> {
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
