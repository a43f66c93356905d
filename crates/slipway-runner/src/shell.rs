//! The shell executor: runs a job's scripts with bash (or sh when bash is missing) on
//! this machine, in the job's workspace, the way GitLab Runner's shell executor does:
//! every command echoed as `$ command`, the first failing command fails the job with its
//! exit code, `after_script` in a new shell with `CI_JOB_STATUS`. The job runs in its
//! own process group so a timeout or cancel stops everything it started.
//!
//! Between [`Executor::expect_jobs`] and [`Executor::no_more_jobs`] (a pipeline run),
//! each workspace has a resident bash started once: for every job it forks a subshell,
//! which becomes the job's shell. A fork of a bash that has already started costs a
//! fifth of starting a new one (no exec, no dynamic loader), and the job's shell is
//! still a process of its own with nothing of any earlier job: the resident shell runs
//! nothing but its loop. The job's output pipe and its script (never on disk; the
//! job-specific variables in it as `export` lines, as GitLab Runner's shell executor
//! sends them) reach the subshell through `/proc/<slipway>/fd/N`; the resident shell
//! reports the subshell's pid (its process group, under `set -m`) and exit status.
//! Differences from a new bash that a script could notice: `$$` is the resident
//! shell's pid (`$BASHPID` is the job's), and `$BASH_SUBSHELL` is 1.

use crate::executor::{ExecFuture, ExecOutcome, ExecStatus, Executor, JobSpec};
use crate::logs::LogSink;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How long a stopped job gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// The longest script passed as an argument: Linux takes at most 128 KiB per argument
/// (`MAX_ARG_STRLEN`), and the environment shares the 2 MiB or so left for both.
const MAX_INLINE_SCRIPT: usize = 96 * 1024;
/// How long to keep reading output after the script ended (a stray background process
/// may hold the pipe open).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

pub struct ShellExecutor {
    shell: PathBuf,
    bash: bool,
    /// Where generated scripts are written (outside the workspace, so artifacts and
    /// `git status` never see them).
    scripts_dir: PathBuf,
    residents: Arc<Residents>,
}

/// The resident shells of an executor (shared with the threads that start them).
#[derive(Default)]
struct Residents {
    /// Waiting for a job (or still starting), by workspace; a job takes its workspace's
    /// out while it runs and puts it back after.
    idle: Mutex<HashMap<PathBuf, Slot>>,
    /// What they are started with: the machine's environment under the variables every
    /// job of the run has. `None`: no resident shells (outside a run).
    env: Mutex<Option<Arc<Env>>>,
    /// Set by [`Executor::no_more_jobs`]: resident shells go once idle.
    closing: AtomicBool,
}

/// An environment: each variable once.
type Env = HashMap<OsString, OsString>;

/// A bash that forks the jobs of one workspace, waiting for the next. Dropped, it is
/// killed (`kill_on_drop`; it also ends by itself when its control pipe closes).
struct Resident {
    child: tokio::process::Child,
    /// One line per job: `PID OUT SCRIPT`, the fds of Slipway's process the job's
    /// subshell opens as its output and reads its script from.
    control: tokio::process::ChildStdin,
    /// `P <pid>` when a job's subshell started, `E <status>` when it ended.
    reports: tokio::io::BufReader<tokio::process::ChildStdout>,
    /// The environment it was started with.
    env: Arc<Env>,
}

/// A workspace's resident shell: started, or being started on a blocking thread. A job
/// that comes while it is still starting waits for it: the start is under way, and a new
/// shell instead would cost the same start-up again on the job's path.
enum Slot {
    Ready(Box<Resident>),
    /// Dropped before it finishes, the shell it makes is dropped with it (killed).
    Starting(tokio::task::JoinHandle<Option<Resident>>),
}

/// The resident shell's loop. Job control (`set -m`) puts each job's subshell in a
/// process group of its own and leaves its signals as a new shell's (without it, bash
/// ignores SIGINT and SIGQUIT in background jobs); the subshell turns it off again, as
/// in any script. The loop's own variables are unset before the job's script runs.
const RESIDENT_LOOP: &str = r#"set -m
while read -r __slipway_pid __slipway_out __slipway_script; do
  ( exec </dev/null >"/proc/$__slipway_pid/fd/$__slipway_out" 2>&1
    set +m
    eval "unset __slipway_pid __slipway_out __slipway_script; $(<"/proc/$__slipway_pid/fd/$__slipway_script")"
  ) &
  printf 'P %s
' "$!"
  wait "$!"
  printf 'E %s
' "$?"
done"#;

impl ShellExecutor {
    /// Uses bash when it is on the PATH, sh otherwise.
    pub fn new(scripts_dir: &Path) -> ShellExecutor {
        match find_in_path("bash") {
            Some(bash) => ShellExecutor::make(bash, true, scripts_dir),
            None => ShellExecutor::make(
                find_in_path("sh").unwrap_or_else(|| PathBuf::from("/bin/sh")),
                false,
                scripts_dir,
            ),
        }
    }

    /// Force a specific shell (tests use sh).
    pub fn with_shell(shell: &Path, scripts_dir: &Path) -> ShellExecutor {
        let bash = shell
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("bash"));
        ShellExecutor::make(shell.to_path_buf(), bash, scripts_dir)
    }

    fn make(shell: PathBuf, bash: bool, scripts_dir: &Path) -> ShellExecutor {
        ShellExecutor {
            shell,
            bash,
            scripts_dir: scripts_dir.to_path_buf(),
            residents: Arc::new(Residents::default()),
        }
    }

    /// How many resident shells wait for a job, started (for tests and diagnostics).
    pub fn resident_shells(&self) -> usize {
        self.residents
            .idle
            .lock()
            .map(|s| {
                s.values()
                    .filter(|w| match w {
                        Slot::Ready(_) => true,
                        Slot::Starting(h) => h.is_finished(),
                    })
                    .count()
            })
            .unwrap_or(0)
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
            // Filled without being zeroed first (`read_buf`): most jobs print a few lines.
            buf: Vec::with_capacity(64 * 1024),
            eof: false,
        })
    }

    /// Read what is there (waiting for it) and pass it to the log.
    async fn pump(&mut self, log: &LogSink) {
        use tokio::io::AsyncReadExt;
        self.buf.clear();
        match self.rx.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => self.eof = true,
            Ok(_) => log.write(&self.buf),
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

/// A job's shell while it runs: a new bash, or a subshell of a resident one.
enum Running {
    Cold(tokio::process::Child),
    Resident(ResidentJob),
}

/// A job running in a subshell of its workspace's resident shell.
struct ResidentJob {
    shell: Resident,
    /// The subshell's pid: the job's process group.
    pid: i32,
    /// Slipway's ends of the job's pipes, kept open until the subshell has ended (it
    /// opens them through `/proc`), then closed so the output reaches end-of-file.
    pipes: Option<(std::io::PipeWriter, std::io::PipeReader)>,
    /// `None` while running; then the exit status, if the resident shell reported one.
    ended: Option<Option<i32>>,
    /// A report line being read (kept across `select!` polls: reading a line is not
    /// cancel-safe, but what was read stays here).
    line: String,
}

impl Running {
    fn pgid(&self) -> Option<i32> {
        match self {
            Running::Cold(child) => child.id().map(|id| id as i32),
            Running::Resident(job) => Some(job.pid),
        }
    }

    /// Wait for the job's shell to end: its exit status (128 + the signal when killed),
    /// `None` when unknown. Cancel-safe, and may be called again once ended.
    async fn wait(&mut self) -> Option<i32> {
        match self {
            Running::Cold(child) => child.wait().await.ok().and_then(|s| exit_code(&s)),
            Running::Resident(job) => {
                use tokio::io::AsyncBufReadExt;
                while job.ended.is_none() {
                    match job.shell.reports.read_line(&mut job.line).await {
                        Ok(n) if n > 0 && !job.line.ends_with('\n') => continue,
                        Ok(n) if n > 0 => {
                            let line = std::mem::take(&mut job.line);
                            if let Some(status) = line.trim_end().strip_prefix("E ") {
                                job.ended = Some(status.parse().ok());
                            }
                        }
                        // The resident shell went away: the status is lost.
                        _ => job.ended = Some(None),
                    }
                }
                job.pipes = None;
                job.ended.flatten()
            }
        }
    }

    /// The resident shell back, if it reported the job's end and is still there.
    fn into_resident(self) -> Option<Resident> {
        match self {
            Running::Resident(mut job) if matches!(job.ended, Some(Some(_))) => {
                matches!(job.shell.child.try_wait(), Ok(None)).then_some(job.shell)
            }
            _ => None,
        }
    }
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
        let script = render_script(commands, self.bash, &job.workdir);
        let env = job_env(job, extra_env);
        let started = match self.start_resident(job, &script, &env).await {
            Some(s) => Ok(s),
            None => self
                .start_cold(job, &script, &env, tag)
                .map(|(child, reader)| (Running::Cold(child), reader)),
        };
        let (mut running, reader) = match started {
            Ok(x) => x,
            Err(e) => return Ended::SpawnFailed(e),
        };
        let pgid = running.pgid();
        // The output is read here, on the runtime, as it comes (no thread per job).
        let mut out = match Output::new(reader) {
            Ok(o) => o,
            Err(e) => {
                if let Some(pgid) = pgid {
                    kill_group(pgid, libc::SIGKILL);
                }
                running.wait().await;
                self.give_back(&job.workdir, running);
                return Ended::SpawnFailed(format!("cannot read the job's output: {e}"));
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let ended = loop {
            tokio::select! {
                status = running.wait() => break Ended::Exited(status),
                _ = &mut deadline => break Ended::TimedOut,
                _ = cancel.cancelled() => break Ended::Canceled,
                _ = out.pump(log), if !out.eof => {}
            }
        };
        if matches!(
            (&ended, &running),
            (Ended::Exited(None), Running::Resident(_))
        ) {
            log.system(
                "ERROR: the workspace's resident shell ended before the job did (in a job, \
                 `$$` is that shell, `$BASHPID` the job's own: was it `kill $$`?); the job's \
                 exit status is unknown",
            );
        }
        // Stop the whole group: what the job left running, or everything on timeout/cancel.
        if let Some(pgid) = pgid {
            kill_group(pgid, libc::SIGTERM);
            if !matches!(ended, Ended::Exited(_)) {
                let grace = tokio::time::sleep(KILL_GRACE);
                tokio::pin!(grace);
                let exited = loop {
                    tokio::select! {
                        _ = running.wait() => break true,
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
        running.wait().await;
        // What is still in the pipe; a stray process holding it open is not waited for.
        let _ = tokio::time::timeout(DRAIN_LIMIT, async {
            while !out.eof {
                out.pump(log).await;
            }
        })
        .await;
        self.give_back(&job.workdir, running);
        ended
    }
}

/// Where a shell finds its script.
enum Script<'a> {
    Inline(&'a str),
    File(&'a Path),
}

/// The job's environment: the machine's (PATH, HOME...) under the job's variables (later
/// ones win), as a shell runner gives it.
fn job_env(job: &JobSpec, extra_env: &[(&str, &str)]) -> Env {
    let mut env: Env = std::env::vars_os().collect();
    for (k, v) in &job.variables {
        env.insert(k.into(), v.into());
    }
    for (k, v) in extra_env {
        env.insert(k.into(), v.into());
    }
    env
}

/// Whether `key` can be given to a running bash with `export`/`unset` and mean what it
/// would mean in its environment from the start: a plain name, and not one bash reads
/// only when it starts, keeps read-only, or computes.
fn exportable(key: &str) -> bool {
    let mut chars = key.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    plain
        && !key.starts_with("BASH")
        && !matches!(
            key,
            "SHELLOPTS"
                | "POSIXLY_CORRECT"
                | "ENV"
                | "IFS"
                | "PS4"
                | "UID"
                | "EUID"
                | "PPID"
                | "SHLVL"
                | "PWD"
                | "OLDPWD"
                | "GROUPS"
                | "RANDOM"
                | "SRANDOM"
                | "SECONDS"
                | "LINENO"
                | "EPOCHSECONDS"
                | "EPOCHREALTIME"
                | "HISTCMD"
                | "FUNCNAME"
                | "DIRSTACK"
                | "PIPESTATUS"
                | "OPTIND"
                | "OPTARG"
        )
}

/// The lines that turn a shell started with `base` into one with `want`, or `None` when
/// a difference cannot be made that way.
fn env_script(base: &Env, want: &Env) -> Option<String> {
    let mut out = String::new();
    for (k, v) in want {
        if base.get(k) != Some(v) {
            let (k, v) = (k.to_str()?, v.to_str()?);
            if !exportable(k) {
                return None;
            }
            out.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
    }
    for k in base.keys() {
        if !want.contains_key(k) {
            let k = k.to_str()?;
            if !exportable(k) {
                return None;
            }
            out.push_str(&format!("unset {k}\n"));
        }
    }
    Some(out)
}

/// Start `shell` on `script` in `workdir`, in a process group of its own, stdout and
/// stderr on one pipe (whose read end is returned).
fn spawn_shell(
    shell: &Path,
    bash: bool,
    workdir: &Path,
    script: Script<'_>,
    env: &Env,
) -> std::io::Result<(tokio::process::Child, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe()?;
    let writer2 = writer.try_clone()?;
    let mut cmd = Command::new(shell);
    if bash {
        cmd.arg("--noprofile").arg("--norc");
    }
    let stdin = match script {
        Script::Inline(text) => {
            cmd.arg("-c").arg(text).arg(shell);
            Stdio::null()
        }
        Script::File(path) => {
            cmd.arg(path);
            Stdio::null()
        }
    };
    if workdir.is_dir() {
        cmd.current_dir(workdir);
    }
    cmd.env_clear()
        .envs(env)
        .stdin(stdin)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    // `cmd` holds the parent's copies of the pipe's write end; it is dropped here, so the
    // reader sees end-of-file when the job's processes are gone.
    Ok((child, reader))
}

impl Residents {
    /// Start a resident shell for `workdir` (none when it cannot start, or when no job
    /// may come for it any more: the next job then starts a shell of its own).
    fn start(&self, shell: &Path, workdir: &Path) -> Option<Resident> {
        let env = self.env.lock().ok().and_then(|e| e.clone())?;
        let mut cmd = Command::new(shell);
        cmd.arg("--noprofile")
            .arg("--norc")
            .arg("-c")
            .arg(RESIDENT_LOOP)
            .arg(shell);
        // Started before its workspace may exist: each job's script starts with a `cd`.
        if workdir.is_dir() {
            cmd.current_dir(workdir);
        }
        cmd.env_clear()
            .envs(env.as_ref())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // bash's job notices ("Done", "Terminated"); the jobs' own output has its pipe.
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // A session of its own, with no controlling terminal: jobs run as a CI runner's
        // do (a job opening /dev/tty gets an error instead of being stopped by the
        // terminal), and a Ctrl-C at the terminal reaches Slipway only, which cancels.
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().ok()?;
        let control = child.stdin.take()?;
        let reports = tokio::io::BufReader::new(child.stdout.take()?);
        // Dropped here, it is killed.
        (!self.closing.load(Ordering::Acquire)).then_some(Resident {
            child,
            control,
            reports,
            env,
        })
    }
}

impl ShellExecutor {
    /// A new shell for the script: on the command line (`bash -c`), so nothing is written
    /// to disk per job and bash parses a string without the reads and seeks a script file
    /// costs it (`$0` is the shell, as when GitLab Runner pipes the script to bash); in a
    /// file when too long for one argument or for what the environment leaves.
    fn start_cold(
        &self,
        job: &JobSpec,
        script: &str,
        env: &Env,
        tag: &str,
    ) -> Result<(tokio::process::Child, std::io::PipeReader), String> {
        let script_path = self.scripts_dir.join(format!("{tag}.sh"));
        let mut spawned = Err(std::io::Error::from_raw_os_error(libc::E2BIG));
        if script.len() <= MAX_INLINE_SCRIPT {
            spawned = spawn_shell(
                &self.shell,
                self.bash,
                &job.workdir,
                Script::Inline(script),
                env,
            );
        }
        if spawned
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::E2BIG))
        {
            std::fs::create_dir_all(&self.scripts_dir)
                .and_then(|_| std::fs::write(&script_path, script))
                .map_err(|e| {
                    format!("cannot write the job script {}: {e}", script_path.display())
                })?;
            spawned = spawn_shell(
                &self.shell,
                self.bash,
                &job.workdir,
                Script::File(&script_path),
                env,
            );
        }
        spawned.map_err(|e| format!("cannot start {}: {e}", self.shell.display()))
    }

    /// The job started in a subshell of its workspace's resident shell, when there is
    /// one and the variables can be given that way (`None`: start a new shell).
    async fn start_resident(
        &self,
        job: &JobSpec,
        script: &str,
        env: &Env,
    ) -> Option<(Running, std::io::PipeReader)> {
        use std::os::fd::AsRawFd;
        use tokio::io::AsyncBufReadExt;
        let slot = {
            let mut idle = self.residents.idle.lock().ok()?;
            let slot = idle.remove(&job.workdir);
            if self.residents.closing.load(Ordering::Acquire) {
                // No other job is to come: the other workspaces' shells go.
                idle.clear();
            }
            slot?
        };
        let mut shell = match slot {
            Slot::Ready(shell) => *shell,
            Slot::Starting(handle) => handle.await.ok()??,
        };
        if !matches!(shell.child.try_wait(), Ok(None)) {
            return None;
        }
        let Some(mut text) = env_script(&shell.env, env) else {
            self.put_back(&job.workdir, shell);
            return None;
        };
        text.push_str(script);
        let (output, output_w) = std::io::pipe().ok()?;
        let (script_r, script_w) = std::io::pipe().ok()?;
        let request = format!(
            "{} {} {}\n",
            std::process::id(),
            output_w.as_raw_fd(),
            script_r.as_raw_fd()
        );
        // A shell that went away (an error here) is dropped; the job starts a new one.
        shell.control.write_all(request.as_bytes()).await.ok()?;
        // Written aside: a script longer than the pipe holds is read while it is written.
        let mut sender =
            tokio::net::unix::pipe::Sender::from_owned_fd(std::os::fd::OwnedFd::from(script_w))
                .ok()?;
        tokio::spawn(async move {
            let _ = sender.write_all(text.as_bytes()).await;
        });
        let mut line = String::new();
        while !line.ends_with('\n') {
            if shell.reports.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
        }
        let pid = line.trim_end().strip_prefix("P ")?.parse().ok()?;
        let job = ResidentJob {
            shell,
            pid,
            pipes: Some((output_w, script_r)),
            ended: None,
            line: String::new(),
        };
        Some((Running::Resident(job), output))
    }

    /// A job's shell ended: a resident one waits for the workspace's next job.
    fn give_back(&self, workdir: &Path, running: Running) {
        if let Some(shell) = running.into_resident() {
            self.put_back(workdir, shell);
        }
    }

    fn put_back(&self, workdir: &Path, shell: Resident) {
        if self.residents.closing.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut idle) = self.residents.idle.lock() {
            idle.insert(workdir.to_path_buf(), Slot::Ready(Box::new(shell)));
        }
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
    fn expect_jobs(&self, workdirs: &[PathBuf], shared: &[(String, String)]) {
        if !self.bash {
            // The resident loop is bash's.
            return;
        }
        let mut env: Env = std::env::vars_os().collect();
        for (k, v) in shared {
            env.insert(k.into(), v.into());
        }
        if let Ok(mut w) = self.residents.env.lock() {
            *w = Some(Arc::new(env));
        }
        self.residents.closing.store(false, Ordering::Release);
        for dir in workdirs {
            // Started on a blocking thread: spawning waits for the new process's exec.
            let slot = match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let (residents, shell, dir) =
                        (self.residents.clone(), self.shell.clone(), dir.clone());
                    Slot::Starting(rt.spawn_blocking(move || residents.start(&shell, &dir)))
                }
                Err(_) => match self.residents.start(&self.shell, dir) {
                    Some(shell) => Slot::Ready(Box::new(shell)),
                    None => continue,
                },
            };
            if let Ok(mut idle) = self.residents.idle.lock() {
                // One it replaces (from an earlier run) is killed.
                idle.insert(dir.clone(), slot);
            }
        }
    }

    fn no_more_jobs(&self) {
        // Those still idle stay for a job that comes anyway (the last one is started
        // after this); each goes when its job ends, the rest with the executor.
        self.residents.closing.store(true, Ordering::Release);
    }

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
