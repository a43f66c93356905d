//! A tiny HTTP service for the blue-green benchmark: it listens on `$PORT` and answers
//! every request with its version (the `version.txt` of its working directory, the
//! extracted artifact); `/healthz` answers `ok`. Small and fast, so the benchmark measures
//! the router rather than the service.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let version = std::fs::read_to_string("version.txt")
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let port: u16 = match std::env::var("PORT").ok().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => {
            eprintln!("version_service: PORT is not set");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("version_service: cannot listen on {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("{version} listening on {port}");
    let body = Bytes::from(format!("{version}\n"));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let b = if req.uri().path() == "/healthz" {
                    Bytes::from_static(b"ok\n")
                } else {
                    body.clone()
                };
                async move { Ok::<_, Infallible>(Response::new(Full::new(b))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
