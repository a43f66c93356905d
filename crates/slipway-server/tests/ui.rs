//! The web pages over real HTTP on a real server (SQLite and PostgreSQL): signing in
//! through the form, the pages of a pipeline that ran from a real push through the
//! installed hook, what each role is shown and allowed, CSRF, the "Run pipeline" form,
//! the rendered live log stream and its resumption, and HTML errors. The same flow in a
//! real browser is `crates/slipway-cli/tests/browser.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use common::TestRepo;
use harness::{Backend, Harness};
use serde_json::json;
use slipway_server::client::{Client, Reply, SseParser};
use slipway_server::hook::HookTarget;

const PIPELINE: &str = r#"
stages: [build, test, deploy]
build:
  stage: build
  script:
    - printf '\033[0Ksection_start:1700000000:compile[collapsed=true]\r\033[0KCompiling\n'
    - printf '\033[32mcompiled ok\033[0m\n'
    - printf '\033[0Ksection_end:1700000065:compile\r\033[0K\n'
    - echo "<b>not a tag</b>"
  artifacts:
    paths: [out.txt]
    when: always
  after_script: [echo after]
lint:
  stage: build
  script: [echo lint]
test:
  stage: test
  needs: [build]
  script: [echo testing]
flaky:
  stage: test
  needs: [lint]
  allow_failure: true
  script: [echo failing; exit 3]
deploy:
  stage: deploy
  when: manual
  script: [echo "deploying $TARGET"]
"#;

/// A browser-like client: keeps the session cookie, reads CSRF tokens from pages.
struct Browser {
    client: Client,
    cookie: String,
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"_csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 20;
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

fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
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

impl Browser {
    async fn sign_in(h: &Harness, user: &str, password: &str) -> Browser {
        let anon = Client::new(&h.url, None).unwrap();
        let page = anon.get("/login?next=/projects").await.unwrap();
        assert_eq!(page.status, 200);
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
        assert_eq!(r.header("location"), Some("/projects"));
        let session = cookie_value(&r, "slipway_session").expect("session cookie");
        Browser {
            client: anon,
            cookie: format!("slipway_session={session}"),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.client
            .send("GET", path, None, &[("cookie", &self.cookie)])
            .await
            .unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        r.text()
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
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

/// A bare repository with the hook installed and the pipeline pushed to it.
async fn pushed(h: &Harness) -> TestRepo {
    let bare = TestRepo::init_bare(&h.dir.path().join("app.git"));
    let work = TestRepo::init(&h.dir.path().join("app-work"));
    work.git(&["remote", "add", "origin", bare.path.to_str().unwrap()]);
    work.commit(&[("README", "hello\n")], "initial");
    work.git(&["push", "--quiet", "origin", "main"]);
    h.project("app", &bare.path).await;
    let v = h
        .admin
        .post_json("/api/v1/projects/app/hook-token", &json!({}))
        .await
        .unwrap()
        .json();
    slipway_server::hook::install(
        &bare.path,
        &HookTarget {
            url: v["url"].as_str().unwrap().to_string(),
            token: v["token"].as_str().unwrap().to_string(),
        },
    )
    .unwrap();
    work.commit(
        &[(".gitlab-ci.yml", PIPELINE), ("out.txt", "artifact\n")],
        "Add the pipeline",
    );
    work.git(&["push", "--quiet", "origin", "main"]);
    work
}

async fn pages_follow_a_pushed_pipeline(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let work = pushed(&h).await;
    let list = h.wait_pipelines("app", 1).await;
    let pid = list[0]["id"].as_i64().unwrap();
    let iid = list[0]["iid"].as_i64().unwrap();
    // Everything but the manual job finishes; the pipeline waits on it.
    let detail = h
        .wait_pipeline_status(pid, &["failed", "success", "blocked"])
        .await;
    let job = |n: &str| Harness::job(&detail, n)["id"].as_i64().unwrap();
    let (build, flaky, deploy) = (job("build"), job("flaky"), job("deploy"));
    h.wait_job(flaky, |j| j["status"] == "failed").await;

    let admin = Browser::sign_in(&h, "admin", harness::ADMIN_PASSWORD).await;
    // The projects list shows the default branch's latest status.
    let projects = admin.page("/projects").await;
    assert!(projects.contains("href=\"/projects/app\""), "{projects}");
    assert!(projects.contains("Add project"));
    // The overview: the branch with its pipeline, the commit and the trigger.
    let overview = admin.page("/projects/app").await;
    assert!(overview.contains("data-ref=\"main\""), "{overview}");
    assert!(overview.contains(&work.head()[..8]));
    assert!(overview.contains("Add the pipeline"));
    assert!(overview.contains(">push<"));
    assert!(overview.contains("Run pipeline"));
    // The list, filtered by branch, and by a status it does not have.
    let pipelines = admin.page("/projects/app/pipelines?ref=main").await;
    assert!(pipelines.contains(&format!("id=\"pipeline-{iid}\"")));
    assert!(pipelines.contains("class=\"mini-graph\""));
    let none = admin
        .page("/projects/app/pipelines?ref=main&status=skipped")
        .await;
    assert!(!none.contains(&format!("id=\"pipeline-{iid}\"")));

    // The pipeline page: stages, jobs, the needs edges, and the admin's buttons.
    let p = admin.page(&format!("/projects/app/pipelines/{iid}")).await;
    for stage in ["build", "test", "deploy"] {
        assert!(p.contains(&format!("id=\"stage-{stage}\"")), "{stage}");
    }
    assert!(
        p.contains("data-edges=\"2\""),
        "test needs build, flaky needs lint"
    );
    assert!(p.contains("class=\"edge\""));
    assert!(
        p.contains(&format!("/jobs/{deploy}/play")),
        "play the manual job"
    );
    assert!(
        p.contains(&format!("/jobs/{flaky}/retry")),
        "retry the failure"
    );
    assert!(p.contains("Retry failed jobs"));
    assert!(p.contains("data-watch=\"pipeline:"));

    // The finished job's page: the log with colours and its collapsed section, escaped
    // text, artifacts to download.
    let j = admin.page(&format!("/projects/app/jobs/{build}")).await;
    assert!(
        j.contains("<details class=\"section\" data-section=\"compile\"><summary"),
        "collapsed: no open attribute: {j}"
    );
    assert!(j.contains("<span class=\"term-fg-2\">compiled ok</span>"));
    assert!(j.contains("<span class=\"section-duration\">01:05</span>"));
    assert!(j.contains("&lt;b&gt;not a tag&lt;/b&gt;"));
    assert!(!j.contains("<b>not a tag</b>"));
    assert!(j.contains(&format!("/api/v1/jobs/{build}/artifacts/archive")));
    assert!(j.contains("data-complete=\"true\""));
    assert!(
        !j.contains("data-stream="),
        "a finished job has no live stream"
    );
    // The raw log and the archive answer to the session cookie.
    let raw = admin.get(&format!("/api/v1/jobs/{build}/log")).await;
    assert_eq!(raw.status, 200);
    assert!(raw.text().contains("compiled ok"));
    let tar = admin
        .get(&format!("/api/v1/jobs/{build}/artifacts/archive"))
        .await;
    assert_eq!(tar.status, 200);

    // The manual job's page offers to run it with variables.
    let d = admin.page(&format!("/projects/app/jobs/{deploy}")).await;
    assert!(d.contains("This job runs when someone starts it"));
    assert!(d.contains("Run job"));

    // A viewer sees no buttons, and is refused when posting anyway.
    h.user("vera", Some(("app", "viewer")), "api").await;
    let vera = Browser::sign_in(&h, "vera", "password-of-someone").await;
    let vp = vera.page(&format!("/projects/app/pipelines/{iid}")).await;
    assert!(!vp.contains("/play\""), "{vp}");
    assert!(!vp.contains("/retry\""));
    assert!(!vp.contains("/cancel\""));
    assert!(!vp.contains("Run pipeline"));
    let vd = vera.page(&format!("/projects/app/jobs/{deploy}")).await;
    assert!(vd.contains("Your role does not allow you to start it."));
    assert!(!vd.contains("Run job"));
    let r = vera
        .post(
            &format!("/projects/app/jobs/{deploy}/play"),
            &[("_csrf", &csrf_of(&vd))],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("does not allow"));
    let r = vera.get("/projects/app/pipelines/new").await;
    assert_eq!(r.status, 403);
    // A stranger is told the project does not exist.
    h.user("sam", None, "api").await;
    let sam = Browser::sign_in(&h, "sam", "password-of-someone").await;
    assert_eq!(sam.get("/projects/app").await.status, 404);
    assert!(!sam.page("/projects").await.contains("/projects/app\""));

    // A form without the session's CSRF token changes nothing.
    let r = admin
        .post(
            &format!("/projects/app/jobs/{deploy}/play"),
            &[("_csrf", "0000")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        h.app
            .store
            .job(slipway_db::JobId(deploy))
            .await
            .unwrap()
            .status,
        slipway_db::JobStatus::Manual
    );

    // A developer plays the manual job with a variable, from the pipeline page.
    h.user("dev", Some(("app", "developer")), "api").await;
    let dev = Browser::sign_in(&h, "dev", "password-of-someone").await;
    let dp = dev.page(&format!("/projects/app/jobs/{deploy}")).await;
    let r = dev
        .client
        .send(
            "POST",
            &format!("/projects/app/jobs/{deploy}/play"),
            Some((
                "application/x-www-form-urlencoded",
                form(&[
                    ("_csrf", &csrf_of(&dp)),
                    ("variable_key", "TARGET"),
                    ("variable_value", "staging"),
                    ("variable_key", ""),
                    ("variable_value", ""),
                ]),
            )),
            &[
                ("cookie", &dev.cookie),
                (
                    "referer",
                    &format!("{}/projects/app/pipelines/{iid}", h.url),
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("/projects/app/pipelines/{iid}").as_str()),
        "back where the button was"
    );
    h.wait_job(deploy, |j| j["status"] == "success").await;
    assert!(h.log(deploy).await.contains("deploying staging"));
    // The next page shows the flash message once.
    let flash = cookie_value(&r, "slipway_flash").unwrap();
    let shown = dev
        .client
        .send(
            "GET",
            &format!("/projects/app/pipelines/{iid}"),
            None,
            &[("cookie", &format!("{}; slipway_flash={flash}", dev.cookie))],
        )
        .await
        .unwrap();
    assert!(shown.text().contains("Job deploy started."));
    assert_eq!(cookie_value(&shown, "slipway_flash").as_deref(), Some(""));

    // Retrying the failure from its own page leads to the new attempt.
    let r = dev
        .post(
            &format!("/projects/app/jobs/{flaky}/retry"),
            &[("_csrf", &csrf_of(&dp))],
        )
        .await;
    assert_eq!(r.status, 303);
    let to = r.header("location").unwrap().to_string();
    assert_ne!(to, format!("/projects/app/jobs/{flaky}"));
    let retried = dev.page(&to).await;
    assert!(retried.contains("Attempts"), "{retried}");

    // "Run pipeline": an unknown ref is an error on the form, a branch a new pipeline.
    let form_page = dev.page("/projects/app/pipelines/new").await;
    assert!(form_page.contains("<option value=\"main\">"));
    let bad = dev
        .post(
            "/projects/app/pipelines",
            &[("_csrf", &csrf_of(&form_page)), ("ref", "nope")],
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.text().contains("nope"), "{}", bad.text());
    let ok = dev
        .post(
            "/projects/app/pipelines",
            &[
                ("_csrf", &csrf_of(&form_page)),
                ("ref", "main"),
                ("variable_key", "TARGET"),
                ("variable_value", "prod"),
            ],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.text());
    let list = h.pipelines("app").await;
    assert_eq!(list[0]["source"], "web");
    assert_eq!(
        ok.header("location"),
        Some(format!("/projects/app/pipelines/{}", list[0]["iid"]).as_str())
    );
    let web = dev.page(ok.header("location").unwrap()).await;
    assert!(web.contains("run from the web"));
    assert!(web.contains(" by "), "the trigger's name");

    // The UI's actions are in the audit log under the user who pressed the button.
    let audit = h.app.store.audit_recent(50).await.unwrap();
    for action in ["job.play", "job.retry", "pipeline.create"] {
        assert!(
            audit.iter().any(|e| e.action == action && e.actor == "dev"),
            "{action} by dev: {audit:?}"
        );
    }
    // Signing out ends the session.
    let out = dev
        .post("/logout", &[("_csrf", &csrf_of(&form_page))])
        .await;
    assert_eq!(out.status, 303);
    let audit = h.app.store.audit_recent(1).await.unwrap();
    assert_eq!(audit[0].action, "user.logout");
    let after = dev.get("/projects").await;
    assert_eq!(after.status, 303);
    assert!(after
        .header("location")
        .unwrap()
        .starts_with("/login?next=%2Fprojects&expired=1"));
    h.stop().await;
}

async fn live_log_stream_renders_and_resumes(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    pushed(&h).await;
    let list = h.wait_pipelines("app", 1).await;
    let pid = list[0]["id"].as_i64().unwrap();
    let detail = h
        .wait_pipeline_status(pid, &["failed", "success", "blocked"])
        .await;
    let build = Harness::job(&detail, "build")["id"].as_i64().unwrap();
    h.wait_job(build, |j| j["status"] == "success").await;
    let admin = Browser::sign_in(&h, "admin", harness::ADMIN_PASSWORD).await;

    async fn read(b: &Browser, path: &str, last: Option<&str>) -> (String, String, String) {
        let mut headers = vec![("cookie", b.cookie.as_str())];
        if let Some(l) = last {
            headers.push(("last-event-id", l));
        }
        let mut s = b.client.stream(path, &headers).await.unwrap();
        assert_eq!(s.status, 200);
        let mut parser = SseParser::default();
        let (mut html, mut last_id) = (String::new(), String::new());
        loop {
            let chunk = s.chunk().await.expect("stream ended before `end`").unwrap();
            for ev in parser.push(&chunk) {
                match ev.event.as_str() {
                    "log" => {
                        html.push_str(&ev.data);
                        last_id = ev.id.clone().unwrap_or_default();
                    }
                    "end" => return (html, last_id, ev.data),
                    other => panic!("unexpected {other}"),
                }
            }
        }
    }
    // From the start: every line as fragments, sections as header and end markers.
    let path = format!("/projects/app/jobs/{build}/log.events?start=0&offset=0");
    let (html, _, end) = read(&admin, &path, None).await;
    assert!(html.contains("class=\"section-header\""), "{html}");
    assert!(html.contains("data-section=\"compile\" data-collapsed=\"true\""));
    assert!(html.contains("<span class=\"term-fg-2\">compiled ok</span>"));
    assert!(html.contains("data-duration=\"65\""));
    let end: serde_json::Value = serde_json::from_str(&end).unwrap();
    assert_eq!(end["status"], "success");
    // Resuming after a line gives what follows only, with the state (section) kept.
    let log = h.log(build).await;
    let after_first = log.find('\n').unwrap() + 1;
    let (rest, _, _) = read(&admin, &path, Some(&after_first.to_string())).await;
    assert!(!rest.contains("id=\"L1\""), "{rest}");
    assert!(
        rest.contains("data-section=\"compile\""),
        "inside the section: {rest}"
    );
    assert!(
        html.ends_with(&rest),
        "the same lines as the tail of the whole"
    );
    // A long log of a job still going: the page shows its last part, on a line
    // boundary, and the stream continues from the end of what is shown.
    let deploy = Harness::job(&detail, "deploy")["id"].as_i64().unwrap();
    let mut long = String::new();
    for i in 0..150_000 {
        long.push_str(&format!("line {i:06} of the long log\n"));
    }
    let size = h
        .app
        .store
        .append_log(slipway_db::JobId(deploy), long.as_bytes())
        .await
        .unwrap();
    let page = admin.page(&format!("/projects/app/jobs/{deploy}")).await;
    assert!(
        page.contains("Showing the last 2.0 MiB of the log"),
        "{}",
        &page[..2000]
    );
    assert!(!page.contains("line 000000 "));
    assert!(page.contains("line 149999 "));
    let at = page.find("log.events?start=").unwrap() + "log.events?start=".len();
    let query = &page[at..at + page[at..].find('"').unwrap()];
    let (start, offset) = query.split_once("&amp;offset=").unwrap();
    let (start, offset): (i64, i64) = (start.parse().unwrap(), offset.parse().unwrap());
    assert!(start > 0 && start < size, "{query}");
    assert_eq!(offset, size, "everything stored is shown");
    assert_eq!(&long[start as usize - 1..start as usize], "\n");
    // A viewer outside the project gets nothing.
    h.user("sam", None, "api").await;
    let sam = Browser::sign_in(&h, "sam", "password-of-someone").await;
    assert_eq!(sam.get(&path).await.status, 404);
    h.stop().await;
}

async fn sign_in_errors_and_html_errors(backend: Backend) {
    let Some(h) = Harness::start(backend).await else {
        return;
    };
    let anon = Client::new(&h.url, None).unwrap();
    // Pages send visitors to the sign-in form and back.
    let r = anon.get("/").await.unwrap();
    assert_eq!(r.header("location"), Some("/projects"));
    let r = anon.get("/projects/app/pipelines?ref=main").await.unwrap();
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some("/login?next=%2Fprojects%2Fapp%2Fpipelines%3Fref%3Dmain")
    );
    // A sign-in without the form's own token is refused (login CSRF).
    let r = anon
        .send(
            "POST",
            "/login",
            Some((
                "application/x-www-form-urlencoded",
                form(&[
                    ("username", "admin"),
                    ("password", harness::ADMIN_PASSWORD),
                    ("_login", "forged"),
                ]),
            )),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(cookie_value(&r, "slipway_session").is_none());
    // Wrong password: the form again, with the message.
    let page = anon.get("/login").await.unwrap();
    let login = cookie_value(&page, "slipway_login").unwrap();
    let r = anon
        .send(
            "POST",
            "/login",
            Some((
                "application/x-www-form-urlencoded",
                form(&[
                    ("username", "admin"),
                    ("password", "wrong-password"),
                    ("_login", &login),
                    ("next", "//evil.example/"),
                ]),
            )),
            &[("cookie", &format!("slipway_login={login}"))],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Wrong username or password."));
    assert!(cookie_value(&r, "slipway_session").is_none());
    // Unknown pages are HTML; unknown API routes stay JSON.
    let admin = Browser::sign_in(&h, "admin", harness::ADMIN_PASSWORD).await;
    let r = admin.get("/projects/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("<!DOCTYPE html>"));
    let r = admin.get("/no/such/page").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("There is no page at /no/such/page."));
    let r = anon.get("/api/v1/nope").await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    // Adding a project by a path that is not a repository: the form, with why.
    let new = admin.page("/projects/-/new").await;
    let r = admin
        .post(
            "/projects/-/new",
            &[
                ("_csrf", &csrf_of(&new)),
                ("name", "ghost"),
                ("repository", "/nonexistent/repo.git"),
            ],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("value=\"ghost\""),
        "the form keeps its input"
    );
    // And by a real one.
    let bare = TestRepo::init_bare(&h.dir.path().join("real.git"));
    let work = TestRepo::init(&h.dir.path().join("real-work"));
    work.git(&["remote", "add", "origin", bare.path.to_str().unwrap()]);
    work.commit(&[("README", "x\n")], "initial");
    work.git(&["push", "--quiet", "origin", "main"]);
    let r = admin
        .post(
            "/projects/-/new",
            &[
                ("_csrf", &csrf_of(&new)),
                ("name", "real"),
                ("repository", bare.path.to_str().unwrap()),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/projects/real"));
    assert!(admin
        .page("/projects/real")
        .await
        .contains("No pipeline has run yet"));
    // "Run pipeline" without a pipeline file says why nothing ran.
    let run = admin.page("/projects/real/pipelines/new").await;
    let r = admin
        .post(
            "/projects/real/pipelines",
            &[("_csrf", &csrf_of(&run)), ("ref", "main")],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("No pipeline created"), "{}", r.text());
    // An invalid configuration makes a failed pipeline whose page shows the errors with
    // their place.
    work.commit(
        &[(".gitlab-ci.yml", "build:\n  stage: build\n  script: 5\n")],
        "Break the pipeline",
    );
    work.git(&["push", "--quiet", "origin", "main"]);
    let r = admin
        .post(
            "/projects/real/pipelines",
            &[("_csrf", &csrf_of(&run)), ("ref", "main")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let failed = admin.page(r.header("location").unwrap()).await;
    assert!(failed.contains("The pipeline configuration is not valid:"));
    assert!(failed.contains(".gitlab-ci.yml:3:"), "{failed}");
    assert!(failed.contains("data-status=\"failed\""));
    // Pages cannot be framed, and scripts come from this server only.
    let r = admin.get("/projects/real").await;
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    // Only administrators add projects.
    h.user("dev", Some(("real", "developer")), "api").await;
    let dev = Browser::sign_in(&h, "dev", "password-of-someone").await;
    assert_eq!(dev.get("/projects/-/new").await.status, 403);
    assert!(!dev.page("/projects").await.contains("Add project"));
    // The assets: hashed names, cached for good.
    let html = admin.page("/projects").await;
    let at = html.find("/-/assets/app.").unwrap();
    let css = &html[at..at + html[at..].find('"').unwrap()];
    let r = anon.get(css).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(r.header("cache-control").unwrap().contains("immutable"));
    h.stop().await;
}

server_tests!(
    pages_follow_a_pushed_pipeline,
    live_log_stream_renders_and_resumes,
    sign_in_errors_and_html_errors,
);
