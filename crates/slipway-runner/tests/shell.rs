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

/// A script is passed to the shell as an argument: nothing is written for it, and the
/// job sees `$0` as the shell (as when GitLab Runner pipes the script to bash).
#[tokio::test]
async fn scripts_are_passed_inline() {
    let dir = tempfile::tempdir().expect("tmp");
    let scripts = dir.path().join(".scripts");
    let exec = ShellExecutor::new(&scripts);
    let mut job = spec(dir.path(), &["echo \"zero=$(basename \"$0\")\""]);
    job.after_script = vec!["echo after".into()];
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Success);
    assert!(lines.contains(&"zero=bash".to_string()), "{lines:?}");
    assert!(lines.contains(&"after".to_string()), "{lines:?}");
    assert!(!scripts.exists(), "no script file for an inline script");
}

/// A script too long for one command-line argument (Linux: 128 KiB) goes through a file
/// and runs whole.
#[tokio::test]
async fn a_very_long_script_runs_from_a_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let scripts = dir.path().join(".scripts");
    let exec = ShellExecutor::new(&scripts);
    let commands: Vec<String> = (0..3000)
        .map(|i| format!("n={i}  # {}", "x".repeat(60)))
        .chain(["echo \"last n=$n\"".to_string()])
        .collect();
    let refs: Vec<&str> = commands.iter().map(String::as_str).collect();
    let job = spec(dir.path(), &refs);
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Success, "{:?}", lines.last());
    assert_eq!(lines.last().map(String::as_str), Some("last n=2999"));
    assert!(scripts.exists(), "the long script was written to a file");
}

/// A script that fits one argument but not next to a large environment (the kernel's
/// `E2BIG`) is run from a file instead.
#[tokio::test]
async fn a_script_crowded_out_by_the_environment_runs_from_a_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let scripts = dir.path().join(".scripts");
    let exec = ShellExecutor::new(&scripts);
    // SAFETY: sysconf reads a system limit.
    let arg_max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) }.max(0) as usize;
    let machine: usize = std::env::vars_os()
        .map(|(k, v)| k.len() + v.len() + 2 + 8)
        .sum();
    // The environment leaves about 40 KiB; the script needs about 60 KiB.
    let mut room = arg_max.saturating_sub(machine + 40 * 1024);
    let mut job = spec(dir.path(), &[]);
    let mut i = 0;
    while room > 0 {
        let len = room.min(100 * 1024);
        job.variables
            .push((format!("BIG_{i}"), "v".repeat(len.saturating_sub(16))));
        room -= len;
        i += 1;
    }
    job.script = (0..800)
        .map(|i| format!("n={i}  # {}", "x".repeat(20)))
        .chain(["echo \"last n=$n vars=${#BIG_0}\"".to_string()])
        .collect();
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Success, "{:?}", lines.last());
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("last n=799 vars=")),
        "{:?}",
        lines.last()
    );
    assert!(scripts.exists(), "the script was written to a file");
}
