//! A small HTTP/1.1 client for Slipway's API, on hyper (already in the build through the
//! container executor): what the CLI, the tests and the benchmarks use. Plain `http://`
//! only: the server is reached on a trusted network or through a TLS-terminating proxy,
//! and a TLS stack would double the build for one feature.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::Duration;

/// Where and as whom to call the API.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port`.
    authority: String,
    /// A path prefix of the base URL (`/slipway` behind a proxy), without a trailing `/`.
    prefix: String,
    token: Option<String>,
    pub timeout: Duration,
}

/// Why a call failed before an HTTP answer came.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The API's error message, or the body.
    pub fn error_message(&self) -> String {
        let v = self.json();
        match v["error"]["message"].as_str() {
            Some(m) => format!("{m} (HTTP {})", self.status),
            None => format!("HTTP {}: {}", self.status, self.text().trim()),
        }
    }
}

/// A streamed answer (server-sent events, long downloads).
pub struct Streaming {
    pub status: u16,
    body: Incoming,
}

impl Streaming {
    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(ClientError(e.to_string()))),
            }
        }
    }
}

impl Client {
    /// `base` is the server's URL (`http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
        let base = base.trim().trim_end_matches('/');
        let rest = match base.strip_prefix("http://") {
            Some(r) => r,
            None if base.starts_with("https://") => {
                return Err(ClientError(format!(
                    "{base}: https is not supported by this client; reach the server over http (for example through an SSH tunnel)"
                )))
            }
            None => return Err(ClientError(format!("{base}: expected http://HOST:PORT"))),
        };
        let (authority, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a.to_string(), format!("/{}", p.trim_end_matches('/'))),
            None => (rest.to_string(), String::new()),
        };
        if authority.is_empty() {
            return Err(ClientError(format!("{base}: no host")));
        }
        let authority = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:80")
        };
        Ok(Client {
            authority,
            prefix,
            token,
            timeout: Duration::from_secs(60),
        })
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self
    }

    async fn send_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| ClientError(format!("connecting to {} timed out", self.authority)))?
        .map_err(|e| ClientError(format!("cannot connect to {}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError(format!("HTTP handshake failed: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let data = match body {
            Some((ct, data)) => {
                req = req.header(hyper::header::CONTENT_TYPE, ct);
                data
            }
            None => Vec::new(),
        };
        let req = req
            .body(Full::new(Bytes::from(data)))
            .map_err(|e| ClientError(format!("bad request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| ClientError(format!("request to {} failed: {e}", self.authority)))
    }

    /// A whole request and answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let fut = async {
            let resp = self.send_raw(method, path, body, headers).await?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError(format!("reading the answer failed: {e}")))?
                .to_bytes()
                .to_vec();
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError(format!("{method} {path}: no answer in time")))?
    }

    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        self.send("GET", path, None, &[]).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Reply, ClientError> {
        self.json("POST", path, body).await
    }

    pub async fn json(&self, method: &str, path: &str, body: &Value) -> Result<Reply, ClientError> {
        self.send(
            method,
            path,
            Some(("application/json", body.to_string().into_bytes())),
            &[],
        )
        .await
    }

    /// A request whose answer is read as it comes.
    pub async fn stream(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Streaming, ClientError> {
        let resp = self.send_raw("GET", path, None, headers).await?;
        Ok(Streaming {
            status: resp.status().as_u16(),
            body: resp.into_body(),
        })
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Splits a server-sent event stream into events, across chunk boundaries.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let Some(end) = find_blank_line(&self.buf) else {
                return out;
            };
            let block: Vec<u8> = self.buf.drain(..end.0).collect();
            self.buf.drain(..end.1);
            let text = String::from_utf8_lossy(&block);
            let mut ev = SseEvent {
                event: "message".into(),
                id: None,
                data: String::new(),
            };
            let mut lines = 0;
            for line in text.split('\n') {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.starts_with(':') || line.is_empty() {
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "event" => ev.event = value.to_string(),
                    "id" => ev.id = Some(value.to_string()),
                    "data" => {
                        if lines > 0 {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(value);
                        lines += 1;
                    }
                    _ => {}
                }
            }
            if lines > 0 || ev.event != "message" {
                out.push(ev);
            }
        }
    }
}

/// (where the block ends, how long the separator is).
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    (0..b.len()).find_map(|i| {
        if b[i..].starts_with(b"\n\n") {
            Some((i, 2))
        } else if b[i..].starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: log\nid: 5\ndata: a").is_empty());
        let ev = p.push(b"\ndata: b\n\n: keep-alive\n\nevent: end\ndata: {}\n\n");
        assert_eq!(
            ev,
            vec![
                SseEvent {
                    event: "log".into(),
                    id: Some("5".into()),
                    data: "a\nb".into()
                },
                SseEvent {
                    event: "end".into(),
                    id: None,
                    data: "{}".into()
                }
            ]
        );
    }

    #[test]
    fn base_urls() {
        let c = Client::new("http://127.0.0.1:9/prefix/", None).expect("ok");
        assert_eq!(c.authority, "127.0.0.1:9");
        assert_eq!(c.prefix, "/prefix");
        assert!(Client::new("https://x", None).is_err());
        assert!(Client::new("ftp://x", None).is_err());
        assert_eq!(Client::new("http://h", None).expect("ok").authority, "h:80");
    }
}
