//! Crash safety: a real process writes through the store (log appends, job claims and
//! finishes, pipelines, audit entries), printing each acknowledgement; it is killed with
//! SIGKILL mid-stream; everything it printed must be in the database afterwards.
//!
//! The writer is this test binary itself, started with `SLIPWAY_CRASH_CHILD=1` and the
//! `crash_child_writer` filter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestDb};
use slipway_db::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const HOLDER: &str = "crash-child";

/// The child: writes until killed. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    if std::env::var("SLIPWAY_CRASH_CHILD").is_err() {
        return;
    }
    let dir = std::env::var("SLIPWAY_CRASH_DIR").unwrap();
    let key = SecretKey::from_hex(&std::env::var("SLIPWAY_CRASH_KEY").unwrap()).unwrap();
    let mut opts = StoreOptions::new(dir, key);
    if let Ok(url) = std::env::var("SLIPWAY_CRASH_URL") {
        opts = opts.database_url(url);
    }
    let store = Store::open(opts).await.unwrap();
    let actor = Actor::system("crash-test");
    let project = store
        .create_project(&actor, NewProject::new("crash", "/repo"))
        .await
        .unwrap();
    let ack = |line: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ACK {line}").unwrap();
        out.flush().unwrap();
    };
    let mut i: u64 = 0;
    loop {
        // A pipeline of four pending jobs every 40 rounds.
        if i.is_multiple_of(40) {
            let mut np = NewPipeline::new(
                project.id,
                "main",
                format!("{i:040x}"),
                PipelineSource::Push,
            );
            np.jobs = (0..4)
                .map(|k| NewJob {
                    status: JobStatus::Pending,
                    ..NewJob::new(format!("job{k}"), "test", 0)
                })
                .collect();
            let (p, jobs) = store.create_pipeline(&actor, np).await.unwrap();
            ack(format!("PIPELINE {} {}", p.id, jobs.len()));
        }
        // Claim a job, log to it, finish it (some stay running when the kill comes).
        if let Some((lease, job)) = store
            .claim_job(
                HOLDER,
                "shell",
                &ClaimFilter::any(),
                Duration::from_secs(600),
            )
            .await
            .unwrap()
        {
            ack(format!("CLAIM {}", job.id));
            for n in 0..3 {
                let line = format!("job {} line {n} round {i}\n", job.id);
                let size = store.append_log(job.id, line.as_bytes()).await.unwrap();
                ack(format!(
                    "LOG {} {} {}",
                    job.id,
                    size - line.len() as i64,
                    line.trim_end()
                ));
            }
            if !i.is_multiple_of(3) {
                let j = store
                    .finish_job(&lease, &JobOutcome::success())
                    .await
                    .unwrap();
                ack(format!("FINISH {} {}", j.id, j.status.as_str()));
            }
        }
        if i.is_multiple_of(5) {
            let seq = store
                .audit(
                    &actor,
                    "crash.tick",
                    "round",
                    &i.to_string(),
                    serde_json::json!({"i": i}),
                )
                .await
                .unwrap();
            ack(format!("AUDIT {seq}"));
        }
        i += 1;
    }
}

async fn kill_mid_write(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    db.store.close().await;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "crash_child_writer",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SLIPWAY_CRASH_CHILD", "1")
    .env("SLIPWAY_CRASH_DIR", db.dir.path())
    .env("SLIPWAY_CRASH_KEY", db.key.to_hex())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(u) = &db.url {
        cmd.env("SLIPWAY_CRASH_URL", u);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("ACK ") {
                acks.push(a.to_string());
            }
        }
        acks
    });
    // Let it write for a while, then kill it without warning.
    let t = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if t.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    let pid = child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let status = child.wait().unwrap();
    assert!(!status.success());
    let acks = reader.join().unwrap();
    assert!(
        acks.len() > 50,
        "the writer acknowledged too little to test: {}",
        acks.len()
    );

    // Everything acknowledged is there.
    let store = db.reopen().await;
    let (mut logs, mut claims, mut finishes, mut audits, mut pipelines) = (0, 0, 0, 0, 0);
    let mut running: std::collections::BTreeSet<i64> = Default::default();
    let mut max_audit = 0;
    for a in &acks {
        let mut it = a.splitn(4, ' ');
        let kind = it.next().unwrap();
        let id: i64 = it.next().unwrap().parse().unwrap();
        match kind {
            "PIPELINE" => {
                let jobs: usize = it.next().unwrap().parse().unwrap();
                assert_eq!(store.jobs(PipelineId(id)).await.unwrap().len(), jobs);
                pipelines += 1;
            }
            "CLAIM" => {
                running.insert(id);
                claims += 1;
            }
            "LOG" => {
                let offset: i64 = it.next().unwrap().parse().unwrap();
                let line = format!("{}\n", it.next().unwrap());
                let got = store.read_log(JobId(id), offset, line.len()).await.unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&got.data),
                    line,
                    "log of job {id} at {offset}"
                );
                logs += 1;
            }
            "FINISH" => {
                let j = store.job(JobId(id)).await.unwrap();
                assert_eq!(j.status.as_str(), it.next().unwrap());
                running.remove(&id);
                finishes += 1;
            }
            "AUDIT" => {
                max_audit = max_audit.max(id);
                audits += 1;
            }
            other => panic!("unknown ack {other}"),
        }
    }
    let report = store.verify_audit().await.unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    assert!(report.head_seq >= max_audit);
    // Jobs it held when it died are found by the restart recovery.
    let recovered = store
        .recover_after_restart(HOLDER, |_| Recovery::Fail { retry: false })
        .await
        .unwrap();
    for id in &running {
        assert!(
            recovered.failed.contains(&JobId(*id)),
            "job {id} was running"
        );
        let j = store.job(JobId(*id)).await.unwrap();
        assert_eq!(j.failure_reason.as_deref(), Some("server restarted"));
    }
    eprintln!(
        "{backend:?}: {} acknowledgements before SIGKILL ({pipelines} pipelines, {claims} claims, {logs} log appends, \
         {finishes} finishes, {audits} audit entries) all found; {} running jobs recovered",
        acks.len(),
        recovered.failed.len()
    );
    store.close().await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_sqlite() {
    kill_mid_write(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_postgres() {
    kill_mid_write(Backend::Postgres).await;
}
