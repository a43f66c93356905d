//! The real `slipway server` binary as a child process for the tests, on SQLite or on a
//! fresh PostgreSQL database (`SLIPWAY_TEST_POSTGRES_URL`; `SLIPWAY_REQUIRE_POSTGRES=1`
//! makes a missing one a failure), and the `slipway` CLI run against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sqlx::Connection;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_slipway");
pub const ADMIN_PASSWORD: &str = "admin-password-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("SLIPWAY_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("SLIPWAY_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("SLIPWAY_REQUIRE_POSTGRES=1 but SLIPWAY_TEST_POSTGRES_URL is not set");
            }
            None
        }
    }
}

fn with_database(url: &str, db: &str) -> String {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A fresh database for `backend`: `None` for SQLite, the URL for PostgreSQL.
pub async fn database(backend: Backend) -> Option<Option<String>> {
    match backend {
        Backend::Sqlite => Some(None),
        Backend::Postgres => {
            let admin = postgres_admin_url()?;
            let name = format!(
                "slipway_cli_{}",
                std::process::id() as u64 * 1000 + rand_suffix()
            );
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
            Some(Some(with_database(&admin, &name)))
        }
    }
}

fn rand_suffix() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::from(t.subsec_nanos() % 1000)
}

/// A running `slipway server`.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
    pub database: Option<String>,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts the server on a free port and waits until it answers.
    pub fn start(data: &Path, database: Option<&str>, extra: &[&str]) -> ServerProcess {
        ServerProcess::start_with_env(data, database, extra, &[])
    }

    /// [`ServerProcess::start`] with extra environment variables.
    pub fn start_with_env(
        data: &Path,
        database: Option<&str>,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> ServerProcess {
        let log = data.with_extension("log");
        let mut cmd = Command::new(BIN);
        cmd.envs(envs.iter().copied());
        cmd.args(["server", "--listen", "127.0.0.1:0", "--executor", "shell"])
            .arg("--data")
            .arg(data)
            .args(if extra.contains(&"--concurrency") {
                &[][..]
            } else {
                &["--concurrency", "4"][..]
            })
            .args(extra)
            .env("SLIPWAY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("SLIPWAY_LOG", "info")
            .env_remove("SLIPWAY_DATABASE_URL")
            .env_remove("SLIPWAY_SECRET_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(db) = database {
            cmd.arg("--database").arg(db);
        }
        let mut child = cmd.spawn().expect("start slipway server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log2)
                .unwrap();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if !sent {
                    if let Some(url) = line.strip_prefix("Slipway server listening on ") {
                        let _ = tx.send(url.trim().to_string());
                        sent = true;
                    }
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "the server did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        ServerProcess {
            child,
            url,
            data: data.to_path_buf(),
            database: database.map(str::to_string),
            log,
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `slipway ARGS` against `server` with the saved login in `config`.
pub fn cli(config: &Path, server: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("SLIPWAY_SERVER", server)
        .env_remove("SLIPWAY_TOKEN")
        .output()
        .expect("run slipway")
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

/// Signs in as the administrator (the token is saved under `config`).
pub fn login(config: &Path, server: &str) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["login", "--username", "admin", "--password-stdin"])
        .env("XDG_CONFIG_HOME", config)
        .env("SLIPWAY_SERVER", server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{ADMIN_PASSWORD}\n").as_bytes())
        .unwrap();
    ok(&child.wait_with_output().unwrap());
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .env_remove("GIT_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository and a clone of it with `files` committed and pushed on `main`.
pub fn repos(root: &Path, name: &str, files: &[(&str, &str)]) -> (PathBuf, PathBuf) {
    let bare = root.join(format!("{name}.git"));
    let work = root.join(format!("{name}-work"));
    std::fs::create_dir_all(&bare).unwrap();
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    commit(&work, files, "initial");
    git(&work, &["push", "--quiet", "origin", "main"]);
    (bare, work)
}

pub fn commit(work: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (rel, text) in files {
        let p = work.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "--quiet", "--allow-empty", "-m", message]);
    git(work, &["rev-parse", "HEAD"])
}

/// Polls `f` until it returns `Some`, up to `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A personal API token for `user`, made as the UI makes one: sign in, then create it
/// with the session (both must succeed).
pub async fn api_token(url: &str, user: &str, password: &str, name: &str) -> String {
    let anon = slipway_server::client::Client::new(url, None).unwrap();
    let r = anon
        .post_json(
            "/api/v1/session",
            &serde_json::json!({"username": user, "password": password}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = r.json()["csrf_token"].as_str().unwrap().to_string();
    let r = anon
        .send(
            "POST",
            "/api/v1/user/tokens",
            Some((
                "application/json",
                serde_json::json!({ "name": name }).to_string().into_bytes(),
            )),
            &[("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

/// The example shop's pipeline at `version`: a build whose artifact is the shop binary
/// (`$SHOP_BIN`) and its version, deployed to `production` (2 instances, blue-green,
/// v1 kept warm 10 min, health checked every 100 ms).
pub fn shop_blue_green_pipeline(version: &str) -> String {
    format!(
        r#"
stages: [build, deploy]
variables:
  VERSION: "{version}"
build:
  stage: build
  script: [cp "$SHOP_BIN" shop, echo "$VERSION" > version.txt]
  artifacts: {{ paths: [shop, version.txt] }}
deploy:
  stage: deploy
  script: [echo deploying]
  environment: production
.slipway:
  environments:
    production:
      process: {{ command: ./shop, instances: 2 }}
      strategy: {{ blue-green: {{ keep_warm: 10m }} }}
      health_check: {{ path: /healthz, interval: 100ms }}
"#
    )
}
