//! Pipelines end to end on a real server: real `git push` through the installed
//! post-receive hook, jobs run by the shell executor, artifacts and dotenv between jobs,
//! masked secrets, logs read back over HTTP and as server-sent events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use common::TestRepo;
use harness::{Backend, Harness};
use serde_json::json;
use slipway_server::client::SseParser;
use slipway_server::hook::HookTarget;

const PIPELINE: &str = r#"
stages: [build, test]
build:
  stage: build
  script:
    - echo "source=$CI_PIPELINE_SOURCE ref=$CI_COMMIT_REF_NAME"
    - mkdir -p out && echo built > out/result.txt
    - echo "VERSION=1.2.3" > build.env
    - echo "token=$DEPLOY_TOKEN"
  artifacts:
    paths: [out/]
    reports:
      dotenv: build.env
test:
  stage: test
  script:
    - cat out/result.txt
    - echo "version=$VERSION"
"#;

/// A bare repository (the project's) with the hook installed, and a clone to push from.
pub async fn pushed_project(h: &Harness, name: &str) -> (TestRepo, TestRepo) {
    let bare = TestRepo::init_bare(&h.dir.path().join(format!("{name}.git")));
    let work = TestRepo::init(&h.dir.path().join(format!("{name}-work")));
    work.git(&["remote", "add", "origin", bare.path.to_str().unwrap()]);
    work.commit(&[("README", "hello\n")], "initial");
    work.git(&["push", "--quiet", "origin", "main"]);
    h.project(name, &bare.path).await;
    let r = h
        .admin
        .post_json(&format!("/api/v1/projects/{name}/hook-token"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    slipway_server::hook::install(
        &bare.path,
        &HookTarget {
            url: v["url"].as_str().unwrap().to_string(),
            token: v["token"].as_str().unwrap().to_string(),
        },
    )
    .unwrap();
    (bare, work)
}

async fn hook_push_runs_the_pipeline(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let (_bare, work) = pushed_project(&h, "app").await;
    let r = h
        .admin
        .json(
            "PUT",
            "/api/v1/projects/app/variables/DEPLOY_TOKEN",
            &json!({"value": "s3cr3t-value-123", "secret": true}),
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    assert!(
        r.json()["value"].is_null(),
        "a secret's value is never returned"
    );

    work.commit(&[(".gitlab-ci.yml", PIPELINE)], "add the pipeline");
    let pushed = std::process::Command::new("git")
        .arg("-C")
        .arg(&work.path)
        .args(["push", "origin", "main"])
        .output()
        .unwrap();
    assert!(pushed.status.success());
    // The hook told the server; no poll is needed (the first poll is a minute away).
    let list = h.wait_pipelines("app", 1).await;
    let id = list[0]["id"].as_i64().unwrap();
    assert_eq!(list[0]["source"], "push");
    assert_eq!(list[0]["ref_name"], "main");
    assert_eq!(list[0]["sha"], work.head());
    let detail = h.wait_pipeline(id).await;
    assert_eq!(detail["pipeline"]["status"], "success", "{detail}");
    assert_eq!(detail["stages"], json!(["build", "test"]));
    assert!(detail["pipeline"]["duration_ms"].as_i64().unwrap() >= 0);

    let build = Harness::job(&detail, "build")["id"].as_i64().unwrap();
    let test = Harness::job(&detail, "test")["id"].as_i64().unwrap();
    let build_log = h.log(build).await;
    assert!(build_log.contains("source=push ref=main"), "{build_log}");
    assert!(build_log.contains("token=[MASKED]"), "{build_log}");
    assert!(!build_log.contains("s3cr3t"), "{build_log}");
    let test_log = h.log(test).await;
    assert!(
        test_log.contains("built"),
        "artifacts reach later jobs: {test_log}"
    );
    assert!(
        test_log.contains("version=1.2.3"),
        "dotenv reaches later jobs: {test_log}"
    );

    // Artifacts: listed, and downloadable as a tar archive.
    let arts = h
        .admin
        .get(&format!("/api/v1/jobs/{build}/artifacts"))
        .await
        .unwrap()
        .json();
    assert_eq!(
        arts["items"][0]["files"][0]["path"], "out/result.txt",
        "{arts}"
    );
    let tar = h
        .admin
        .get(&format!("/api/v1/jobs/{build}/artifacts/archive"))
        .await
        .unwrap();
    assert_eq!(tar.status, 200);
    assert_eq!(tar.header("content-type"), Some("application/x-tar"));
    let tar_path = h.dir.path().join("a.tar");
    std::fs::write(&tar_path, &tar.body).unwrap();
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("out/result.txt"));

    // The log read in pieces with offsets adds up to the whole.
    let first = h
        .admin
        .get(&format!("/api/v1/jobs/{build}/log?offset=0&limit=10"))
        .await
        .unwrap();
    assert_eq!(first.body.len(), 10);
    assert_eq!(first.header("x-log-next-offset"), Some("10"));
    assert_eq!(first.header("x-log-complete"), Some("false"));
    let rest = h
        .admin
        .get(&format!("/api/v1/jobs/{build}/log?offset=10"))
        .await
        .unwrap();
    assert_eq!(rest.header("x-log-complete"), Some("true"));
    assert_eq!(format!("{}{}", first.text(), rest.text()), build_log);

    // The same log as server-sent events, then the end.
    let mut s = h
        .admin
        .stream(&format!("/api/v1/jobs/{build}/log/stream"), &[])
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    let mut parser = SseParser::default();
    let mut text = String::new();
    let mut end = None;
    while end.is_none() {
        let chunk = s.chunk().await.expect("stream ended early").unwrap();
        for ev in parser.push(&chunk) {
            match ev.event.as_str() {
                "log" => text.push_str(&ev.data),
                "end" => end = Some(ev.data),
                other => panic!("unexpected event {other}: {}", ev.data),
            }
        }
    }
    assert_eq!(text, build_log);
    let end: serde_json::Value = serde_json::from_str(&end.unwrap()).unwrap();
    assert_eq!(end["status"], "success");
    assert_eq!(end["size"].as_u64().unwrap() as usize, build_log.len());
    h.stop().await;
}

server_tests!(hook_push_runs_the_pipeline);
