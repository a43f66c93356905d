//! `kill -9` of the process that runs the engine and the router, in the middle of a
//! blue-green switch (before the route table changed, and after it changed but before
//! that was saved). After a restart exactly one version serves, the orphaned instances
//! of the killed process are gone, and the record says the deployment was interrupted.

mod common;

use common::*;
use slipway_deploy::http::HttpClient;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Demo {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(
        state: &Path,
        listen: SocketAddr,
        releases: &[String],
        pause_at: Option<&str>,
    ) -> Demo {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_slipway-deploy-demo"));
        cmd.arg("--state")
            .arg(state)
            .arg("--listen")
            .arg(listen.to_string());
        for r in releases {
            cmd.arg("--release").arg(r);
        }
        match pause_at {
            Some(p) => cmd.env("SLIPWAY_DEMO_PAUSE_AT", p),
            None => cmd.env_remove("SLIPWAY_DEMO_PAUSE_AT"),
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("demo");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Demo {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write");
        self.stdin.flush().expect("flush");
    }

    /// Wait for an event matching `pred`; return it.
    fn expect(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(v) if pred(&v) => return v,
                Ok(_) => {}
                Err(e) => panic!("no {what}: {e}"),
            }
        }
    }
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_leftovers(&self.0);
    }
}

fn is(v: &serde_json::Value, event: &str) -> bool {
    v["event"] == event
}

fn pids(state: &Path) -> Vec<u32> {
    std::fs::read_dir(state.join("pids"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter_map(|v| v["pid"].as_u64().map(|p| p as u32))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

async fn kill_during_switch(pause_at: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let releases = vec![
        format!("d1=v1:{}", artifact(tmp.path(), "v1", true).display()),
        format!("d2=v2:{}", artifact(tmp.path(), "v2", true).display()),
    ];
    let listen = free_addr();
    let client = HttpClient::new();

    let _cleanup = Cleanup(state.clone());
    let mut demo = Demo::start(&state, listen, &releases, Some(pause_at));
    demo.expect("ready", |v| is(v, "ready"));
    demo.send("deploy d1");
    demo.expect("d1 done", |v| {
        is(v, "done") && v["report"]["deployment"] == "d1"
    });
    assert_eq!(
        get(&client, listen, "/").await.expect("v1"),
        (200, "v1".into())
    );
    demo.send("deploy d2");
    demo.expect("the pause", |v| is(v, "paused"));

    let expected_now = if pause_at == "after_switch" {
        "v2"
    } else {
        "v1"
    };
    assert_eq!(
        get(&client, listen, "/").await.expect("get"),
        (200, expected_now.into()),
        "{pause_at}"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("state.json")).expect("state"))
            .expect("json");
    let env = &record["environments"]["production"];
    assert_eq!(env["current"]["id"], "d2");
    assert_eq!(env["current"]["phase"], "switching_traffic", "{env}");
    assert_eq!(
        env["current"]["switching"][0]["release"], "d2",
        "the switch was recorded before it was made"
    );
    assert_eq!(env["serving"]["release"], "d1");

    let orphans = pids(&state);
    assert_eq!(orphans.len(), 2, "v1 and v2 instances run");
    demo.child.kill().expect("SIGKILL");
    let _ = demo.child.wait();
    assert!(
        orphans.iter().all(|p| alive(*p)),
        "the instances outlive their supervisor"
    );

    let mut demo = Demo::start(&state, listen, &releases, None);
    let reclaimed = demo.expect("reclaimed", |v| is(v, "reclaimed"));
    assert!(reclaimed["pid"].as_u64().is_some());
    let interrupted = demo.expect("interrupted", |v| is(v, "interrupted"));
    assert_eq!(interrupted["deployment"], "d2");
    demo.expect("ready", |v| is(v, "ready"));
    let restored = demo.expect("restored", |v| is(v, "restored"));
    assert_eq!(restored["release"], "d1");
    assert_eq!(restored["ok"], true, "{restored}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        orphans.iter().all(|p| !alive(*p)),
        "orphans were stopped: {orphans:?}"
    );

    // Exactly one version serves.
    for _ in 0..50 {
        assert_eq!(
            get(&client, listen, "/").await.expect("get"),
            (200, "v1".into())
        );
    }
    demo.send("status");
    let status = demo.expect("status", |v| is(v, "status"));
    let rec = &status["status"]["record"];
    assert_eq!(rec["serving"]["release"], "d1");
    assert!(rec["current"].is_null());
    let last = &rec["history"][1];
    assert_eq!(last["id"], "d2");
    assert_eq!(last["status"], "failed");
    let reason = last["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("interrupted")
            && reason.contains("switching_traffic")
            && reason.contains("the switch was not completed")
            && reason.contains("release d1 serves"),
        "{reason}"
    );
    // And it can deploy again.
    demo.send("deploy d2");
    demo.expect("d2 done", |v| {
        is(v, "done") && v["report"]["deployment"] == "d2"
    });
    assert_eq!(
        get(&client, listen, "/").await.expect("get"),
        (200, "v2".into())
    );
    demo.send("quit");
    let _ = demo.child.wait();
    assert!(pids(&state).is_empty(), "a clean stop stops every instance");
    drop(demo);
    kill_leftovers(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_switch_intent_was_saved() {
    kill_during_switch("before_switch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_route_table_changed() {
    kill_during_switch("after_switch").await;
}
