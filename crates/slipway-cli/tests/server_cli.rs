//! The CLI against a real `slipway server` process: login, `project add`, `hook install`
//! and a real `git push`, `pipelines`, `jobs`, `logs` (and `-f`), `trigger` with
//! variables, `play`, `retry`, `cancel`, then `audit list` and `audit verify` on the
//! server's store (intact, then after the database is edited behind its back).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_process;

use serde_json::Value;
use server_process::*;

const PIPELINE: &str = r#"
stages: [build, deploy]
build:
  stage: build
  script:
    - echo "building for $AUDIENCE from $CI_PIPELINE_SOURCE"
deploy:
  stage: deploy
  when: manual
  script:
    - echo "deploying $TARGET"
slow:
  stage: deploy
  rules:
    - if: $SLOW == "yes"
  script:
    - sleep 60
"#;

fn pipelines(config: &std::path::Path, url: &str) -> Vec<Value> {
    json(&cli(
        config,
        url,
        &["pipelines", "--project", "app", "--json"],
    ))
    .as_array()
    .cloned()
    .unwrap_or_default()
}

fn wait_status(config: &std::path::Path, url: &str, id: i64, want: &[&str]) -> Vec<Value> {
    wait_for(60, &format!("pipeline {id} to be {want:?}"), || {
        let p = pipelines(config, url);
        let found = p.iter().find(|p| p["id"] == id)?;
        want.contains(&found["status"].as_str()?).then(|| {
            json(&cli(config, url, &["jobs", &id.to_string(), "--json"]))
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
    })
}

fn job_id(jobs: &[Value], name: &str) -> String {
    jobs.iter().find(|j| j["name"] == name).unwrap()["id"].to_string()
}

async fn the_cli_drives_the_server(backend: Backend) {
    let Some(db) = database(backend).await else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("config");
    let data = root.path().join("data");
    let server = ServerProcess::start(&data, db.as_deref(), &[]);
    let url = server.url.clone();
    login(&config, &url);
    let (bare, work) = repos(root.path(), "app", &[("README", "hi\n")]);
    let out = ok(&cli(
        &config,
        &url,
        &["project", "add", "app", "--repo", bare.to_str().unwrap()],
    ));
    assert!(out.contains("Added project app"), "{out}");
    let out = ok(&cli(
        &config,
        &url,
        &[
            "hook",
            "install",
            "--project",
            "app",
            bare.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("Installed the post-receive hook"), "{out}");

    // A real push reaches the server through the hook.
    commit(&work, &[(".gitlab-ci.yml", PIPELINE)], "pipeline");
    git(&work, &["push", "--quiet", "origin", "main"]);
    let first = wait_for(30, "the push pipeline", || {
        pipelines(&config, &url).first().cloned()
    });
    assert_eq!(first["source"], "push");
    let id = first["id"].as_i64().unwrap();
    let jobs = wait_status(&config, &url, id, &["success"]);
    let build = job_id(&jobs, "build");
    let log = ok(&cli(&config, &url, &["logs", &build]));
    assert!(log.contains("building for  from push"), "{log}");
    let followed = ok(&cli(&config, &url, &["logs", &build, "-f"]));
    assert_eq!(
        followed, log,
        "-f on a finished job prints the whole log and ends"
    );
    let table = ok(&cli(&config, &url, &["pipelines", "--project", "app"]));
    assert!(
        table.contains("success") && table.contains("push"),
        "{table}"
    );
    let table = ok(&cli(&config, &url, &["jobs", &id.to_string()]));
    assert!(
        table.contains("deploy") && table.contains("manual"),
        "{table}"
    );

    // Play the manual job with a variable.
    let deploy = job_id(&jobs, "deploy");
    ok(&cli(
        &config,
        &url,
        &["play", &deploy, "--variable", "TARGET=staging"],
    ));
    let log = wait_for(30, "the deploy log", || {
        let l = ok(&cli(&config, &url, &["logs", &deploy]));
        l.contains("deploying staging").then_some(l)
    });
    assert!(log.contains("$ echo \"deploying $TARGET\""));
    // Retry it: a new job.
    let out = ok(&cli(&config, &url, &["retry", &deploy]));
    assert!(out.starts_with("Job "), "{out}");

    // Trigger with variables; follow a slow job live, cancel it.
    let v = json(&cli(
        &config,
        &url,
        &[
            "trigger",
            "app",
            "--variable",
            "AUDIENCE=everyone",
            "--variable",
            "SLOW=yes",
            "--json",
        ],
    ));
    let p2 = v["pipeline"]["id"].as_i64().unwrap();
    assert_eq!(v["pipeline"]["source"], "api");
    let jobs2 = wait_status(&config, &url, p2, &["running", "success"]);
    let build2 = job_id(&jobs2, "build");
    let slow = job_id(&jobs2, "slow");
    wait_for(30, "build to finish", || {
        let l = ok(&cli(&config, &url, &["logs", &build2]));
        l.contains("building for everyone from api").then_some(())
    });
    let follower = std::process::Command::new(BIN)
        .args(["logs", &slow, "-f"])
        .env("XDG_CONFIG_HOME", &config)
        .env("SLIPWAY_SERVER", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    ok(&cli(&config, &url, &["cancel", &slow]));
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success());
    assert!(String::from_utf8_lossy(&followed.stdout).contains("$ sleep 60"));
    assert!(String::from_utf8_lossy(&followed.stderr).contains("canceled"));
    wait_status(&config, &url, p2, &["canceled"]);

    // Errors are clear and exit 1.
    let bad = cli(&config, &url, &["trigger", "app", "--ref", "nope"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope: no such branch or tag"));
    let anon = std::process::Command::new(BIN)
        .args(["pipelines"])
        .env("XDG_CONFIG_HOME", root.path().join("nobody"))
        .env("SLIPWAY_SERVER", &url)
        .output()
        .unwrap();
    assert_eq!(anon.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&anon.stderr).contains("HTTP 401"));

    // The audit log: every action above is in it, with its actor.
    let mut server = server;
    assert!(server.stop().success(), "{}", server.log_text());
    let list = json(
        &std::process::Command::new(BIN)
            .args(["audit", "list", "--limit", "500", "--json", "--data"])
            .arg(&data)
            .args(db.iter().flat_map(|d| ["--database", d.as_str()]))
            .output()
            .unwrap(),
    );
    let actions: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        "user.login",
        "token.create",
        "project.create",
        "trigger_token.create",
        "pipeline.create",
        "job.play",
        "job.retry",
        "job.cancel",
    ] {
        assert!(
            actions.iter().any(|(_, a)| a == want),
            "no {want} in {actions:?}"
        );
    }
    assert!(actions.contains(&("admin".into(), "job.cancel".into())));
    let verify = |data: &std::path::Path| {
        std::process::Command::new(BIN)
            .args(["audit", "verify", "--data"])
            .arg(data)
            .args(db.iter().flat_map(|d| ["--database", d.as_str()]))
            .output()
            .unwrap()
    };
    let out = verify(&data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("audit log intact"));

    // Someone edits an entry in the database: verify fails and names it.
    let sql = "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3";
    match &db {
        None => edit_sqlite(&data, sql).await,
        Some(url) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.unwrap();
            c.close().await.unwrap();
        }
    }
    let out = verify(&data);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("audit log NOT intact"), "{report}");
    assert!(report.contains("entry 3: edited"), "{report}");
}

/// Edits the SQLite file behind the server's back (with python3's sqlite3 module).
async fn edit_sqlite(data: &std::path::Path, sql: &str) {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()")
        .arg(data.join("slipway.db"))
        .arg(sql)
        .output()
        .expect("python3 or sqlite3 to edit the database");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_server_on_sqlite() {
    the_cli_drives_the_server(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_server_on_postgres() {
    the_cli_drives_the_server(Backend::Postgres).await;
}
