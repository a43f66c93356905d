//! `kill -9` of a real `slipway server` while pipelines run long jobs: after a restart
//! no acknowledged pipeline, job or log line is lost; every job that was running is
//! failed with the reason "server restarted" (its log says so), its processes are gone
//! (the restarted server kills what the dead one left behind), and the job whose
//! `retry:` allows it gets a new attempt, which runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_process;

use serde_json::{json, Value};
use server_process::*;
use slipway_server::client::Client;

const PIPELINE: &str = r#"
stages: [work, after]
logger:
  stage: work
  script:
    - echo $$ > "$CI_BUILDS_DIR/logger-$CI_PIPELINE_ID.pid"
    - for i in $(seq 1 100000); do echo "line $i"; sleep 0.005; done
retried:
  stage: work
  retry:
    max: 1
    when: [runner_system_failure]
  script:
    - if [ -f "$CI_BUILDS_DIR/retried-$CI_PIPELINE_ID" ]; then echo "second attempt"; exit 0; fi
    - echo $$ > "$CI_BUILDS_DIR/retried-$CI_PIPELINE_ID.pid"
    - touch "$CI_BUILDS_DIR/retried-$CI_PIPELINE_ID"
    - sleep 300
later:
  stage: after
  when: always
  script: [echo "after the crash"]
"#;

async fn token(url: &str) -> Client {
    let token = api_token(url, "admin", ADMIN_PASSWORD, "crash test").await;
    Client::new(url, Some(token)).unwrap()
}

/// Whether process `pid` runs (a zombie waiting for its new parent to reap it does not).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn c_token(c: &Client) -> Option<String> {
    c.token().map(str::to_string)
}

async fn get(c: &Client, path: &str) -> Value {
    let r = c.get(path).await.unwrap();
    assert!(r.ok(), "{path}: {}", r.text());
    r.json()
}

async fn job_named(c: &Client, pipeline: i64, name: &str) -> Value {
    get(c, &format!("/api/v1/pipelines/{pipeline}")).await["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap()
        .clone()
}

async fn wait_async<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn kill_9_mid_run(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut server = ServerProcess::start(&data, db.as_deref(), &["--concurrency", "8"]);
    let c = token(&server.url).await;
    // A repository with a working tree (not bare), added by its path.
    let work = root.path().join("app");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    commit(&work, &[(".gitlab-ci.yml", PIPELINE)], "pipeline");
    let r = c
        .post_json(
            "/api/v1/projects",
            &json!({"name": "app", "repository": work.display().to_string()}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());

    // Three acknowledged pipelines.
    let mut pipelines = Vec::new();
    for _ in 0..3 {
        let r = c
            .post_json("/api/v1/projects/app/pipelines", &json!({}))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        pipelines.push(r.json()["pipeline"]["id"].as_i64().unwrap());
    }
    // Every logger writes lines; every `retried` sleeps in its first attempt.
    let builds = data.join("builds");
    let mut loggers = Vec::new();
    for &p in &pipelines {
        let logger = wait_async(60, "the logger to log", || {
            let c = c.clone();
            async move {
                let j = job_named(&c, p, "logger").await;
                (j["status"] == "running" && j["log_size"].as_i64().unwrap_or(0) > 2000)
                    .then_some(j)
            }
        })
        .await;
        wait_async(60, "the first attempt to sleep", || {
            let c = c.clone();
            let marker = builds.join(format!("retried-{p}"));
            async move {
                let j = job_named(&c, p, "retried").await;
                (j["status"] == "running" && marker.exists()).then_some(())
            }
        })
        .await;
        loggers.push(logger["id"].as_i64().unwrap());
    }
    // What the server acknowledged: each logger's log as it served it.
    let mut acknowledged = Vec::new();
    for &l in &loggers {
        let r = c.get(&format!("/api/v1/jobs/{l}/log")).await.unwrap();
        assert!(r.ok());
        acknowledged.push(r.body.clone());
    }
    // The loggers may die of SIGPIPE once nobody reads their output; the sleepers stay.
    let pids: Vec<i32> = pipelines
        .iter()
        .flat_map(|p| [format!("logger-{p}.pid"), format!("retried-{p}.pid")])
        .map(|f| {
            std::fs::read_to_string(builds.join(f))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();

    server.kill9();
    // The shell jobs outlive the server (their own process groups).
    assert!(
        pids.iter().any(|p| alive(*p)),
        "the jobs died with the server: nothing to test"
    );

    let server = ServerProcess::start(&data, db.as_deref(), &["--concurrency", "8"]);
    // The token still works: tokens are in the store, not in the server's memory (the
    // new process listens on another port).
    let c = Client::new(&server.url, None)
        .unwrap()
        .with_token(c_token(&c));
    let listed = get(&c, "/api/v1/projects/app/pipelines?limit=100").await;
    let ids: Vec<i64> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    for p in &pipelines {
        assert!(ids.contains(p), "pipeline {p} lost: {ids:?}");
    }
    for (i, &l) in loggers.iter().enumerate() {
        let j = get(&c, &format!("/api/v1/jobs/{l}")).await;
        assert_eq!(j["job"]["status"], "failed", "{j}");
        assert_eq!(j["job"]["failure_reason"], "server restarted");
        let log = c.get(&format!("/api/v1/jobs/{l}/log")).await.unwrap().body;
        assert!(
            log.starts_with(&acknowledged[i]),
            "acknowledged log bytes lost ({} acknowledged, {} stored)",
            acknowledged[i].len(),
            log.len()
        );
        let text = String::from_utf8_lossy(&log);
        assert!(
            text.trim_end().ends_with("(failed)"),
            "{}",
            &text[text.len().saturating_sub(300)..]
        );
        assert!(text.contains("the server restarted while this job ran"));
    }
    for p in &pids {
        assert!(!alive(*p), "job process {p} survived the restart");
    }
    for &p in &pipelines {
        let d = wait_async(60, "the pipeline to finish", || {
            let c = c.clone();
            async move {
                let d = get(&c, &format!("/api/v1/pipelines/{p}")).await;
                let s = d["pipeline"]["status"].as_str().unwrap_or("").to_string();
                (s == "failed" || s == "success").then_some(d)
            }
        })
        .await;
        assert_eq!(d["pipeline"]["status"], "failed", "the logger failed");
        let all = get(
            &c,
            &format!("/api/v1/pipelines/{p}/jobs?include_retried=true"),
        )
        .await;
        let attempts: Vec<&Value> = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["name"] == "retried")
            .collect();
        assert_eq!(attempts.len(), 2, "one retry: {attempts:?}");
        assert_eq!(attempts[0]["failure_reason"], "server restarted");
        assert_eq!(attempts[1]["retry_of"], attempts[0]["id"]);
        let second = attempts[1]["id"].as_i64().unwrap();
        let log = c
            .get(&format!("/api/v1/jobs/{second}/log"))
            .await
            .unwrap()
            .text();
        assert_eq!(attempts[1]["status"], "success", "{:?}\n{log}", attempts[1]);
        assert!(log.contains("second attempt"), "{log}");
        let later = d["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == "later")
            .unwrap();
        assert_eq!(later["status"], "success");
    }
    let mut server = server;
    assert!(server.stop().success(), "{}", server.log_text());
    assert!(server.log_text().contains("recovered from a restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_on_sqlite() {
    kill_9_mid_run(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_on_postgres() {
    kill_9_mid_run(Backend::Postgres).await;
}
