//! The live log hub with the in-memory store: catch-up, live tail, lag, restarts.

use slipway_server::loghub::{
    BoxFuture, HubConfig, JobId, LogHub, LogStore, LogStoreError, LogSubscription, MemoryLogStore,
    StoredLog,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn make_hub(store: &Arc<MemoryLogStore>, config: HubConfig) -> Arc<LogHub> {
    LogHub::new(store.clone() as Arc<dyn LogStore>, config)
}

/// Everything a subscription yields until the log is complete.
async fn drain(mut sub: LogSubscription) -> Vec<u8> {
    let mut out = Vec::new();
    let mut expected = sub.offset();
    while let Some(chunk) = sub.next().await {
        let chunk = chunk.expect("store readable");
        assert_eq!(chunk.offset, expected, "no gap, no overlap");
        expected = chunk.end();
        out.extend_from_slice(&chunk.data);
    }
    out
}

fn line(i: usize) -> Vec<u8> {
    format!("line {i:05} \x1b[32mok\x1b[0m\n").into_bytes()
}

/// Writes lines the way the runner will: store first, then publish.
async fn write_job(
    store: Arc<MemoryLogStore>,
    hub: Arc<LogHub>,
    job: JobId,
    lines: usize,
    yield_every: usize,
) {
    store.create(job);
    let mut publisher = hub.publisher(job, 0);
    for i in 0..lines {
        let l = line(i);
        let len = store.append(job, &l);
        assert_eq!(publisher.publish(&l), len);
        if i % yield_every == 0 {
            tokio::task::yield_now().await;
        }
    }
    store.complete(job);
    publisher.finish();
}

fn full(lines: usize) -> Vec<u8> {
    (0..lines).flat_map(line).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_at_any_moment_get_every_byte_once() {
    let store = Arc::new(MemoryLogStore::new());
    let hub = make_hub(&store, HubConfig::default());
    let lines = 20_000;
    store.create(1);
    let writer = tokio::spawn(write_job(store.clone(), hub.clone(), 1, lines, 7));
    let mut readers = Vec::new();
    for k in 0..12u64 {
        let hub = hub.clone();
        readers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(k * 700)).await;
            // Half start from the beginning, half from byte 1000 (a reconnecting browser).
            let from = if k % 2 == 0 { 0 } else { 1000 };
            (from, drain(hub.subscribe(1, from)).await)
        }));
    }
    writer.await.expect("writer");
    let expected = full(lines);
    for r in readers {
        let (from, got) = r.await.expect("reader");
        assert_eq!(got.len(), expected.len() - from as usize);
        assert!(
            got == expected[from as usize..],
            "reader from {from} got a different log"
        );
    }
    let stats = hub.stats();
    assert!(
        stats.delivered_live > 0,
        "some pieces arrive live: {stats:?}"
    );
    assert_eq!(hub.live_jobs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_falls_back_to_the_store_without_growing_memory() {
    let store = Arc::new(MemoryLogStore::new());
    let config = HubConfig {
        buffer_chunks: 4,
        ..HubConfig::default()
    };
    let hub = make_hub(&store, config);
    store.create(2);
    let mut publisher = hub.publisher(2, 0);
    let mut slow = hub.subscribe(2, 0);
    // The subscriber takes one piece, then stalls while 2,000 more are published.
    let first = store.append(2, &line(0));
    publisher.publish(&line(0));
    let got = slow.next().await.expect("piece").expect("ok");
    assert_eq!(got.end(), first);
    // Waiting for the next piece puts it on the live stream (nothing more is stored).
    assert!(tokio::time::timeout(Duration::from_millis(20), slow.next())
        .await
        .is_err());
    for i in 1..2000 {
        store.append(2, &line(i));
        publisher.publish(&line(i));
    }
    store.complete(2);
    publisher.finish();
    let mut rest = got.data.to_vec();
    rest.extend(drain(slow).await);
    assert!(rest == full(2000));
    let stats = hub.stats();
    assert!(stats.lagged >= 1, "{stats:?}");
    assert!(stats.store_reads >= 2, "{stats:?}");
}

#[tokio::test]
async fn a_finished_job_is_read_from_the_store_and_a_waiting_one_starts_live() {
    let store = Arc::new(MemoryLogStore::new());
    let hub = make_hub(
        &store,
        HubConfig {
            read_batch: 100,
            ..HubConfig::default()
        },
    );
    store.append(3, &full(50));
    store.complete(3);
    assert!(drain(hub.subscribe(3, 0)).await == full(50));
    assert!(drain(hub.subscribe(3, full(50).len() as u64))
        .await
        .is_empty());

    // Job 4 has not started: the subscriber waits and is woken when its publisher starts
    // (the poll interval is long, so only the wake-up can explain a prompt start).
    store.create(4);
    let hub2 = make_hub(
        &store,
        HubConfig {
            poll_interval: Duration::from_secs(3600),
            ..HubConfig::default()
        },
    );
    let reader = tokio::spawn(drain(hub2.subscribe(4, 0)));
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_job(store.clone(), hub2.clone(), 4, 300, 10).await;
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("woken")
        .expect("reader");
    assert!(got == full(300));
}

#[tokio::test]
async fn a_publisher_that_goes_away_leaves_subscribers_on_the_store() {
    let store = Arc::new(MemoryLogStore::new());
    let hub = make_hub(
        &store,
        HubConfig {
            poll_interval: Duration::from_millis(5),
            ..HubConfig::default()
        },
    );
    store.create(5);
    let reader = tokio::spawn(drain(hub.subscribe(5, 0)));
    {
        let mut p = hub.publisher(5, 0);
        for i in 0..10 {
            store.append(5, &line(i));
            p.publish(&line(i));
        }
        // Dropped without finish: the server's runner died.
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    // After a restart the job is re-attached at the stored length and finishes.
    let mut p = hub.publisher(5, store.contents(5).len() as u64);
    for i in 10..20 {
        store.append(5, &line(i));
        p.publish(&line(i));
    }
    store.complete(5);
    p.finish();
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("ends")
        .expect("reader");
    assert!(got == full(20));
}

#[tokio::test]
async fn latency_is_observed_for_live_pieces_and_large_writes_are_split() {
    let store = Arc::new(MemoryLogStore::new());
    let hub = make_hub(
        &store,
        HubConfig {
            max_chunk: 1024,
            ..HubConfig::default()
        },
    );
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    hub.set_latency_observer(move |job, latency| {
        assert_eq!(job, 6);
        assert!(latency < Duration::from_secs(60));
        counter.fetch_add(1, Ordering::Relaxed);
    });
    store.create(6);
    let mut p = hub.publisher(6, 0);
    let mut sub = hub.subscribe(6, 0);
    // Caught up (the store is empty) and waiting on the live stream.
    assert!(tokio::time::timeout(Duration::from_millis(20), sub.next())
        .await
        .is_err());
    let big = vec![b'x'; 10 * 1024];
    store.append(6, &big);
    p.publish(&big);
    store.complete(6);
    p.finish();
    let mut pieces = 0;
    let mut total = 0;
    while let Some(c) = sub.next().await {
        let c = c.expect("ok");
        assert!(c.data.len() <= 1024);
        assert!(c.published_at.is_some());
        pieces += 1;
        total += c.data.len();
    }
    assert_eq!((pieces, total), (10, 10 * 1024));
    assert_eq!(seen.load(Ordering::Relaxed), 10);
}

struct FailingStore;

impl LogStore for FailingStore {
    fn read_from(
        &self,
        _: JobId,
        _: u64,
        _: usize,
    ) -> BoxFuture<'_, Result<StoredLog, LogStoreError>> {
        Box::pin(async { Err(LogStoreError("database is locked".into())) })
    }
}

#[tokio::test]
async fn store_errors_reach_the_subscriber() {
    let hub = LogHub::new(Arc::new(FailingStore), HubConfig::default());
    let mut sub = hub.subscribe(1, 0);
    let err = sub.next().await.expect("an item").expect_err("error");
    assert_eq!(
        err.to_string(),
        "cannot read the job log: database is locked"
    );
    assert_eq!(sub.offset(), 0);
    // An unknown job is an error from the memory store too.
    let store = Arc::new(MemoryLogStore::new());
    let hub = LogHub::new(store as Arc<dyn LogStore>, HubConfig::default());
    assert!(hub.subscribe(99, 0).next().await.expect("item").is_err());
}
