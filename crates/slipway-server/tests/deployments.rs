//! Environments and deployments on a real server (SQLite and PostgreSQL), with real
//! releases: the demo service, built with rustc, run by Slipway's process target behind
//! its router and asked over HTTP. Deployment records from jobs, blue-green and rollback
//! restoring the old variables, health-check failure, approvals (non-approvers and the
//! triggerer refused, rejection), wait timers and allowed refs, promotion by digest,
//! `deploy_on`, resource groups with their process modes, notifications to Slack and
//! signed JSON webhooks, record-only deployments, pinned artifacts surviving expiry,
//! and the pages' buttons.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;
mod shop;

use common::TestRepo;
use harness::{Backend, Harness};
use serde_json::{json, Value};
use slipway_server::client::Client;
use std::time::{Duration, Instant};

/// A pipeline that builds (copies the prebuilt service), then deploys to production with
/// `strategy`; `health` is the health-check path.
fn pipeline(version: &str, strategy: &str, health: &str) -> String {
    format!(
        r#"
stages: [build, deploy]
variables:
  VERSION: "{version}"
build:
  stage: build
  script:
    - cp "$SHOP_BIN" shop
    - echo "$VERSION" > version.txt
  artifacts:
    paths: [shop, version.txt]
deploy:
  stage: deploy
  script: [echo "deploying $VERSION"]
  environment: {{ name: production }}
.slipway:
  environments:
    production:
      process: {{ command: ./shop, instances: 2 }}
      strategy: {strategy}
      health_check: {{ path: {health}, interval: 100ms, timeout: 1s, start_timeout: 20s }}
"#
    )
}

async fn setup(h: &Harness, name: &str, file: &str) -> TestRepo {
    let r = TestRepo::init(&h.dir.path().join(name));
    r.commit(&[(".gitlab-ci.yml", file)], "pipeline");
    h.project(name, &r.path).await;
    set_var(
        h,
        name,
        "SHOP_BIN",
        &shop::binary().display().to_string(),
        None,
    )
    .await;
    r
}

async fn set_var(h: &Harness, project: &str, key: &str, value: &str, scope: Option<&str>) {
    let mut body = json!({"value": value});
    if let Some(s) = scope {
        body["environment_scope"] = json!(s);
    }
    let r = h
        .admin
        .json(
            "PUT",
            &format!("/api/v1/projects/{project}/variables/{key}"),
            &body,
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
}

async fn run_as(c: &Client, project: &str, ref_name: &str) -> i64 {
    let r = c
        .post_json(
            &format!("/api/v1/projects/{project}/pipelines"),
            &json!({"ref": ref_name}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["pipeline"]["id"].as_i64().unwrap()
}

async fn environment(h: &Harness, project: &str, env: &str) -> Value {
    let r = h
        .admin
        .get(&format!("/api/v1/projects/{project}/environments/{env}"))
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    r.json()
}

async fn deployment(h: &Harness, id: i64) -> Value {
    let r = h
        .admin
        .get(&format!("/api/v1/deployments/{id}"))
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    r.json()["deployment"].clone()
}

/// The deployment job `job` made.
async fn deployment_of_job(h: &Harness, job: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = h
            .app
            .store
            .deployment_for_job(slipway_db::JobId(job))
            .await
            .unwrap();
        if let Some(d) = d {
            return deployment(h, d.id.0).await;
        }
        assert!(Instant::now() < deadline, "job {job} made no deployment");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_deployment(h: &Harness, id: i64, statuses: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = deployment(h, id).await;
        if statuses.contains(&d["status"].as_str().unwrap_or("")) {
            return d;
        }
        assert!(Instant::now() < deadline, "deployment {id}: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn router(env: &Value) -> String {
    env["listen"]
        .as_str()
        .expect("the router's address")
        .to_string()
}

async fn audit_actions(h: &Harness) -> Vec<(String, String)> {
    h.app
        .store
        .audit_entries(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.actor, e.action))
        .collect()
}

async fn blue_green_and_rollback_with_the_old_variables(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let repo = setup(
        &h,
        "shop",
        &pipeline("1.0.0", "{ blue-green: { keep_warm: 10m } }", "/healthz"),
    )
    .await;
    set_var(&h, "shop", "GREETING", "hello from v1", Some("production")).await;
    let p1 = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline(p1).await;
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    let job1 = Harness::job(&d, "deploy")["id"].as_i64().unwrap();
    let d1 = deployment_of_job(&h, job1).await;
    assert_eq!(d1["status"], "success", "{d1}");
    assert_eq!(d1["strategy"], "blue-green");
    assert_eq!(d1["pipeline_id"], p1);
    assert_eq!(d1["triggered_by_name"], "admin");
    assert!(d1["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(d1["has_variables"].as_bool().unwrap());
    let log = h.log(job1).await;
    assert!(log.contains("Deploying"), "{log}");
    assert!(log.contains("succeeded: all traffic on"), "{log}");
    let env = environment(&h, "shop", "production").await;
    let addr = router(&env);
    assert_eq!(shop::version(&addr).await, "1.0.0");
    assert!(shop::get(&addr, "/").await.1.contains("hello from v1"));
    assert_eq!(env["current"]["id"], d1["id"]);

    // v2 with today's variable.
    set_var(
        &h,
        "shop",
        "GREETING",
        "bonjour from v2",
        Some("production"),
    )
    .await;
    repo.commit(
        &[(
            ".gitlab-ci.yml",
            &pipeline("2.0.0", "{ blue-green: { keep_warm: 10m } }", "/healthz"),
        )],
        "v2",
    );
    let p2 = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline(p2).await;
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    let d2 = deployment_of_job(&h, Harness::job(&d, "deploy")["id"].as_i64().unwrap()).await;
    assert_ne!(d2["digest"], d1["digest"]);
    assert_eq!(shop::version(&addr).await, "2.0.0");
    assert!(shop::get(&addr, "/").await.1.contains("bonjour from v2"));
    let env = environment(&h, "shop", "production").await;
    assert_eq!(
        env["warm"]["release"],
        d1["id"].to_string(),
        "v1 is kept warm: {env}"
    );
    // The releases' artifacts are pinned.
    let kept = h.app.store.kept_store_ids().await.unwrap();
    assert_eq!(kept.len(), 2, "{kept:?}");

    // Rollback: v1 again, with v1's variables, as a new deployment marked as a rollback;
    // v1 is warm, so only the traffic moves.
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/shop/environments/production/rollback",
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["rolled_back_to"], d1["id"]);
    assert_eq!(v["status"], "success");
    assert!(v["switch_ms"].as_f64().is_some());
    let d3 = &v["deployment"];
    assert_eq!(d3["rollback_of"], d1["id"]);
    assert_eq!(d3["is_rollback"], true);
    assert_eq!(d3["digest"], d1["digest"]);
    assert_eq!(d3["version"], d1["version"]);
    assert_eq!(shop::version(&addr).await, "1.0.0");
    let page = shop::get(&addr, "/").await.1;
    assert!(
        page.contains("hello from v1"),
        "the old variables, not today's: {page}"
    );
    let env = environment(&h, "shop", "production").await;
    assert_eq!(env["current"]["id"], d3["id"]);
    // Rolling back again goes to v2 (the previous release that differs), and `--to`
    // picks one; a deployment of another environment is refused.
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/shop/environments/production/rollback",
            &json!({"to": d2["id"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(shop::version(&addr).await, "2.0.0");
    assert!(shop::get(&addr, "/").await.1.contains("bonjour from v2"));
    let list = h
        .admin
        .get("/api/v1/projects/shop/environments/production/deployments")
        .await
        .unwrap()
        .json();
    assert_eq!(list["items"].as_array().unwrap().len(), 4);
    let actions = audit_actions(&h).await;
    for a in [
        "deployment.create",
        "deployment.finish",
        "deployment.rollback",
        "deployment.rollback_finish",
    ] {
        assert!(actions.iter().any(|(_, x)| x == a), "no {a} in {actions:?}");
    }
    assert!(h.app.store.verify_audit().await.unwrap().is_intact());
    h.stop().await;
}

async fn a_release_that_never_gets_healthy_takes_no_traffic(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let repo = setup(
        &h,
        "shop",
        &pipeline("1.0.0", "{ blue-green: { keep_warm: 1m } }", "/healthz"),
    )
    .await;
    let p1 = run_as(&h.admin, "shop", "main").await;
    assert_eq!(h.wait_pipeline(p1).await["pipeline"]["status"], "success");
    let addr = router(&environment(&h, "shop", "production").await);
    assert_eq!(shop::version(&addr).await, "1.0.0");
    // v2 checks a path the service does not have: 404, never healthy.
    repo.commit(
        &[(
            ".gitlab-ci.yml",
            &pipeline("2.0.0", "{ blue-green: { keep_warm: 1m } }", "/ready"),
        )],
        "v2 with a broken health check",
    );
    let p2 = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline(p2).await;
    assert_eq!(d["pipeline"]["status"], "failed", "{d}");
    let job = Harness::job(&d, "deploy");
    assert_eq!(job["failure_reason"], "deployment_failure");
    let dep = deployment_of_job(&h, job["id"].as_i64().unwrap()).await;
    assert_eq!(dep["status"], "failed", "{dep}");
    assert!(dep["reason"].as_str().unwrap().contains("404"), "{dep}");
    assert_eq!(shop::version(&addr).await, "1.0.0", "v1 still serves");
    let env = environment(&h, "shop", "production").await;
    assert_eq!(env["routes"].as_array().unwrap().len(), 1, "{env}");
    assert_eq!(env["current"]["version"], env["deployments"][1]["version"]);
    h.stop().await;
}

/// The pids of release `release`'s instances, from the process target's PID files.
fn instance_pids(h: &Harness, release: i64) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(h.data.join("deploy/pids"))
        .unwrap()
        .flatten()
    {
        let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        if v["release"].as_str() == Some(release.to_string().as_str()) {
            out.push(v["pid"].as_i64().unwrap() as i32);
        }
    }
    out
}

/// Blue-green's automatic rollback: v2 took all traffic and v1 is kept warm; then v2's
/// instances die, their health checks fail, and traffic goes back to v1 by itself. The
/// deployment of v2 ends as rolled back, saying why.
async fn a_release_lost_while_the_old_is_warm_is_rolled_back_by_itself(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    // One failed check makes a ready instance lost (the process target restarts a killed
    // instance; this must not wait for that).
    let file = |v: &str| {
        pipeline(v, "{ blue-green: { keep_warm: 10m } }", "/healthz").replace(
            "start_timeout: 20s }",
            "start_timeout: 20s, failure_threshold: 1 }",
        )
    };
    let repo = setup(&h, "shop", &file("1.0.0")).await;
    let p1 = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline(p1).await;
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    let d1 = deployment_of_job(&h, Harness::job(&d, "deploy")["id"].as_i64().unwrap()).await;
    let addr = router(&environment(&h, "shop", "production").await);
    assert_eq!(shop::version(&addr).await, "1.0.0");

    repo.commit(&[(".gitlab-ci.yml", &file("2.0.0"))], "v2");
    let p2 = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline(p2).await;
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    let d2 = deployment_of_job(&h, Harness::job(&d, "deploy")["id"].as_i64().unwrap()).await;
    assert_eq!(d2["status"], "success", "{d2}");
    assert_eq!(shop::version(&addr).await, "2.0.0");
    let env = environment(&h, "shop", "production").await;
    assert_eq!(env["warm"]["release"], d1["id"].to_string(), "{env}");

    // v2's instances are killed (their whole process groups).
    let pids = instance_pids(&h, d2["id"].as_i64().unwrap());
    assert_eq!(pids.len(), 2, "{pids:?}");
    for pid in pids {
        // SAFETY: signalling a process group this test's server started.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let d2 = wait_deployment(&h, d2["id"].as_i64().unwrap(), &["rolled_back"]).await;
    let reason = d2["reason"].as_str().unwrap();
    assert!(reason.contains("of the new release"), "{reason}");
    for _ in 0..20 {
        assert_eq!(shop::version(&addr).await, "1.0.0", "v1 serves again");
    }
    let env = environment(&h, "shop", "production").await;
    assert_eq!(env["routes"].as_array().unwrap().len(), 1, "{env}");
    assert!(audit_actions(&h)
        .await
        .iter()
        .any(|(_, a)| a == "deployment.finish"));
    h.stop().await;
}

const PROTECTED: &str = r#"
stages: [build, deploy]
build:
  stage: build
  script: [cp "$SHOP_BIN" shop]
  artifacts: { paths: [shop] }
deploy:
  stage: deploy
  script: [echo deploying]
  environment: production
.slipway:
  environments:
    production:
      process: { command: ./shop }
      strategy: recreate
      health_check: { path: /healthz, interval: 100ms }
"#;

async fn approvals_refuse_non_approvers_and_the_triggerer(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    setup(&h, "shop", PROTECTED).await;
    let dev = h.user("dev", Some(("shop", "developer")), "api").await;
    let alice = h.user("alice", Some(("shop", "developer")), "api").await;
    let viewer = h.user("vic", Some(("shop", "viewer")), "api").await;
    let maint = h.user("mia", Some(("shop", "maintainer")), "api").await;
    let stranger = h.user("stan", None, "api").await;
    // A developer may not protect; a maintainer may. The rule names alice and dev.
    let rule = json!({"required_approvals": 1, "approvers": ["alice", "dev"]});
    let r = dev
        .json(
            "PUT",
            "/api/v1/projects/shop/protected-environments/production",
            &rule,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let r = maint
        .json(
            "PUT",
            "/api/v1/projects/shop/protected-environments/production",
            &rule,
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());

    let p = run_as(&dev, "shop", "main").await;
    let d = h.wait_pipeline_status(p, &["blocked"]).await;
    let job = Harness::job(&d, "deploy")["id"].as_i64().unwrap();
    h.wait_job(job, |j| j["status"] == "waiting_for_approval")
        .await;
    let dep = deployment_of_job(&h, job).await;
    assert_eq!(dep["status"], "awaiting_approval");
    assert_eq!(dep["triggered_by_name"], "dev");
    let id = dep["id"].as_i64().unwrap();
    assert!(h.log(job).await.contains("waiting for approval"));
    // A manual play does not get around it.
    let r = dev
        .post_json(&format!("/api/v1/jobs/{job}/play"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());

    let approve = |c: &Client| {
        let c = c.clone();
        async move {
            c.post_json(
                &format!("/api/v1/deployments/{id}/approve"),
                &json!({"comment": "ok"}),
            )
            .await
            .unwrap()
        }
    };
    // Not an approver (a maintainer, but the rule names others), a viewer, a stranger,
    // and the triggerer: all refused.
    let r = approve(&maint).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.error_message().contains("not an approver"),
        "{}",
        r.text()
    );
    let r = approve(&viewer).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = approve(&stranger).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = approve(&dev).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.error_message().contains("self-approval"), "{}", r.text());
    let can = dev
        .get(&format!("/api/v1/deployments/{id}"))
        .await
        .unwrap()
        .json()["can"]
        .clone();
    assert_eq!(can["approve"], false);
    assert_eq!(deployment(&h, id).await["status"], "awaiting_approval");
    // The approver's approval lets it go.
    let r = approve(&alice).await;
    assert!(r.ok(), "{}", r.text());
    assert_eq!(r.json()["settled"], true);
    let dep = wait_deployment(&h, id, &["success", "failed"]).await;
    assert_eq!(dep["status"], "success", "{dep}");
    assert_eq!(dep["approved_by"], json!(["alice"]));
    assert_eq!(dep["approvals"][0]["comment"], "ok");
    assert_eq!(h.wait_pipeline(p).await["pipeline"]["status"], "success");

    // A rejection cancels the deployment and its job.
    let p = run_as(&dev, "shop", "main").await;
    let d = h.wait_pipeline_status(p, &["blocked"]).await;
    let job = Harness::job(&d, "deploy")["id"].as_i64().unwrap();
    let id = deployment_of_job(&h, job).await["id"].as_i64().unwrap();
    let r = alice
        .post_json(
            &format!("/api/v1/deployments/{id}/reject"),
            &json!({"comment": "not today"}),
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    let dep = deployment(&h, id).await;
    assert_eq!(dep["status"], "canceled");
    assert_eq!(dep["reason"], "rejected by alice: not today");
    h.wait_job(job, |j| j["status"] == "canceled").await;
    // Deciding twice, or on a finished deployment, is a conflict.
    let r = alice
        .post_json(&format!("/api/v1/deployments/{id}/approve"), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());

    // Self-approval allowed by the rule: the triggerer may.
    let r = maint
        .json(
            "PUT",
            "/api/v1/projects/shop/protected-environments/production",
            &json!({"required_approvals": 1, "approvers": ["dev"], "allow_self_approval": true}),
        )
        .await
        .unwrap();
    assert!(r.ok());
    let p = run_as(&dev, "shop", "main").await;
    let d = h.wait_pipeline_status(p, &["blocked"]).await;
    let job = Harness::job(&d, "deploy")["id"].as_i64().unwrap();
    let id = deployment_of_job(&h, job).await["id"].as_i64().unwrap();
    let r = dev
        .post_json(&format!("/api/v1/deployments/{id}/approve"), &json!({}))
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    assert_eq!(h.wait_pipeline(p).await["pipeline"]["status"], "success");

    let actions = audit_actions(&h).await;
    for (who, what) in [
        ("mia", "protection.set"),
        ("alice", "deployment.approve"),
        ("alice", "deployment.reject"),
        ("dev", "deployment.approve"),
        ("dev", "deployment.create"),
    ] {
        assert!(
            actions.iter().any(|(a, x)| a == who && x == what),
            "no {what} by {who} in {actions:?}"
        );
    }
    h.stop().await;
}

const RECORD_ONLY: &str = r#"
stages: [deploy]
deploy:
  stage: deploy
  script: [echo "deploying with my own script"]
  environment: { name: production, url: "https://$CI_PROJECT_NAME.example" }
"#;

async fn wait_timers_and_allowed_refs(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let repo = setup(&h, "shop", RECORD_ONLY).await;
    repo.git(&["branch", "feature"]);
    let r = h
        .admin
        .json(
            "PUT",
            "/api/v1/projects/shop/protected-environments/production",
            &json!({"allowed_branches": ["main"], "allowed_tags": ["v*"], "wait_timer": "1s"}),
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    // A branch the rule does not name: refused at once.
    let p = run_as(&h.admin, "shop", "feature").await;
    let d = h.wait_pipeline(p).await;
    assert_eq!(d["pipeline"]["status"], "failed");
    let job = Harness::job(&d, "deploy");
    assert_eq!(job["failure_reason"], "deployment_rejected");
    let dep = deployment_of_job(&h, job["id"].as_i64().unwrap()).await;
    assert_eq!(dep["status"], "failed");
    assert!(
        dep["reason"]
            .as_str()
            .unwrap()
            .contains("only branches main and tags v*"),
        "{dep}"
    );
    assert!(h
        .log(job["id"].as_i64().unwrap())
        .await
        .contains("is protected"));
    // main waits for the timer, then deploys (with the job's script: no `.slipway`).
    let p = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline(p).await;
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    let job = Harness::job(&d, "deploy")["id"].as_i64().unwrap();
    let dep = deployment_of_job(&h, job).await;
    assert_eq!(dep["status"], "success");
    assert_eq!(dep["strategy"], Value::Null);
    let wait_until = dep["wait_until"].as_str().unwrap().to_string();
    let started = dep["started_at"].as_str().unwrap().to_string();
    assert!(
        started >= wait_until,
        "started {started} before the timer ended {wait_until}"
    );
    let env = environment(&h, "shop", "production").await;
    assert_eq!(env["url"], "https://shop.example");
    assert_eq!(env["tier"], "production");
    h.stop().await;
}

const PROMOTION: &str = r#"
stages: [build, staging, production]
build:
  stage: build
  script: [cp "$SHOP_BIN" shop]
  artifacts: { paths: [shop] }
deploy-staging:
  stage: staging
  needs: [build]
  script: [echo staging]
  environment: staging
deploy-production:
  stage: production
  needs: [build]
  script: [echo production]
  environment: production
.slipway:
  environments:
    staging:
      process: { command: ./shop }
      strategy: recreate
      health_check: { path: /healthz, interval: 100ms }
      deploy_on: { branches: [main], when: manual }
    production:
      process: { command: ./shop }
      strategy: recreate
      health_check: { path: /healthz, interval: 100ms }
      promotion: { from: staging }
      deploy_on: { branches: [main], tags: ["v*"] }
"#;

async fn promotion_takes_only_what_passed_staging(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let repo = setup(&h, "shop", PROMOTION).await;
    repo.git(&["branch", "feature"]);
    // deploy_on: a feature branch deploys nowhere; main has staging on a click.
    let p = run_as(&h.admin, "shop", "feature").await;
    let d = h.wait_pipeline(p).await;
    let names: Vec<&str> = d["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["build"]);
    let p = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline_status(p, &["failed"]).await;
    assert_eq!(Harness::job(&d, "deploy-staging")["status"], "manual");
    // Production first: its digest never passed staging.
    let prod = Harness::job(&d, "deploy-production");
    assert_eq!(prod["failure_reason"], "deployment_rejected");
    let refused = deployment_of_job(&h, prod["id"].as_i64().unwrap()).await;
    assert_eq!(refused["status"], "failed");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("only takes artifacts deployed successfully to staging"),
        "{refused}"
    );
    // Staging, then the same digest goes to production.
    let staging = Harness::job(&d, "deploy-staging")["id"].as_i64().unwrap();
    let r = h
        .admin
        .post_json(&format!("/api/v1/jobs/{staging}/play"), &json!({}))
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    h.wait_job(staging, |j| j["status"] == "success").await;
    let r = h
        .admin
        .post_json(&format!("/api/v1/jobs/{}/retry", prod["id"]), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let retried = r.json()["id"].as_i64().unwrap();
    h.wait_job(retried, |j| j["status"] == "success").await;
    let promoted = deployment_of_job(&h, retried).await;
    assert_eq!(promoted["status"], "success");
    let in_staging = deployment_of_job(&h, staging).await;
    assert_eq!(
        promoted["digest"], in_staging["digest"],
        "the same build, promoted"
    );
    // Tags reach production (deploy_on) but not staging.
    repo.git(&["tag", "v1.0.0"]);
    let p = run_as(&h.admin, "shop", "v1.0.0").await;
    let d = h.wait_pipeline(p).await;
    let names: Vec<&str> = d["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["build", "deploy-production"]);
    assert_eq!(d["pipeline"]["status"], "success", "{d}");
    let all = h.admin.get("/api/v1/environments").await.unwrap().json();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    h.stop().await;
}

const SERIAL: &str = r#"
deploy:
  resource_group: production
  script:
    - echo "start $CI_PIPELINE_ID $(date +%s%N)"
    - sleep 1
"#;

async fn resource_groups_run_one_job_at_a_time_in_their_mode(backend: Backend) {
    let Some(h) = Harness::start_with(backend, |c| c.concurrency = 4).await else {
        return;
    };
    let r = TestRepo::init(&h.dir.path().join("svc"));
    r.commit(&[(".gitlab-ci.yml", SERIAL)], "pipeline");
    h.project("svc", &r.path).await;
    // The first takes the group; two more pipelines then wait for it.
    let mut ids = vec![run_as(&h.admin, "svc", "main").await];
    let first = Harness::job(
        &h.wait_pipeline_status(ids[0], &["running"]).await,
        "deploy",
    )["id"]
        .as_i64()
        .unwrap();
    h.wait_job(first, |j| j["status"] == "running").await;
    for _ in 0..2 {
        let id = run_as(&h.admin, "svc", "main").await;
        let d = h.wait_pipeline_status(id, &["running"]).await;
        let j = Harness::job(&d, "deploy")["id"].as_i64().unwrap();
        h.wait_job(j, |j| j["status"] == "waiting_for_resource")
            .await;
        ids.push(id);
    }
    // GitLab sets the mode through its API; here too. Newest first from now on.
    let r = h
        .admin
        .json(
            "PUT",
            "/api/v1/projects/svc/resource-groups/production",
            &json!({"process_mode": "newest_first"}),
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    assert_eq!(r.json()["process_mode"], "newest_first");
    let mut jobs = Vec::new();
    for id in &ids {
        let d = h.wait_pipeline(*id).await;
        assert_eq!(d["pipeline"]["status"], "success", "{d}");
        let j = Harness::job(&d, "deploy").clone();
        jobs.push((
            j["started_at"].as_str().unwrap().to_string(),
            j["finished_at"].as_str().unwrap().to_string(),
            *id,
        ));
    }
    // Never two at once.
    let mut by_start = jobs.clone();
    by_start.sort();
    for w in by_start.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlap: {w:?}");
    }
    // The first took the group at once; of the two that waited, the newest went first.
    let order: Vec<i64> = by_start.iter().map(|j| j.2).collect();
    assert_eq!(order, [ids[0], ids[2], ids[1]], "{by_start:?}");
    let groups = h
        .admin
        .get("/api/v1/projects/svc/resource-groups")
        .await
        .unwrap()
        .json();
    assert_eq!(groups["items"][0]["name"], "production");
    h.stop().await;
}

/// A webhook receiver: answers 500 to the first request, then 200; keeps what it got.
async fn receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(Vec<(String, String)>, String)>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = seen.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body) = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let head = text[..i].to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            break (
                                head,
                                String::from_utf8_lossy(&buf[i + 4..i + 4 + len]).to_string(),
                            );
                        }
                    }
                };
                let headers: Vec<(String, String)> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let status = if n == 0 {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                if n > 0 {
                    seen.lock().unwrap().push((headers, body));
                }
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (format!("http://{addr}"), got)
}

async fn notifications_reach_slack_and_signed_json_webhooks(backend: Backend) {
    use hmac::{Hmac, Mac};
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    setup(&h, "shop", PROTECTED).await;
    let (slack_url, slack) = receiver().await;
    let (json_url, generic) = receiver().await;
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/shop/deployment-webhooks",
            &json!({"kind": "slack", "url": format!("{slack_url}/services/T0/B0/secretpath")}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(!r.text().contains("secretpath"));
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/shop/deployment-webhooks",
            &json!({"kind": "json", "url": format!("{json_url}/hook"), "secret": "whsec-test-secret", "environment": "production"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    // Only http:// for now, said clearly.
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/shop/deployment-webhooks",
            &json!({"kind": "json", "url": "https://example.com/hook"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.text());

    let p = run_as(&h.admin, "shop", "main").await;
    assert_eq!(h.wait_pipeline(p).await["pipeline"]["status"], "success");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = slack.lock().unwrap().len();
        let g = generic.lock().unwrap().len();
        if s >= 2 && g >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "slack {s}, json {g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let texts: Vec<String> = slack
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<Value>(b).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("to *production* started")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("to *production* succeeded")),
        "{texts:?}"
    );
    let events = generic.lock().unwrap().clone();
    let mut kinds = Vec::new();
    for (headers, body) in &events {
        let hdr = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"whsec-test-secret").unwrap();
        mac.update(hdr("x-slipway-timestamp").as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hdr("x-slipway-signature"), format!("sha256={want}"));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["environment"], "production");
        assert_eq!(v["project"], "shop");
        kinds.push(hdr("x-slipway-event"));
    }
    assert!(
        kinds.contains(&"deployment.started".to_string()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"deployment.succeeded".to_string()),
        "{kinds:?}"
    );
    let listed = h
        .admin
        .get("/api/v1/projects/shop/deployment-webhooks")
        .await
        .unwrap();
    assert!(!listed.text().contains("secret"), "{}", listed.text());
    h.stop().await;
}

async fn record_only_deployments_follow_their_job(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let repo = setup(&h, "shop", RECORD_ONLY).await;
    let p = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline(p).await;
    let dep = deployment_of_job(&h, Harness::job(&d, "deploy")["id"].as_i64().unwrap()).await;
    assert_eq!(dep["status"], "success");
    assert_eq!(dep["digest"], Value::Null, "no artifacts, no release");
    repo.commit(
        &[(
            ".gitlab-ci.yml",
            &RECORD_ONLY.replace("echo \"deploying with my own script\"", "exit 3"),
        )],
        "break it",
    );
    let p = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline(p).await;
    let dep = deployment_of_job(&h, Harness::job(&d, "deploy")["id"].as_i64().unwrap()).await;
    let dep = wait_deployment(&h, dep["id"].as_i64().unwrap(), &["failed"]).await;
    assert!(
        dep["reason"].as_str().unwrap().contains("script_failure"),
        "{dep}"
    );
    // Such an environment cannot be rolled back by Slipway: retry the old job instead.
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/shop/environments/production/rollback",
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    h.stop().await;
}

async fn pinned_artifacts_survive_expiry_and_rollback_uses_them(backend: Backend) {
    let Some(h) = Harness::start_with(backend, |c| c.keep_deployments = 1).await else {
        return;
    };
    let file = pipeline("1.0.0", "recreate", "/healthz").replace(
        "    paths: [shop, version.txt]",
        "    paths: [shop, version.txt]\n    expire_in: 1 second",
    );
    let repo = setup(&h, "shop", &file).await;
    let p = run_as(&h.admin, "shop", "main").await;
    assert_eq!(h.wait_pipeline(p).await["pipeline"]["status"], "success");
    repo.commit(&[(".gitlab-ci.yml", &file.replace("1.0.0", "2.0.0"))], "v2");
    let p = run_as(&h.admin, "shop", "main").await;
    assert_eq!(h.wait_pipeline(p).await["pipeline"]["status"], "success");
    repo.commit(&[(".gitlab-ci.yml", &file.replace("1.0.0", "3.0.0"))], "v3");
    let p = run_as(&h.admin, "shop", "main").await;
    assert_eq!(h.wait_pipeline(p).await["pipeline"]["status"], "success");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // keep_deployments = 1: only v3's artifacts are pinned; v1's and v2's expire.
    let deleted = slipway_server::deployments::sweep::expire_artifacts(&h.app)
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(h.app.store.kept_store_ids().await.unwrap().len(), 1);
    // The pinned release extracts again from the store after its directory is gone.
    let _ = std::fs::remove_dir_all(h.data.join("releases"));
    let d3 = h
        .app
        .store
        .deployments(
            h.app
                .store
                .environment_by_name(slipway_db::ProjectId(1), "production")
                .await
                .unwrap()
                .unwrap()
                .id,
            None,
            1,
        )
        .await
        .unwrap()[0]
        .clone();
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/shop/environments/production/rollback",
            &json!({"to": d3.id.0}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let addr = router(&environment(&h, "shop", "production").await);
    assert_eq!(shop::version(&addr).await, "3.0.0");
    // v1's artifacts are gone: rolling back to it says so and changes nothing.
    let d1 = h
        .admin
        .get("/api/v1/projects/shop/environments/production/deployments?limit=10")
        .await
        .unwrap()
        .json()["items"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/shop/environments/production/rollback",
            &json!({"to": d1}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("gone"), "{}", r.text());
    assert_eq!(shop::version(&addr).await, "3.0.0");
    h.stop().await;
}

/// The pages: the environment page shows what runs where and the buttons each role may
/// press; the approve button works from the page.
async fn pages_show_environments_and_their_buttons(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    setup(&h, "shop", PROTECTED).await;
    h.user("alice", Some(("shop", "developer")), "api").await;
    h.user("vic", Some(("shop", "viewer")), "api").await;
    let r = h
        .admin
        .json(
            "PUT",
            "/api/v1/projects/shop/protected-environments/production",
            &json!({"required_approvals": 1, "approvers": ["alice"]}),
        )
        .await
        .unwrap();
    assert!(r.ok());
    let p = run_as(&h.admin, "shop", "main").await;
    let d = h.wait_pipeline_status(p, &["blocked"]).await;
    let job = Harness::job(&d, "deploy")["id"].as_i64().unwrap();
    let id = deployment_of_job(&h, job).await["id"].as_i64().unwrap();

    let page_of = |user: &'static str| {
        let h = &h;
        async move { ui::Browser::sign_in(h, user, "password-of-someone").await }
    };
    let vic = page_of("vic").await;
    let html = vic.page("/projects/shop/environments/production").await;
    assert!(html.contains("Awaiting approval"), "{html}");
    assert!(
        !html.contains(">Approve<"),
        "a viewer gets no approve button"
    );
    assert!(html.contains("is not an approver"));
    let alice = page_of("alice").await;
    let html = alice.page("/projects/shop/environments/production").await;
    assert!(
        html.contains(">Approve<") && html.contains(">Reject<"),
        "{html}"
    );
    let list = alice.page("/projects/shop/environments").await;
    assert!(
        list.contains("production") && list.contains("1 awaiting approval"),
        "{list}"
    );
    let job_page = alice.page(&format!("/projects/shop/jobs/{job}")).await;
    assert!(
        job_page.contains(&format!("deployment #{id}")),
        "{job_page}"
    );
    // Approve from the page.
    let csrf = ui::csrf_of(&html);
    let r = alice
        .post(
            &format!("/projects/shop/deployments/{id}/approve"),
            &[("_csrf", &csrf), ("comment", "go")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    wait_deployment(&h, id, &["success"]).await;
    let html = alice.page("/projects/shop/environments/production").await;
    assert!(
        html.contains("Running now") && html.contains("alice"),
        "{html}"
    );
    let dpage = alice
        .page(&format!("/projects/shop/deployments/{id}"))
        .await;
    assert!(
        dpage.contains("approved") && dpage.contains("go"),
        "{dpage}"
    );
    h.stop().await;
}

mod ui {
    //! A browser-like client for the pages (as in `tests/ui.rs`).
    use super::harness::Harness;
    use slipway_server::client::{Client, Reply};

    pub struct Browser {
        client: Client,
        cookie: String,
    }

    pub fn csrf_of(html: &str) -> String {
        let at = html.find("name=\"_csrf\" value=\"").expect("a form") + 20;
        html[at..at + html[at..].find('"').unwrap()].to_string()
    }

    fn cookie_value(r: &Reply, name: &str) -> Option<String> {
        r.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    fn form(fields: &[(&str, &str)]) -> Vec<u8> {
        fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    impl Browser {
        pub async fn sign_in(h: &Harness, user: &str, password: &str) -> Browser {
            let anon = Client::new(&h.url, None).unwrap();
            let page = anon.get("/login?next=/projects").await.unwrap();
            let login = cookie_value(&page, "slipway_login").expect("login cookie");
            let html = page.text();
            let at = html.find("name=\"_login\" value=\"").unwrap() + 21;
            let token = &html[at..at + html[at..].find('"').unwrap()];
            let r = anon
                .send(
                    "POST",
                    "/login",
                    Some((
                        "application/x-www-form-urlencoded",
                        form(&[
                            ("_login", token),
                            ("next", "/projects"),
                            ("username", user),
                            ("password", password),
                        ]),
                    )),
                    &[("cookie", &format!("slipway_login={login}"))],
                )
                .await
                .unwrap();
            assert_eq!(r.status, 303, "{}", r.text());
            let session = cookie_value(&r, "slipway_session").expect("session cookie");
            Browser {
                client: anon,
                cookie: format!("slipway_session={session}"),
            }
        }

        pub async fn page(&self, path: &str) -> String {
            let r = self
                .client
                .send("GET", path, None, &[("cookie", &self.cookie)])
                .await
                .unwrap();
            assert_eq!(r.status, 200, "GET {path}: {}", r.text());
            r.text()
        }

        pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
            self.client
                .send(
                    "POST",
                    path,
                    Some(("application/x-www-form-urlencoded", form(fields))),
                    &[("cookie", &self.cookie)],
                )
                .await
                .unwrap()
        }
    }
}

server_tests!(
    blue_green_and_rollback_with_the_old_variables,
    a_release_that_never_gets_healthy_takes_no_traffic,
    a_release_lost_while_the_old_is_warm_is_rolled_back_by_itself,
    approvals_refuse_non_approvers_and_the_triggerer,
    wait_timers_and_allowed_refs,
    promotion_takes_only_what_passed_staging,
    resource_groups_run_one_job_at_a_time_in_their_mode,
    notifications_reach_slack_and_signed_json_webhooks,
    record_only_deployments_follow_their_job,
    pinned_artifacts_survive_expiry_and_rollback_uses_them,
    pages_show_environments_and_their_buttons,
);
