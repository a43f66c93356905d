//! The shell executor: runs a job's scripts with bash (or sh when bash is missing) on
//! this machine, in the job's workspace, the way GitLab Runner's shell executor does:
//! every command echoed as `$ command`, the first failing command fails the job with its
//! exit code, `after_script` in a new shell with `CI_JOB_STATUS`. The job runs in its
//! own process group so a timeout or cancel stops everything it started.

use crate::executor::{ExecFuture, ExecOutcome, ExecStatus, Executor, JobSpec};
use crate::logs::LogSink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long a stopped job gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long to keep reading output after the script ended (a stray background process
/// may hold the pipe open).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

pub struct ShellExecutor {
    shell: PathBuf,
    bash: bool,
    /// Where generated scripts are written (outside the workspace, so artifacts and
    /// `git status` never see them).
    scripts_dir: PathBuf,
}

impl ShellExecutor {
    /// Uses bash when it is on the PATH, sh otherwise.
    pub fn new(scripts_dir: &Path) -> ShellExecutor {
        match find_in_path("bash") {
            Some(bash) => ShellExecutor {
                shell: bash,
                bash: true,
                scripts_dir: scripts_dir.to_path_buf(),
            },
            None => ShellExecutor {
                shell: find_in_path("sh").unwrap_or_else(|| PathBuf::from("/bin/sh")),
                bash: false,
                scripts_dir: scripts_dir.to_path_buf(),
            },
        }
    }

    /// Force a specific shell (tests use sh).
    pub fn with_shell(shell: &Path, scripts_dir: &Path) -> ShellExecutor {
        let bash = shell
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("bash"));
        ShellExecutor {
            shell: shell.to_path_buf(),
            bash,
            scripts_dir: scripts_dir.to_path_buf(),
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Single-quote a string for POSIX shells.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script GitLab Runner would generate: fail on the first failing command, echo each
/// command before running it.
pub fn render_script(commands: &[String], bash: bool, workdir: &Path) -> String {
    let mut out = String::new();
    if bash {
        out.push_str("set -eo pipefail\n");
    } else {
        out.push_str("set -e\n");
    }
    out.push_str("set +o noclobber\n");
    push_commands(&mut out, commands, workdir);
    out
}

/// The part of a job script both executors share: change to the workspace, then each
/// command echoed as `$ command` (a multi-line command shown by its first line, as GitLab
/// Runner does) and run.
pub fn push_commands(out: &mut String, commands: &[String], workdir: &Path) {
    out.push_str(&format!("cd {}\n", shell_quote(&workdir.to_string_lossy())));
    for cmd in commands {
        let shown = match cmd.trim_end().split_once('\n') {
            Some((first, _)) => format!("$ {first} # collapsed multi-line command"),
            None => format!("$ {}", cmd.trim_end()),
        };
        out.push_str(&format!("printf '%s\\n' {}\n", shell_quote(&shown)));
        out.push_str(cmd);
        if !cmd.ends_with('\n') {
            out.push('\n');
        }
    }
}

/// The read end of a job's output pipe, read without blocking the runtime.
struct Output {
    rx: tokio::net::unix::pipe::Receiver,
    buf: Vec<u8>,
    eof: bool,
}

impl Output {
    fn new(reader: std::io::PipeReader) -> std::io::Result<Output> {
        let fd: std::os::fd::OwnedFd = reader.into();
        Ok(Output {
            rx: tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?,
            buf: vec![0u8; 64 * 1024],
            eof: false,
        })
    }

    /// Read what is there (waiting for it) and pass it to the log.
    async fn pump(&mut self, log: &LogSink) {
        use tokio::io::AsyncReadExt;
        match self.rx.read(&mut self.buf).await {
            Ok(0) | Err(_) => self.eof = true,
            Ok(n) => log.write(&self.buf[..n]),
        }
    }
}

/// One shell invocation: the main script or `after_script`.
struct Phase<'a> {
    commands: &'a [String],
    extra_env: &'a [(&'a str, &'a str)],
    timeout: Duration,
    cancel: &'a CancellationToken,
    tag: &'a str,
}

enum Ended {
    Exited(Option<i32>),
    TimedOut,
    Canceled,
    SpawnFailed(String),
}

impl ShellExecutor {
    async fn run_script(&self, job: &JobSpec, phase: Phase<'_>, log: &Arc<LogSink>) -> Ended {
        let Phase {
            commands,
            extra_env,
            timeout,
            cancel,
            tag,
        } = phase;
        let script_path = self.scripts_dir.join(format!("{tag}.sh"));
        if let Err(e) = std::fs::create_dir_all(&self.scripts_dir).and_then(|_| {
            std::fs::write(
                &script_path,
                render_script(commands, self.bash, &job.workdir),
            )
        }) {
            return Ended::SpawnFailed(format!(
                "cannot write the job script {}: {e}",
                script_path.display()
            ));
        }
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => return Ended::SpawnFailed(format!("cannot create an output pipe: {e}")),
        };
        let writer2 = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => return Ended::SpawnFailed(format!("cannot create an output pipe: {e}")),
        };
        let mut cmd = Command::new(&self.shell);
        if self.bash {
            cmd.arg("--noprofile").arg("--norc");
        }
        cmd.arg(&script_path)
            .current_dir(&job.workdir)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2))
            .process_group(0)
            .kill_on_drop(true);
        // The job sees the machine's environment (PATH, HOME...) under its own variables,
        // as a shell runner does.
        for (k, v) in std::env::vars_os() {
            cmd.env(k, v);
        }
        for (k, v) in &job.variables {
            cmd.env(k, v);
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Ended::SpawnFailed(format!("cannot start {}: {e}", self.shell.display()))
            }
        };
        // `cmd` holds the parent's copies of the pipe's write end: drop them so the reader
        // sees end-of-file when the job's processes are gone.
        drop(cmd);
        let pgid = child.id().map(|id| id as i32);
        // The output is read here, on the runtime, as it comes (no thread per job).
        let mut out = match Output::new(reader) {
            Ok(o) => o,
            Err(e) => {
                if let Some(pgid) = pgid {
                    kill_group(pgid, libc::SIGKILL);
                }
                let _ = child.wait().await;
                return Ended::SpawnFailed(format!("cannot read the job's output: {e}"));
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let ended = loop {
            tokio::select! {
                status = child.wait() => break Ended::Exited(status.ok().and_then(|s| exit_code(&s))),
                _ = &mut deadline => break Ended::TimedOut,
                _ = cancel.cancelled() => break Ended::Canceled,
                _ = out.pump(log), if !out.eof => {}
            }
        };
        // Stop the whole group: what the job left running, or everything on timeout/cancel.
        if let Some(pgid) = pgid {
            kill_group(pgid, libc::SIGTERM);
            if !matches!(ended, Ended::Exited(_)) {
                let grace = tokio::time::sleep(KILL_GRACE);
                tokio::pin!(grace);
                let exited = loop {
                    tokio::select! {
                        _ = child.wait() => break true,
                        _ = &mut grace => break false,
                        _ = out.pump(log), if !out.eof => {}
                    }
                };
                if !exited {
                    kill_group(pgid, libc::SIGKILL);
                }
            }
            kill_group(pgid, libc::SIGKILL);
        }
        let _ = child.wait().await;
        // What is still in the pipe; a stray process holding it open is not waited for.
        let _ = tokio::time::timeout(DRAIN_LIMIT, async {
            while !out.eof {
                out.pump(log).await;
            }
        })
        .await;
        ended
    }
}

fn kill_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group we created; it has no
        // memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

fn exit_code(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}

impl Executor for ShellExecutor {
    fn run<'a>(
        &'a self,
        job: &'a JobSpec,
        log: Arc<LogSink>,
        cancel: CancellationToken,
    ) -> ExecFuture<'a> {
        Box::pin(async move {
            // One script file per workspace, rewritten for each job: a workspace runs one
            // job at a time, and rewriting a file is cheaper than creating one.
            let mut h: u64 = 0xcbf29ce484222325;
            for b in job.workdir.as_os_str().as_encoded_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100000001b3);
            }
            let tag = format!("ws-{h:016x}");
            let mut commands = job.before_script.clone();
            commands.extend(job.script.iter().cloned());
            let main = self
                .run_script(
                    job,
                    Phase {
                        commands: &commands,
                        extra_env: &[],
                        timeout: job.timeout,
                        cancel: &cancel,
                        tag: &format!("{tag}-script"),
                    },
                    &log,
                )
                .await;
            let (status, exit_code) = match main {
                Ended::Exited(Some(0)) => (ExecStatus::Success, Some(0)),
                Ended::Exited(code) => (ExecStatus::Failed, code),
                Ended::TimedOut => (ExecStatus::TimedOut, None),
                Ended::Canceled => (ExecStatus::Canceled, None),
                Ended::SpawnFailed(e) => {
                    log.system(&format!("ERROR: {e}"));
                    (ExecStatus::SystemFailure(e), None)
                }
            };
            if !job.after_script.is_empty() && !matches!(status, ExecStatus::SystemFailure(_)) {
                let job_status = match status {
                    ExecStatus::Success => "success",
                    ExecStatus::Canceled => "canceled",
                    _ => "failed",
                };
                log.system("Running after_script");
                // after_script runs even after a cancel; a second cancel is not waited for.
                let after = self
                    .run_script(
                        job,
                        Phase {
                            commands: &job.after_script,
                            extra_env: &[("CI_JOB_STATUS", job_status)],
                            timeout: job.after_script_timeout,
                            cancel: &CancellationToken::new(),
                            tag: &format!("{tag}-after"),
                        },
                        &log,
                    )
                    .await;
                match after {
                    Ended::Exited(Some(0)) => {}
                    Ended::Exited(code) => log.system(&format!(
                        "WARNING: after_script failed with exit code {}",
                        code.map(|c| c.to_string())
                            .unwrap_or_else(|| "unknown".into())
                    )),
                    Ended::TimedOut => log.system("WARNING: after_script timed out"),
                    Ended::Canceled => {}
                    Ended::SpawnFailed(e) => {
                        log.system(&format!("WARNING: after_script could not start: {e}"))
                    }
                }
            }
            ExecOutcome { status, exit_code }
        })
    }
}

/// A file-name-safe form of a job name.
pub fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() || s == "." || s == ".." {
        "job".to_string()
    } else {
        s
    }
}
