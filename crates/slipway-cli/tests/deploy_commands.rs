//! The deployment commands against a real `slipway server` process: `slipway
//! environments [--json]`, `slipway deployments ENV [--json]`, `slipway approve|reject
//! DEPLOYMENT` (a non-approver and the triggerer refused), and `slipway rollback ENV [--to DEPLOYMENT]`
//! switching the router back to the old version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_process;
#[path = "../../slipway-server/tests/shop/mod.rs"]
mod shop;

use serde_json::{json, Value};
use server_process::*;
use slipway_server::client::Client;
use std::path::Path;
use std::process::Output;

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn wait_pipeline(c: &Client, id: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let v = c
            .get(&format!("/api/v1/pipelines/{id}"))
            .await
            .unwrap()
            .json();
        let s = v["pipeline"]["status"].as_str().unwrap_or("").to_string();
        if ["success", "failed", "canceled"].contains(&s.as_str()) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "pipeline {id}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Triggers a pipeline with the CLI; returns the deployment awaiting approval.
async fn trigger_and_wait_for_approval(config: &Path, url: &str, admin: &Client) -> (i64, i64) {
    let v = json(&cli(config, url, &["trigger", "shop", "--json"]));
    let pipeline = v["pipeline"]["id"].as_i64().unwrap();
    let id = wait_for(60, "the deployment to wait for approval", || {
        let envs = json(&cli(config, url, &["environments", "--json"]));
        envs.as_array()?
            .iter()
            .find(|e| e["name"] == "production")?["awaiting_approval"]
            .as_array()?
            .first()?
            .as_i64()
    });
    let _ = admin;
    (pipeline, id)
}

async fn deployment_commands(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut server = ServerProcess::start(&data, db.as_deref(), &[]);
    let url = server.url.clone();
    let config = root.path().join("config");
    login(&config, &url);
    let admin = Client::new(
        &url,
        Some(api_token(&url, "admin", ADMIN_PASSWORD, "cli").await),
    )
    .unwrap();

    let work = root.path().join("shop");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    commit(
        &work,
        &[(".gitlab-ci.yml", &shop_blue_green_pipeline("1.0.0"))],
        "v1",
    );
    ok(&cli(
        &config,
        &url,
        &["project", "add", "shop", "--repo", work.to_str().unwrap()],
    ));
    let r = admin
        .json(
            "PUT",
            "/api/v1/projects/shop/variables/SHOP_BIN",
            &json!({"value": shop::binary().display().to_string()}),
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    let r = admin
        .post_json(
            "/api/v1/users",
            &json!({"username": "alice", "password": "alice-password"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let r = admin
        .json(
            "PUT",
            "/api/v1/projects/shop/members/alice",
            &json!({"role": "developer"}),
        )
        .await
        .unwrap();
    assert!(r.ok());
    let r = admin
        .json(
            "PUT",
            "/api/v1/projects/shop/protected-environments/production",
            &json!({"required_approvals": 1, "approvers": ["alice"]}),
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    let alice = api_token(&url, "alice", "alice-password", "cli").await;
    let as_alice = |args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--token", alice.as_str()]);
        cli(&config, &url, &a)
    };

    // v1: the administrator is not an approver; alice is.
    let (p1, d1) = trigger_and_wait_for_approval(&config, &url, &admin).await;
    let err = fails(&cli(&config, &url, &["approve", &d1.to_string()]));
    assert!(err.contains("not an approver"), "{err}");
    let out = ok(&as_alice(&[
        "approve",
        &d1.to_string(),
        "--comment",
        "ship it",
    ]));
    assert!(out.contains(&format!("Approved deployment {d1}")), "{out}");
    assert_eq!(
        wait_pipeline(&admin, p1).await["pipeline"]["status"],
        "success"
    );

    let table = ok(&cli(&config, &url, &["environments"]));
    assert!(
        table.contains("production") && table.contains("alice"),
        "{table}"
    );
    let envs = json(&cli(&config, &url, &["environments", "--json"]));
    let addr = envs[0]["listen"].as_str().unwrap().to_string();
    assert_eq!(shop::version(&addr).await, "1.0.0");
    assert_eq!(envs[0]["current"]["id"], d1);

    // v2.
    commit(
        &work,
        &[(".gitlab-ci.yml", &shop_blue_green_pipeline("2.0.0"))],
        "v2",
    );
    let (p2, d2) = trigger_and_wait_for_approval(&config, &url, &admin).await;
    ok(&as_alice(&["approve", &d2.to_string()]));
    assert_eq!(
        wait_pipeline(&admin, p2).await["pipeline"]["status"],
        "success"
    );
    assert_eq!(shop::version(&addr).await, "2.0.0");

    // v3, triggered by alice: she may not approve her own deployment (the rule does not
    // allow self-approval), but she may reject it.
    commit(
        &work,
        &[(".gitlab-ci.yml", &shop_blue_green_pipeline("3.0.0"))],
        "v3",
    );
    let v = json(&as_alice(&["trigger", "shop", "--json"]));
    let p3 = v["pipeline"]["id"].as_i64().unwrap();
    let d3 = wait_for(60, "v3 to wait for approval", || {
        let envs = json(&cli(&config, &url, &["environments", "--json"]));
        envs.as_array()?
            .iter()
            .find(|e| e["name"] == "production")?["awaiting_approval"]
            .as_array()?
            .first()?
            .as_i64()
    });
    let err = fails(&as_alice(&["approve", &d3.to_string()]));
    assert!(
        err.contains(&format!(
            "alice triggered deployment {d3} and environment production does not allow self-approval"
        )),
        "{err}"
    );
    let out = ok(&as_alice(&[
        "reject",
        &d3.to_string(),
        "--comment",
        "not today",
    ]));
    assert!(out.contains(&format!("Rejected deployment {d3}")), "{out}");
    assert_eq!(
        wait_pipeline(&admin, p3).await["pipeline"]["status"],
        "canceled"
    );

    let list = json(&cli(
        &config,
        &url,
        &["deployments", "production", "--json"],
    ));
    let statuses: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["canceled", "success", "success"]);
    assert_eq!(list[0]["reason"], "rejected by alice: not today");

    // Rollback: only approvers may on a protected environment; v1 is warm, a switch.
    let err = fails(&cli(&config, &url, &["rollback", "production"]));
    assert!(err.contains("only its approvers"), "{err}");
    let out = ok(&as_alice(&["rollback", "production"]));
    assert!(
        out.contains(&format!("Rolled production back to deployment {d1}")),
        "{out}"
    );
    assert_eq!(shop::version(&addr).await, "1.0.0");
    let table = ok(&cli(&config, &url, &["deployments", "production"]));
    assert!(table.contains(&format!("rollback to {d1}")), "{table}");
    // --to the other one.
    let out = ok(&as_alice(&[
        "rollback",
        "production",
        "--to",
        &d2.to_string(),
        "--json",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "success");
    assert_eq!(shop::version(&addr).await, "2.0.0");
    // An unknown environment is a clear error.
    let err = fails(&cli(&config, &url, &["deployments", "nowhere"]));
    assert!(err.contains("no environment \"nowhere\""), "{err}");
    assert_eq!(server.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_commands_sqlite() {
    deployment_commands(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_commands_postgres() {
    if postgres_admin_url().is_none() {
        return;
    }
    deployment_commands(Backend::Postgres).await;
}
