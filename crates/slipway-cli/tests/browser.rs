//! The web UI in a real browser (headless Chromium through chromedriver), against a
//! real `slipway server` process with a fresh data directory, following a pipeline from
//! `git push` (through the installed post-receive hook) to finished logs: the pipeline
//! appears and its jobs go running then passed without a reload, log lines arrive live on
//! the job page, sections collapse, following the log stops when the reader scrolls up,
//! the final status shows up by itself, a manual job is played and a failed job retried
//! with their buttons, and a viewer is shown no buttons at all.
//!
//! `#[ignore]`d in the plain `cargo test`: `.ci/run` installs `chromium` and
//! `chromium-driver` and runs `cargo test -p slipway-cli --test browser -- --ignored`
//! with `SLIPWAY_REQUIRE_BROWSER=1` (a missing browser then fails). Screenshots of each
//! main page go to `SLIPWAY_SCREENSHOTS` (default: a temporary directory, printed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod server_process;
mod webdriver;

use serde_json::{json, Value};
use server_process::{commit, git, repos, ServerProcess, ADMIN_PASSWORD};
use slipway_server::client::Client;
use std::path::{Path, PathBuf};
use std::time::Instant;
use webdriver::Browser;

const VIEWER_PASSWORD: &str = "viewer-password";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The API as the administrator: signs in, then makes a personal token (returned too).
fn admin_api(url: &str) -> (Client, String) {
    let token = runtime().block_on(server_process::api_token(
        url,
        "admin",
        ADMIN_PASSWORD,
        "browser test",
    ));
    (Client::new(url, Some(token.clone())).unwrap(), token)
}

fn api(c: &Client, method: &str, path: &str, body: Value) -> Value {
    let r = runtime().block_on(c.json(method, path, &body)).unwrap();
    assert!(r.ok(), "{method} {path}: {}", r.text());
    r.json()
}

fn api_get(c: &Client, path: &str) -> Value {
    let r = runtime().block_on(c.get(path)).unwrap();
    assert!(r.ok(), "GET {path}: {}", r.text());
    r.json()
}

/// The pipeline: `build` waits for the test to create `GO` (so the test sees it
/// running and its log growing) and writes two sections, one collapsed; 24 `unit` jobs
/// (a stage of 20+ for the graph); `flaky` fails on its first attempt only; `deploy`
/// is manual.
fn pipeline(go: &Path, marker: &Path) -> String {
    format!(
        r#"
stages: [build, test, report, deploy]
build:
  stage: build
  script:
    - printf '\033[0Ksection_start:%s:fetch\r\033[0K\033[36;1mFetching dependencies\033[0m\n' "$(date +%s)"
    - for i in $(seq 1 120); do echo "dependency $i of 120"; done
    - printf '\033[0Ksection_end:%s:fetch\r\033[0K\n' "$(date +%s)"
    - printf '\033[0Ksection_start:%s:env[collapsed=true]\r\033[0KEnvironment\n' "$(date +%s)"
    - echo "CI_COMMIT_REF_NAME=$CI_COMMIT_REF_NAME"
    - printf '\033[0Ksection_end:%s:env\r\033[0K\n' "$(date +%s)"
    - echo "waiting for the go signal"
    - while [ ! -f {go} ]; do sleep 0.1; done
    - printf '\033[32mbuild finished after the signal\033[0m\n'
    - mkdir -p dist && echo binary > dist/app.bin
  artifacts:
    paths: [dist/]
unit:
  stage: test
  parallel: 24
  script: [echo "unit $CI_NODE_INDEX"]
flaky:
  stage: test
  needs: [build]
  allow_failure: true
  script:
    - if [ -f {marker} ]; then echo "second attempt passes"; else touch {marker}; echo "first attempt fails"; exit 1; fi
report:
  stage: report
  needs: [unit]
  script: [echo report]
deploy:
  stage: deploy
  when: manual
  script: [echo "deploying to $TARGET"]
"#,
        go = go.display(),
        marker = marker.display()
    )
}

fn sign_in(b: &Browser, url: &str, user: &str, password: &str) {
    b.goto(&format!("{url}/projects"));
    b.wait_for("form[action='/login']", 10);
    b.fill("#username", user);
    b.fill("#password", password);
    b.click_css("form[action='/login'] button[type=submit]");
    b.wait_for("header .username", 10);
}

fn has_class(b: &Browser, css: &str, class: &str) -> bool {
    b.try_find(css)
        .and_then(|e| b.attr(&e, "class"))
        .is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

fn status_of(b: &Browser, css: &str) -> Option<String> {
    b.try_find(css).and_then(|e| b.attr(&e, "data-status"))
}

#[test]
#[ignore = "needs chromium and chromium-driver; .ci/run runs it"]
fn a_pipeline_from_push_to_finished_log_in_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let shots = match std::env::var_os("SLIPWAY_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => dir.path().join("screenshots"),
    };
    let Some(b) = Browser::start(&shots) else {
        return;
    };
    let server = ServerProcess::start(&dir.path().join("data"), None, &[]);
    let url = server.url.clone();
    let (admin, token) = admin_api(&url);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        follow_a_pipeline(&b, &url, &admin, &token, dir.path());
    }));
    if let Err(e) = result {
        let _ = b.screenshot("failure");
        eprintln!(
            "screenshots in {}\n--- server log ---\n{}",
            shots.display(),
            server.log_text()
        );
        std::panic::resume_unwind(e);
    }
    eprintln!("screenshots in {}", shots.display());
}

fn follow_a_pipeline(b: &Browser, url: &str, admin: &Client, token: &str, tmp: &Path) {
    // A repository in a temporary directory, with a first commit.
    let (bare, work) = repos(tmp, "app", &[("README.md", "# app\n")]);

    // Signing in; the projects page is empty.
    b.goto(&format!("{url}/login"));
    b.wait_for("#username", 10);
    b.screenshot("01-login");
    sign_in(b, url, "admin", ADMIN_PASSWORD);
    assert!(b.url().ends_with("/projects"), "{}", b.url());
    b.screenshot("02-projects-empty");

    // Adding the project from the browser, by its path.
    b.click_css("a[href='/projects/-/new']");
    b.wait_for("#repository", 10);
    b.fill("#name", "app");
    b.fill("#repository", bare.to_str().unwrap());
    b.screenshot("03-add-project");
    b.click_css("form[action='/projects/-/new'] button[type=submit]");
    b.wait("the project page", 20, |b| {
        b.url().ends_with("/projects/app").then_some(())
    });
    assert!(b.text(&b.find(".flash")).contains("Project app added."));

    // The post-receive hook, installed by `slipway hook install`; a viewer.
    let out = std::process::Command::new(server_process::BIN)
        .args([
            "hook",
            "install",
            "--project",
            "app",
            "--server",
            url,
            "--token",
            token,
        ])
        .arg(&bare)
        .env_remove("SLIPWAY_TOKEN")
        .output()
        .unwrap();
    server_process::ok(&out);
    api(
        admin,
        "POST",
        "/api/v1/users",
        json!({"username": "vera", "password": VIEWER_PASSWORD}),
    );
    api(
        admin,
        "PUT",
        "/api/v1/projects/app/members/vera",
        json!({"role": "viewer"}),
    );

    // The overview waits for a first pipeline; the push makes one appear, live.
    b.goto(&format!("{url}/projects/app"));
    b.wait_for("#project-overview", 10);
    b.mark_document();
    let go = tmp.join("go");
    let marker = tmp.join("flaky-ran-once");
    let pipeline_file = pipeline(&go, &marker);
    let sha = commit(
        &work,
        &[(".gitlab-ci.yml", pipeline_file.as_str())],
        "Add the pipeline",
    );
    let pushed = Instant::now();
    git(&work, &["push", "--quiet", "origin", "main"]);
    let row = b.wait_for("tr[data-ref='main']", 20);
    eprintln!("pipeline shown {:?} after the push", pushed.elapsed());
    assert!(b.same_document(), "the pipeline appeared without a reload");
    assert!(b.text(&row).contains(&sha[..8]), "{}", b.text(&row));
    assert!(b.text(&row).contains("push"));
    b.screenshot("04-project-overview");

    // The pipeline page: the build job goes running, live.
    let p = api_get(admin, "/api/v1/projects/app/pipelines");
    let iid = p["items"][0]["iid"].as_i64().unwrap();
    let pid = p["items"][0]["id"].as_i64().unwrap();
    b.goto(&format!("{url}/projects/app/pipelines/{iid}"));
    b.wait_for(".graph", 10);
    b.mark_document();
    let build_card = "#job-0";
    b.wait("build running", 30, |b| {
        has_class(b, build_card, "st-running").then_some(())
    });
    assert_eq!(
        b.find_all(".job-card[data-stage='test']").len(),
        25,
        "24 unit jobs and flaky"
    );
    let edges: usize = b
        .attr(&b.find(".graph"), "data-edges")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(edges, 24 + 1, "report needs 24 units, flaky needs build");
    b.resize(1366, 1500);
    b.screenshot("05-pipeline-running");
    b.resize(1366, 900);

    // The job page while it runs: the stored log, then lines arriving live.
    let jobs = api_get(admin, &format!("/api/v1/pipelines/{pid}/jobs"));
    let job_id = |name: &str| {
        jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("no job {name}"))["id"]
            .as_i64()
            .unwrap()
    };
    let (build, flaky, deploy) = (job_id("build"), job_id("flaky"), job_id("deploy"));
    b.click_css(&format!("{build_card} a.job-link"));
    b.wait_for("#log[data-stream]", 10);
    b.mark_document();
    b.wait("the first section in the log", 20, |b| {
        b.try_find("#log details.section[data-section='fetch']")
    });
    b.wait("the waiting line", 20, |b| {
        b.text(&b.find("#log"))
            .contains("waiting for the go signal")
            .then_some(())
    });
    assert_eq!(status_of(b, "#job-head .badge").as_deref(), Some("running"));
    // Colours are rendered, the collapsed section starts closed, the other open.
    assert!(b.try_find("#log .term-fg-6.term-bold").is_some());
    let env = b.find("#log details.section[data-section='env']");
    assert_eq!(b.attr(&env, "open"), None, "collapsed=true starts closed");
    let fetch = b.find("#log details.section[data-section='fetch']");
    assert_eq!(b.attr(&fetch, "open").as_deref(), Some("true"));
    // Following: the page is at the end of the log.
    assert_eq!(
        b.attr(&b.find("#log"), "data-follow").as_deref(),
        Some("true")
    );
    b.screenshot("06-job-running");
    // A section collapses when its header is clicked.
    let line = b.find("#log details.section[data-section='fetch'] .line");
    assert!(b.displayed(&line));
    b.click_css("#log details.section[data-section='fetch'] > summary");
    b.wait("the section to collapse", 5, |b| {
        (!b.displayed(&line)).then_some(())
    });
    assert_eq!(b.attr(&fetch, "open"), None);
    // Make the log long enough to scroll, then scroll up: following stops.
    b.click_css("#log details.section[data-section='fetch'] > summary");
    b.js(
        "window.scrollTo(0, document.documentElement.scrollHeight); return null;",
        vec![],
    );
    b.wait("following at the end", 5, |b| {
        (b.attr(&b.find("#log"), "data-follow").as_deref() == Some("true")).then_some(())
    });
    b.js("window.scrollTo(0, 0); return null;", vec![]);
    b.wait("following to stop", 5, |b| {
        (b.attr(&b.find("#log"), "data-follow").as_deref() == Some("false")).then_some(())
    });
    b.screenshot("06b-job-running-top");
    // The go signal: the rest of the log arrives live, the page stays where it was, and
    // the final status appears without a reload.
    std::fs::write(&go, "go").unwrap();
    b.wait("the last line, live", 30, |b| {
        b.text(&b.find("#log"))
            .contains("build finished after the signal")
            .then_some(())
    });
    let y = b.js("return window.scrollY;", vec![]);
    assert_eq!(y, json!(0), "no scrolling while the reader is up the page");
    b.wait("the final status", 30, |b| {
        (status_of(b, "#job-head .badge").as_deref() == Some("success")).then_some(())
    });
    assert_eq!(
        b.attr(&b.find("#log"), "data-complete").as_deref(),
        Some("true")
    );
    assert!(b.same_document(), "all of it without a reload");
    assert!(b
        .try_find("#job-facts a[href$='/artifacts/archive']")
        .is_some());
    // Every line once.
    let lines = b.js(
        "return Array.from(document.querySelectorAll('#log [id^=L]')).map(e => e.id);",
        vec![],
    );
    let ids: Vec<&str> = lines
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut dedup = ids.clone();
    dedup.dedup();
    assert_eq!(ids.len(), dedup.len(), "no line twice");
    b.js(
        "window.scrollTo(0, document.documentElement.scrollHeight); return null;",
        vec![],
    );
    b.screenshot("07-job-finished");

    // Back on the pipeline page: jobs pass live; flaky failed (allowed); deploy waits.
    b.goto(&format!("{url}/projects/app/pipelines/{iid}"));
    b.wait_for(".graph", 10);
    b.mark_document();
    b.wait("the pipeline to wait on its manual job", 60, |b| {
        let manual = b.try_find(&format!(
            ".job-card.st-manual form[action$='/jobs/{deploy}/play']"
        ));
        let flaky_failed = b
            .try_find(&format!(
                ".job-card.st-warning form[action$='/jobs/{flaky}/retry']"
            ))
            .is_some();
        manual.filter(|_| flaky_failed)
    });
    assert!(b.same_document());
    assert!(has_class(b, build_card, "st-success"));
    b.resize(1366, 1500);
    b.screenshot("08-pipeline-manual");
    b.resize(1366, 900);

    // The manual job's page offers to run it, with variables.
    b.goto(&format!("{url}/projects/app/jobs/{deploy}"));
    b.wait_for("#manual-title", 10);
    assert!(b
        .try_find(&format!("form[action$='/jobs/{deploy}/play'] #pk0"))
        .is_some());
    b.screenshot("08b-manual-job");
    b.goto(&format!("{url}/projects/app/pipelines/{iid}"));
    b.wait_for(".graph", 10);

    // The manual job is played with its button in the graph.
    b.click_css(&format!("form[action$='/jobs/{deploy}/play'] button"));
    b.wait("the play notice", 10, |b| {
        b.try_find(".flash")
            .filter(|f| b.text(f).contains("Job deploy started."))
    });
    b.mark_document();
    b.wait("deploy to pass", 60, |b| {
        b.try_find(&format!(".job-card.st-success a[href$='/jobs/{deploy}']"))
    });
    assert!(b.same_document(), "the graph followed the job live");

    // The failed job is retried from its page; the new attempt passes.
    b.goto(&format!("{url}/projects/app/jobs/{flaky}"));
    b.wait_for("#job-head", 10);
    assert!(b.text(&b.find("#log")).contains("first attempt fails"));
    b.click_css(&format!("form[action$='/jobs/{flaky}/retry'] button"));
    b.wait("the new attempt's page", 10, |b| {
        (!b.url().ends_with(&format!("/jobs/{flaky}"))).then_some(())
    });
    b.wait("the retry to pass", 60, |b| {
        (status_of(b, "#job-head .badge").as_deref() == Some("success")).then_some(())
    });
    b.wait("its log", 20, |b| {
        b.text(&b.find("#log"))
            .contains("second attempt passes")
            .then_some(())
    });
    assert!(b.text(&b.find("#job-facts")).contains("Attempts"));
    b.screenshot("09-job-retried");

    // The pipelines list and the "Run pipeline" form.
    b.goto(&format!("{url}/projects/app/pipelines"));
    b.wait_for(&format!("#pipeline-{iid}"), 10);
    b.wait("the pipeline to pass", 30, |b| {
        (status_of(b, &format!("#pipeline-{iid} .badge")).as_deref() == Some("success"))
            .then_some(())
    });
    b.screenshot("10-pipelines");
    b.goto(&format!("{url}/projects"));
    b.wait_for("a.project-link[href='/projects/app']", 10);
    b.screenshot("10b-projects");
    b.goto(&format!("{url}/projects/app/pipelines"));
    b.wait_for(&format!("#pipeline-{iid}"), 10);
    b.click_css("a[href='/projects/app/pipelines/new']");
    b.wait_for("#ref", 10);
    b.click_css("[data-add-row='variable-rows']");
    assert_eq!(b.find_all("#variable-rows .var-row").len(), 4);
    b.fill("#vk0", "TARGET");
    b.fill("#vv0", "staging");
    b.screenshot("11-run-pipeline");
    b.click_css("form[action='/projects/app/pipelines'] button[type=submit]");
    b.wait("the new pipeline's page", 20, |b| {
        b.try_find(".flash")
            .filter(|f| b.text(f).contains("created for main"))
    });
    assert!(b
        .text(&b.find("#pipeline-head"))
        .contains("run from the web"));

    // A viewer sees the same pages without a single button.
    b.delete_cookies();
    sign_in(b, url, "vera", VIEWER_PASSWORD);
    for page in [
        format!("/projects/app/pipelines/{iid}"),
        format!("/projects/app/jobs/{deploy}"),
        format!("/projects/app/jobs/{build}"),
        "/projects/app".to_string(),
        "/projects/app/pipelines".to_string(),
    ] {
        b.goto(&format!("{url}{page}"));
        b.wait_for("main", 10);
        let forms = b.find_all("main form[method=post]");
        assert!(
            forms.is_empty(),
            "{page}: a viewer is offered {} forms",
            forms.len()
        );
        assert!(b.try_find("a[href$='/pipelines/new']").is_none(), "{page}");
    }
    b.goto(&format!("{url}/projects/app/pipelines/{iid}"));
    b.wait_for(".graph", 10);
    b.resize(1366, 1500);
    b.screenshot("12-pipeline-as-viewer");
}
