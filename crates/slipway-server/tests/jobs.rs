//! Job execution on a real server: manual jobs played with variables, retries (manual,
//! and automatic as `retry:` allows) as new jobs linked to the old, cancel stopping the
//! job's processes, delayed jobs, the concurrency limit, and `workflow:auto_cancel`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use common::TestRepo;
use harness::{Backend, Harness};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn repo(h: &Harness, name: &str, pipeline: &str) -> TestRepo {
    let r = TestRepo::init(&h.dir.path().join(name));
    r.commit(&[(".gitlab-ci.yml", pipeline)], "pipeline");
    r
}

async fn run(h: &Harness, project: &str, body: Value) -> i64 {
    let r = h
        .admin
        .post_json(&format!("/api/v1/projects/{project}/pipelines"), &body)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["pipeline"]["id"].as_i64().unwrap()
}

async fn detail(h: &Harness, id: i64) -> Value {
    h.admin
        .get(&format!("/api/v1/pipelines/{id}"))
        .await
        .unwrap()
        .json()
}

const MANUAL_AND_RETRY: &str = r#"
stages: [build, deploy]
flaky:
  stage: build
  retry: 2
  script:
    - n=$(cat /tmp/slipway-flaky-$SLIPWAY_TEST_ID 2>/dev/null || echo 0)
    - echo $((n + 1)) > /tmp/slipway-flaky-$SLIPWAY_TEST_ID
    - echo "attempt $((n + 1))"
    - test $n -ge 2
deploy:
  stage: deploy
  when: manual
  script:
    - echo "deploying to $TARGET"
"#;

async fn manual_jobs_and_retries(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let id = slipway_server::hook::new_token().unwrap()[..12].to_string();
    let r = repo(&h, "app", MANUAL_AND_RETRY);
    h.project("app", &r.path).await;
    let p = run(
        &h,
        "app",
        json!({"variables": [{"key": "SLIPWAY_TEST_ID", "value": id}]}),
    )
    .await;
    // flaky fails twice and passes on its third attempt (retry: 2); deploy waits (a
    // manual job without rules may fail, so the pipeline passes, as on GitLab).
    let d = h.wait_pipeline(p).await;
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    let all = h
        .admin
        .get(&format!("/api/v1/pipelines/{p}/jobs?include_retried=true"))
        .await
        .unwrap()
        .json();
    let attempts: Vec<(i64, bool, String)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["name"] == "flaky")
        .map(|j| {
            (
                j["attempt"].as_i64().unwrap(),
                j["retried"].as_bool().unwrap(),
                j["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, true, "failed".into()),
            (2, true, "failed".into()),
            (3, false, "success".into())
        ]
    );
    let third = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "flaky" && j["attempt"] == 3)
        .unwrap();
    assert!(
        third["retry_of"].is_i64(),
        "a retry is linked to the attempt before"
    );

    // Play the manual job with a job variable.
    let deploy = Harness::job(&d, "deploy");
    assert_eq!(deploy["status"], "manual");
    assert_eq!(deploy["playable"], true);
    let deploy_id = deploy["id"].as_i64().unwrap();
    let r = h
        .admin
        .post_json(
            &format!("/api/v1/jobs/{deploy_id}/play"),
            &json!({"variables": [{"key": "TARGET", "value": "staging"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    h.wait_job(deploy_id, |j| j["status"] == "success").await;
    assert!(h.log(deploy_id).await.contains("deploying to staging"));
    // Playing again is refused; retrying makes a new attempt that runs.
    let r = h
        .admin
        .post_json(&format!("/api/v1/jobs/{deploy_id}/play"), &json!({}))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (409, Some("invalid_state"))
    );
    let r = h
        .admin
        .post_json(&format!("/api/v1/jobs/{deploy_id}/retry"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let new = r.json();
    assert_eq!(new["retry_of"], deploy_id);
    assert_eq!(new["attempt"], 2);
    let job = h
        .wait_job(new["id"].as_i64().unwrap(), |j| j["status"] == "success")
        .await;
    assert_eq!(
        job["variables"],
        json!([{"key": "TARGET", "value": "staging"}])
    );
    let _ = std::fs::remove_file(format!("/tmp/slipway-flaky-{id}"));
    h.stop().await;
}

const LONG: &str = r#"
slow:
  script:
    - echo $$ > "$CI_PROJECT_DIR/../slow.pid"
    - echo started
    - sleep 60
after:
  needs: [slow]
  script: [echo never]
"#;

async fn cancel_stops_the_running_job(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let r = repo(&h, "app", LONG);
    h.project("app", &r.path).await;
    let p = run(&h, "app", json!({})).await;
    let d = detail(&h, p).await;
    let slow = Harness::job(&d, "slow")["id"].as_i64().unwrap();
    h.wait_job(slow, |j| {
        j["status"] == "running" && j["log_size"].as_i64().unwrap_or(0) > 0
    })
    .await;
    // Wait for the script to have written its pid.
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        let found = ["0", "1"].iter().find_map(|slot| {
            let s = std::fs::read_to_string(h.data.join(format!("builds/{slot}/slow.pid"))).ok()?;
            s.trim().parse::<i32>().ok()
        });
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let asked = Instant::now();
    let r = h
        .admin
        .post_json(&format!("/api/v1/jobs/{slow}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let d = h.wait_pipeline(p).await;
    assert_eq!(d["pipeline"]["status"], "canceled", "{d}");
    assert_eq!(Harness::job(&d, "slow")["status"], "canceled");
    // The job's shell is gone (not left sleeping for a minute).
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(!alive, "the canceled job's process {pid} still runs");
    assert!(asked.elapsed() < Duration::from_secs(30));
    // Audited, with who did it.
    let audit = h.admin.get("/api/v1/audit?limit=100").await.unwrap().json();
    assert!(audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "job.cancel" && e["actor"] == "admin"));
    h.stop().await;
}

const DELAYED_AND_PARALLEL: &str = r#"
stages: [a, b]
one:
  stage: a
  script: [sleep 1]
two:
  stage: a
  script: [sleep 1]
three:
  stage: a
  script: [sleep 1]
later:
  stage: b
  when: delayed
  start_in: 1 second
  script: [echo "delayed ran"]
"#;

async fn delayed_jobs_and_the_concurrency_limit(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let r = repo(&h, "app", DELAYED_AND_PARALLEL);
    h.project("app", &r.path).await;
    let p = run(&h, "app", json!({})).await;
    let d = h.wait_pipeline(p).await;
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    // Concurrency 2: the three jobs of stage a never all ran at once.
    let span = |n: &str| {
        let j = Harness::job(&d, n);
        (
            j["started_at"].as_str().unwrap().to_string(),
            j["finished_at"].as_str().unwrap().to_string(),
        )
    };
    let mut spans = vec![span("one"), span("two"), span("three")];
    spans.sort();
    assert!(
        spans[2].0 >= spans[0].1 || spans[2].0 >= spans[1].1,
        "three jobs overlapped with a limit of two: {spans:?}"
    );
    let later = Harness::job(&d, "later");
    assert_eq!(later["when"], "delayed");
    assert!(h
        .log(later["id"].as_i64().unwrap())
        .await
        .contains("delayed ran"));
    h.stop().await;
}

const INTERRUPTIBLE: &str = r#"
workflow:
  auto_cancel:
    on_new_commit: interruptible
slow:
  interruptible: true
  script: [sleep 60]
steady:
  interruptible: false
  script: [sleep 2]
"#;

const CONSERVATIVE: &str = r#"
slow:
  interruptible: true
  script: [sleep 60]
guard:
  interruptible: false
  script: [sleep 60]
"#;

const FAIL_FAST: &str = r#"
workflow:
  auto_cancel:
    on_job_failure: all
breaks:
  script: [exit 3]
slow:
  script: [sleep 60]
"#;

async fn auto_cancel(backend: Backend) {
    let Some(h) = Harness::start_with(backend, |c| c.concurrency = 4).await else {
        return;
    };
    // interruptible: a newer commit cancels the older pipeline's interruptible jobs only.
    let hook_push = |repo: &TestRepo, h: &Harness, project: &str| {
        let before = repo.git(&["rev-parse", "HEAD~1"]);
        let after = repo.head();
        let token_url = h.url.clone();
        let project = project.to_string();
        let admin = h.admin.clone();
        async move {
            let t = admin
                .post_json(
                    &format!("/api/v1/projects/{project}/hook-token"),
                    &json!({}),
                )
                .await
                .unwrap()
                .json();
            let c = slipway_server::client::Client::new(
                &token_url,
                Some(t["token"].as_str().unwrap().to_string()),
            )
            .unwrap();
            let r = c
                .send(
                    "POST",
                    &format!("/api/v1/projects/{project}/hook"),
                    Some((
                        "text/plain",
                        format!("{before} {after} refs/heads/main\n").into_bytes(),
                    )),
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["pipelines"][0]["pipeline"]["id"].as_i64().unwrap()
        }
    };
    let a = repo(&h, "a", INTERRUPTIBLE);
    h.project("a", &a.path).await;
    a.commit(&[("x", "1")], "first");
    let first = hook_push(&a, &h, "a").await;
    let d = detail(&h, first).await;
    let slow = Harness::job(&d, "slow")["id"].as_i64().unwrap();
    let steady = Harness::job(&d, "steady")["id"].as_i64().unwrap();
    h.wait_job(slow, |j| j["status"] == "running").await;
    h.wait_job(steady, |j| j["status"] == "running").await;
    a.commit(&[("x", "2")], "second");
    let second = hook_push(&a, &h, "a").await;
    assert_ne!(first, second);
    h.wait_job(slow, |j| j["status"] == "canceled").await;
    let steady_done = h
        .wait_job(steady, |j| {
            j["status"] == "success" || j["status"] == "canceled"
        })
        .await;
    assert_eq!(
        steady_done["status"], "success",
        "non-interruptible jobs finish"
    );

    // conservative (the default): a started non-interruptible job protects the pipeline.
    let b = repo(&h, "b", CONSERVATIVE);
    h.project("b", &b.path).await;
    b.commit(&[("x", "1")], "first");
    let first = hook_push(&b, &h, "b").await;
    let d = detail(&h, first).await;
    let guard = Harness::job(&d, "guard")["id"].as_i64().unwrap();
    let slow_b = Harness::job(&d, "slow")["id"].as_i64().unwrap();
    h.wait_job(guard, |j| j["status"] == "running").await;
    h.wait_job(slow_b, |j| j["status"] == "running").await;
    b.commit(&[("x", "2")], "second");
    hook_push(&b, &h, "b").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        detail(&h, first).await["pipeline"]["status"],
        "running",
        "a started non-interruptible job keeps the pipeline"
    );
    for p in h.pipelines("b").await {
        h.admin
            .post_json(&format!("/api/v1/pipelines/{}/cancel", p["id"]), &json!({}))
            .await
            .unwrap();
    }

    // on_job_failure: all: one failure cancels the rest at once.
    let c = repo(&h, "c", FAIL_FAST);
    h.project("c", &c.path).await;
    let p = run(&h, "c", json!({})).await;
    let d = h.wait_pipeline(p).await;
    assert_eq!(d["pipeline"]["status"], "failed", "{d}");
    assert_eq!(Harness::job(&d, "breaks")["exit_code"], 3);
    assert_eq!(Harness::job(&d, "slow")["status"], "canceled");
    let r = h
        .admin
        .post_json(&format!("/api/v1/pipelines/{p}/retry"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["retried"].as_array().unwrap().len(), 2);
    h.admin
        .post_json(&format!("/api/v1/pipelines/{p}/cancel"), &json!({}))
        .await
        .unwrap();
    h.wait_pipeline(p).await;
    h.stop().await;
}

server_tests!(
    manual_jobs_and_retries,
    cancel_stops_the_running_job,
    delayed_jobs_and_the_concurrency_limit,
    auto_cancel,
);
