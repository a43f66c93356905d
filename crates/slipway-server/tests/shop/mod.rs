//! The demo project's service (`examples/demo/src/main.rs`, standard library only) built
//! once per test run with `rustc`, for deployment tests: it serves `/version` (its
//! `VERSION` variable), `/` (a page with its `GREETING` variable) and `/healthz`. Also a
//! small HTTP GET for asking the environment's router.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The service binary (compiled on first use; reused while newer than its source).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo/src/main.rs");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-shop");
        let fresh = match (std::fs::metadata(&out), std::fs::metadata(&src)) {
            (Ok(o), Ok(s)) => o.modified().unwrap() >= s.modified().unwrap(),
            _ => false,
        };
        if !fresh {
            // Several test binaries may build it at once: each into its own file, then
            // renamed into place.
            let tmp = out.with_extension(format!("tmp{}", std::process::id()));
            let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            let status = Command::new(rustc)
                .args(["--edition", "2021", "-C", "opt-level=1", "-o"])
                .arg(&tmp)
                .arg(&src)
                .status()
                .expect("run rustc");
            assert!(status.success(), "rustc could not build {}", src.display());
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    })
    .clone()
}

/// `GET http://ADDR/path`: (status, body); (0, error) when the connection fails.
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    let mut c = slipway_server::client::Client::new(&format!("http://{addr}"), None).unwrap();
    c.timeout = Duration::from_secs(5);
    match c.get(path).await {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

/// The version the router serves now.
pub async fn version(addr: &str) -> String {
    let (status, body) = get(addr, "/version").await;
    assert_eq!(status, 200, "GET /version through the router: {body}");
    body.trim().to_string()
}
