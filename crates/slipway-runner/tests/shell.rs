//! The shell executor against real processes.

use slipway_runner::executor::{ExecStatus, Executor, JobSpec};
use slipway_runner::logs::{LogSink, Masker};
use slipway_runner::shell::ShellExecutor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

fn spec(dir: &Path, script: &[&str]) -> JobSpec {
    JobSpec {
        name: "test job".into(),
        workdir: dir.to_path_buf(),
        image: None,
        services: Vec::new(),
        before_script: Vec::new(),
        script: script.iter().map(|s| s.to_string()).collect(),
        after_script: Vec::new(),
        variables: vec![("GREETING".into(), "hello world".into())],
        timeout: Duration::from_secs(60),
        after_script_timeout: Duration::from_secs(60),
    }
}

fn sink() -> (Arc<LogSink>, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    let sink = LogSink::detached(
        Masker::new(["topsecret"]),
        Some(Box::new(move |s: &str| {
            l2.lock().expect("lock").push(s.to_string())
        })),
    );
    (Arc::new(sink), lines)
}

async fn run(
    exec: &ShellExecutor,
    job: &JobSpec,
) -> (slipway_runner::executor::ExecOutcome, Vec<String>) {
    let (log, lines) = sink();
    let out = exec.run(job, log.clone(), CancellationToken::new()).await;
    log.finish();
    let lines = lines.lock().expect("lock").clone();
    (out, lines)
}

#[tokio::test]
async fn echoes_commands_and_sees_variables() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let job = spec(dir.path(), &["echo \"$GREETING\"", "pwd"]);
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Success);
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(lines[0], "$ echo \"$GREETING\"");
    assert_eq!(lines[1], "hello world");
    assert_eq!(lines[2], "$ pwd");
    assert_eq!(
        Path::new(&lines[3]).canonicalize().ok(),
        dir.path().canonicalize().ok()
    );
}

#[tokio::test]
async fn first_failing_command_fails_the_job_with_its_exit_code() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let job = spec(dir.path(), &["echo one", "exit 3", "echo never"]);
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Failed);
    assert_eq!(out.exit_code, Some(3));
    assert!(!lines.iter().any(|l| l == "never"), "{lines:?}");
}

#[tokio::test]
async fn a_failing_pipe_fails_under_bash() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let job = spec(dir.path(), &["false | cat", "echo after"]);
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(
        out.status,
        ExecStatus::Failed,
        "pipefail, as GitLab Runner sets it: {lines:?}"
    );
}

#[tokio::test]
async fn multi_line_commands_run_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let job = spec(dir.path(), &["for i in 1 2; do\n  echo \"n=$i\"\ndone"]);
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Success);
    assert_eq!(
        lines[0],
        "$ for i in 1 2; do # collapsed multi-line command"
    );
    assert_eq!(&lines[1..], ["n=1", "n=2"]);
}

#[tokio::test]
async fn after_script_runs_after_failure_with_job_status() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let mut job = spec(dir.path(), &["export LEAK=1", "false"]);
    job.after_script = vec!["echo \"status=$CI_JOB_STATUS leak=${LEAK:-none}\"".into()];
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Failed);
    assert_eq!(out.exit_code, Some(1));
    assert!(
        lines.contains(&"status=failed leak=none".to_string()),
        "after_script runs in its own shell: {lines:?}"
    );
}

#[tokio::test]
async fn after_script_sees_success() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let mut job = spec(dir.path(), &["true"]);
    job.after_script = vec!["echo \"status=$CI_JOB_STATUS\"".into()];
    let (_, lines) = run(&exec, &job).await;
    assert!(lines.contains(&"status=success".to_string()), "{lines:?}");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let mut job = spec(
        dir.path(),
        &[
            "(sleep 30; echo orphan > orphan.txt) &",
            "echo $! > child.pid",
            "sleep 30",
        ],
    );
    job.timeout = Duration::from_millis(500);
    job.after_script = vec!["echo \"after: $CI_JOB_STATUS\"".into()];
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::TimedOut);
    assert!(lines.contains(&"after: failed".to_string()), "{lines:?}");
    let pid: i32 = std::fs::read_to_string(dir.path().join("child.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("number");
    // The background subshell is gone (or a zombie waiting to be reaped by init).
    std::thread::sleep(Duration::from_millis(200));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let running = status
        .lines()
        .any(|l| l.starts_with("State:") && !l.contains("Z (zombie)") && !l.contains("X (dead)"));
    assert!(
        !running,
        "background process {pid} survived the timeout: {status}"
    );
    assert!(!dir.path().join("orphan.txt").exists());
}

#[tokio::test]
async fn cancel_stops_the_job() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let job = spec(dir.path(), &["sleep 30"]);
    let (log, _) = sink();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c2.cancel();
    });
    let out = exec.run(&job, log, cancel).await;
    assert_eq!(out.status, ExecStatus::Canceled);
}

#[tokio::test]
async fn output_is_masked() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    let job = spec(dir.path(), &["printf 'top'; printf 'secret\\n'"]);
    let (_, lines) = run(&exec, &job).await;
    assert_eq!(lines[1], "[MASKED]");
}

#[tokio::test]
async fn falls_back_to_sh() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::with_shell(Path::new("/bin/sh"), &dir.path().join(".scripts"));
    let job = spec(dir.path(), &["echo from sh", "exit 7"]);
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.exit_code, Some(7));
    assert_eq!(lines[1], "from sh");
}
