//! The executor trait: run one job's scripts somewhere and report how it ended. The
//! shell executor runs them on this machine; the container executor in the job's image.

use crate::logs::LogSink;
use slipway_core::model::{Image, Service};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything an executor needs to run one job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Display name (`test 1/3`).
    pub name: String,
    /// The job's workspace on this machine; the scripts start there.
    pub workdir: PathBuf,
    pub image: Option<Image>,
    pub services: Vec<Service>,
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    /// The job's environment, fully resolved, in precedence order (later wins).
    pub variables: Vec<(String, String)>,
    /// Kills the job (its whole process group, or its container) when reached.
    pub timeout: Duration,
    /// GitLab Runner's limit for `after_script`.
    pub after_script_timeout: Duration,
}

/// How a job's scripts ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    Success,
    /// A script command failed; the exit code is in [`ExecOutcome::exit_code`].
    Failed,
    TimedOut,
    Canceled,
    /// The executor could not run the job at all (no engine, image missing, ...).
    SystemFailure(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub status: ExecStatus,
    /// Exit code of `before_script` + `script` (not of `after_script`).
    pub exit_code: Option<i32>,
}

pub type ExecFuture<'a> = Pin<Box<dyn Future<Output = ExecOutcome> + Send + 'a>>;

/// Runs jobs. `before_script` and `script` run in one shell; `after_script` in a new
/// one with `CI_JOB_STATUS` set, always, even after a failure, timeout or cancel.
pub trait Executor: Send + Sync {
    fn run<'a>(
        &'a self,
        job: &'a JobSpec,
        log: Arc<LogSink>,
        cancel: CancellationToken,
    ) -> ExecFuture<'a>;

    /// A run's jobs are about to start in `workdirs` (one job at a time in each), and
    /// every one of them has the variables `shared` with these values: an executor may
    /// get ready for them ahead of time (the shell executor starts shells).
    fn expect_jobs(&self, workdirs: &[PathBuf], shared: &[(String, String)]) {
        let _ = (workdirs, shared);
    }

    /// No job will start any more in this run: nothing more is made ready (what was is
    /// let go when the executor is dropped, or used by a job that comes anyway).
    fn no_more_jobs(&self) {}
}
