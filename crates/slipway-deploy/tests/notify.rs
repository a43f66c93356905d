//! Notifications against a real local HTTP receiver: Slack and signed JSON bodies,
//! retries with backoff after failures, and a deployment that is never held up by a
//! webhook that does not answer.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway_core::deploy::settings::Strategy;
use slipway_deploy::notify::{
    sign, Notification, NotificationKind, Notifier, RetryPolicy, Webhook, WebhookKind,
};
use slipway_deploy::{
    DeployRequest, Engine, EngineOptions, JsonFileStore, MemoryCatalog, ProcessTarget,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

/// An HTTP receiver that answers 500 to its first `failures` requests, then 200.
async fn receiver(failures: usize) -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let got2 = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (got, count) = (got2.clone(), count.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (got, count) = (got.clone(), count.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        got.lock().expect("lock").push(Received {
                            path,
                            headers,
                            body: String::from_utf8_lossy(&body).to_string(),
                            at: Instant::now(),
                        });
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let status = if n < failures { 500 } else { 200 };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn header<'a>(r: &'a Received, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 4,
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
    }
}

async fn wait_for(got: &Arc<Mutex<Vec<Received>>>, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = got.lock().expect("lock").clone();
        if v.len() >= n || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sample(kind: NotificationKind) -> Notification {
    Notification {
        event: kind,
        project: None,
        environment: "production".into(),
        deployment: "42".into(),
        version: Some("v2".into()),
        digest: Some("sha256:abc".into()),
        strategy: "blue-green".into(),
        status: "success".into(),
        reason: None,
        rollback_to: None,
        at_ms: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_json_is_retried_with_backoff_until_accepted() {
    let (addr, got) = receiver(2).await;
    let n = Notifier::start(
        vec![Webhook {
            url: format!("http://{addr}/hook"),
            kind: WebhookKind::Json {
                secret: Some("whsec".into()),
            },
        }],
        fast_policy(),
    )
    .expect("notifier");
    assert!(n.notify(sample(NotificationKind::Succeeded)));
    let seen = wait_for(&got, 3).await;
    assert_eq!(seen.len(), 3, "two failures then a success");
    let gap1 = seen[1].at - seen[0].at;
    let gap2 = seen[2].at - seen[1].at;
    assert!(
        gap1 >= Duration::from_millis(90) && gap2 >= Duration::from_millis(190),
        "{gap1:?} {gap2:?}"
    );
    let delivery = header(&seen[0], "x-slipway-delivery").expect("delivery id");
    for r in &seen {
        assert_eq!(r.path, "/hook");
        assert_eq!(header(r, "x-slipway-event"), Some("deployment.succeeded"));
        assert_eq!(
            header(r, "x-slipway-delivery"),
            Some(delivery),
            "same delivery id on every retry"
        );
        let ts: u64 = header(r, "x-slipway-timestamp")
            .expect("ts")
            .parse()
            .expect("number");
        assert_eq!(
            header(r, "x-slipway-signature"),
            Some(sign("whsec", ts, r.body.as_bytes()).as_str())
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(body["event"], "deployment.succeeded");
        assert_eq!(body["environment"], "production");
        assert_eq!(body["digest"], "sha256:abc");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while n.stats().delivered.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(n.stats().delivered.load(Ordering::Relaxed), 1);
    assert_eq!(n.stats().retried.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_gets_text_and_gives_up_after_the_last_attempt() {
    let (addr, got) = receiver(usize::MAX).await;
    let n = Notifier::start(
        vec![Webhook {
            url: format!("http://{addr}/services/T/B/X"),
            kind: WebhookKind::Slack,
        }],
        fast_policy(),
    )
    .expect("notifier");
    let mut f = sample(NotificationKind::Failed);
    f.reason = Some("instance 0 of the new release: 3 consecutive failed checks".into());
    n.notify(f);
    let seen = wait_for(&got, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got.lock().expect("lock").len(), 4, "exactly the 4 attempts");
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).expect("json");
    let text = body["text"].as_str().expect("text");
    assert!(
        text.contains("*production* failed") && text.contains("3 consecutive failed checks"),
        "{text}"
    );
    assert!(header(&seen[0], "x-slipway-signature").is_none());
    assert_eq!(n.stats().failed.load(Ordering::Relaxed), 1);
    assert!(Notifier::start(
        vec![Webhook {
            url: "https://hooks.example/x".into(),
            kind: WebhookKind::Slack
        }],
        fast_policy()
    )
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_notify_and_are_never_blocked_by_a_dead_webhook() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (addr, got) = receiver(0).await;
    // A webhook that accepts connections and never answers.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_addr = hang.local_addr().expect("addr");
    let notifier = Notifier::start(
        vec![
            Webhook {
                url: format!("http://{hang_addr}/"),
                kind: WebhookKind::Json { secret: None },
            },
            Webhook {
                url: format!("http://{addr}/"),
                kind: WebhookKind::Json {
                    secret: Some("k".into()),
                },
            },
        ],
        RetryPolicy {
            timeout: Duration::from_secs(30),
            ..fast_policy()
        },
    )
    .expect("notifier");
    let state = tmp.path().join("state");
    let engine = Engine::open(EngineOptions {
        store: Arc::new(JsonFileStore::open(&state.join("state.json")).expect("store")),
        target: Arc::new(ProcessTarget::new(&state).expect("target")),
        catalog: Arc::new(MemoryCatalog::default()),
        notifier: Some(notifier.clone()),
    })
    .await
    .expect("engine");
    let strategy = Strategy::BlueGreen {
        keep_warm_ms: 0,
        pre_switch_checks: Vec::new(),
    };
    engine
        .add_environment(spec("staging", strategy, 1))
        .await
        .expect("env");
    let stats = notifier;
    let r = engine
        .deploy(DeployRequest {
            deployment: "d1".into(),
            environment: "staging".into(),
            release: release(
                &artifact(tmp.path(), "v1", true),
                "v1",
                &[("API_KEY", "not-in-webhooks")],
            ),
            needs_approval: false,
            rollback_to: None,
            settings: None,
        })
        .expect("deploy")
        .wait()
        .await
        .expect("report");
    // The hanging delivery is still waiting for its answer (no attempt has timed out),
    // yet the deployment is done.
    assert_eq!(stats.stats().failed.load(Ordering::Relaxed), 0);
    assert_eq!(stats.stats().retried.load(Ordering::Relaxed), 0);
    assert_eq!(r.status, slipway_core::deploy::machine::Status::Success);
    let bad = engine
        .deploy(DeployRequest {
            deployment: "d2".into(),
            environment: "staging".into(),
            release: release(&artifact(tmp.path(), "v2", false), "v2", &[]),
            needs_approval: false,
            rollback_to: None,
            settings: None,
        })
        .expect("deploy")
        .wait()
        .await
        .expect("report");
    assert_eq!(bad.status, slipway_core::deploy::machine::Status::Failed);
    let seen = wait_for(&got, 4).await;
    // Deliveries run in parallel, so their order is not guaranteed.
    let mut events: Vec<String> = seen
        .iter()
        .map(|r| header(r, "x-slipway-event").unwrap_or("").to_string())
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "deployment.failed",
            "deployment.started",
            "deployment.started",
            "deployment.succeeded"
        ]
    );
    assert!(
        seen.iter().all(|r| !r.body.contains("not-in-webhooks")),
        "variables never leave"
    );
    engine.shutdown().await;
    drop(hang);
}
