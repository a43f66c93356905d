//! Every trigger makes a pipeline with the right `CI_PIPELINE_SOURCE` and honours
//! `workflow:rules`: webhooks with real signatures (and refusals, audited), polling, the
//! API, trigger tokens and schedules (once per due time, also with two servers on one
//! PostgreSQL database); invalid configurations make a failed pipeline with positioned
//! errors; `[skip ci]` a skipped one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use common::TestRepo;
use harness::{Backend, Harness};
use serde_json::{json, Value};
use slipway_server::webhook::{gitea_signature, github_signature};
use std::time::Duration;

const ZERO: &str = "0000000000000000000000000000000000000000";

/// `source` and the variable `WHO` as the job sees them.
const ECHO: &str = r#"
workflow:
  rules:
    - if: $CI_COMMIT_MESSAGE =~ /no pipeline/
      when: never
    - when: always
job:
  script:
    - echo "source=$CI_PIPELINE_SOURCE who=$WHO"
"#;

/// A "remote" bare repository with a pipeline, and a clone pushing to it (no hook).
fn remote(h: &Harness, name: &str, pipeline: &str) -> (TestRepo, TestRepo) {
    let bare = TestRepo::init_bare(&h.dir.path().join(format!("{name}.git")));
    let work = TestRepo::init(&h.dir.path().join(format!("{name}-work")));
    work.git(&["remote", "add", "origin", bare.path.to_str().unwrap()]);
    work.commit(&[(".gitlab-ci.yml", pipeline)], "initial");
    work.git(&["push", "--quiet", "origin", "main"]);
    (bare, work)
}

async fn only_job_log(h: &Harness, pipeline: i64) -> (Value, String) {
    let d = h.wait_pipeline(pipeline).await;
    let id = d["jobs"][0]["id"].as_i64().unwrap();
    let log = h.log(id).await;
    (d, log)
}

async fn audit_actions(h: &Harness) -> Vec<String> {
    h.admin.get("/api/v1/audit?limit=100").await.unwrap().json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

async fn webhooks_are_verified(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let (_bare, work) = remote(&h, "app", ECHO);
    h.project("app", &_bare.path).await;
    for (provider, secret) in [
        ("github", "github-secret-1"),
        ("gitlab", "gitlab-token-1"),
        ("gitea", "gitea-secret-1"),
    ] {
        let r = h
            .admin
            .json(
                "PUT",
                &format!("/api/v1/projects/app/webhooks/{provider}"),
                &json!({"secret": secret}),
            )
            .await
            .unwrap();
        assert!(r.ok(), "{}", r.text());
    }
    let listed = h
        .admin
        .get("/api/v1/projects/app/webhooks")
        .await
        .unwrap()
        .json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    assert!(
        !listed.to_string().contains("secret-1"),
        "secrets never listed"
    );
    assert!(listed["url"]
        .as_str()
        .unwrap()
        .ends_with("/api/v1/projects/1/webhook"));

    let mut expected = 0;
    for provider in ["github", "gitlab", "gitea"] {
        let before = work.head();
        let after = work.commit(&[("f", provider)], &format!("change for {provider}"));
        work.git(&["push", "--quiet", "origin", "main"]);
        let body = match provider {
            "gitlab" => json!({"object_kind": "push", "ref": "refs/heads/main", "before": before,
                "after": after, "user_username": "ada", "project": {"path_with_namespace": "acme/app"},
                "commits": []}),
            _ => json!({"ref": "refs/heads/main", "before": before, "after": after,
                "repository": {"full_name": "acme/app"}, "sender": {"login": "ada", "id": 7},
                "commits": []}),
        }
        .to_string()
        .into_bytes();
        let good: Vec<(String, String)> = match provider {
            "github" => vec![
                ("X-GitHub-Event".into(), "push".into()),
                (
                    "X-Hub-Signature-256".into(),
                    github_signature("github-secret-1", &body),
                ),
            ],
            "gitlab" => vec![
                ("X-Gitlab-Event".into(), "Push Hook".into()),
                ("X-Gitlab-Token".into(), "gitlab-token-1".into()),
            ],
            _ => vec![
                ("X-Gitea-Event".into(), "push".into()),
                (
                    "X-Gitea-Signature".into(),
                    gitea_signature("gitea-secret-1", &body),
                ),
            ],
        };
        // A wrong signature (or token) first: refused with 401, audited, nothing made.
        let mut bad = good.clone();
        bad[1].1 = match provider {
            "github" => github_signature("wrong", &body),
            "gitlab" => "wrong-token".into(),
            _ => gitea_signature("wrong", &body),
        };
        let send = |headers: Vec<(String, String)>| {
            let c = h.anonymous();
            let body = body.clone();
            async move {
                let hs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                c.send(
                    "POST",
                    "/api/v1/projects/app/webhook",
                    Some(("application/json", body)),
                    &hs,
                )
                .await
                .unwrap()
            }
        };
        let r = send(bad).await;
        assert_eq!(r.status, 401, "{provider}: {}", r.text());
        assert!(audit_actions(&h)
            .await
            .contains(&"webhook.refused".to_string()));
        assert_eq!(h.pipelines("app").await.len(), expected);
        let r = send(good).await;
        assert_eq!(r.status, 200, "{provider}: {}", r.text());
        expected += 1;
        let list = h.wait_pipelines("app", expected).await;
        assert_eq!(list[0]["sha"], after.as_str());
        let (_, log) = only_job_log(&h, list[0]["id"].as_i64().unwrap()).await;
        assert!(log.contains("source=push"), "{provider}: {log}");
    }
    // A tampered body with the old signature is refused.
    let body = br#"{"ref":"refs/heads/main","before":"a","after":"b"}"#.to_vec();
    let sig = github_signature("github-secret-1", b"something else");
    let r = h
        .anonymous()
        .send(
            "POST",
            "/api/v1/projects/app/webhook",
            Some(("application/json", body)),
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", sig.as_str()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    h.stop().await;
}

async fn polling_api_tokens_and_workflow_rules(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let (bare, work) = remote(&h, "app", ECHO);
    h.project("app", &bare.path).await;
    // Polling: every second now.
    let r = h
        .admin
        .json(
            "PATCH",
            "/api/v1/projects/app",
            &json!({"poll_interval_secs": 1}),
        )
        .await
        .unwrap();
    assert_eq!(r.json()["poll_interval"], 1);
    let sha = work.commit(&[("a", "1")], "polled change");
    work.git(&["push", "--quiet", "origin", "main"]);
    let list = h.wait_pipelines("app", 1).await;
    assert_eq!(
        (list[0]["source"].as_str(), list[0]["sha"].as_str()),
        (Some("push"), Some(sha.as_str()))
    );
    // A new branch is seen too; a deleted one makes nothing.
    work.git(&["push", "--quiet", "origin", "main:feature"]);
    let list = h.wait_pipelines("app", 2).await;
    assert_eq!(list[0]["ref_name"], "feature");
    work.git(&["push", "--quiet", "origin", ":feature"]);
    let r = h
        .admin
        .json(
            "PATCH",
            "/api/v1/projects/app",
            &json!({"poll_interval_secs": 0}),
        )
        .await
        .unwrap();
    assert!(r.json()["poll_interval"].is_null());

    // The API, with a variable.
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/app/pipelines",
            &json!({"ref": "main", "variables": [{"key": "WHO", "value": "api-user"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let (d, log) = only_job_log(&h, r.json()["pipeline"]["id"].as_i64().unwrap()).await;
    assert!(log.contains("source=api who=api-user"), "{log}");
    assert_eq!(
        d["pipeline"]["variables"],
        json!([{"key": "WHO", "value": "api-user"}])
    );
    let r = h
        .admin
        .post_json("/api/v1/projects/app/pipelines", &json!({"ref": "nope"}))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (422, Some("unknown_ref"))
    );

    // A trigger token, GitLab style (form fields).
    let t = h
        .admin
        .post_json(
            "/api/v1/projects/app/triggers",
            &json!({"description": "deploys"}),
        )
        .await
        .unwrap()
        .json();
    let token = t["token"].as_str().unwrap().to_string();
    let body = format!("token={token}&ref=main&variables[WHO]=trigger-user");
    let r = h
        .anonymous()
        .send(
            "POST",
            "/api/v1/projects/app/trigger/pipeline",
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let (_, log) = only_job_log(&h, r.json()["pipeline"]["id"].as_i64().unwrap()).await;
    assert!(log.contains("source=trigger who=trigger-user"), "{log}");
    let r = h
        .anonymous()
        .send(
            "POST",
            "/api/v1/projects/app/trigger/pipeline",
            Some((
                "application/x-www-form-urlencoded",
                b"token=slwtrig_wrong&ref=main".to_vec(),
            )),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);

    // workflow:rules that say never: no pipeline, and the API says why.
    work.commit(&[("b", "2")], "no pipeline for this one");
    work.git(&["push", "--quiet", "origin", "main"]);
    let before = h.pipelines("app").await.len();
    let r = h
        .admin
        .post_json("/api/v1/projects/app/pipelines", &json!({"ref": "main"}))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (422, Some("no_pipeline")),
        "{}",
        r.text()
    );
    assert_eq!(h.pipelines("app").await.len(), before);
    h.stop().await;
}

async fn invalid_and_skipped_pipelines(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let (bare, work) = remote(&h, "app", "job:\n  script: [echo ok]\n");
    h.project("app", &bare.path).await;
    work.commit(
        &[(
            ".gitlab-ci.yml",
            "stages: [build]\njob:\n  stage: build\n  script: [echo ok]\n  scriptt: [echo ok]\n",
        )],
        "broken",
    );
    work.git(&["push", "--quiet", "origin", "main"]);
    let r = h
        .admin
        .post_json("/api/v1/projects/app/pipelines", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["pipeline"]["status"], "failed");
    assert_eq!(v["jobs"], json!([]));
    let msg = v["pipeline"]["error_message"].as_str().unwrap();
    assert_eq!(
        msg,
        ".gitlab-ci.yml:5:3: jobs:job config contains unknown keys: scriptt"
    );
    assert!(msg.contains("scriptt"), "{msg}");
    let d = h
        .admin
        .get(&format!("/api/v1/pipelines/{}", v["pipeline"]["id"]))
        .await
        .unwrap()
        .json();
    assert_eq!(d["errors"][0]["line"], 5);
    assert_eq!(d["errors"][0]["path"], ".gitlab-ci.yml");

    // [skip ci]: a skipped pipeline through a push (the hook's path, here as a push
    // notification from the API's point of view: a webhook-free project uses the API).
    work.commit(
        &[(".gitlab-ci.yml", "job:\n  script: [echo ok]\n")],
        "fix it [skip ci]",
    );
    work.git(&["push", "--quiet", "origin", "main"]);
    let before = work.git(&["rev-parse", "HEAD~1"]);
    let hook = h
        .admin
        .post_json("/api/v1/projects/app/hook-token", &json!({}))
        .await
        .unwrap()
        .json();
    let hook_client = slipway_server::client::Client::new(
        &h.url,
        Some(hook["token"].as_str().unwrap().to_string()),
    )
    .unwrap();
    let body = format!("{before} {} refs/heads/main\n", work.head());
    let r = hook_client
        .send(
            "POST",
            "/api/v1/projects/app/hook",
            Some(("text/plain", body.into_bytes())),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let p = &r.json()["pipelines"][0];
    assert_eq!(p["pipeline"]["status"], "skipped");
    assert_eq!(p["jobs"][0]["status"], "skipped");
    // The same push reported again makes nothing new.
    let r = hook_client
        .send(
            "POST",
            "/api/v1/projects/app/hook",
            Some((
                "text/plain",
                format!("{before} {} refs/heads/main\n", work.head()).into_bytes(),
            )),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.json()["pipelines"], json!([]));
    // A deletion makes none; a bad body is refused with its line.
    let r = hook_client
        .send(
            "POST",
            "/api/v1/projects/app/hook",
            Some((
                "text/plain",
                format!("{} {ZERO} refs/heads/gone\nnonsense\n", work.head()).into_bytes(),
            )),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("line 2"), "{}", r.text());
    h.stop().await;
}

const SCHEDULED: &str = r#"
job:
  rules:
    - if: $CI_PIPELINE_SOURCE == "schedule"
  script:
    - echo "source=$CI_PIPELINE_SOURCE who=$WHO"
"#;

async fn schedules_fire_once_per_due_time(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let (bare, _work) = remote(&h, "app", SCHEDULED);
    h.project("app", &bare.path).await;
    // A second server on the same PostgreSQL database (same key; its own data directory).
    let second = if backend == Backend::Postgres {
        let dir2 = h.dir.path().join("data2");
        std::fs::create_dir_all(&dir2).unwrap();
        std::fs::copy(h.data.join("secret.key"), dir2.join("secret.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir2.join("secret.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut c = harness::test_config(dir2);
        c.database_url = h.database_url.clone();
        let s = slipway_server::server::start(
            c,
            slipway_server::server::FirstAdminOptions {
                username: "admin".into(),
                password: None,
            },
        )
        .await
        .unwrap();
        let app2 = s.app.clone();
        let handle = tokio::spawn(s.serve(std::future::pending()));
        Some((app2, handle))
    } else {
        None
    };
    let r = h
        .admin
        .post_json(
            "/api/v1/projects/app/schedules",
            &json!({"description": "nightly", "cron": "0 3 * * *", "cron_timezone": "Europe/Berlin",
                    "variables": [{"key": "WHO", "value": "nightly"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let s = r.json();
    let bad = h
        .admin
        .post_json(
            "/api/v1/projects/app/schedules",
            &json!({"cron": "61 * * * *"}),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 422, "{}", bad.text());
    // Make it due now, for both servers at once.
    let id = slipway_db::ScheduleId(s["id"].as_i64().unwrap());
    h.app
        .store
        .update_schedule(
            &slipway_db::Actor::system("test"),
            id,
            slipway_db::ScheduleUpdate {
                next_run_at: Some(h.app.store.now()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let list = h.wait_pipelines("app", 1).await;
    assert_eq!(list[0]["source"], "schedule");
    assert_eq!(list[0]["schedule_id"], s["id"]);
    let (_, log) = only_job_log(&h, list[0]["id"].as_i64().unwrap()).await;
    assert!(log.contains("source=schedule who=nightly"), "{log}");
    // Both servers looked many times since: still one pipeline, and the schedule moved on.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.pipelines("app").await.len(), 1);
    let after = h.app.store.schedule(id).await.unwrap();
    assert!(after.next_run_at > h.app.store.now());
    if let Some((app2, handle)) = second {
        app2.shutdown.cancel();
        let _ = handle.await;
    }
    h.stop().await;
}

server_tests!(
    webhooks_are_verified,
    polling_api_tokens_and_workflow_rules,
    invalid_and_skipped_pipelines,
    schedules_fire_once_per_due_time,
);
