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

/// An executor with a resident shell waiting in `dir`, as during a pipeline run.
fn resident_executor(dir: &Path, shared: &[(&str, &str)]) -> ShellExecutor {
    let exec = ShellExecutor::new(&dir.join(".scripts"));
    let shared: Vec<(String, String)> = shared
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    exec.expect_jobs(&[dir.to_path_buf()], &shared);
    wait_for_resident(&exec, 1);
    exec
}

/// Resident shells start on a thread of their own: wait until `n` are ready.
fn wait_for_resident(exec: &ShellExecutor, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while exec.resident_shells() != n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(exec.resident_shells(), n);
}

/// Whether the job's shell was a subshell of a resident one (its `$$` is its parent's).
const WHICH_SHELL: &str =
    "if [ \"$BASHPID\" != \"$$\" ]; then echo shell=resident; else echo shell=cold; fi";

/// A job in a resident shell: GitLab Runner's echo and failure semantics, every variable
/// exactly as given (job-specific ones through the script), shared ones from the start,
/// and a resident shell left for the next job.
#[tokio::test]
async fn resident_shells_keep_job_semantics_and_variables() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[("SHARED", "same for all"), ("GONE", "x")]);
    let tricky = "it's \"quoted\" $HOME `date` \\ back\nsecond line";
    let mut job = spec(
        dir.path(),
        &[
            WHICH_SHELL,
            "echo \"$GREETING|$SHARED|${GONE-unset}\"",
            "printf '%s' \"$TRICKY\" > tricky.txt",
            "false | cat",
            "echo never",
        ],
    );
    job.variables.push(("SHARED".into(), "same for all".into()));
    job.variables.push(("TRICKY".into(), tricky.into()));
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(lines[0], format!("$ {WHICH_SHELL}"));
    assert_eq!(lines[1], "shell=resident", "{lines:?}");
    assert!(
        lines.contains(&"hello world|same for all|unset".to_string()),
        "{lines:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tricky.txt")).expect("tricky"),
        tricky
    );
    assert_eq!(out.status, ExecStatus::Failed, "pipefail: {lines:?}");
    assert_eq!(out.exit_code, Some(1));
    assert!(!lines.iter().any(|l| l == "never"));
    // Nothing of the script is shown but the commands.
    assert!(!lines.iter().any(|l| l.contains("export")), "{lines:?}");
    // A resident shell waits for the next job.
    wait_for_resident(&exec, 1);
    // The next job gets its own new shell, with nothing of the previous job's.
    let job2 = spec(dir.path(), &[WHICH_SHELL, "echo \"${TRICKY-none} $$\""]);
    let (out2, lines2) = run(&exec, &job2).await;
    assert_eq!(out2.status, ExecStatus::Success);
    assert_eq!(lines2[1], "shell=resident");
    assert!(lines2[3].starts_with("none "), "{lines2:?}");
}

/// Variables a running bash cannot take as `export` lines (a name bash reads only at
/// start, or not a plain name) make the job start a new shell with them instead.
#[tokio::test]
async fn variables_a_resident_shell_cannot_take_start_a_new_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[]);
    let mut job = spec(
        dir.path(),
        &[
            WHICH_SHELL,
            "env | grep -c '^1ODD=x$'",
            "echo \"$BASH_ENV\"",
        ],
    );
    job.variables.push(("1ODD".into(), "x".into()));
    job.variables
        .push(("BASH_ENV".into(), "/nonexistent".into()));
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Success, "{lines:?}");
    assert_eq!(lines[1], "shell=cold");
    assert_eq!(lines[3], "1");
    assert_eq!(lines[5], "/nonexistent");
}

/// A timeout in a resident shell still stops the job's whole process group, and
/// `after_script` runs in a shell of its own with `CI_JOB_STATUS`.
#[tokio::test]
async fn a_resident_shell_job_times_out_as_a_group() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[]);
    let mut job = spec(
        dir.path(),
        &[
            WHICH_SHELL,
            "(sleep 30; echo orphan > orphan.txt) &",
            "echo $! > child.pid",
            "sleep 30",
        ],
    );
    job.timeout = Duration::from_millis(500);
    job.after_script = vec!["echo \"after: $CI_JOB_STATUS\"".into()];
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::TimedOut);
    assert_eq!(lines[1], "shell=resident");
    assert!(lines.contains(&"after: failed".to_string()), "{lines:?}");
    let pid: i32 = std::fs::read_to_string(dir.path().join("child.pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("number");
    std::thread::sleep(Duration::from_millis(200));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let running = status
        .lines()
        .any(|l| l.starts_with("State:") && !l.contains("Z (zombie)") && !l.contains("X (dead)"));
    assert!(!running, "background process {pid} survived: {status}");
}

/// A resident shell given a masked value (a job-specific secret travels in its script):
/// the value works, never shows in the output, and no script is written anywhere.
#[tokio::test]
async fn secrets_through_a_resident_shell_stay_out_of_logs_and_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[]);
    let mut job = spec(
        dir.path(),
        &[
            WHICH_SHELL,
            "test \"$TOKEN\" = topsecret && echo token-ok",
            "echo \"$TOKEN\"",
        ],
    );
    job.variables.push(("TOKEN".into(), "topsecret".into()));
    let (out, lines) = run(&exec, &job).await;
    assert_eq!(out.status, ExecStatus::Success);
    assert_eq!(lines[1], "shell=resident");
    assert!(lines.contains(&"token-ok".to_string()));
    assert!(lines.contains(&"[MASKED]".to_string()), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("topsecret")), "{lines:?}");
    assert!(!dir.path().join(".scripts").exists());
    let mut found = Vec::new();
    for e in walk(dir.path()) {
        if std::fs::read(&e).is_ok_and(|b| b.windows(9).any(|w| w == b"topsecret")) {
            found.push(e);
        }
    }
    assert!(found.is_empty(), "secret written to {found:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The processes of this test binary whose working directory is `dir`.
fn shells_in(dir: &Path) -> Vec<i32> {
    let me = std::process::id().to_string();
    let dir = dir.canonicalize().expect("dir");
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") || fields.get(1) != Some(&me.as_str()) {
            continue;
        }
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c == dir) {
            pids.push(pid);
        }
    }
    pids
}

/// The shells still running in `dir` after waiting up to a second for them to go.
async fn shells_gone_from(dir: &Path) -> Vec<i32> {
    let mut left = shells_in(dir);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = shells_in(dir);
    }
    left
}

/// Jobs that follow each other in a workspace faster than a shell starts still get a
/// resident shell each: a job whose shell is still starting waits for that one rather than
/// starting another (which would pay the start-up again and leave a shell unused).
#[tokio::test]
async fn a_job_waits_for_its_resident_shell_while_it_starts() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = ShellExecutor::new(&dir.path().join(".scripts"));
    exec.expect_jobs(&[dir.path().to_path_buf()], &[]);
    // No waiting for the shell: each job comes right after the previous one started it.
    for n in 0..5 {
        let (out, lines) = run(&exec, &spec(dir.path(), &[WHICH_SHELL])).await;
        assert_eq!(out.status, ExecStatus::Success, "{lines:?}");
        assert_eq!(lines[1], "shell=resident", "job {n}");
    }
    exec.no_more_jobs();
    let (out, lines) = run(&exec, &spec(dir.path(), &[WHICH_SHELL])).await;
    assert_eq!(out.status, ExecStatus::Success);
    assert_eq!(lines[1], "shell=resident", "the last job");
    assert_eq!(exec.resident_shells(), 0, "none left after the last job");
    drop(exec);
    let left = shells_gone_from(dir.path()).await;
    assert!(left.is_empty(), "shells left running: {left:?}");
}

/// A resident shell no job came for goes with the executor; after `no_more_jobs`, the next
/// job leaves none behind.
#[tokio::test]
async fn unused_resident_shells_are_cleaned_up() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[]);
    assert_eq!(
        shells_in(dir.path()).len(),
        1,
        "the resident shell is running"
    );
    drop(exec);
    let left = shells_gone_from(dir.path()).await;
    assert!(left.is_empty(), "resident shells left running: {left:?}");

    let other = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[]);
    exec.expect_jobs(&[other.path().to_path_buf()], &[]);
    wait_for_resident(&exec, 2);
    exec.no_more_jobs();
    let (out, lines) = run(&exec, &spec(dir.path(), &[WHICH_SHELL])).await;
    assert_eq!(out.status, ExecStatus::Success);
    assert_eq!(
        lines[1], "shell=resident",
        "the last job still uses its resident shell"
    );
    assert_eq!(
        exec.resident_shells(),
        0,
        "and leaves none, nor the other workspace's"
    );
}

/// Jobs that follow each other in a resident shell's workspace see nothing of each
/// other: shell variables, functions, options, traps, the directory and the umask are
/// the subshell's own; each job has its own process (and process group), a new shell's
/// signal dispositions, and no controlling terminal.
#[tokio::test]
async fn jobs_in_a_resident_shell_are_isolated_from_each_other() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[]);
    let first = spec(
        dir.path(),
        &[
            WHICH_SHELL,
            "LEFT=over; export EXPORTED=too; f() { echo f; }; set -u; shopt -s nullglob",
            "trap 'echo trapped' EXIT; umask 077; alias ll=ls; cd /",
            "echo \"pid=$BASHPID pgid=$(ps -o pgid= -p $BASHPID | tr -d ' ')\"",
        ],
    );
    let (out, lines) = run(&exec, &first).await;
    assert_eq!(out.status, ExecStatus::Success, "{lines:?}");
    assert_eq!(lines[1], "shell=resident");
    let pid_line = lines
        .iter()
        .find(|l| l.starts_with("pid="))
        .expect("pid line");
    let (pid, pgid) = pid_line
        .trim_start_matches("pid=")
        .split_once(" pgid=")
        .expect("both");
    assert_eq!(pid, pgid, "the job leads its own process group");
    assert!(lines.contains(&"trapped".to_string()), "{lines:?}");

    let second = spec(
        dir.path(),
        &[
            WHICH_SHELL,
            "echo \"${LEFT-none} ${EXPORTED-none} $(type -t f || echo nofunc) $(type -t ll || echo noalias)\"",
            "echo \"$(shopt -p nullglob) $(umask) ${-//[^u]/}|\"",
            "pwd",
            "grep -E '^Sig(Ign|Blk)' /proc/self/status",
            "echo \"pid=$BASHPID\"",
            "if : </dev/tty; then echo has-a-terminal; else echo no-terminal; fi",
        ],
    );
    let (out, lines) = run(&exec, &second).await;
    assert_eq!(out.status, ExecStatus::Success, "{lines:?}");
    assert_eq!(lines[1], "shell=resident");
    assert_eq!(lines[3], "none none nofunc noalias", "{lines:?}");
    let umask = new_shell_umask();
    assert_eq!(
        lines[5],
        format!("shopt -u nullglob {umask} |"),
        "{lines:?}"
    );
    assert_eq!(
        std::path::Path::new(&lines[7]).canonicalize().ok(),
        dir.path().canonicalize().ok()
    );
    // Signals as in a new shell's commands.
    let cold = ShellExecutor::new(&dir.path().join(".scripts"));
    let (_, cold_lines) = run(
        &cold,
        &spec(
            dir.path(),
            &[WHICH_SHELL, "grep -E '^Sig(Ign|Blk)' /proc/self/status"],
        ),
    )
    .await;
    assert_eq!(cold_lines[1], "shell=cold");
    // Signals 1 to 31 (32 and up are the C library's own, inherited as they come).
    let standard = |l: &str| {
        let hex = l.split_once('\t').map(|(_, h)| h).unwrap_or(l);
        u64::from_str_radix(hex, 16).expect("hex mask") & 0x7fff_ffff
    };
    for (resident, cold) in lines[9..11].iter().zip(&cold_lines[3..5]) {
        assert_eq!(standard(resident), 0, "{lines:?}");
        assert_eq!(standard(cold), 0, "{cold_lines:?}");
    }
    assert!(!lines.contains(&"trapped".to_string()), "{lines:?}");
    assert_ne!(
        lines[12],
        pid_line.split_once(' ').map(|(p, _)| p).unwrap_or("")
    );
    // No controlling terminal, even when Slipway has one: a job cannot be stopped by it.
    assert_eq!(
        lines.last().map(String::as_str),
        Some("no-terminal"),
        "{lines:?}"
    );
}

/// The umask a new shell gets here, as `umask` prints it.
fn new_shell_umask() -> String {
    let out = std::process::Command::new("bash")
        .args(["--noprofile", "--norc", "-c", "umask"])
        .output()
        .expect("bash");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A script longer than a pipe holds reaches the resident shell's subshell whole.
#[tokio::test]
async fn a_long_script_runs_whole_in_a_resident_shell() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[]);
    let mut commands = vec![WHICH_SHELL.to_string()];
    for n in 0..2000 {
        commands.push(format!("n={n} # {}", "x".repeat(100)));
    }
    commands.push("echo \"last n=$n\"".into());
    let refs: Vec<&str> = commands.iter().map(String::as_str).collect();
    let (out, lines) = run(&exec, &spec(dir.path(), &refs)).await;
    assert_eq!(out.status, ExecStatus::Success, "{:?}", lines.last());
    assert_eq!(lines[1], "shell=resident");
    assert_eq!(lines.last().map(String::as_str), Some("last n=1999"));
}

/// `kill $$` in a job stops the resident shell (its `$$`): the job fails with a message
/// that says so, and the workspace's next job runs in a new shell.
#[tokio::test]
async fn a_job_that_kills_its_resident_shell_fails_and_the_next_job_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let exec = resident_executor(dir.path(), &[]);
    let (out, lines) = run(
        &exec,
        &spec(dir.path(), &["kill -KILL $$", "sleep 5", "echo survived"]),
    )
    .await;
    assert_eq!(out.status, ExecStatus::Failed, "{lines:?}");
    assert!(!lines.contains(&"survived".to_string()), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("resident shell ended")),
        "{lines:?}"
    );
    let (out, lines) = run(&exec, &spec(dir.path(), &[WHICH_SHELL])).await;
    assert_eq!(out.status, ExecStatus::Success, "{lines:?}");
    assert_eq!(lines[1], "shell=cold");
}
