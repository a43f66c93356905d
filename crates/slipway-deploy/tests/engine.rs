//! The engine against real processes (the Python test service) and real HTTP through
//! its router: blue-green with zero failed requests and a warm rollback, a release that
//! never becomes healthy, rolling and recreate, rollback with the old variables,
//! approvals, and persistence of what happened.

mod common;

use common::*;
use slipway_core::deploy::machine::{Phase, Status};
use slipway_core::deploy::settings::{Amount, Strategy};
use slipway_deploy::http::HttpClient;
use slipway_deploy::DeployRequest;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn request(env: &str, id: &str, release: slipway_deploy::Release) -> DeployRequest {
    DeployRequest {
        deployment: id.to_string(),
        environment: env.to_string(),
        release,
        needs_approval: false,
        rollback_to: None,
        settings: None,
    }
}

/// Steady load: `clients` sequential loops of GET /, each recording what it got.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Result<String, String>>>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = HttpClient::new();
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        seen.push(match get(&client, addr, "/").await {
                            Ok((200, body)) => Ok(body),
                            Ok((status, body)) => Err(format!("{status} {body}")),
                            Err(e) => Err(e),
                        });
                    }
                    seen
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Vec<Vec<Result<String, String>>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.expect("load task"));
        }
        out
    }
}

/// Each client saw only successes, and versions in runs matching `expected` in order
/// (a client never flips back and forth during a switch).
fn assert_runs(results: &[Vec<Result<String, String>>], expected: &[&str]) {
    let mut total = 0;
    for (c, seen) in results.iter().enumerate() {
        total += seen.len();
        let errors: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            errors.is_empty(),
            "client {c}: {} failed requests, first: {:?}",
            errors.len(),
            errors.first()
        );
        let mut runs: Vec<&str> = Vec::new();
        for v in seen.iter().flatten() {
            if runs.last() != Some(&v.as_str()) {
                runs.push(v);
            }
        }
        // A client may miss a short run, but never sees versions out of order.
        let mut pos = 0;
        for r in &runs {
            match expected[pos..].iter().position(|e| e == r) {
                Some(p) => pos += p,
                None => panic!("client {c}: versions {runs:?}, expected runs of {expected:?}"),
            }
        }
    }
    assert!(total > 50, "only {total} requests were made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switch_and_warm_rollback_lose_no_request() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = engine(&tmp.path().join("state")).await;
    let strategy = Strategy::BlueGreen {
        keep_warm_ms: 60_000,
        pre_switch_checks: vec![slipway_core::deploy::settings::HttpCheck {
            path: "/healthz".into(),
            status: Some(200),
        }],
    };
    let addr = t
        .engine
        .add_environment(spec("prod", strategy, 2))
        .await
        .expect("env");
    let client = HttpClient::new();
    assert_eq!(
        get(&client, addr, "/").await.expect("503").0,
        503,
        "nothing serves yet"
    );

    let v1 = release(&artifact(tmp.path(), "v1", true), "v1", &[]);
    let r1 = t
        .engine
        .deploy(request("prod", "d1", v1.clone()))
        .expect("d1")
        .wait()
        .await
        .expect("r1");
    assert_eq!(r1.status, Status::Success, "{r1:?}");
    assert_eq!(
        get(&client, addr, "/").await.expect("v1"),
        (200, "v1".into())
    );

    let load = Load::start(addr, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A slow request that starts on v1 must finish on v1 after the switch.
    let slow = tokio::spawn(async move { get(&HttpClient::new(), addr, "/slow?ms=1500").await });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let v2 = release(&artifact(tmp.path(), "v2", true), "v2", &[]);
    let r2 = t
        .engine
        .deploy(request("prod", "d2", v2))
        .expect("d2")
        .wait()
        .await
        .expect("r2");
    assert_eq!(r2.status, Status::Success, "{r2:?}");
    assert!(matches!(r2.phase, Phase::KeepingOldWarm { .. }), "{r2:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        slow.await.expect("slow task"),
        Ok((200, "v1".into())),
        "in-flight request finished on the old release"
    );

    let status = t.engine.status("prod").await.expect("status");
    assert_eq!(
        status.record.serving.as_ref().map(|s| s.release.as_str()),
        Some("d2")
    );
    assert_eq!(
        status
            .record
            .warm
            .as_ref()
            .map(|w| w.release.release.as_str()),
        Some("d1")
    );
    let pids_before: Vec<Option<u32>> = {
        use slipway_deploy::DeploymentTarget;
        t.target
            .status("prod", "d1")
            .iter()
            .map(|s| s.pid)
            .collect()
    };
    assert_eq!(pids_before.len(), 2, "old release still warm");

    // Rollback to the warm release: a traffic switch only.
    let mut rb = request("prod", "d3", v1);
    rb.rollback_to = Some("d1".into());
    let r3 = t.engine.deploy(rb).expect("d3").wait().await.expect("r3");
    assert_eq!(r3.status, Status::Success, "{r3:?}");
    // Its duration is measured (bench/bluegreen.sh reports it), not asserted here.
    assert!(r3.switch_ms.is_some());
    {
        use slipway_deploy::DeploymentTarget;
        let pids_after: Vec<Option<u32>> = t
            .target
            .status("prod", "d1")
            .iter()
            .map(|s| s.pid)
            .collect();
        assert_eq!(
            pids_before, pids_after,
            "no process was started for the rollback"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let results = load.finish().await;
    assert_runs(&results, &["v1", "v2", "v1"]);
    for seen in &results {
        assert_eq!(
            seen.last()
                .and_then(|r| r.as_ref().ok())
                .map(String::as_str),
            Some("v1")
        );
    }

    // The record tells the story: d1 and d2 succeeded; d3 (the rollback) keeps d2 warm.
    let status = t.engine.status("prod").await.expect("status");
    assert_eq!(
        status.record.serving.as_ref().map(|s| s.release.as_str()),
        Some("d1")
    );
    let cur = status
        .record
        .current
        .as_ref()
        .expect("rollback keeps d2 warm");
    assert_eq!(cur.id, "d3");
    assert_eq!(cur.rollback_to.as_deref(), Some("d1"));
    let ids: Vec<(&str, Status)> = status
        .record
        .history
        .iter()
        .map(|d| (d.id.as_str(), d.status))
        .collect();
    assert_eq!(ids, vec![("d1", Status::Success), ("d2", Status::Success)]);
    let saved = std::fs::read_to_string(t.state.join("state.json")).expect("state file");
    assert!(saved.contains("\"d3\""), "intent persisted");
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_becomes_healthy_takes_no_traffic() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = engine(&tmp.path().join("state")).await;
    let strategy = Strategy::BlueGreen {
        keep_warm_ms: 0,
        pre_switch_checks: Vec::new(),
    };
    let addr = t
        .engine
        .add_environment(spec("staging", strategy, 1))
        .await
        .expect("env");
    let v1 = release(&artifact(tmp.path(), "v1", true), "v1", &[]);
    t.engine
        .deploy(request("staging", "d1", v1))
        .expect("d1")
        .wait()
        .await
        .expect("r1");
    let load = Load::start(addr, 2);
    let bad = release(&artifact(tmp.path(), "v2", false), "v2", &[]);
    let r = t
        .engine
        .deploy(request("staging", "d2", bad))
        .expect("d2")
        .wait()
        .await
        .expect("r2");
    assert_eq!(r.status, Status::Failed, "{r:?}");
    assert!(
        r.reason
            .as_deref()
            .is_some_and(|s| s.contains("answered 500")),
        "{r:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let results = load.finish().await;
    assert_runs(&results, &["v1"]);
    {
        use slipway_deploy::DeploymentTarget;
        assert!(
            t.target.status("staging", "d2").is_empty(),
            "the failed release was stopped"
        );
    }
    let status = t.engine.status("staging").await.expect("status");
    assert_eq!(
        status.record.serving.as_ref().map(|s| s.release.as_str()),
        Some("d1")
    );
    assert_eq!(
        status.record.history.last().map(|d| d.status),
        Some(Status::Failed)
    );
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replaces_instances_without_failed_requests() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = engine(&tmp.path().join("state")).await;
    let strategy = Strategy::Rolling {
        max_surge: Amount::Count(1),
        max_unavailable: Amount::Count(0),
    };
    let addr = t
        .engine
        .add_environment(spec("web", strategy, 3))
        .await
        .expect("env");
    let v1 = release(&artifact(tmp.path(), "v1", true), "v1", &[]);
    t.engine
        .deploy(request("web", "d1", v1))
        .expect("d1")
        .wait()
        .await
        .expect("r1");
    let load = Load::start(addr, 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v2 = release(&artifact(tmp.path(), "v2", true), "v2", &[]);
    let r = t
        .engine
        .deploy(request("web", "d2", v2))
        .expect("d2")
        .wait()
        .await
        .expect("r2");
    assert_eq!(r.status, Status::Success, "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let results = load.finish().await;
    // Mixed versions during the roll; no failure, and v2 at the end.
    for (c, seen) in results.iter().enumerate() {
        assert!(seen.iter().all(|r| r.is_ok()), "client {c} had failures");
        assert_eq!(
            seen.last()
                .and_then(|r| r.as_ref().ok())
                .map(String::as_str),
            Some("v2")
        );
    }
    {
        use slipway_deploy::DeploymentTarget;
        assert!(t.target.status("web", "d1").is_empty());
        assert_eq!(t.target.status("web", "d2").len(), 3);
    }
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_then_rollback_restores_the_old_variables() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = engine(&tmp.path().join("state")).await;
    let addr = t
        .engine
        .add_environment(spec("dev", Strategy::Recreate, 1))
        .await
        .expect("env");
    let client = HttpClient::new();
    let dir1 = artifact(tmp.path(), "v1", true);
    let v1 = release(&dir1, "v1", &[("GREETING", "hello")]);
    t.engine
        .deploy(request("dev", "d1", v1.clone()))
        .expect("d1")
        .wait()
        .await
        .expect("r1");
    assert_eq!(
        get(&client, addr, "/env/GREETING").await.expect("get"),
        (200, "hello".into())
    );
    let v2 = release(
        &artifact(tmp.path(), "v2", true),
        "v2",
        &[("GREETING", "bye")],
    );
    // v2's commit changed its settings: two instances, another health path.
    let mut req = request("dev", "d2", v2);
    let mut settings = spec("dev", Strategy::Recreate, 1).settings();
    settings.instances = 2;
    settings.health_check.check.path = "/".into();
    req.settings = Some(settings);
    let r2 = t.engine.deploy(req).expect("d2").wait().await.expect("r2");
    assert_eq!(r2.phase, Phase::Succeeded);
    {
        use slipway_deploy::DeploymentTarget;
        assert_eq!(
            t.target.status("dev", "d2").len(),
            2,
            "the release's own instance count"
        );
        assert!(
            t.target.status("dev", "d1").is_empty(),
            "recreate stopped the old release"
        );
    }
    let st = t.engine.status("dev").await.expect("status");
    let serving = st.record.serving.as_ref().expect("serving");
    assert_eq!(serving.instances, 2);
    assert_eq!(
        serving
            .settings
            .as_ref()
            .map(|s| s.health_check.check.path.as_str()),
        Some("/")
    );
    assert_eq!(
        get(&client, addr, "/env/GREETING").await.expect("get"),
        (200, "bye".into())
    );
    assert_eq!(get(&client, addr, "/env/PORT").await.expect("port").0, 200);
    // Nothing is warm with recreate: the rollback starts d1's artifact with d1's variables.
    let mut rb = request("dev", "d3", v1);
    rb.rollback_to = Some("d1".into());
    let r3 = t.engine.deploy(rb).expect("d3").wait().await.expect("r3");
    assert_eq!(r3.status, Status::Success, "{r3:?}");
    assert_eq!(
        get(&client, addr, "/").await.expect("get"),
        (200, "v1".into())
    );
    assert_eq!(
        get(&client, addr, "/env/GREETING").await.expect("get"),
        (200, "hello".into())
    );
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gates_a_deployment_and_rejection_cancels_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = engine(&tmp.path().join("state")).await;
    let strategy = Strategy::BlueGreen {
        keep_warm_ms: 0,
        pre_switch_checks: Vec::new(),
    };
    let addr = t
        .engine
        .add_environment(spec("production", strategy, 1))
        .await
        .expect("env");
    let client = HttpClient::new();
    let v1 = release(&artifact(tmp.path(), "v1", true), "v1", &[]);
    let mut req = request("production", "d1", v1);
    req.needs_approval = true;
    let handle = t.engine.deploy(req).expect("d1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = t.engine.status("production").await.expect("status");
    assert_eq!(
        st.record.current.as_ref().map(|d| d.status),
        Some(Status::AwaitingApproval)
    );
    assert_eq!(
        get(&client, addr, "/").await.expect("get").0,
        503,
        "nothing started before approval"
    );
    t.engine.approve("production", "d1").await.expect("approve");
    assert_eq!(handle.wait().await.expect("r1").status, Status::Success);

    let v2 = release(&artifact(tmp.path(), "v2", true), "v2", &[]);
    let mut req = request("production", "d2", v2);
    req.needs_approval = true;
    let handle = t.engine.deploy(req).expect("d2");
    tokio::time::sleep(Duration::from_millis(100)).await;
    t.engine
        .reject("production", "d2", "rejected by alice")
        .await
        .expect("reject");
    let r = handle.wait().await.expect("r2");
    assert_eq!(r.status, Status::Canceled);
    assert_eq!(r.reason.as_deref(), Some("rejected by alice"));
    assert_eq!(
        get(&client, addr, "/").await.expect("get"),
        (200, "v1".into())
    );
    let again = release(&artifact(tmp.path(), "v3", true), "v3", &[]);
    let dup = t
        .engine
        .deploy(request("production", "d1", again))
        .expect("dup")
        .wait()
        .await
        .expect("dup report");
    assert_eq!(dup.status, Status::Failed);
    assert!(
        dup.reason
            .as_deref()
            .is_some_and(|r| r.contains("already used")),
        "{dup:?}"
    );
    assert_eq!(
        get(&client, addr, "/").await.expect("get"),
        (200, "v1".into())
    );
    assert!(
        t.engine.approve("production", "d2").await.is_err(),
        "a finished deployment cannot be approved"
    );
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_from_a_slipway_definition_splits_traffic_until_promoted() {
    // The environment comes from a repository's `.slipway`, as the server will read it.
    let yaml = "deploy:\n  script: [true]\n  environment: shop\n.slipway:\n  environments:\n    shop:\n      process: {command: exec python3 service.py, instances: 2}\n      strategy:\n        canary:\n          steps: [{weight: 25}, {pause: manual}]\n          keep_warm: 0s\n      health_check: {path: /healthz, interval: 50ms, success_threshold: 2}\n";
    let loader = slipway_core::source::MemoryLoader::new().with(".gitlab-ci.yml", yaml);
    let loaded = slipway_core::load_pipeline(&loader, ".gitlab-ci.yml", &|_| None);
    let settings =
        slipway_core::deploy::parse_settings(loaded.tree.as_ref().expect("tree")).expect("valid");
    let def = settings.environment("shop").expect("shop");
    let spec = slipway_deploy::EnvironmentSpec::from_def(def, "127.0.0.1:0".parse().expect("addr"));
    assert_eq!(spec.instances, 2);

    let tmp = tempfile::tempdir().expect("tmp");
    let t = engine(&tmp.path().join("state")).await;
    let addr = t.engine.add_environment(spec).await.expect("env");
    let client = HttpClient::new();
    let v1 = release(&artifact(tmp.path(), "v1", true), "v1", &[]);
    t.engine
        .deploy(request("shop", "d1", v1))
        .expect("d1")
        .wait()
        .await
        .expect("r1");
    let v2 = release(&artifact(tmp.path(), "v2", true), "v2", &[]);
    let handle = t.engine.deploy(request("shop", "d2", v2)).expect("d2");
    // Wait for the manual pause.
    let mut paused = false;
    for _ in 0..200 {
        let st = t.engine.status("shop").await.expect("status");
        if matches!(
            st.record.current.as_ref().map(|d| &d.phase),
            Some(Phase::Paused { until: None, .. })
        ) {
            paused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(paused, "the canary reached its manual pause");
    let mut v2_count = 0;
    for _ in 0..400 {
        let (status, body) = get(&client, addr, "/").await.expect("get");
        assert_eq!(status, 200);
        if body == "v2" {
            v2_count += 1;
        }
    }
    assert!(
        (60..=140).contains(&v2_count),
        "{v2_count} of 400 requests reached the 25% canary"
    );
    let metrics = t.engine.metrics();
    let m2 = metrics
        .release_metrics("shop", "d2")
        .await
        .expect("canary metrics");
    assert_eq!(m2.requests, v2_count as u64);
    assert_eq!(m2.errors_5xx, 0);

    t.engine.promote("shop", "d2").await.expect("promote");
    let r = handle.wait().await.expect("r2");
    assert_eq!(r.status, Status::Success, "{r:?}");
    for _ in 0..20 {
        assert_eq!(
            get(&client, addr, "/").await.expect("get"),
            (200, "v2".into())
        );
    }
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rolling_update_restores_the_old_instances() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = engine(&tmp.path().join("state")).await;
    let strategy = Strategy::Rolling {
        max_surge: Amount::Count(0),
        max_unavailable: Amount::Count(1),
    };
    let addr = t
        .engine
        .add_environment(spec("api", strategy, 3))
        .await
        .expect("env");
    let v1 = release(&artifact(tmp.path(), "v1", true), "v1", &[]);
    t.engine
        .deploy(request("api", "d1", v1))
        .expect("d1")
        .wait()
        .await
        .expect("r1");
    let load = Load::start(addr, 2);
    let bad = release(&artifact(tmp.path(), "v2", false), "v2", &[]);
    let r = t
        .engine
        .deploy(request("api", "d2", bad))
        .expect("d2")
        .wait()
        .await
        .expect("r2");
    // Max one unavailable: an old instance was stopped to make room, then brought back.
    assert_eq!(r.status, Status::Failed, "{r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let results = load.finish().await;
    assert_runs(&results, &["v1"]);
    {
        use slipway_deploy::DeploymentTarget;
        assert_eq!(
            t.target.status("api", "d1").len(),
            3,
            "all three old instances run again"
        );
        assert!(t.target.status("api", "d2").is_empty());
    }
    let st = t.engine.status("api").await.expect("status");
    assert_eq!(st.routes.len(), 1);
    assert_eq!(st.routes[0].release, "d1");
    assert_eq!(st.routes[0].weight, 3);
    t.engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_instance_leaves_the_route_table_until_it_is_ready_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = engine(&tmp.path().join("state")).await;
    let addr = t
        .engine
        .add_environment(spec("svc", Strategy::Recreate, 2))
        .await
        .expect("env");
    let v1 = release(&artifact(tmp.path(), "v1", true), "v1", &[]);
    t.engine
        .deploy(request("svc", "d1", v1))
        .expect("d1")
        .wait()
        .await
        .expect("r1");
    let mut events = t.engine.subscribe();
    let instance0 = {
        use slipway_deploy::DeploymentTarget;
        t.target.status("svc", "d1")[0].addr
    };
    let client = HttpClient::new();
    let _ = get(&client, instance0, "/crash").await;
    // Out of the table once lost, back once the restarted process is ready.
    let mut weights = Vec::new();
    while weights.last() != Some(&2) || weights.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Ok(slipway_deploy::EngineEvent::Routed { routes, .. })) => {
                weights.push(routes.iter().map(|r| r.weight).sum::<u32>());
            }
            Ok(Ok(_)) => {}
            other => panic!("no route change: {other:?} after {weights:?}"),
        }
    }
    assert_eq!(weights, vec![1, 2]);
    assert_eq!(
        get(&client, addr, "/").await.expect("get"),
        (200, "v1".into())
    );
    t.engine.shutdown().await;
}
