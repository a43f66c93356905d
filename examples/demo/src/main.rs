//! The demo project's service: a small HTTP server with nothing but the standard library,
//! so the pipeline builds it with `rustc` alone. It listens on `$PORT` (Slipway's process
//! target sets it), answers `/` with a page naming its version and environment,
//! `/version` with the version, and `/healthz` with `ok` (the health check).
//! Connections are kept alive, as Slipway's router keeps them to its instances.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn env(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// What the service says: (status line, content type, body).
fn respond(path: &str, version: &str, environment: &str, greeting: &str) -> (&'static str, &'static str, String) {
    match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/version" => ("200 OK", "text/plain", format!("{version}\n")),
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><title>shop {version}</title>\
                 <body style=\"font-family:sans-serif;margin:3rem\">\
                 <h1>{greeting}</h1><p>shop <strong>{version}</strong> in <strong>{environment}</strong></p>\
                 <p>Served through Slipway's router. Change <code>VERSION</code> in <code>.gitlab-ci.yml</code>, \
                 commit and push to deploy the next release.</p></body>\n"
            ),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

fn serve(stream: TcpStream, version: &str, environment: &str, greeting: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request = String::new();
        match reader.read_line(&mut request) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut close = request.contains("HTTP/1.0");
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = header.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if lower == "connection: close" {
                close = true;
            } else if lower == "connection: keep-alive" {
                close = false;
            } else if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        if length > 0 {
            let mut body = vec![0u8; length.min(1 << 20)];
            if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                return;
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let path = path.split('?').next().unwrap_or("/");
        let (status, kind, body) = respond(path, version, environment, greeting);
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n{}\r\n",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(body.as_bytes()).is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

fn main() {
    let port = env("PORT", "8000");
    let version = env("VERSION", "dev");
    let environment = env("CI_ENVIRONMENT_NAME", "local");
    let greeting = env("GREETING", "Hello from the shop");
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shop: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("shop {version} ({environment}) listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        let (v, e, g) = (version.clone(), environment.clone(), greeting.clone());
        std::thread::spawn(move || serve(stream, &v, &e, &g));
    }
}

#[cfg(test)]
mod tests {
    use super::respond;

    #[test]
    fn health_check_answers_ok() {
        assert_eq!(respond("/healthz", "1.0.0", "dev", "hi").2, "ok\n");
    }

    #[test]
    fn the_page_names_the_version_and_environment() {
        let (status, _, body) = respond("/", "1.0.0", "staging", "Hello");
        assert_eq!(status, "200 OK");
        assert!(body.contains("1.0.0") && body.contains("staging"));
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert_eq!(respond("/nope", "1", "dev", "hi").0, "404 Not Found");
    }
}
