//! `kill -9` of a real `slipway server` in the middle of a blue-green switch: once right
//! after the intent of the switch was saved (before the route table changed), once right
//! after the route table changed (before that was saved). Each time, after a restart the
//! router serves exactly one version (the release that last took all traffic, v1), the
//! instances the dead server left are gone, the deployment record says it was
//! interrupted and where, its job failed with "server restarted", and the next
//! deployment goes through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_process;
#[path = "../../slipway-server/tests/shop/mod.rs"]
mod shop;

use serde_json::{json, Value};
use server_process::*;
use slipway_server::client::Client;
use std::path::Path;
use std::time::{Duration, Instant};

async fn admin_client(url: &str) -> Client {
    let token = api_token(url, "admin", ADMIN_PASSWORD, "crash").await;
    Client::new(url, Some(token)).unwrap()
}

async fn get(c: &Client, path: &str) -> Value {
    let r = c.get(path).await.unwrap();
    assert!(r.ok(), "{path}: {}", r.text());
    r.json()
}

async fn wait<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(c: &Client) -> i64 {
    let r = c
        .post_json("/api/v1/projects/shop/pipelines", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["pipeline"]["id"].as_i64().unwrap()
}

async fn finished(c: &Client, pipeline: i64) -> Value {
    wait(90, "the pipeline to finish", || {
        let c = c.clone();
        async move {
            let v = get(&c, &format!("/api/v1/pipelines/{pipeline}")).await;
            ["success", "failed", "canceled"]
                .contains(&v["pipeline"]["status"].as_str().unwrap_or(""))
                .then_some(v)
        }
    })
    .await
}

fn deploy_job(detail: &Value) -> i64 {
    detail["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "deploy")
        .unwrap()["id"]
        .as_i64()
        .unwrap()
}

/// The ports of release `release`'s instances, from the process target's PID files.
fn instance_ports(data: &Path, release: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(data.join("deploy/pids"))
        .unwrap()
        .flatten()
    {
        let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        if v["release"] == release {
            out.push(v["port"].as_u64().unwrap() as u16);
        }
    }
    out
}

async fn refused(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
}

/// Kills the server at `failpoint` during v(n)'s blue-green switch; checks the restart.
async fn crash_at(
    db: Option<&str>,
    data: &Path,
    failpoint: &str,
    work: &Path,
    version: &str,
    serving: &str,
    serving_deployment: i64,
) {
    let mut server =
        ServerProcess::start_with_env(data, db, &[], &[("SLIPWAY_FAILPOINT", failpoint)]);
    let c = admin_client(&server.url).await;
    // The restarted server brought the serving release back.
    let env = get(&c, "/api/v1/projects/shop/environments/production").await;
    let addr = env["listen"].as_str().unwrap().to_string();
    wait(60, "the router to serve again", || {
        let a = addr.clone();
        async move { (shop::get(&a, "/version").await.0 == 200).then_some(()) }
    })
    .await;
    commit(
        work,
        &[(".gitlab-ci.yml", &shop_blue_green_pipeline(version))],
        version,
    );
    let p = run(&c).await;
    let job = wait(90, "the deploy job to run", || {
        let c = c.clone();
        async move {
            let v = get(&c, &format!("/api/v1/pipelines/{p}")).await;
            let j = v["jobs"]
                .as_array()?
                .iter()
                .find(|j| j["name"] == "deploy")?
                .clone();
            (j["status"] == "running").then(|| j["id"].as_i64().unwrap())
        }
    })
    .await;
    let log = server.log.clone();
    wait(90, "the engine to reach the failpoint", || {
        let log = log.clone();
        let fp = failpoint.to_string();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&format!("failpoint reached: {fp}"))
                .then_some(())
        }
    })
    .await;
    let record = get(&c, &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(record["job"]["status"], "running");
    let dep: Value = {
        let envs = get(
            &c,
            "/api/v1/projects/shop/environments/production/deployments",
        )
        .await;
        envs["items"][0].clone()
    };
    let new_id = dep["id"].as_i64().unwrap();
    let ports = instance_ports(data, &new_id.to_string());
    assert_eq!(ports.len(), 2, "the new release runs beside the old");
    if failpoint.ends_with("after_switch") {
        // The route table already points at the new release.
        assert_eq!(shop::version(&addr).await, version);
    } else {
        assert_eq!(shop::version(&addr).await, serving);
    }

    server.kill9();
    let mut server = ServerProcess::start(data, db, &[]);
    let c = admin_client(&server.url).await;
    // Exactly one version: the release that last took all traffic.
    wait(60, "the router to serve after the restart", || {
        let a = addr.clone();
        async move { (shop::get(&a, "/version").await.0 == 200).then_some(()) }
    })
    .await;
    for _ in 0..40 {
        assert_eq!(shop::version(&addr).await, serving);
    }
    // The dead server's instances of the new release are gone (a port may since have
    // gone to a new instance of the serving release, which answers with its version).
    for port in ports {
        if !refused(port).await {
            let (_, body) = shop::get(&format!("127.0.0.1:{port}"), "/version").await;
            assert_eq!(
                body.trim(),
                serving,
                "an instance of the interrupted release answers on {port}"
            );
        }
    }
    let d = get(&c, &format!("/api/v1/deployments/{new_id}")).await["deployment"].clone();
    assert_eq!(d["status"], "failed", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("interrupted: the engine restarted during switching_traffic"),
        "{reason}"
    );
    assert!(
        reason.contains("(the switch was not completed)"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("release {serving_deployment} serves")),
        "{reason}"
    );
    let j = get(&c, &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(j["job"]["status"], "failed");
    assert_eq!(j["job"]["failure_reason"], "server restarted");
    let env = get(&c, "/api/v1/projects/shop/environments/production").await;
    assert_eq!(env["current"]["id"], serving_deployment);
    assert_eq!(env["routes"].as_array().unwrap().len(), 1, "{env}");
    assert_eq!(server.stop().code(), Some(0));
}

async fn kill_9_during_a_blue_green_switch(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let work = root.path().join("shop");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    commit(
        &work,
        &[(".gitlab-ci.yml", &shop_blue_green_pipeline("1.0.0"))],
        "v1",
    );

    // v1 deploys normally.
    let mut server = ServerProcess::start(&data, db.as_deref(), &[]);
    let c = admin_client(&server.url).await;
    let r = c
        .post_json(
            "/api/v1/projects",
            &json!({"name": "shop", "repository": work.display().to_string()}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let r = c
        .json(
            "PUT",
            "/api/v1/projects/shop/variables/SHOP_BIN",
            &json!({"value": shop::binary().display().to_string()}),
        )
        .await
        .unwrap();
    assert!(r.ok());
    let p = run(&c).await;
    let d = finished(&c, p).await;
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    let v1 = get(&c, &format!("/api/v1/jobs/{}", deploy_job(&d))).await;
    assert_eq!(v1["job"]["status"], "success");
    let env = get(&c, "/api/v1/projects/shop/environments/production").await;
    let v1_id = env["current"]["id"].as_i64().unwrap();
    assert_eq!(
        shop::version(env["listen"].as_str().unwrap()).await,
        "1.0.0"
    );
    assert_eq!(server.stop().code(), Some(0));

    crash_at(
        db.as_deref(),
        &data,
        "deploy:before_switch",
        &work,
        "2.0.0",
        "1.0.0",
        v1_id,
    )
    .await;
    crash_at(
        db.as_deref(),
        &data,
        "deploy:after_switch",
        &work,
        "3.0.0",
        "1.0.0",
        v1_id,
    )
    .await;

    // And the next deployment goes through.
    let mut server = ServerProcess::start(&data, db.as_deref(), &[]);
    let c = admin_client(&server.url).await;
    commit(
        &work,
        &[(".gitlab-ci.yml", &shop_blue_green_pipeline("4.0.0"))],
        "v4",
    );
    let p = run(&c).await;
    assert_eq!(finished(&c, p).await["pipeline"]["status"], "success");
    let env = get(&c, "/api/v1/projects/shop/environments/production").await;
    assert_eq!(
        shop::version(env["listen"].as_str().unwrap()).await,
        "4.0.0"
    );
    assert_eq!(server.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_blue_green_switch_sqlite() {
    kill_9_during_a_blue_green_switch(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_blue_green_switch_postgres() {
    if postgres_admin_url().is_none() {
        return;
    }
    kill_9_during_a_blue_green_switch(Backend::Postgres).await;
}
