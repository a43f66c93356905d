//! The `process` target: each instance of a release is `sh -c COMMAND` run in the
//! extracted artifact with `$PORT` set to a free port that Slipway picked, in its own
//! process group, stdout and stderr appended to a log file. A crashed instance is started
//! again (same port, so the route table stays valid) after an exponential backoff; a stop
//! sends SIGTERM to the group, then SIGKILL after the grace period.
//!
//! Crash safety: every running instance has a PID file (pid, process start time, port).
//! The instances outlive a supervisor killed with `kill -9` (they are in their own
//! groups), so [`ProcessTarget::reclaim`] on the next start stops every group whose
//! leader still has the recorded start time (a recycled pid is left alone) and removes
//! the files. Nothing therefore keeps serving an old version unseen: the engine starts
//! what its record says should serve, from scratch.

use crate::target::{
    BoxFuture, DeploymentTarget, InstanceState, InstanceStatus, Reclaimed, ReleaseSpec,
    StartedInstance, TargetError, TargetEvent,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The machine variables an instance inherits; nothing else from Slipway's own
/// environment (which may hold its keys) reaches the release.
const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR"];
/// First and longest wait before restarting a crashed instance.
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An instance that ran this long before crashing starts again with the shortest backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

type Key = (String, String, u32);

struct Supervised {
    addr: SocketAddr,
    stop: CancellationToken,
    done: tokio::sync::watch::Receiver<bool>,
    status: Arc<Mutex<InstanceStatus>>,
}

/// Supervised local processes; state (PID files, logs) under one directory.
pub struct ProcessTarget {
    pid_dir: PathBuf,
    log_dir: PathBuf,
    instances: Mutex<HashMap<Key, Supervised>>,
    events: broadcast::Sender<TargetEvent>,
}

/// What a PID file holds.
#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: u32,
    /// Field 22 of `/proc/PID/stat`: tells a recycled pid from ours.
    start_time: Option<u64>,
    environment: String,
    release: String,
    index: u32,
    port: u16,
}

impl ProcessTarget {
    /// PID files go to `STATE/pids`, logs to `STATE/logs/ENV/RELEASE/INDEX.log`.
    pub fn new(state_dir: &Path) -> Result<ProcessTarget, TargetError> {
        let pid_dir = state_dir.join("pids");
        let log_dir = state_dir.join("logs");
        for d in [&pid_dir, &log_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| TargetError(format!("cannot create {}: {e}", d.display())))?;
        }
        let (events, _) = broadcast::channel(256);
        Ok(ProcessTarget {
            pid_dir,
            log_dir,
            instances: Mutex::new(HashMap::new()),
            events,
        })
    }

    /// The log file of one instance.
    pub fn log_path(&self, environment: &str, release: &str, index: u32) -> PathBuf {
        self.log_dir
            .join(safe_name(environment))
            .join(safe_name(release))
            .join(format!("{index}.log"))
    }

    fn pid_path(&self, environment: &str, release: &str, index: u32) -> PathBuf {
        self.pid_dir.join(format!(
            "{}--{}--{index}.json",
            safe_name(environment),
            safe_name(release)
        ))
    }

    fn start_one(&self, spec: &ReleaseSpec, index: u32) -> Result<StartedInstance, TargetError> {
        let key = (spec.environment.clone(), spec.release.clone(), index);
        let mut map = self.lock();
        if let Some(s) = map.get(&key) {
            if !*s.done.borrow() {
                return Ok(StartedInstance {
                    index,
                    addr: s.addr,
                });
            }
        }
        if !spec.artifact_dir.is_dir() {
            return Err(TargetError(format!(
                "the artifact directory {} does not exist",
                spec.artifact_dir.display()
            )));
        }
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log_path = self.log_path(&spec.environment, &spec.release, index);
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| TargetError(format!("cannot create {}: {e}", parent.display())))?;
        }
        let status = Arc::new(Mutex::new(InstanceStatus {
            index,
            addr,
            pid: None,
            state: InstanceState::Running,
            restarts: 0,
            last_exit: None,
        }));
        let stop = CancellationToken::new();
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let sup = Supervisor {
            spec: spec.clone(),
            index,
            port,
            log_path,
            pid_path: self.pid_path(&spec.environment, &spec.release, index),
            status: status.clone(),
            stop: stop.clone(),
            events: self.events.clone(),
        };
        // The first spawn happens here, so a command that cannot start is an error now.
        let child = sup.spawn()?;
        tokio::spawn(async move {
            sup.run(child).await;
            let _ = done_tx.send(true);
        });
        map.insert(
            key,
            Supervised {
                addr,
                stop,
                done: done_rx,
                status,
            },
        );
        Ok(StartedInstance { index, addr })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Supervised>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop every instance this target supervises (the engine's shutdown).
    pub async fn stop_all(&self) {
        let keys: Vec<Key> = self.lock().keys().cloned().collect();
        let mut waits = Vec::new();
        for (env, rel, idx) in keys {
            waits.push(async move { self.stop(&env, &rel, &[idx]).await });
        }
        for w in waits {
            w.await;
        }
    }

    fn reclaim_sync(&self) -> Vec<Reclaimed> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.pid_dir) else {
            return out;
        };
        let mut groups = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let parsed: Option<PidFile> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(p) = parsed {
                let ours = p.start_time.is_some() && process_start_time(p.pid) == p.start_time;
                if ours {
                    kill_group(p.pid as i32, libc::SIGTERM);
                    groups.push(p);
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        // Give them a moment to exit on SIGTERM, then make sure.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && groups.iter().any(|p| group_alive(p.pid as i32)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in groups {
            kill_group(p.pid as i32, libc::SIGKILL);
            out.push(Reclaimed {
                environment: p.environment,
                release: p.release,
                index: p.index,
                pid: p.pid,
            });
        }
        out
    }
}

impl DeploymentTarget for ProcessTarget {
    fn start<'a>(
        &'a self,
        release: &'a ReleaseSpec,
        indices: &'a [u32],
    ) -> BoxFuture<'a, Result<Vec<StartedInstance>, TargetError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for &i in indices {
                out.push(self.start_one(release, i)?);
            }
            Ok(out)
        })
    }

    fn stop<'a>(
        &'a self,
        environment: &'a str,
        release: &'a str,
        indices: &'a [u32],
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut waits = Vec::new();
            {
                let map = self.lock();
                for &i in indices {
                    if let Some(s) = map.get(&(environment.to_string(), release.to_string(), i)) {
                        s.stop.cancel();
                        waits.push(s.done.clone());
                    }
                }
            }
            for mut w in waits {
                let _ = w.wait_for(|d| *d).await;
            }
            let mut map = self.lock();
            for &i in indices {
                map.remove(&(environment.to_string(), release.to_string(), i));
            }
        })
    }

    fn status(&self, environment: &str, release: &str) -> Vec<InstanceStatus> {
        let map = self.lock();
        let mut out: Vec<InstanceStatus> = map
            .iter()
            .filter(|((e, r, _), _)| e == environment && r == release)
            .map(|(_, s)| s.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        out.sort_by_key(|s| s.index);
        out
    }

    fn subscribe(&self) -> broadcast::Receiver<TargetEvent> {
        self.events.subscribe()
    }

    fn reclaim(&self) -> BoxFuture<'_, Vec<Reclaimed>> {
        Box::pin(async move { self.reclaim_sync() })
    }
}

struct Supervisor {
    spec: ReleaseSpec,
    index: u32,
    port: u16,
    log_path: PathBuf,
    pid_path: PathBuf,
    status: Arc<Mutex<InstanceStatus>>,
    stop: CancellationToken,
    events: broadcast::Sender<TargetEvent>,
}

impl Supervisor {
    fn set_status(&self, f: impl FnOnce(&mut InstanceStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn spawn(&self) -> Result<tokio::process::Child, TargetError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| TargetError(format!("cannot open {}: {e}", self.log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| TargetError(format!("cannot open {}: {e}", self.log_path.display())))?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&self.spec.command)
            .current_dir(&self.spec.artifact_dir)
            .env_clear()
            .stdin(Stdio::null())
            // Straight into the file: an instance orphaned by a supervisor crash still
            // logs, and no pipe can fill up and block it.
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(false);
        for k in INHERITED {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &self.spec.variables {
            cmd.env(k, v);
        }
        cmd.env("PORT", self.port.to_string())
            .env("SLIPWAY_ENVIRONMENT", &self.spec.environment)
            .env("SLIPWAY_RELEASE", &self.spec.release)
            .env("SLIPWAY_INSTANCE", self.index.to_string());
        let child = cmd.spawn().map_err(|e| {
            TargetError(format!(
                "cannot start `{}` in {}: {e}",
                self.spec.command,
                self.spec.artifact_dir.display()
            ))
        })?;
        if let Some(pid) = child.id() {
            let record = PidFile {
                pid,
                start_time: process_start_time(pid),
                environment: self.spec.environment.clone(),
                release: self.spec.release.clone(),
                index: self.index,
                port: self.port,
            };
            if let Err(e) = write_atomic(
                &self.pid_path,
                &serde_json::to_vec(&record).unwrap_or_default(),
            ) {
                // Without its PID file the instance could outlive a crash unseen: refuse.
                kill_group(pid as i32, libc::SIGKILL);
                return Err(TargetError(format!(
                    "cannot write {}: {e}",
                    self.pid_path.display()
                )));
            }
            self.set_status(|s| {
                s.pid = Some(pid);
                s.state = InstanceState::Running;
            });
        }
        Ok(child)
    }

    async fn run(self, mut child: tokio::process::Child) {
        let mut backoff = BACKOFF_START;
        loop {
            let started = Instant::now();
            let pgid = child.id().map(|p| p as i32);
            let exited = tokio::select! {
                s = child.wait() => Some(s.ok().and_then(|s| exit_code(&s))),
                _ = self.stop.cancelled() => None,
            };
            match exited {
                None => {
                    if let Some(pgid) = pgid {
                        kill_group(pgid, libc::SIGTERM);
                        if tokio::time::timeout(self.spec.stop_grace, child.wait())
                            .await
                            .is_err()
                        {
                            kill_group(pgid, libc::SIGKILL);
                        }
                        // Whatever else the group started goes too.
                        kill_group(pgid, libc::SIGKILL);
                    }
                    let _ = child.wait().await;
                    let _ = std::fs::remove_file(&self.pid_path);
                    self.set_status(|s| {
                        s.state = InstanceState::Stopped;
                        s.pid = None;
                    });
                    return;
                }
                Some(code) => {
                    if let Some(pgid) = pgid {
                        // Children left behind would hold the port against the restart.
                        kill_group(pgid, libc::SIGKILL);
                    }
                    let _ = std::fs::remove_file(&self.pid_path);
                    self.set_status(|s| {
                        s.state = InstanceState::Restarting;
                        s.pid = None;
                        s.last_exit = code;
                    });
                    let _ = self.events.send(TargetEvent::Exited {
                        environment: self.spec.environment.clone(),
                        release: self.spec.release.clone(),
                        index: self.index,
                        code,
                    });
                    if started.elapsed() >= STABLE_AFTER {
                        backoff = BACKOFF_START;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.cancelled() => {
                            self.set_status(|s| s.state = InstanceState::Stopped);
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    loop {
                        match self.spawn() {
                            Ok(c) => {
                                child = c;
                                break;
                            }
                            Err(_) => {
                                tokio::select! {
                                    _ = tokio::time::sleep(backoff) => {}
                                    _ = self.stop.cancelled() => {
                                        self.set_status(|s| s.state = InstanceState::Stopped);
                                        return;
                                    }
                                }
                                backoff = (backoff * 2).min(BACKOFF_MAX);
                            }
                        }
                    }
                    self.set_status(|s| s.restarts += 1);
                }
            }
        }
    }
}

/// A port nothing listens on now (the kernel's choice). The instance binds it a moment
/// later; a crash restart reuses it.
fn free_port() -> Result<u16, TargetError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| TargetError(format!("cannot find a free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| TargetError(format!("cannot find a free port: {e}")))
}

/// Names safe as file names: anything outside `[A-Za-z0-9._-]` becomes `_`.
fn safe_name(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '.') {
        format!("_{out}")
    } else {
        out
    }
}

/// Write a file so a crash leaves either the old or the new content: temporary file,
/// fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The start time of a process in clock ticks since boot (`/proc/PID/stat` field 22).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn kill_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group this target created;
        // it has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pgid > 0 && unsafe { libc::kill(-pgid, 0) } == 0
}

fn exit_code(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_start_times() {
        assert_eq!(safe_name("review/feat-1"), "review_feat-1");
        assert_eq!(safe_name(".."), "_..");
        assert_eq!(safe_name(""), "_");
        let me = std::process::id();
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(me), process_start_time(me));
    }
}
