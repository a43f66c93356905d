//! The log hub's share of the log-line latency of issue 4: one job writes lines (store
//! first, then publish) while subscribers follow it live; the hub's latency observer
//! records, for every line each subscriber receives, the time since it was published.
//!
//! usage: loghub_latency [LINES] [SUBSCRIBERS]

use slipway_server::loghub::{HubConfig, LogHub, LogStore, MemoryLogStore};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lines: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let subscribers: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let store = Arc::new(MemoryLogStore::new());
        let hub = LogHub::new(store.clone() as Arc<dyn LogStore>, HubConfig::default());
        let samples = Arc::new(Mutex::new(Vec::with_capacity(lines * subscribers)));
        let sink = samples.clone();
        hub.set_latency_observer(move |_, d| {
            if let Ok(mut v) = sink.lock() {
                v.push(d);
            }
        });
        store.create(1);
        let mut publisher = hub.publisher(1, 0);
        let mut readers = Vec::new();
        for _ in 0..subscribers {
            let mut sub = hub.subscribe(1, 0);
            readers.push(tokio::spawn(async move {
                let mut bytes = 0usize;
                while let Some(Ok(c)) = sub.next().await {
                    bytes += c.data.len();
                }
                bytes
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        for i in 0..lines {
            let line = format!("{i:06} \x1b[32mcompiling\x1b[0m crate number {i}\n");
            store.append(1, line.as_bytes());
            publisher.publish(line.as_bytes());
            // About 10,000 lines a second, like a busy build.
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        store.complete(1);
        publisher.finish();
        let total = store.contents(1).len();
        for r in readers {
            match r.await {
                Ok(n) if n == total => {}
                other => {
                    eprintln!("a subscriber did not get the whole log: {other:?}");
                    std::process::exit(1);
                }
            }
        }
        let elapsed = start.elapsed();
        let mut v = samples.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort();
        let pct = |p: f64| v.get(((v.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default();
        let stats = hub.stats();
        println!(
            "{lines} lines to {subscribers} subscribers in {:.2} s: live latency p50 {:?}, p99 {:?}, max {:?} ({} live deliveries, {} lagged, {} store reads)",
            elapsed.as_secs_f64(),
            pct(0.5),
            pct(0.99),
            v.last().copied().unwrap_or_default(),
            v.len(),
            stats.lagged,
            stats.store_reads,
        );
    });
}
