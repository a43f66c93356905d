//! Measures the store: durable log appends (one job, and fifty at once) and job pickup
//! (from the commit that queues a job to a waiting claimer holding it). Prints one line
//! per figure. Used by `bench/db-store.sh`.
//!
//! usage: store_figures DATA_DIR [POSTGRES_URL]
use slipway_db::*;
use std::time::{Duration, Instant};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1) else {
        eprintln!("usage: store_figures DATA_DIR [POSTGRES_URL]");
        std::process::exit(2);
    };
    let mut opts = StoreOptions::new(dir, SecretKey::generate());
    if let Some(url) = args.get(2) {
        opts = opts.database_url(url);
    }
    let s = Store::open(opts).await?;
    let label = format!("{:?}", s.dialect());
    let actor = Actor::system("bench");
    let p = s
        .create_project(
            &actor,
            NewProject::new(format!("bench-{}", std::process::id()), "/repo"),
        )
        .await?;
    let mk = |n: usize, status: JobStatus| {
        let mut np = NewPipeline::new(p.id, "main", "abc", PipelineSource::Push);
        np.jobs = (0..n)
            .map(|i| NewJob {
                status,
                ..NewJob::new(format!("j{i}"), "test", 0)
            })
            .collect();
        np
    };

    // One job appending 4 KiB at a time: the latency of one durable append.
    let (_, jobs) = s.create_pipeline(&actor, mk(1, JobStatus::Created)).await?;
    let chunk = vec![b'x'; 4096];
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        s.append_log(jobs[0].id, &chunk).await?;
        lat.push(t.elapsed());
    }
    println!(
        "{label}: durable 4 KiB append, one job: median {}, p99 {}",
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99))
    );

    // Fifty jobs at once, 64 KiB appends, 2 MB each (group commit).
    let (_, jobs) = s
        .create_pipeline(&actor, mk(50, JobStatus::Created))
        .await?;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for j in &jobs {
        let s = s.clone();
        let id = j.id;
        tasks.push(tokio::spawn(async move {
            let chunk = vec![b'y'; 64 * 1024];
            for _ in 0..32 {
                s.append_log(id, &chunk).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Error::Task(e.to_string()))??;
    }
    let el = t.elapsed();
    let mb = 50.0 * 32.0 * 64.0 * 1024.0 / 1e6;
    println!(
        "{label}: 50 jobs appending 64 KiB at once: {:.0} MB/s ({mb:.0} MB in {:.2} s)",
        mb / el.as_secs_f64(),
        el.as_secs_f64()
    );

    // Pickup: a claimer waits; the job is made pending; time until the claimer has it.
    let n = 100;
    let (_, jobs) = s.create_pipeline(&actor, mk(n, JobStatus::Created)).await?;
    let mut pickup = Vec::new();
    for j in &jobs {
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                let r = s
                    .claim_job_wait(
                        "bench",
                        "shell",
                        &ClaimFilter::any(),
                        Duration::from_secs(60),
                        Duration::from_secs(30),
                    )
                    .await;
                (r, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        s.set_job_status(j.id, JobStatus::Created, JobStatus::Pending)
            .await?;
        let (r, at) = waiter.await.map_err(|e| Error::Task(e.to_string()))?;
        let (lease, _) = r?.ok_or_else(|| Error::Task("no job".into()))?;
        pickup.push(at - t);
        s.finish_job(&lease, &JobOutcome::success()).await?;
    }
    println!(
        "{label}: pickup (enqueue commit to claimed by a waiter): median {}, p99 {}",
        ms(pct(&mut pickup, 0.5)),
        ms(pct(&mut pickup, 0.99))
    );

    // Claim + finish throughput with a full queue.
    let (_, _) = s
        .create_pipeline(&actor, mk(300, JobStatus::Pending))
        .await?;
    let t = Instant::now();
    let mut k = 0;
    while let Some((lease, _)) = s
        .claim_job(
            "bench",
            "shell",
            &ClaimFilter::any(),
            Duration::from_secs(60),
        )
        .await?
    {
        s.finish_job(&lease, &JobOutcome::success()).await?;
        k += 1;
    }
    println!(
        "{label}: claim + finish, one claimer: {:.0} jobs/s",
        k as f64 / t.elapsed().as_secs_f64()
    );
    s.close().await;
    Ok(())
}
