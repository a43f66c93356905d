//! Every mutating route writes its audit entry: each one is called once, successfully
//! (and the refusals of hook, webhook and trigger-token calls too), and the newest
//! entries must include the expected action with the caller as actor. The table must
//! cover every mutating route the router has, so a new route without an entry fails
//! here. The chain verifies afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;
mod shop;

use common::TestRepo;
use harness::{Backend, Harness};
use serde_json::{json, Value};
use slipway_server::client::Client;
use slipway_server::http::api_routes;
use std::collections::BTreeSet;

const PIPELINE: &str = "
build:
  script: [echo built]
deploy:
  when: manual
  script: [echo deployed]
long:
  rules:
    - if: $LONG
  script: [sleep 60]
";

async fn newest_actions(h: &Harness, since: i64) -> Vec<(String, String)> {
    h.app
        .store
        .audit_entries(since, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.actor, e.action))
        .collect()
}

async fn head(h: &Harness) -> i64 {
    h.app
        .store
        .audit_recent(1)
        .await
        .unwrap()
        .first()
        .map(|e| e.seq)
        .unwrap_or(0)
}

/// Calls `method path` and checks that an entry `action` by `actor` was appended.
#[allow(clippy::too_many_arguments)]
async fn expect(
    h: &Harness,
    done: &mut BTreeSet<(String, String)>,
    c: &Client,
    method: &str,
    template: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    headers: &[(&str, &str)],
    actor: &str,
    action: &str,
) -> Value {
    let since = head(h).await;
    let r = c.send(method, path, body, headers).await.unwrap();
    assert!(r.status < 500, "{method} {path}: {} {}", r.status, r.text());
    let got = newest_actions(h, since).await;
    assert!(
        got.iter().any(|(a, x)| a == actor && x == action),
        "{method} {path} ({}): expected {action} by {actor}, got {got:?}",
        r.status
    );
    done.insert((method.to_string(), template.to_string()));
    r.json()
}

fn j(v: Value) -> Option<(&'static str, Vec<u8>)> {
    Some(("application/json", v.to_string().into_bytes()))
}

async fn every_mutation_is_audited(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let mut done = BTreeSet::new();
    let d = &mut done;
    let a = &h.admin;
    let repo = TestRepo::init(&h.dir.path().join("repo"));
    repo.commit(&[(".gitlab-ci.yml", PIPELINE)], "pipeline");
    let path = repo.path.display().to_string();

    // Sessions and tokens.
    let anon = h.anonymous();
    expect(
        &h,
        d,
        &anon,
        "POST",
        "/session",
        "/api/v1/session",
        j(json!({"username": "admin", "password": "wrong-password"})),
        &[],
        "login:admin",
        "user.login_failed",
    )
    .await;
    let login = anon
        .post_json(
            "/api/v1/session",
            &json!({"username": "admin", "password": harness::ADMIN_PASSWORD}),
        )
        .await
        .unwrap();
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = login.json()["csrf_token"].as_str().unwrap().to_string();
    let session = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())];
    expect(
        &h,
        d,
        &anon,
        "POST",
        "/session",
        "/api/v1/session",
        j(json!({"username": "admin", "password": harness::ADMIN_PASSWORD})),
        &[],
        "admin",
        "user.login",
    )
    .await;
    let t = expect(
        &h,
        d,
        a,
        "POST",
        "/user/tokens",
        "/api/v1/user/tokens",
        j(json!({"name": "extra"})),
        &[],
        "admin",
        "token.create",
    )
    .await;
    let tid = t["info"]["id"].as_i64().unwrap();
    expect(
        &h,
        d,
        a,
        "DELETE",
        "/user/tokens/{id}",
        &format!("/api/v1/user/tokens/{tid}"),
        None,
        &[],
        "admin",
        "token.revoke",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "POST",
        "/users",
        "/api/v1/users",
        j(json!({"username": "dev", "password": "password-123"})),
        &[],
        "admin",
        "user.create",
    )
    .await;

    // Projects and settings.
    expect(
        &h,
        d,
        a,
        "POST",
        "/projects",
        "/api/v1/projects",
        j(json!({"name": "app", "repository": path})),
        &[],
        "admin",
        "project.create",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "PATCH",
        "/projects/{project}",
        "/api/v1/projects/app",
        j(json!({"settings": {"description": "the app"}})),
        &[],
        "admin",
        "project.update",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "PUT",
        "/projects/{project}/variables/{key}",
        "/api/v1/projects/app/variables/TOKEN",
        j(json!({"value": "a-secret-value", "secret": true})),
        &[],
        "admin",
        "secret.set",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "DELETE",
        "/projects/{project}/variables/{key}",
        "/api/v1/projects/app/variables/TOKEN",
        None,
        &[],
        "admin",
        "secret.delete",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "PUT",
        "/projects/{project}/members/{user}",
        "/api/v1/projects/app/members/dev",
        j(json!({"role": "developer"})),
        &[],
        "admin",
        "member.set",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "DELETE",
        "/projects/{project}/members/{user}",
        "/api/v1/projects/app/members/dev",
        None,
        &[],
        "admin",
        "member.remove",
    )
    .await;
    let s = expect(
        &h,
        d,
        a,
        "POST",
        "/projects/{project}/schedules",
        "/api/v1/projects/app/schedules",
        j(json!({"cron": "0 4 * * *"})),
        &[],
        "admin",
        "schedule.create",
    )
    .await;
    let sid = s["id"].as_i64().unwrap();
    expect(
        &h,
        d,
        a,
        "PATCH",
        "/projects/{project}/schedules/{id}",
        &format!("/api/v1/projects/app/schedules/{sid}"),
        j(json!({"active": false})),
        &[],
        "admin",
        "schedule.update",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "DELETE",
        "/projects/{project}/schedules/{id}",
        &format!("/api/v1/projects/app/schedules/{sid}"),
        None,
        &[],
        "admin",
        "schedule.delete",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "PUT",
        "/projects/{project}/webhooks/{provider}",
        "/api/v1/projects/app/webhooks/github",
        j(json!({"secret": "webhook-secret"})),
        &[],
        "admin",
        "webhook.set",
    )
    .await;
    let t = expect(
        &h,
        d,
        a,
        "POST",
        "/projects/{project}/triggers",
        "/api/v1/projects/app/triggers",
        j(json!({"description": "ci"})),
        &[],
        "admin",
        "trigger_token.create",
    )
    .await;
    let trigger_token = t["token"].as_str().unwrap().to_string();
    let trid = t["info"]["id"].as_i64().unwrap();
    let hook = expect(
        &h,
        d,
        a,
        "POST",
        "/projects/{project}/hook-token",
        "/api/v1/projects/app/hook-token",
        None,
        &[],
        "admin",
        "trigger_token.create",
    )
    .await;
    let hook_token = hook["token"].as_str().unwrap().to_string();

    // Triggers: refusals and successes.
    let hook_client = Client::new(&h.url, Some(hook_token)).unwrap();
    let bad_hook = Client::new(&h.url, Some("slwtrig_wrong".into())).unwrap();
    let head_sha = repo.head();
    expect(
        &h,
        d,
        &bad_hook,
        "POST",
        "/projects/{project}/hook",
        "/api/v1/projects/app/hook",
        Some(("text/plain", Vec::new())),
        &[],
        "hook",
        "hook.refused",
    )
    .await;
    repo.commit(&[("x", "1")], "a change");
    let body = format!("{head_sha} {} refs/heads/main\n", repo.head());
    expect(
        &h,
        d,
        &hook_client,
        "POST",
        "/projects/{project}/hook",
        "/api/v1/projects/app/hook",
        Some(("text/plain", body.into_bytes())),
        &[],
        "hook",
        "pipeline.create",
    )
    .await;
    let payload = br#"{"ref":"refs/heads/main","before":"a","after":"b"}"#.to_vec();
    expect(
        &h,
        d,
        &anon,
        "POST",
        "/projects/{project}/webhook",
        "/api/v1/projects/app/webhook",
        Some(("application/json", payload)),
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", "sha256=00"),
        ],
        "webhook:github",
        "webhook.refused",
    )
    .await;
    expect(
        &h,
        d,
        &anon,
        "POST",
        "/projects/{project}/trigger/pipeline",
        "/api/v1/projects/app/trigger/pipeline",
        Some((
            "application/x-www-form-urlencoded",
            format!("token={trigger_token}&ref=main").into_bytes(),
        )),
        &[],
        &format!("trigger:{trid}"),
        "pipeline.create",
    )
    .await;
    expect(
        &h,
        d,
        &anon,
        "POST",
        "/projects/{project}/trigger/pipeline",
        "/api/v1/projects/app/trigger/pipeline",
        Some((
            "application/x-www-form-urlencoded",
            b"token=nope&ref=main".to_vec(),
        )),
        &[],
        "trigger",
        "trigger.refused",
    )
    .await;
    let p = expect(
        &h,
        d,
        a,
        "POST",
        "/projects/{project}/pipelines",
        "/api/v1/projects/app/pipelines",
        j(json!({})),
        &[],
        "admin",
        "pipeline.create",
    )
    .await;
    let pid = p["pipeline"]["id"].as_i64().unwrap();
    let detail = h.wait_pipeline(pid).await;
    let deploy = Harness::job(&detail, "deploy")["id"].as_i64().unwrap();
    let build = Harness::job(&detail, "build")["id"].as_i64().unwrap();

    // Jobs and pipelines.
    expect(
        &h,
        d,
        a,
        "POST",
        "/jobs/{id}/play",
        &format!("/api/v1/jobs/{deploy}/play"),
        None,
        &[],
        "admin",
        "job.play",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "POST",
        "/jobs/{id}/retry",
        &format!("/api/v1/jobs/{build}/retry"),
        None,
        &[],
        "admin",
        "job.retry",
    )
    .await;
    let p2 = a
        .post_json(
            "/api/v1/projects/app/pipelines",
            &json!({"variables": [{"key": "LONG", "value": "1"}]}),
        )
        .await
        .unwrap()
        .json()["pipeline"]["id"]
        .as_i64()
        .unwrap();
    let d2 = h.wait_pipeline_status(p2, &["running"]).await;
    let long = Harness::job(&d2, "long")["id"].as_i64().unwrap();
    expect(
        &h,
        d,
        a,
        "POST",
        "/jobs/{id}/cancel",
        &format!("/api/v1/jobs/{long}/cancel"),
        None,
        &[],
        "admin",
        "job.cancel",
    )
    .await;
    h.wait_pipeline(p2).await;
    expect(
        &h,
        d,
        a,
        "POST",
        "/pipelines/{id}/retry",
        &format!("/api/v1/pipelines/{p2}/retry"),
        None,
        &[],
        "admin",
        "job.retry",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "POST",
        "/pipelines/{id}/cancel",
        &format!("/api/v1/pipelines/{p2}/cancel"),
        None,
        &[],
        "admin",
        "pipeline.cancel",
    )
    .await;
    h.wait_pipeline(p2).await;

    expect(
        &h,
        d,
        a,
        "DELETE",
        "/projects/{project}/webhooks/{provider}",
        "/api/v1/projects/app/webhooks/github",
        None,
        &[],
        "admin",
        "webhook.delete",
    )
    .await;
    expect(
        &h,
        d,
        a,
        "DELETE",
        "/projects/{project}/triggers/{id}",
        &format!("/api/v1/projects/app/triggers/{trid}"),
        None,
        &[],
        "admin",
        "trigger_token.revoke",
    )
    .await;
    expect(
        &h,
        d,
        &anon,
        "DELETE",
        "/session",
        "/api/v1/session",
        None,
        &session,
        "admin",
        "user.logout",
    )
    .await;
    deployments_are_audited(&h, d).await;
    expect(
        &h,
        d,
        a,
        "DELETE",
        "/projects/{project}",
        "/api/v1/projects/app",
        None,
        &[],
        "admin",
        "project.delete",
    )
    .await;

    // The table covers every mutating route.
    let all: BTreeSet<(String, String)> = api_routes()
        .list
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = all.difference(&done).collect();
    assert!(
        missing.is_empty(),
        "mutating routes without an audit check: {missing:?}"
    );
    let report = h.app.store.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    h.stop().await;
}

const DEPLOYED: &str = r#"
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

/// Protection rules, approvals, rejections, rollback, resource groups and notification
/// webhooks, on a second project whose production is deployed by the engine.
async fn deployments_are_audited(h: &Harness, d: &mut BTreeSet<(String, String)>) {
    let a = &h.admin;
    let repo = TestRepo::init(&h.dir.path().join("shop"));
    repo.commit(&[(".gitlab-ci.yml", DEPLOYED)], "pipeline");
    h.project("shop", &repo.path).await;
    let r = a
        .json(
            "PUT",
            "/api/v1/projects/shop/variables/SHOP_BIN",
            &json!({"value": shop::binary().display().to_string()}),
        )
        .await
        .unwrap();
    assert!(r.ok(), "{}", r.text());
    expect(
        h,
        d,
        a,
        "PUT",
        "/projects/{project}/protected-environments/{name}",
        "/api/v1/projects/shop/protected-environments/production",
        // The administrator triggers and approves: self-approval allowed.
        j(json!({"required_approvals": 1, "allow_self_approval": true})),
        &[],
        "admin",
        "protection.set",
    )
    .await;
    // Three pipelines: approved, rejected, approved.
    let mut ids = Vec::new();
    for decision in ["approve", "reject", "approve"] {
        let p = a
            .post_json("/api/v1/projects/shop/pipelines", &json!({}))
            .await
            .unwrap()
            .json()["pipeline"]["id"]
            .as_i64()
            .unwrap();
        let detail = h.wait_pipeline_status(p, &["blocked"]).await;
        let job = Harness::job(&detail, "deploy")["id"].as_i64().unwrap();
        h.wait_job(job, |j| j["status"] == "waiting_for_approval")
            .await;
        let dep = h
            .app
            .store
            .deployment_for_job(slipway_db::JobId(job))
            .await
            .unwrap()
            .unwrap();
        expect(
            h,
            d,
            a,
            "POST",
            &format!("/deployments/{{id}}/{decision}"),
            &format!("/api/v1/deployments/{}/{decision}", dep.id),
            None,
            &[],
            "admin",
            &format!("deployment.{decision}"),
        )
        .await;
        h.wait_pipeline(p).await;
        ids.push(dep.id);
    }
    expect(
        h,
        d,
        a,
        "POST",
        "/projects/{project}/environments/{name}/rollback",
        "/api/v1/projects/shop/environments/production/rollback",
        j(json!({})),
        &[],
        "admin",
        "deployment.rollback",
    )
    .await;
    expect(
        h,
        d,
        a,
        "PUT",
        "/projects/{project}/resource-groups/{name}",
        "/api/v1/projects/shop/resource-groups/production",
        j(json!({"process_mode": "oldest_first"})),
        &[],
        "admin",
        "resource_group.update",
    )
    .await;
    let hook = expect(
        h,
        d,
        a,
        "POST",
        "/projects/{project}/deployment-webhooks",
        "/api/v1/projects/shop/deployment-webhooks",
        j(json!({"kind": "slack", "url": "http://127.0.0.1:9/services/x"})),
        &[],
        "admin",
        "deployment_webhook.create",
    )
    .await;
    expect(
        h,
        d,
        a,
        "DELETE",
        "/projects/{project}/deployment-webhooks/{id}",
        &format!("/api/v1/projects/shop/deployment-webhooks/{}", hook["id"]),
        None,
        &[],
        "admin",
        "deployment_webhook.delete",
    )
    .await;
    expect(
        h,
        d,
        a,
        "DELETE",
        "/projects/{project}/protected-environments/{name}",
        "/api/v1/projects/shop/protected-environments/production",
        None,
        &[],
        "admin",
        "protection.delete",
    )
    .await;
}

server_tests!(every_mutation_is_audited);
