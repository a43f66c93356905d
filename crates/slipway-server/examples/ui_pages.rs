//! How long the web pages take to render from the store, over real HTTP on an in-process
//! server (SQLite in a temporary directory): a project with PIPELINES pipelines of 30
//! jobs (24 of them in one stage, with `needs`) on five branches, a job with a
//! 5,000-line coloured log with sections; each page fetched ROUNDS times one after the
//! other. Beside them: the API's JSON list of the same 30 pipelines (which reads no
//! jobs), and the list page of a project with a single pipeline, so a page whose time
//! grew with its rows (one query per row) would show.
//!
//! usage: ui_pages [PIPELINES] [ROUNDS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use slipway_server::app::ServerConfig;
use slipway_server::client::Client;
use slipway_server::pipelines::{self, Origin};
use slipway_server::request::{PipelineRequest, PipelineSource};
use slipway_server::server::{self, FirstAdminOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench-admin-password";

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// 30 manual jobs (nothing runs while the pages are measured).
const PIPELINE: &str = r#"
stages: [build, test, report, deploy]
.manual: &manual
  script: [echo]
  when: manual
build: {stage: build, <<: *manual}
lint: {stage: build, <<: *manual}
unit: {stage: test, parallel: 24, needs: [build], <<: *manual}
report: {stage: report, needs: [unit], <<: *manual}
package: {stage: report, <<: *manual}
deploy: {stage: deploy, <<: *manual}
staging: {stage: deploy, <<: *manual}
"#;

fn repo(dir: &Path, name: &str, branches: usize) -> std::path::PathBuf {
    let bare = dir.join(format!("{name}.git"));
    let work = dir.join(format!("{name}-work"));
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    git(&bare, &["init", "-q", "--bare", "--initial-branch=main"]);
    git(&work, &["init", "-q", "--initial-branch=main"]);
    std::fs::write(work.join(".gitlab-ci.yml"), PIPELINE).unwrap();
    git(&work, &["add", "-A"]);
    git(
        &work,
        &[
            "commit",
            "-q",
            "-m",
            "A pipeline of thirty jobs for the pages",
        ],
    );
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    for b in 1..branches {
        git(
            &work,
            &[
                "push",
                "-q",
                bare.to_str().unwrap(),
                &format!("main:feature-{b}"),
            ],
        );
    }
    bare
}

fn log_text(lines: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..lines {
        if i % 500 == 0 {
            s.push_str(&format!(
                "\x1b[0Ksection_start:{}:step_{i}[collapsed={}]\r\x1b[0K\x1b[36;1mStep {i}\x1b[0m\n",
                1_700_000_000 + i,
                i % 1000 == 0
            ));
        }
        s.push_str(&format!(
            "\x1b[32m[ok]\x1b[0m compiling module {i} of {lines} \x1b[2m(0.{:03}s)\x1b[0m\n",
            i % 1000
        ));
        if i % 500 == 499 {
            s.push_str(&format!(
                "\x1b[0Ksection_end:{}:step_{}\r\x1b[0K\n",
                1_700_000_000 + i + 30,
                i - 499
            ));
        }
    }
    s.into_bytes()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path().join("data"));
        config.listen = "127.0.0.1:0".into();
        let started = server::start(
            config,
            FirstAdminOptions {
                username: "admin".into(),
                password: Some(PASSWORD.into()),
            },
        )
        .await
        .unwrap();
        let app = started.app.clone();
        let url = format!("http://{}", started.addr);
        tokio::spawn(started.serve(std::future::pending()));
        let admin = app.store.user_by_name("admin").await.unwrap().unwrap();
        let (token, _) = app
            .store
            .create_api_token(
                &slipway_db::Actor::user(&admin),
                admin.id,
                "bench",
                &[slipway_db::TokenScope::Api],
                None,
            )
            .await
            .unwrap();
        let api = Client::new(&url, Some(token.expose().to_string())).unwrap();
        for (name, branches) in [("app", 5), ("small", 1)] {
            let path = repo(dir.path(), name, branches);
            let r = api
                .post_json(
                    "/api/v1/projects",
                    &json!({"name": name, "repository": path.display().to_string(), "poll_interval_secs": 0}),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 201, "{}", r.text());
        }
        let seeded = Instant::now();
        let app_project = app.store.project_by_name("app").await.unwrap().unwrap();
        let small = app.store.project_by_name("small").await.unwrap().unwrap();
        let mut last = None;
        for i in 0..n {
            let branch = if i % 5 == 0 { "main".to_string() } else { format!("feature-{}", i % 5) };
            let req = PipelineRequest::new(PipelineSource::Web, branch, false);
            let created = pipelines::create(&app, &app_project, req, Origin::user(&admin))
                .await
                .unwrap();
            match created {
                pipelines::Created::Pipeline(p, jobs) if jobs.len() == 30 => {
                    last = Some((p.iid, jobs[0].id))
                }
                other => panic!("expected a pipeline of 30 jobs: {other:?}"),
            }
        }
        pipelines::create(
            &app,
            &small,
            PipelineRequest::new(PipelineSource::Web, "main", false),
            Origin::user(&admin),
        )
        .await
        .unwrap();
        let (iid, job) = last.expect("pipelines were created");
        app.store.append_log(job, &log_text(5_000)).await.unwrap();
        eprintln!("seeded {n} pipelines of 30 jobs in {:?}", seeded.elapsed());

        let (session, _, _) = app
            .store
            .login("admin", PASSWORD, Duration::from_secs(3600), "bench")
            .await
            .unwrap()
            .unwrap();
        let cookie = format!("slipway_session={}", session.expose());
        let browser = Client::new(&url, None).unwrap();
        let pages = [
            ("projects list", "/projects".to_string(), true),
            ("project overview (5 branches)", "/projects/app".to_string(), true),
            ("pipelines list (30 of them)", "/projects/app/pipelines".to_string(), true),
            ("pipelines list, 1 pipeline", "/projects/small/pipelines".to_string(), true),
            ("pipeline page (30 jobs, 25 needs)", format!("/projects/app/pipelines/{iid}"), true),
            ("job page (5,000-line log)", format!("/projects/app/jobs/{job}"), true),
            ("API: JSON list of 30 pipelines", "/api/v1/projects/app/pipelines?limit=30".to_string(), false),
        ];
        println!("| page | p50 | p99 | bytes |");
        println!("| --- | --- | --- | --- |");
        for (label, path, html) in pages {
            let mut times = Vec::with_capacity(rounds);
            let mut bytes = 0;
            for i in 0..rounds + 20 {
                let t = Instant::now();
                let r = if html {
                    browser.send("GET", &path, None, &[("cookie", &cookie)]).await.unwrap()
                } else {
                    api.get(&path).await.unwrap()
                };
                let d = t.elapsed();
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                bytes = r.body.len();
                if i >= 20 {
                    times.push(d);
                }
            }
            times.sort();
            println!(
                "| {label} | {:.2} ms | {:.2} ms | {} |",
                percentile(&times, 0.5).as_secs_f64() * 1000.0,
                percentile(&times, 0.99).as_secs_f64() * 1000.0,
                bytes
            );
        }
        app.shutdown.cancel();
    });
}
