//! A small program that runs the deployment engine for one environment, driven by lines
//! on standard input, printing the engine's events as JSON lines on standard output. The
//! crash test kills it with SIGKILL in the middle of a switch and starts it again; the
//! blue-green benchmark drives deployments and rollbacks with it.
//!
//! ```text
//! slipway-deploy-demo --state DIR --listen ADDR --release ID=VERSION:DIR... \
//!     [--command CMD] [--instances N] [--keep-warm MS]
//! stdin:  deploy ID            deploy the release ID (from --release)
//!         rollback ID TO       deploy TO's release again as deployment ID
//!         status | quit
//! ```
//!
//! `SLIPWAY_DEMO_PAUSE_AT=before_switch` stops (forever) right after the intent of a
//! traffic switch is saved and before the route table changes; `after_switch` stops
//! after the route table changed and before that is saved. Both print
//! `{"event":"paused"}` first. Only this program has these pauses: they wrap the store.

use serde_json::json;
use slipway_core::deploy::machine::Phase;
use slipway_core::deploy::settings::{HealthCheck, HttpCheck, Strategy};
use slipway_deploy::store::{EnvironmentRecord, StoreError};
use slipway_deploy::target::BoxFuture;
use slipway_deploy::{
    DeployRequest, Engine, EngineOptions, EnvironmentSpec, IntentStore, JsonFileStore,
    MemoryCatalog, ProcessTarget, Release,
};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const ENV: &str = "production";

struct PausingStore {
    inner: JsonFileStore,
    pause_at: Option<String>,
}

impl IntentStore for PausingStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<EnvironmentRecord>, StoreError>> {
        self.inner.load()
    }

    fn save<'a>(&'a self, record: &'a EnvironmentRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let phase = record.current.as_ref().map(|c| c.phase.clone());
            let after = self.pause_at.as_deref() == Some("after_switch")
                && matches!(phase, Some(Phase::KeepingOldWarm { .. }));
            if after {
                pause().await;
            }
            self.inner.save(record).await?;
            let before = self.pause_at.as_deref() == Some("before_switch")
                && matches!(phase, Some(Phase::SwitchingTraffic))
                && record.serving.is_some()
                && record
                    .current
                    .as_ref()
                    .is_some_and(|c| c.switching.is_some());
            if before {
                pause().await;
            }
            Ok(())
        })
    }
}

async fn pause() {
    print_line(&json!({ "event": "paused" }));
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn print_line(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

struct Args {
    state: PathBuf,
    listen: String,
    releases: Vec<(String, Release)>,
    command: String,
    instances: u32,
    keep_warm_ms: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        state: PathBuf::from("deploy-state"),
        listen: "127.0.0.1:0".into(),
        releases: Vec::new(),
        command: "exec python3 service.py".into(),
        instances: 1,
        keep_warm_ms: 60_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--state" => args.state = PathBuf::from(value()?),
            "--listen" => args.listen = value()?,
            "--command" => args.command = value()?,
            "--instances" => {
                args.instances = value()?.parse().map_err(|e| format!("--instances: {e}"))?
            }
            "--keep-warm" => {
                args.keep_warm_ms = value()?.parse().map_err(|e| format!("--keep-warm: {e}"))?
            }
            "--release" => {
                let v = value()?;
                let (id, rest) = v.split_once('=').ok_or("--release ID=VERSION:DIR")?;
                let (version, dir) = rest.split_once(':').ok_or("--release ID=VERSION:DIR")?;
                args.releases.push((
                    id.to_string(),
                    Release {
                        version: Some(version.to_string()),
                        digest: None,
                        artifact_dir: PathBuf::from(dir),
                        variables: vec![("RELEASE_VERSION".into(), version.to_string())],
                    },
                ));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("slipway-deploy-demo: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("slipway-deploy-demo: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let store = PausingStore {
        inner: JsonFileStore::open(&args.state.join("state.json")).map_err(|e| e.to_string())?,
        pause_at: std::env::var("SLIPWAY_DEMO_PAUSE_AT").ok(),
    };
    let catalog = Arc::new(MemoryCatalog::default());
    for (id, r) in &args.releases {
        catalog.insert(ENV, id, r.clone());
    }
    let target = Arc::new(ProcessTarget::new(&args.state).map_err(|e| e.to_string())?);
    let engine = Engine::open(EngineOptions {
        store: Arc::new(store),
        target,
        catalog,
        notifier: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    for r in engine.reclaimed() {
        print_line(
            &json!({"event": "reclaimed", "release": r.release, "index": r.index, "pid": r.pid}),
        );
    }
    for d in engine.interrupted() {
        print_line(&json!({"event": "interrupted", "deployment": d.id, "reason": d.reason}));
    }
    let mut events = engine.subscribe();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            print_line(&serde_json::to_value(&e).unwrap_or_default());
        }
    });
    let spec = EnvironmentSpec {
        name: ENV.into(),
        listen: args.listen.parse().map_err(|e| format!("--listen: {e}"))?,
        command: args.command.clone(),
        instances: args.instances,
        stop_grace: Duration::from_secs(5),
        strategy: Strategy::BlueGreen {
            keep_warm_ms: args.keep_warm_ms,
            pre_switch_checks: Vec::new(),
        },
        health_check: HealthCheck {
            check: HttpCheck {
                path: "/healthz".into(),
                status: Some(200),
            },
            timeout_ms: 1_000,
            interval_ms: 50,
            success_threshold: 2,
            failure_threshold: 3,
            start_timeout_ms: 30_000,
        },
    };
    let addr = engine
        .add_environment(spec)
        .await
        .map_err(|e| e.to_string())?;
    print_line(&json!({"event": "ready", "listen": addr.to_string()}));

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["deploy", id] | ["rollback", id, _] => {
                let to = words.get(2).map(|s| s.to_string());
                let source = to.as_deref().unwrap_or(id);
                let Some(release) = args
                    .releases
                    .iter()
                    .find(|(r, _)| r == source)
                    .map(|(_, r)| r.clone())
                else {
                    print_line(
                        &json!({"event": "error", "message": format!("unknown release {source}")}),
                    );
                    continue;
                };
                let req = DeployRequest {
                    deployment: id.to_string(),
                    environment: ENV.into(),
                    release,
                    needs_approval: false,
                    rollback_to: to,
                    settings: None,
                };
                match engine.deploy(req) {
                    Ok(h) => {
                        tokio::spawn(async move {
                            if let Ok(r) = h.wait().await {
                                print_line(&json!({"event": "done", "report": r}));
                            }
                        });
                    }
                    Err(e) => print_line(&json!({"event": "error", "message": e.to_string()})),
                }
            }
            ["status"] => match engine.status(ENV).await {
                Ok(s) => print_line(&json!({"event": "status", "status": s})),
                Err(e) => print_line(&json!({"event": "error", "message": e.to_string()})),
            },
            ["quit"] => break,
            [] => {}
            _ => print_line(
                &json!({"event": "error", "message": format!("unknown command: {line}")}),
            ),
        }
    }
    engine.shutdown().await;
    Ok(())
}
