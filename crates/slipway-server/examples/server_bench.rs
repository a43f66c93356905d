//! The server's benchmarks (issue 4), each against a server started for it with a fresh
//! data directory (SQLite, shell executor), reached over real HTTP:
//!
//! - `pickup N`: from `git push` (post-receive hook, curl) and from a signed GitHub
//!   webhook to the first line of the first job's script, N times each.
//! - `log-latency SECONDS RATE`: a job prints lines stamped with the time they were
//!   written; an SSE client (`/jobs/{id}/log/stream`) receives them; the delay of each.
//! - `log-load JOBS MB`: JOBS jobs at once, each writing MB megabytes of numbered lines;
//!   every stored log is read back and every line checked.
//!
//! SQLite by default; with `SLIPWAY_BENCH_POSTGRES_URL` (an administrator's URL, as
//! `scripts/setup-postgres.sh` prints) a fresh PostgreSQL database instead, dropped
//! afterwards.
//!
//! The idle server's resident memory is measured on the real binary by
//! `bench/server-idle-rss.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use slipway_server::app::ServerConfig;
use slipway_server::client::{Client, SseParser};
use slipway_server::server::{self, FirstAdminOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

struct Bench {
    dir: tempfile::TempDir,
    url: String,
    admin: Client,
    app: slipway_server::app::AppState,
    /// (administrator URL, database name) of the PostgreSQL database to drop.
    pg: Option<(String, String)>,
}

/// `postgres://u@h:p/db?x` with the database replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    if query.is_empty() {
        format!("{base}/{db}")
    } else {
        format!("{base}/{db}?{query}")
    }
}

async fn fresh_postgres() -> Option<(String, String)> {
    use sqlx::Connection;
    let admin = std::env::var("SLIPWAY_BENCH_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let name = format!(
        "slipway_bench_{}",
        &slipway_server::hook::new_token().unwrap()[..16]
    );
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    Some((admin, name))
}

impl Bench {
    async fn stop(self) {
        self.app.shutdown.cancel();
        self.app.store.close().await;
        if let Some((admin, name)) = &self.pg {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(admin).await.unwrap();
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await;
        }
    }
}

async fn start(concurrency: usize) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServerConfig::new(dir.path().join("data"));
    c.listen = "127.0.0.1:0".into();
    c.concurrency = concurrency;
    c.executor = slipway_runner::pipeline::ExecutorChoice::Shell;
    let pg = fresh_postgres().await;
    if let Some((admin, name)) = &pg {
        c.database_url = Some(with_database(admin, name));
    }
    println!(
        "database: {}",
        if pg.is_some() { "PostgreSQL" } else { "SQLite" }
    );
    let started = server::start(
        c,
        FirstAdminOptions {
            username: "admin".into(),
            password: Some("bench-password".into()),
        },
    )
    .await
    .unwrap();
    let app = started.app.clone();
    let url = format!("http://{}", started.addr);
    tokio::spawn(started.serve(std::future::pending()));
    let admin_user = app.store.user_by_name("admin").await.unwrap().unwrap();
    let (token, _) = app
        .store
        .create_api_token(
            &slipway_db::Actor::user(&admin_user),
            admin_user.id,
            "bench",
            &[slipway_db::TokenScope::Api],
            None,
        )
        .await
        .unwrap();
    let admin = Client::new(&url, Some(token.expose().to_string())).unwrap();
    Bench {
        dir,
        url,
        admin,
        app,
        pg,
    }
}

/// A bare repository (the project), a clone to push from, and the project.
async fn project(b: &Bench, name: &str, pipeline: &str) -> (PathBuf, PathBuf) {
    let bare = b.dir.path().join(format!("{name}.git"));
    let work = b.dir.path().join(format!("{name}-work"));
    std::fs::create_dir_all(&bare).unwrap();
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    std::fs::write(work.join(".gitlab-ci.yml"), pipeline).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "pipeline"]);
    git(&work, &["push", "--quiet", "origin", "main"]);
    let r = b
        .admin
        .post_json(
            "/api/v1/projects",
            &json!({"name": name, "repository": bare.display().to_string(), "poll_interval_secs": 0}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    (bare, work)
}

fn stats(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name}: n={} median={:.1} ms p90={:.1} ms p99={:.1} ms min={:.1} ms max={:.1} ms",
        v.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        v[0],
        v[v.len() - 1]
    );
}

const PICKUP: &str = r#"
first:
  script:
    - echo "$EPOCHREALTIME" > "$STAMP_FILE"
"#;

async fn wait_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn epoch_ns(s: &str) -> u128 {
    // `$EPOCHREALTIME`: seconds.microseconds.
    let s = s.trim();
    let (a, b) = s.split_once(['.', ',']).unwrap_or((s, "0"));
    a.parse::<u128>().unwrap() * 1_000_000_000
        + format!("{b:0<6}")[..6].parse::<u128>().unwrap() * 1000
}

async fn pickup(n: usize) {
    let b = start(2).await;
    let stamp = b.dir.path().join("stamp");
    let pipeline = PICKUP.replace("$STAMP_FILE", stamp.to_str().unwrap());
    // Through the hook.
    let (bare, work) = project(&b, "hooked", &pipeline).await;
    let t = b
        .admin
        .post_json("/api/v1/projects/hooked/hook-token", &json!({}))
        .await
        .unwrap()
        .json();
    slipway_server::hook::install(
        &bare,
        &slipway_server::hook::HookTarget {
            url: t["url"].as_str().unwrap().into(),
            token: t["token"].as_str().unwrap().into(),
        },
    )
    .unwrap();
    let mut hook = Vec::new();
    let mut push_only = Vec::new();
    for i in 0..n {
        let _ = std::fs::remove_file(&stamp);
        std::fs::write(work.join("n"), i.to_string()).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", &format!("change {i}")]);
        let t0 = now_ns();
        git(&work, &["push", "--quiet", "origin", "main"]);
        let pushed = now_ns();
        let started = epoch_ns(&wait_file(&stamp).await);
        hook.push((started.saturating_sub(t0)) as f64 / 1e6);
        push_only.push((pushed - t0) as f64 / 1e6);
        wait_idle(&b).await;
    }
    stats("git push (hook) to first job start", hook);
    stats("  of which `git push` itself returned after", push_only);
    // The same pushes to a repository without a hook: what git alone costs here.
    let plain = b.dir.path().join("plain.git");
    std::fs::create_dir_all(&plain).unwrap();
    git(
        &plain,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    git(&work, &["remote", "add", "plain", plain.to_str().unwrap()]);
    git(&work, &["push", "--quiet", "plain", "main"]);
    let mut bare_push = Vec::new();
    for i in 0..n {
        std::fs::write(work.join("m"), i.to_string()).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", &format!("plain {i}")]);
        let t0 = now_ns();
        git(&work, &["push", "--quiet", "plain", "main"]);
        bare_push.push((now_ns() - t0) as f64 / 1e6);
    }
    stats(
        "  `git push` to a repository without the hook, for reference",
        bare_push,
    );
    // The hook's request alone (what the hook sends, sent from here): the server's share.
    let hook_client = Client::new(&b.url, Some(t["token"].as_str().unwrap().to_string())).unwrap();
    let mut notified = Vec::new();
    for i in 0..n {
        let _ = std::fs::remove_file(&stamp);
        let before = git(&work, &["rev-parse", "HEAD"]);
        std::fs::write(work.join("k"), i.to_string()).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", &format!("direct {i}")]);
        let after = git(&work, &["rev-parse", "HEAD"]);
        // Into the repository without running its hook.
        git(&work, &["push", "--quiet", "--no-verify", "plain", "main"]);
        git(
            &bare,
            &["fetch", "--quiet", plain.to_str().unwrap(), "+main:main"],
        );
        let body = format!("{before} {after} refs/heads/main\n").into_bytes();
        let t0 = now_ns();
        let r = hook_client
            .send(
                "POST",
                "/api/v1/projects/hooked/hook",
                Some(("text/plain", body)),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let started = epoch_ns(&wait_file(&stamp).await);
        notified.push((started.saturating_sub(t0)) as f64 / 1e6);
        wait_idle(&b).await;
    }
    stats(
        "  the hook's request alone (sent directly) to first job start",
        notified,
    );

    // Through a GitHub webhook (the push reached the repository without a hook).
    let (_bare2, work2) = project(&b, "webhooked", &pipeline).await;
    b.admin
        .json(
            "PUT",
            "/api/v1/projects/webhooked/webhooks/github",
            &json!({"secret": "bench-secret"}),
        )
        .await
        .unwrap();
    let anon = Client::new(&b.url, None).unwrap();
    let mut hooked = Vec::new();
    for i in 0..n {
        let _ = std::fs::remove_file(&stamp);
        let before = git(&work2, &["rev-parse", "HEAD"]);
        std::fs::write(work2.join("n"), i.to_string()).unwrap();
        git(&work2, &["add", "-A"]);
        git(&work2, &["commit", "--quiet", "-m", &format!("change {i}")]);
        git(&work2, &["push", "--quiet", "origin", "main"]);
        let after = git(&work2, &["rev-parse", "HEAD"]);
        let body = json!({"ref": "refs/heads/main", "before": before, "after": after,
            "repository": {"full_name": "bench/app"}, "sender": {"login": "bench"}, "commits": []})
        .to_string()
        .into_bytes();
        let sig = slipway_server::webhook::github_signature("bench-secret", &body);
        let t0 = now_ns();
        let r = anon
            .send(
                "POST",
                "/api/v1/projects/webhooked/webhook",
                Some(("application/json", body)),
                &[
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", sig.as_str()),
                ],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let started = epoch_ns(&wait_file(&stamp).await);
        hooked.push((started.saturating_sub(t0)) as f64 / 1e6);
        wait_idle(&b).await;
    }
    stats("webhook to first job start", hooked);
    b.stop().await;
}

/// Until no job runs (so the next iteration starts on an idle server).
async fn wait_idle(b: &Bench) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.app.running.count() > 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn log_latency(seconds: u64, rate: u64) {
    let b = start(2).await;
    let lines = seconds * rate;
    let pipeline = format!(
        r#"
talker:
  script:
    - for i in $(seq 1 {lines}); do printf 'L %s %s\n' "$i" "$EPOCHREALTIME"; sleep {pause}; done
"#,
        pause = 1.0 / rate as f64
    );
    let (_bare, _work) = project(&b, "talk", &pipeline).await;
    let r = b
        .admin
        .post_json("/api/v1/projects/talk/pipelines", &json!({}))
        .await
        .unwrap()
        .json();
    let job = r["jobs"][0]["id"].as_i64().unwrap();
    let mut s = b
        .admin
        .stream(&format!("/api/v1/jobs/{job}/log/stream"), &[])
        .await
        .unwrap();
    let mut parser = SseParser::default();
    let mut delays = Vec::new();
    let mut rest = String::new();
    let mut seen = 0u64;
    'outer: while let Some(chunk) = s.chunk().await {
        let received = now_ns();
        for ev in parser.push(&chunk.unwrap()) {
            if ev.event == "end" {
                break 'outer;
            }
            rest.push_str(&ev.data);
            while let Some(nl) = rest.find('\n') {
                let line: String = rest.drain(..=nl).collect();
                let mut parts = line.split_whitespace();
                if parts.next() == Some("L") {
                    let (Some(_), Some(t)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    delays.push(received.saturating_sub(epoch_ns(t)) as f64 / 1e6);
                    seen += 1;
                }
            }
        }
    }
    assert_eq!(seen, lines, "every line arrived");
    stats(
        &format!("log line from the job to an SSE client ({lines} lines at {rate}/s)"),
        delays,
    );
    b.stop().await;
}

async fn log_load(jobs: usize, mb: usize) {
    let b = start(jobs).await;
    // Numbered lines (`0000000001 of the job log...`), so every one can be checked.
    const SUFFIX: &str = " of the job log, written to fill megabytes";
    let line_len = 10 + SUFFIX.len();
    let per_job = mb * 1024 * 1024 / (line_len + 1);
    let pipeline = format!(
        r#"
writer:
  parallel: {jobs}
  script:
    - seq -f "%010g{SUFFIX}" 1 {per_job}
"#
    );
    let (_bare, _work) = project(&b, "load", &pipeline).await;
    let t0 = Instant::now();
    let r = b
        .admin
        .post_json("/api/v1/projects/load/pipelines", &json!({}))
        .await
        .unwrap()
        .json();
    let pid = r["pipeline"]["id"].as_i64().unwrap();
    let detail: Value = loop {
        let d = b
            .admin
            .get(&format!("/api/v1/pipelines/{pid}"))
            .await
            .unwrap()
            .json();
        let s = d["pipeline"]["status"].as_str().unwrap_or("").to_string();
        if s == "success" || s == "failed" {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let elapsed = t0.elapsed();
    assert_eq!(detail["pipeline"]["status"], "success", "{detail}");
    let mut total = 0usize;
    let mut lines = 0usize;
    let jobs_done = detail["jobs"].as_array().unwrap();
    assert_eq!(jobs_done.len(), jobs, "one job per parallel instance");
    for j in jobs_done {
        let id = j["id"].as_i64().unwrap();
        let mut offset = 0usize;
        let mut log = Vec::new();
        loop {
            let r = b
                .admin
                .get(&format!("/api/v1/jobs/{id}/log?offset={offset}"))
                .await
                .unwrap();
            if r.body.is_empty() {
                break;
            }
            offset += r.body.len();
            log.extend_from_slice(&r.body);
        }
        total += log.len();
        assert_eq!(
            Some(log.len() as u64),
            j["log_size"].as_u64(),
            "job {id}: the bytes read back are the stored size"
        );
        let text = String::from_utf8(log).unwrap();
        let mut expect = 1usize;
        for line in text.lines() {
            if line.len() == line_len
                && line.ends_with(SUFFIX)
                && line.as_bytes()[..10].iter().all(u8::is_ascii_digit)
            {
                let n: usize = line[..10].parse().unwrap();
                assert_eq!(n, expect, "job {id}: line {expect} lost or out of order");
                expect += 1;
            }
        }
        assert_eq!(expect - 1, per_job, "job {id}: every line stored");
        lines += per_job;
    }
    println!(
        "{jobs} jobs x {mb} MB of logs at once: {:.1} s from trigger to success, {} bytes stored ({:.1} MB/s); {lines} numbered lines ({per_job} per job, {} bytes of them per job) all read back in order, each job's bytes equal to its stored log size",
        elapsed.as_secs_f64(),
        total,
        total as f64 / 1e6 / elapsed.as_secs_f64(),
        per_job * (line_len + 1),
    );
    b.stop().await;
}

fn main() {
    if let Ok(filter) = std::env::var("SLIPWAY_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.get(1).map(String::as_str) {
        Some("pickup") => rt.block_on(pickup(n(2, 30) as usize)),
        Some("log-latency") => rt.block_on(log_latency(n(2, 20), n(3, 50))),
        Some("log-load") => rt.block_on(log_load(n(2, 50) as usize, n(3, 10) as usize)),
        _ => eprintln!(
            "usage: server_bench pickup [N] | log-latency [SECONDS] [RATE] | log-load [JOBS] [MB]"
        ),
    }
}
