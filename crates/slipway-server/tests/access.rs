//! Every mutating route checks who calls: walked from the router's own list, each one is
//! called anonymously (401), as a project viewer (403 where a role is needed), with a
//! read-only token (403), and with a session cookie but no CSRF token (403).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use common::TestRepo;
use harness::{Backend, Harness};
use serde_json::json;
use slipway_server::client::Client;
use slipway_server::http::{api_routes, Access};

const PIPELINE: &str = "
build:
  script: [echo built]
deploy:
  when: manual
  script: [echo deployed]
";

/// Ids to put in the paths.
struct Ids {
    pipeline: i64,
    job: i64,
    schedule: i64,
    trigger: i64,
    token: i64,
}

fn path_for(template: &str, ids: &Ids) -> String {
    let id = if template.starts_with("/pipelines/") {
        ids.pipeline
    } else if template.starts_with("/jobs/") {
        ids.job
    } else if template.starts_with("/user/tokens/") {
        ids.token
    } else if template.contains("/schedules/") {
        ids.schedule
    } else if template.contains("/triggers/") {
        ids.trigger
    } else {
        0
    };
    format!(
        "/api/v1{}",
        template
            .replace("{project}", "app")
            .replace("{id}", &id.to_string())
            .replace("{key}", "SOME_KEY")
            .replace("{user}", "viewer")
            .replace("{provider}", "github")
            .replace("{name}", "production")
    )
}

/// A plausible body, so a refusal is about who calls, not about the body.
fn body_for(template: &str) -> (String, Vec<u8>) {
    let json = |v: serde_json::Value| ("application/json".to_string(), v.to_string().into_bytes());
    if template.ends_with("/hook") {
        return ("text/plain".into(), Vec::new());
    }
    if template.ends_with("/trigger/pipeline") {
        return (
            "application/x-www-form-urlencoded".into(),
            b"ref=main".to_vec(),
        );
    }
    match template {
        "/session" => json(json!({"username": "admin", "password": "wrong-password"})),
        "/user/tokens" => json(json!({"name": "x"})),
        "/users" => json(json!({"username": "someone", "password": "password-123"})),
        "/projects" => json(json!({"name": "other", "repository": "/tmp"})),
        _ if template.contains("/variables/") => json(json!({"value": "v"})),
        _ if template.contains("/members/") => json(json!({"role": "admin"})),
        _ if template.contains("/schedules") => json(json!({"cron": "0 2 * * *"})),
        _ if template.contains("/webhooks/") => json(json!({"secret": "a-long-secret"})),
        _ if template.ends_with("/triggers") => json(json!({"description": "x"})),
        _ if template.contains("/resource-groups/") => {
            json(json!({"process_mode": "oldest_first"}))
        }
        _ if template.ends_with("/deployment-webhooks") => {
            json(json!({"kind": "json", "url": "http://127.0.0.1:9/hook"}))
        }
        _ => json(json!({})),
    }
}

async fn call(
    c: &Client,
    method: &str,
    template: &str,
    ids: &Ids,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let (ct, body) = body_for(template);
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if template.ends_with("/webhook") {
        headers.push(("X-GitHub-Event", "push"));
    }
    let r = c
        .send(
            method,
            &path_for(template, ids),
            Some((ct.as_str(), body)),
            &headers,
        )
        .await
        .unwrap();
    let code = r.json()["error"]["code"].as_str().unwrap_or("").to_string();
    (r.status, code)
}

async fn every_mutating_route_checks_its_caller(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let repo = TestRepo::init(&h.dir.path().join("repo"));
    repo.commit(&[(".gitlab-ci.yml", PIPELINE)], "pipeline");
    h.project("app", &repo.path).await;
    let created = h
        .admin
        .post_json("/api/v1/projects/app/pipelines", &json!({"ref": "main"}))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    let pipeline = created.json()["pipeline"]["id"].as_i64().unwrap();
    let detail = h
        .wait_pipeline_status(pipeline, &["blocked", "success"])
        .await;
    let job = Harness::job(&detail, "deploy")["id"].as_i64().unwrap();
    let schedule = h
        .admin
        .post_json(
            "/api/v1/projects/app/schedules",
            &json!({"cron": "0 3 * * *"}),
        )
        .await
        .unwrap()
        .json()["id"]
        .as_i64()
        .unwrap();
    let trigger = h
        .admin
        .post_json(
            "/api/v1/projects/app/triggers",
            &json!({"description": "ci"}),
        )
        .await
        .unwrap()
        .json()["info"]["id"]
        .as_i64()
        .unwrap();
    let token = h.admin.get("/api/v1/user/tokens").await.unwrap().json()["items"][0]["id"]
        .as_i64()
        .unwrap();
    let ids = Ids {
        pipeline,
        job,
        schedule,
        trigger,
        token,
    };
    let viewer = h.user("viewer", Some(("app", "viewer")), "api").await;
    let read_only_admin = {
        let admin = h.app.store.user_by_name("admin").await.unwrap().unwrap();
        let (t, _) = h
            .app
            .store
            .create_api_token(
                &slipway_db::Actor::user(&admin),
                admin.id,
                "ro",
                &[slipway_db::TokenScope::ReadApi],
                None,
            )
            .await
            .unwrap();
        Client::new(&h.url, Some(t.expose().to_string())).unwrap()
    };
    // A signed-in browser: the session cookie, but no CSRF token.
    let login = h
        .anonymous()
        .post_json(
            "/api/v1/session",
            &json!({"username": "admin", "password": harness::ADMIN_PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(login.status, 201);
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(login.header("set-cookie").unwrap().contains("HttpOnly"));
    assert!(login.header("set-cookie").unwrap().contains("SameSite=Lax"));

    let anonymous = h.anonymous();
    let routes = api_routes().list;
    let mut checked = 0;
    for r in routes.iter().filter(|r| r.method != "GET") {
        let m = r.method.as_str();
        let (status, code) = call(&anonymous, m, r.path, &ids, &[]).await;
        assert_eq!(
            status, 401,
            "anonymous {m} {} answered {status} {code}",
            r.path
        );
        match r.access {
            Access::Project(a) if a != slipway_db::Action::View => {
                let (status, code) = call(&viewer, m, r.path, &ids, &[]).await;
                assert_eq!(
                    (status, code.as_str()),
                    (403, "forbidden"),
                    "viewer {m} {}",
                    r.path
                );
            }
            Access::Admin => {
                let (status, _) = call(&viewer, m, r.path, &ids, &[]).await;
                assert_eq!(status, 403, "viewer {m} {}", r.path);
            }
            _ => {}
        }
        if matches!(r.access, Access::Project(_) | Access::Admin | Access::User) {
            let (status, code) = call(&read_only_admin, m, r.path, &ids, &[]).await;
            assert_eq!(
                (status, code.as_str()),
                (403, "insufficient_scope"),
                "read-only token {m} {}",
                r.path
            );
            let (status, code) =
                call(&anonymous, m, r.path, &ids, &[("Cookie", cookie.as_str())]).await;
            assert_eq!(
                (status, code.as_str()),
                (403, "csrf"),
                "session without CSRF token {m} {}",
                r.path
            );
        }
        checked += 1;
    }
    assert!(checked >= 37, "only {checked} mutating routes");

    // Nothing those calls tried happened: the manual job waits, the schedule is there.
    let job_now = h
        .admin
        .get(&format!("/api/v1/jobs/{job}"))
        .await
        .unwrap()
        .json();
    assert_eq!(job_now["job"]["status"], "manual");
    assert_eq!(
        h.admin
            .get("/api/v1/projects/app/schedules")
            .await
            .unwrap()
            .json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // And the same session with its CSRF token may act.
    let csrf = login.json()["csrf_token"].as_str().unwrap().to_string();
    let r = anonymous
        .send(
            "POST",
            &format!("/api/v1/jobs/{job}/play"),
            None,
            &[("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    h.stop().await;
}

async fn viewers_see_and_strangers_do_not(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let repo = TestRepo::init(&h.dir.path().join("repo"));
    repo.commit(&[(".gitlab-ci.yml", PIPELINE)], "pipeline");
    h.project("app", &repo.path).await;
    let viewer = h.user("viewer", Some(("app", "viewer")), "api").await;
    let stranger = h.user("stranger", None, "api").await;
    assert_eq!(
        viewer.get("/api/v1/projects/app").await.unwrap().status,
        200
    );
    let r = stranger.get("/api/v1/projects/app").await.unwrap();
    assert_eq!(
        r.status, 404,
        "a project one may not see does not exist for them"
    );
    assert_eq!(
        stranger.get("/api/v1/projects").await.unwrap().json()["items"],
        json!([])
    );
    assert_eq!(
        viewer.get("/api/v1/projects").await.unwrap().json()["items"][0]["role"],
        "viewer"
    );
    // Viewers do not read settings (variables may hold credentials).
    assert_eq!(
        viewer
            .get("/api/v1/projects/app/variables")
            .await
            .unwrap()
            .status,
        403
    );
    // A developer may trigger, not change settings.
    let dev = h.user("dev", Some(("app", "developer")), "api").await;
    let r = dev
        .post_json("/api/v1/projects/app/pipelines", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["pipeline"]["source"], "api");
    let r = dev
        .json(
            "PATCH",
            "/api/v1/projects/app",
            &json!({"default_branch": "x"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // Errors have one shape.
    let r = h.admin.get("/api/v1/nowhere").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = h
        .admin
        .send("PUT", "/api/v1/projects", None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    let r = h
        .admin
        .send(
            "POST",
            "/api/v1/projects",
            Some(("application/json", b"{".to_vec())),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "bad_request");
    h.stop().await;
}

server_tests!(
    every_mutating_route_checks_its_caller,
    viewers_see_and_strangers_do_not
);
