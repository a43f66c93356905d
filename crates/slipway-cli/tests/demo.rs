//! `slipway demo` end to end, as a new user would: the bundled example project is
//! pushed, built with rustc and tested, deployed to dev by itself, to staging on a click
//! and to production after an approval with blue-green; then v2 is pushed through the
//! same steps and `slipway rollback production` brings v1 back. (The pipeline builds the
//! service with rustc four times; a few seconds in all.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_process;
#[path = "../../slipway-server/tests/shop/mod.rs"]
mod shop;

use serde_json::{json, Value};
use server_process::*;
use slipway_server::client::Client;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn get(c: &Client, path: &str) -> Value {
    let r = c.get(path).await.unwrap();
    assert!(r.ok(), "{path}: {}", r.text());
    r.json()
}

async fn job(c: &Client, pipeline: i64, name: &str) -> Value {
    get(c, &format!("/api/v1/pipelines/{pipeline}")).await["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name}"))
        .clone()
}

async fn wait_job(c: &Client, pipeline: i64, name: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let j = job(c, pipeline, name).await;
        if j["status"] == status {
            return j;
        }
        assert!(
            !(j["status"] == "failed" || j["status"] == "canceled") || status == "failed",
            "{name} ended {}: {}",
            j["status"],
            c.get(&format!("/api/v1/jobs/{}/log", j["id"]))
                .await
                .unwrap()
                .text()
        );
        assert!(Instant::now() < deadline, "{name} is still {}", j["status"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Plays staging, approves production and waits for it; returns production's address.
async fn promote(c: &Client, pipeline: i64) -> String {
    wait_job(c, pipeline, "deploy-dev", "success").await;
    let staging = wait_job(c, pipeline, "deploy-staging", "manual").await;
    let r = c
        .post_json(&format!("/api/v1/jobs/{}/play", staging["id"]), &json!({}))
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    wait_job(c, pipeline, "deploy-staging", "success").await;
    let prod = wait_job(c, pipeline, "deploy-production", "waiting_for_approval").await;
    let d = get(c, "/api/v1/projects/shop/environments/production").await;
    let id = d["awaiting_approval"][0]
        .as_i64()
        .expect("a deployment awaiting approval");
    let r = c
        .post_json(&format!("/api/v1/deployments/{id}/approve"), &json!({}))
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    wait_job(c, pipeline, "deploy-production", "success").await;
    let _ = prod;
    get(c, "/api/v1/projects/shop/environments/production").await["listen"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Stops the demo however the test ends (SIGTERM: it stops its environments too).
struct Stop(u32);

impl Drop for Stop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGTERM);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_the_whole_flow() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("demo");
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env_remove("SLIPWAY_SECRET_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _stop = Stop(child.id());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut url, mut password, mut token) = (String::new(), String::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while token.is_empty() {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .expect("the demo's banner");
        if let Some(u) = line.strip_prefix("Slipway demo: ") {
            url = u
                .trim()
                .trim_end_matches("/projects/shop/pipelines")
                .to_string();
        }
        if let Some(p) = line.trim().strip_prefix("Sign in as admin, password ") {
            password = p.to_string();
        }
        // The banner names the file with the CLI's token, never the token itself.
        if line.contains("SLIPWAY_TOKEN=$(cat ") {
            token = std::fs::read_to_string(data.join("cli-token"))
                .unwrap()
                .trim()
                .to_string();
            assert!(!line.contains(&token), "{line}");
        }
    }
    assert!(!password.is_empty() && url.starts_with("http://127.0.0.1:"));
    let c = Client::new(&url, Some(token.clone())).unwrap();
    // The pushed commit made a pipeline through the hook.
    let p1 = loop {
        let v = get(&c, "/api/v1/projects/shop/pipelines").await;
        if let Some(id) = v["items"][0]["id"].as_i64() {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no pipeline from the demo's push"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let addr = promote(&c, p1).await;
    let (status, page) = shop::get(&addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Welcome to the shop") && page.contains("1.0.0"),
        "{page}"
    );
    let env = get(&c, "/api/v1/projects/shop/environments/production").await;
    assert_eq!(env["current"]["strategy"], "blue-green");
    assert_eq!(env["current"]["approved_by"], json!(["admin"]));
    // The sign-in works with the printed password.
    let r = Client::new(&url, None)
        .unwrap()
        .post_json(
            "/api/v1/session",
            &json!({"username": "admin", "password": password}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201);

    // v2, as the banner says: edit, commit, push.
    let work = data.join("shop");
    let file = std::fs::read_to_string(work.join(".gitlab-ci.yml")).unwrap();
    std::fs::write(
        work.join(".gitlab-ci.yml"),
        file.replace("VERSION: \"1.0.0\"", "VERSION: \"2.0.0\""),
    )
    .unwrap();
    git(&work, &["commit", "-qam", "v2"]);
    git(&work, &["push", "-q"]);
    let p2 = loop {
        let v = get(&c, "/api/v1/projects/shop/pipelines").await;
        let id = v["items"][0]["id"].as_i64().unwrap();
        if id != p1 {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(promote(&c, p2).await, addr, "the router keeps its address");
    assert!(shop::get(&addr, "/").await.1.contains("2.0.0"));
    // The banner's rollback command.
    let out = Command::new(BIN)
        .args(["rollback", "production"])
        .env("SLIPWAY_SERVER", &url)
        .env("SLIPWAY_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = shop::get(&addr, "/").await.1;
    assert!(
        page.contains("1.0.0") && page.contains("Welcome to the shop"),
        "{page}"
    );
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
}
