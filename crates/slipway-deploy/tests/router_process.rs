//! The router and the process target on their own, against real processes: streaming
//! bodies, upgrades, forwarded headers, retries past a dead instance, weights; crash
//! restarts, graceful and forced stops, logs and the environment an instance gets.

mod common;

use common::*;
use slipway_deploy::http::HttpClient;
use slipway_deploy::metrics::{MetricProvider, RouterMetrics};
use slipway_deploy::router::{RouteTarget, Router};
use slipway_deploy::target::{DeploymentTarget, InstanceState, ReleaseSpec};
use slipway_deploy::ProcessTarget;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spec_for(dir: &std::path::Path, release: &str, command: &str) -> ReleaseSpec {
    ReleaseSpec {
        environment: "test".into(),
        release: release.into(),
        artifact_dir: dir.to_path_buf(),
        command: command.into(),
        variables: vec![("SECRET_TOKEN".into(), "s3cr3t".into())],
        stop_grace: Duration::from_millis(500),
    }
}

async fn wait_up(client: &HttpClient, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok((200, _)) = get(client, addr, "/healthz").await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("{addr} never answered");
}

async fn service(
    target: &ProcessTarget,
    dir: &std::path::Path,
    release: &str,
    n: u32,
) -> Vec<SocketAddr> {
    let spec = spec_for(dir, release, "exec python3 service.py");
    let started = target
        .start(&spec, &(0..n).collect::<Vec<_>>())
        .await
        .expect("start");
    let client = HttpClient::new();
    for s in &started {
        wait_up(&client, s.addr).await;
    }
    started.iter().map(|s| s.addr).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_streams_upgrades_forwards_and_retries() {
    let tmp = tempfile::tempdir().expect("tmp");
    let target = ProcessTarget::new(&tmp.path().join("state")).expect("target");
    let dir = artifact(tmp.path(), "v1", true);
    let addrs = service(&target, &dir, "r1", 1).await;
    let metrics = Arc::new(RouterMetrics::default());
    let router = Router::start(
        "test",
        "127.0.0.1:0".parse().expect("addr"),
        metrics.clone(),
    )
    .await
    .expect("router");
    let raddr = router.local_addr();
    let client = HttpClient::new();
    assert_eq!(get(&client, raddr, "/").await.expect("get").0, 503);

    // A dead instance (nothing listens on its port) beside a live one: idempotent requests
    // never fail.
    let dead: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    router.set_routes(vec![
        RouteTarget {
            release: "r0".into(),
            index: 0,
            addr: dead,
            weight: 1,
        },
        RouteTarget {
            release: "r1".into(),
            index: 0,
            addr: addrs[0],
            weight: 1,
        },
    ]);
    for _ in 0..20 {
        assert_eq!(
            get(&client, raddr, "/").await.expect("get"),
            (200, "v1".into())
        );
    }
    // A POST is not retried: when it lands on the dead instance it fails with 502.
    let mut bad_gateway = 0;
    for _ in 0..10 {
        let r = client
            .send(
                hyper::Method::POST,
                &format!("http://{raddr}/echo"),
                &[],
                bytes::Bytes::from_static(b"x"),
                Duration::from_secs(5),
            )
            .await
            .expect("post");
        if r.status == 502 {
            bad_gateway += 1;
        } else {
            assert_eq!(&r.body[..], b"x");
        }
    }
    assert!(bad_gateway > 0, "some POSTs went to the dead instance");
    router.set_routes(vec![RouteTarget {
        release: "r1".into(),
        index: 0,
        addr: addrs[0],
        weight: 1,
    }]);

    // Streaming a large body both ways.
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = client
        .send(
            hyper::Method::POST,
            &format!("http://{raddr}/echo"),
            &[],
            bytes::Bytes::from(big.clone()),
            Duration::from_secs(20),
        )
        .await
        .expect("echo");
    assert_eq!(r.status, 200);
    assert!(r.body[..] == big[..], "4 MiB came back intact");

    // Forwarded headers, hop-by-hop headers dropped.
    let r = client
        .send(
            hyper::Method::GET,
            &format!("http://{raddr}/headers"),
            &[
                ("host", "shop.example".into()),
                ("x-forwarded-for", "203.0.113.9".into()),
                ("te", "trailers".into()),
            ],
            bytes::Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .expect("headers");
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-host: shop.example"), "{text}");
    assert!(text.contains("x-forwarded-proto: http"), "{text}");
    assert!(text.contains("host: shop.example"), "{text}");
    assert!(!text.contains("te: trailers"), "{text}");

    // An upgrade is tunnelled: after 101 the service upper-cases what it receives.
    let mut s = tokio::net::TcpStream::connect(raddr)
        .await
        .expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before 101");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"hello tunnel").await.expect("write");
    let mut got = Vec::new();
    while got.len() < 12 {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got[..], b"HELLO TUNNEL");
    assert_eq!(
        router.in_flight("r1", 0),
        1,
        "an open tunnel counts as in flight"
    );
    drop(s);

    // Counters per release.
    let m = metrics
        .release_metrics("test", "r1")
        .await
        .expect("metrics");
    assert!(m.requests >= 23, "{m:?}");
    assert!(m.latency_quantile(0.99).is_some());
    let r0 = metrics
        .release_metrics("test", "r0")
        .await
        .expect("metrics r0");
    assert_eq!(
        r0.requests, r0.errors_5xx,
        "every request to the dead instance is a 5xx"
    );
    target.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_routes_split_traffic() {
    let tmp = tempfile::tempdir().expect("tmp");
    let target = ProcessTarget::new(&tmp.path().join("state")).expect("target");
    let a = service(&target, &artifact(tmp.path(), "v1", true), "r1", 1).await;
    let b = service(&target, &artifact(tmp.path(), "v2", true), "r2", 1).await;
    let router = Router::start(
        "test",
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(RouterMetrics::default()),
    )
    .await
    .expect("router");
    router.set_routes(vec![
        RouteTarget {
            release: "r1".into(),
            index: 0,
            addr: a[0],
            weight: 80,
        },
        RouteTarget {
            release: "r2".into(),
            index: 0,
            addr: b[0],
            weight: 20,
        },
    ]);
    let client = HttpClient::new();
    let mut v2 = 0;
    for _ in 0..400 {
        if get(&client, router.local_addr(), "/").await.expect("get").1 == "v2" {
            v2 += 1;
        }
    }
    assert!(
        (50..=110).contains(&v2),
        "{v2} of 400 went to the 20% release"
    );
    target.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_target_restarts_crashes_and_stops_stubborn_processes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let target = ProcessTarget::new(&tmp.path().join("state")).expect("target");
    let dir = artifact(tmp.path(), "v1", true);
    let mut events = target.subscribe();
    let addr = service(&target, &dir, "r1", 1).await[0];
    let client = HttpClient::new();
    assert_eq!(
        get(&client, addr, "/env/SECRET_TOKEN")
            .await
            .expect("env")
            .1,
        "s3cr3t"
    );
    assert_eq!(
        get(&client, addr, "/env/SLIPWAY_RELEASE")
            .await
            .expect("env")
            .1,
        "r1"
    );
    assert_eq!(
        get(&client, addr, "/env/PORT").await.expect("env").1,
        addr.port().to_string()
    );
    let first_pid = target.status("test", "r1")[0].pid;

    // A crash: reported, restarted on the same port after a backoff.
    let _ = get(&client, addr, "/crash").await;
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event")
        .expect("recv");
    assert!(
        matches!(
            ev,
            slipway_deploy::target::TargetEvent::Exited { code: Some(3), .. }
        ),
        "{ev:?}"
    );
    wait_up(&HttpClient::new(), addr).await;
    let st = &target.status("test", "r1")[0];
    assert_eq!(st.restarts, 1);
    assert_eq!(st.last_exit, Some(3));
    assert_ne!(st.pid, first_pid);
    assert_eq!(st.state, InstanceState::Running);

    // The log has the service's output; the secret is not in it.
    let log = std::fs::read_to_string(target.log_path("test", "r1", 0)).expect("log");
    assert_eq!(log.matches("v1 listening on").count(), 2, "{log}");
    assert!(!log.contains("s3cr3t"));

    // A process that ignores SIGTERM is killed after the grace period.
    let stubborn = spec_for(&dir, "r2", "trap '' TERM; sleep 60 & wait; sleep 60");
    target.start(&stubborn, &[0]).await.expect("start");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = target.status("test", "r2")[0].pid.expect("pid");
    let t0 = Instant::now();
    target.stop("test", "r2", &[0]).await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
    );
    assert!(target.status("test", "r2").is_empty());
    target.stop_all().await;
    let pids = std::fs::read_dir(tmp.path().join("state/pids"))
        .expect("pids")
        .count();
    assert_eq!(pids, 0, "PID files are removed on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_stops_what_a_previous_supervisor_left() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let dir = artifact(tmp.path(), "v1", true);
    // A supervisor on its own runtime, dropped without stopping anything: its processes
    // survive, as after a kill -9.
    let addr = {
        let state = state.clone();
        let dir = dir.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("rt");
            rt.block_on(async {
                let t = ProcessTarget::new(&state).expect("target");
                let started = t
                    .start(&spec_for(&dir, "r1", "exec python3 service.py"), &[0])
                    .await
                    .expect("start");
                started[0].addr
            })
        })
        .join()
        .expect("thread")
    };
    let client = HttpClient::new();
    wait_up(&client, addr).await;
    let target = ProcessTarget::new(&state).expect("target");
    let reclaimed = target.reclaim().await;
    assert_eq!(reclaimed.len(), 1, "{reclaimed:?}");
    assert_eq!(reclaimed[0].release, "r1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        get(&HttpClient::new(), addr, "/").await.is_err(),
        "the orphan no longer serves"
    );
    assert!(target.reclaim().await.is_empty());
}
