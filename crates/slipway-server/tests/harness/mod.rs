//! A real server for the tests: started in the test process on 127.0.0.1 with a fresh
//! data directory, on SQLite or on a fresh PostgreSQL database (the server named by
//! `SLIPWAY_TEST_POSTGRES_URL`; `SLIPWAY_REQUIRE_POSTGRES=1` makes a missing one a
//! failure), reached over real HTTP with the client the CLI uses.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use slipway_server::app::{AppState, ServerConfig};
use slipway_server::client::Client;
use slipway_server::server::{self, FirstAdminOptions};
use sqlx::Connection;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const ADMIN_PASSWORD: &str = "admin-password-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Harness {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub app: AppState,
    pub url: String,
    /// The first administrator, with an `api` token.
    pub admin: Client,
    serve: tokio::task::JoinHandle<()>,
    pub database_url: Option<String>,
    pg: Option<(String, String)>,
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

/// `postgres://u@h:p/db?x` with the database replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A fresh PostgreSQL database: (its URL, the admin URL, its name).
pub async fn fresh_postgres() -> Option<(String, String, String)> {
    let admin = postgres_admin_url()?;
    let name = format!(
        "slipway_srv_{}",
        &slipway_server::hook::new_token().unwrap()[..16]
    );
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    Some((with_database(&admin, &name), admin, name))
}

pub fn test_config(data: PathBuf) -> ServerConfig {
    let mut c = ServerConfig::new(data);
    c.listen = "127.0.0.1:0".into();
    c.concurrency = 2;
    c.executor = slipway_runner::pipeline::ExecutorChoice::Shell;
    c.tick = Duration::from_millis(100);
    c.heartbeat = Duration::from_millis(500);
    c.lease = Duration::from_secs(20);
    // Deployment notifications retried quickly (the tests' receivers fail on purpose).
    c.notify_retry = slipway_deploy::notify::RetryPolicy {
        attempts: 5,
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        timeout: Duration::from_secs(5),
    };
    c
}

impl Harness {
    /// `None` when PostgreSQL is asked for and not configured.
    pub async fn start(backend: Backend) -> Option<Harness> {
        Harness::start_with(backend, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Option<Harness> {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (database_url, pg) = match backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres => {
                let (url, admin, name) = fresh_postgres().await?;
                (Some(url), Some((admin, name)))
            }
        };
        let mut config = test_config(data.clone());
        config.database_url = database_url.clone();
        configure(&mut config);
        let started = server::start(
            config,
            FirstAdminOptions {
                username: "admin".into(),
                password: Some(ADMIN_PASSWORD.into()),
            },
        )
        .await
        .unwrap();
        let app = started.app.clone();
        let url = format!("http://{}", started.addr);
        let serve = tokio::spawn(started.serve(std::future::pending()));
        let admin_user = app.store.user_by_name("admin").await.unwrap().unwrap();
        let (token, _) = app
            .store
            .create_api_token(
                &slipway_db::Actor::user(&admin_user),
                admin_user.id,
                "tests",
                &[slipway_db::TokenScope::Api],
                None,
            )
            .await
            .unwrap();
        let admin = Client::new(&url, Some(token.expose().to_string())).unwrap();
        Some(Harness {
            backend,
            dir,
            data,
            app,
            url,
            admin,
            serve,
            database_url,
            pg,
        })
    }

    pub fn anonymous(&self) -> Client {
        Client::new(&self.url, None).unwrap()
    }

    /// A new user with a token of `scope`, a member of `project` with `role` when given.
    pub async fn user(&self, name: &str, project: Option<(&str, &str)>, scope: &str) -> Client {
        let r = self
            .admin
            .post_json(
                "/api/v1/users",
                &json!({"username": name, "password": "password-of-someone"}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        if let Some((p, role)) = project {
            let r = self
                .admin
                .json(
                    "PUT",
                    &format!("/api/v1/projects/{p}/members/{name}"),
                    &json!({"role": role}),
                )
                .await
                .unwrap();
            assert!(r.ok(), "{}", r.text());
        }
        let u = self.app.store.user_by_name(name).await.unwrap().unwrap();
        let scopes = match scope {
            "read_api" => vec![slipway_db::TokenScope::ReadApi],
            _ => vec![slipway_db::TokenScope::Api],
        };
        let (token, _) = self
            .app
            .store
            .create_api_token(&slipway_db::Actor::user(&u), u.id, "t", &scopes, None)
            .await
            .unwrap();
        Client::new(&self.url, Some(token.expose().to_string())).unwrap()
    }

    /// Adds a project for the repository at `path`.
    pub async fn project(&self, name: &str, path: &std::path::Path) -> Value {
        let r = self
            .admin
            .post_json(
                "/api/v1/projects",
                &json!({"name": name, "repository": path.display().to_string()}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    }

    /// Waits until pipeline `id` is finished; returns its detail.
    pub async fn wait_pipeline(&self, id: i64) -> Value {
        self.wait_pipeline_status(id, &["success", "failed", "canceled", "skipped"])
            .await
    }

    pub async fn wait_pipeline_status(&self, id: i64, statuses: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self
                .admin
                .get(&format!("/api/v1/pipelines/{id}"))
                .await
                .unwrap();
            let v = r.json();
            let s = v["pipeline"]["status"].as_str().unwrap_or("").to_string();
            if statuses.contains(&s.as_str()) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "pipeline {id} still {s}: {}",
                serde_json::to_string_pretty(&v).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `pred` holds for job `id`.
    pub async fn wait_job(&self, id: i64, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self
                .admin
                .get(&format!("/api/v1/jobs/{id}"))
                .await
                .unwrap()
                .json();
            if pred(&v["job"]) {
                return v["job"].clone();
            }
            assert!(Instant::now() < deadline, "job {id}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pipelines of `project`, newest first.
    pub async fn pipelines(&self, project: &str) -> Vec<Value> {
        let r = self
            .admin
            .get(&format!("/api/v1/projects/{project}/pipelines"))
            .await
            .unwrap();
        assert!(r.ok(), "{}", r.text());
        r.json()["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits for the project to have `n` pipelines; returns them newest first.
    pub async fn wait_pipelines(&self, project: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = self.pipelines(project).await;
            if p.len() >= n {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{project} has {} pipelines, waiting for {n}",
                p.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The job named `name` in a pipeline detail.
    pub fn job<'a>(detail: &'a Value, name: &str) -> &'a Value {
        detail["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("no job {name} in {detail}"))
    }

    pub async fn log(&self, job: i64) -> String {
        let r = self
            .admin
            .get(&format!("/api/v1/jobs/{job}/log"))
            .await
            .unwrap();
        assert!(r.ok(), "{}", r.text());
        r.text()
    }

    pub async fn stop(self) {
        self.app.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.serve).await;
        if let Some((admin, name)) = self.pg {
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await;
            let _ = c.close().await;
        }
    }
}

/// Runs each async test on SQLite and on PostgreSQL (when configured).
#[macro_export]
macro_rules! server_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    if $crate::harness::postgres_admin_url().is_none() {
                        return;
                    }
                    super::$name($crate::harness::Backend::Postgres).await;
                }
            )*
        }
    };
}
