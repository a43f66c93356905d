//! Times loading, checking and planning a pipeline file in-process: the cost the CLI and
//! the server pay per pipeline, without process start-up or git.
//!
//! usage: plan_bench FILE [ITERATIONS]

use slipway_core::load_pipeline_text;
use slipway_core::plan::{basic_predefined, plan, Trigger};
use slipway_core::source::MemoryLoader;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: plan_bench FILE [ITERATIONS]");
        std::process::exit(2);
    };
    let iterations: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    let loader = MemoryLoader::new().with(".gitlab-ci.yml", &text);
    let trigger = Trigger {
        ref_name: "main".into(),
        tag: false,
        source: "push".into(),
        predefined: basic_predefined("main", false, "push", "main"),
        ..Trigger::default()
    };
    let lookup = |_: &str| None;
    let mut times = Vec::with_capacity(iterations);
    let mut jobs = 0;
    for _ in 0..iterations {
        let start = Instant::now();
        let loaded = load_pipeline_text(&loader, ".gitlab-ci.yml", &text, &lookup);
        let pipeline = match loaded.pipeline {
            Ok(p) => p,
            Err(d) => {
                eprintln!("{}", d.render(&loaded.sources));
                std::process::exit(1);
            }
        };
        match plan(&pipeline, &trigger) {
            Ok(Ok(p)) => jobs = p.jobs.len(),
            other => {
                eprintln!("planning failed: {other:?}");
                std::process::exit(1);
            }
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "planned_jobs={jobs} iterations={iterations} min_ms={:.2} median_ms={:.2} max_ms={:.2}",
        times[0],
        median,
        times[times.len() - 1]
    );
}
