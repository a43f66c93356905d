//! Issue 4's log load: 50 jobs each writing 10 MB of log at once, every byte stored and
//! read back. `#[ignore]`d (it writes 500 MB); `.ci/run` runs it on SQLite and
//! PostgreSQL with `cargo test -p slipway-db --test log_load -- --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, TestDb};
use sha2::{Digest, Sha256};
use slipway_db::*;
use std::time::Instant;

const JOBS: usize = 50;
const PER_JOB: usize = 10 * 1024 * 1024;
/// What the server flushes at once from a busy job.
const APPEND: usize = 64 * 1024;

async fn fifty_jobs_ten_megabytes(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let s = &db.store;
    let actor = Actor::system("test");
    let p = s
        .create_project(&actor, NewProject::new("load", "/repo"))
        .await
        .unwrap();
    let mut np = NewPipeline::new(p.id, "main", "abc", PipelineSource::Push);
    np.jobs = (0..JOBS)
        .map(|i| NewJob {
            status: JobStatus::Pending,
            ..NewJob::new(format!("j{i}"), "test", 0)
        })
        .collect();
    let (_, jobs) = s.create_pipeline(&actor, np).await.unwrap();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for j in &jobs {
        let s = s.clone();
        let id = j.id;
        tasks.push(tokio::spawn(async move {
            let mut h = Sha256::new();
            let mut written = 0usize;
            let mut n = 0u64;
            while written < PER_JOB {
                let mut chunk = Vec::with_capacity(APPEND + 128);
                while chunk.len() < APPEND && written + chunk.len() < PER_JOB {
                    chunk.extend_from_slice(
                        format!(
                            "\x1b[32mjob {} line {n:08}\x1b[0m {}\n",
                            id.0,
                            "=".repeat(60)
                        )
                        .as_bytes(),
                    );
                    n += 1;
                }
                s.append_log(id, &chunk).await.unwrap();
                h.update(&chunk);
                written += chunk.len();
            }
            (id, written as i64, h.finalize())
        }));
    }
    let mut expected = Vec::new();
    for t in tasks {
        expected.push(t.await.unwrap());
    }
    let took = t.elapsed();
    let total: i64 = expected.iter().map(|e| e.1).sum();
    for (id, size, digest) in &expected {
        assert_eq!(s.log_size(*id).await.unwrap(), *size);
        // Read back the way a live tail does, in 1 MiB steps.
        let mut h = Sha256::new();
        let mut off = 0;
        while off < *size {
            let slice = s.read_log(*id, off, 1 << 20).await.unwrap();
            assert!(!slice.data.is_empty());
            h.update(&slice.data);
            off = slice.next_offset();
        }
        assert_eq!(h.finalize(), *digest, "log of job {id} differs");
    }
    eprintln!(
        "{backend:?}: {JOBS} jobs x {} MB in {APPEND}-byte appends: {:.1} s, {:.0} MB/s, all {total} bytes read back",
        PER_JOB >> 20,
        took.as_secs_f64(),
        total as f64 / 1e6 / took.as_secs_f64().max(1e-9)
    );
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn fifty_jobs_ten_megabytes_sqlite() {
    fifty_jobs_ten_megabytes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn fifty_jobs_ten_megabytes_postgres() {
    fifty_jobs_ten_megabytes(Backend::Postgres).await;
}
