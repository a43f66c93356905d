//! Slipway's HTTP router: one listen address per environment, reverse-proxying to the
//! instances of the current release(s). The route table is an immutable value swapped
//! atomically (`arc-swap`): each request reads the table once when it arrives and keeps
//! its backend to the end, so a switch never drops or reroutes a request in flight: the
//! old release answers what it already has, new requests go to the new one.
//!
//! HTTP/1.1 both ways, keep-alive connection pools to the backends (hyper-util's client),
//! request and response bodies streamed, WebSocket and other upgrades tunnelled,
//! hop-by-hop headers dropped, `X-Forwarded-For/-Host/-Proto` added. Requests spread over
//! the table by weight (round-robin when all weights are equal). An idempotent request
//! without a body whose connection is refused is tried on another instance. Counters per
//! release feed metric analysis.

use crate::metrics::{ReleaseStats, RouterMetrics};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// One backend of the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    pub release: String,
    pub index: u32,
    pub addr: SocketAddr,
    pub weight: u32,
}

struct Backend {
    target: RouteTarget,
    stats: Arc<ReleaseStats>,
    in_flight: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Table {
    backends: Vec<Backend>,
    /// Running sums of weights, for weighted picks.
    cumulative: Vec<u64>,
    total: u64,
    uniform: bool,
}

impl Table {
    fn pick(&self, n: u64) -> usize {
        if self.uniform {
            return (n % self.backends.len() as u64) as usize;
        }
        // Scatter the sequence so weights interleave instead of arriving in runs.
        let r = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % self.total;
        self.cumulative.partition_point(|&c| c <= r)
    }
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) that a proxy must not forward.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

pub struct Router {
    environment: String,
    table: ArcSwap<Table>,
    next: AtomicU64,
    client: Client<HttpConnector, ProxyBody>,
    metrics: Arc<RouterMetrics>,
    in_flight: Mutex<HashMap<(String, u32), Arc<AtomicUsize>>>,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Router {
    /// Bind `listen` and serve until [`Router::shutdown`]. Port 0 picks a free port
    /// ([`Router::local_addr`] tells which).
    pub async fn start(
        environment: &str,
        listen: SocketAddr,
        metrics: Arc<RouterMetrics>,
    ) -> std::io::Result<Arc<Router>> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let router = Arc::new(Router {
            environment: environment.to_string(),
            table: ArcSwap::from_pointee(Table::default()),
            next: AtomicU64::new(0),
            client,
            metrics,
            in_flight: Mutex::new(HashMap::new()),
            local_addr,
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(router.clone().accept_loop(listener));
        Ok(router)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// Stop accepting connections (those open finish their current request).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Replace the route table in one atomic step.
    pub fn set_routes(&self, targets: Vec<RouteTarget>) {
        let mut backends = Vec::with_capacity(targets.len());
        let mut cumulative = Vec::with_capacity(targets.len());
        let mut total = 0u64;
        for t in targets.into_iter().filter(|t| t.weight > 0) {
            total += u64::from(t.weight);
            cumulative.push(total);
            backends.push(Backend {
                stats: self.metrics.stats(&self.environment, &t.release),
                in_flight: self.in_flight_counter(&t.release, t.index),
                target: t,
            });
        }
        let uniform = backends
            .first()
            .is_some_and(|f| backends.iter().all(|b| b.target.weight == f.target.weight));
        self.table.store(Arc::new(Table {
            backends,
            cumulative,
            total,
            uniform,
        }));
    }

    /// The route table now.
    pub fn routes(&self) -> Vec<RouteTarget> {
        self.table
            .load()
            .backends
            .iter()
            .map(|b| b.target.clone())
            .collect()
    }

    fn in_flight_counter(&self, release: &str, index: u32) -> Arc<AtomicUsize> {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((release.to_string(), index))
            .or_default()
            .clone()
    }

    /// Requests (and upgraded connections) still open on an instance.
    pub fn in_flight(&self, release: &str, index: u32) -> usize {
        self.in_flight_counter(release, index)
            .load(Ordering::Acquire)
    }

    /// Wait until an instance (already out of the table) has no request in flight, or
    /// `limit` passed. Returns whether it drained.
    pub async fn drain(&self, release: &str, index: u32, limit: Duration) -> bool {
        let counter = self.in_flight_counter(release, index);
        let deadline = Instant::now() + limit;
        loop {
            if counter.load(Ordering::Acquire) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drop the bookkeeping of a stopped instance.
    pub fn forget(&self, release: &str, index: u32) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(release.to_string(), index));
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = self.shutdown.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(_) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let router = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let router = router.clone();
                    async move { Ok::<_, Infallible>(router.proxy(req, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    }

    async fn proxy(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let table = self.table.load_full();
        if table.backends.is_empty() {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no release serves {} yet\n", self.environment),
            );
        }
        let upgrade = upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        forward_headers(&mut headers, peer, upgrade.as_ref());
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let retryable = upgrade.is_none() && is_idempotent(&parts.method) && body.is_end_stream();
        let mut body = Some(body);
        let attempts = if retryable {
            table.backends.len().min(3)
        } else {
            1
        };
        let mut idx = table.pick(self.next.fetch_add(1, Ordering::Relaxed));
        let mut last_error = String::new();
        for attempt in 0..attempts {
            let backend = &table.backends[idx];
            let guard = InFlight::new(backend.in_flight.clone());
            let started = Instant::now();
            let mut builder = Request::builder()
                .method(parts.method.clone())
                .uri(format!("http://{}{}", backend.target.addr, path))
                .version(Version::HTTP_11);
            if let Some(h) = builder.headers_mut() {
                *h = headers.clone();
            }
            let req_body = match body.take() {
                Some(b) if !retryable => b.boxed(),
                _ => empty(),
            };
            let request = match builder.body(req_body) {
                Ok(r) => r,
                Err(e) => return plain(StatusCode::BAD_REQUEST, format!("bad request: {e}\n")),
            };
            match self.client.request(request).await {
                Ok(mut resp) => {
                    backend
                        .stats
                        .record(resp.status().as_u16(), started.elapsed());
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(client_upgrade) = client_upgrade {
                            let backend_upgrade = hyper::upgrade::on(&mut resp);
                            tokio::spawn(async move {
                                let _guard = guard;
                                if let (Ok(c), Ok(b)) =
                                    (client_upgrade.await, backend_upgrade.await)
                                {
                                    let mut c = TokioIo::new(c);
                                    let mut b = TokioIo::new(b);
                                    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                                }
                            });
                            let (parts, _) = resp.into_parts();
                            return Response::from_parts(parts, empty());
                        }
                    }
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = Tracked {
                        inner: body.boxed(),
                        _guard: guard,
                    };
                    return Response::from_parts(parts, BoxBody::new(body));
                }
                Err(e) => {
                    last_error = format!(
                        "release {} instance {}: {}",
                        backend.target.release,
                        backend.target.index,
                        error_chain(&e)
                    );
                    if e.is_connect() && attempt + 1 < attempts {
                        idx = (idx + 1) % table.backends.len();
                        continue;
                    }
                    backend.stats.record(502, started.elapsed());
                    break;
                }
            }
        }
        plain(
            StatusCode::BAD_GATEWAY,
            format!("bad gateway: {last_error}\n"),
        )
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The protocol asked for when the request is an upgrade (`Connection: upgrade`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Drop hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
}

fn forward_headers(headers: &mut HeaderMap, peer: SocketAddr, upgrade: Option<&HeaderValue>) {
    strip_hop_by_hop(headers);
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    let ip = peer.ip().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        // The router listens on plain HTTP; a TLS terminator in front sets its own.
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn plain(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Counts a request as in flight on its instance until its response body is done.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(c: Arc<AtomicUsize>) -> InFlight {
        c.fetch_add(1, Ordering::AcqRel);
        InFlight(c)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Tracked {
    inner: ProxyBody,
    _guard: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(weights: &[u32]) -> Table {
        let m = RouterMetrics::default();
        let mut cumulative = Vec::new();
        let mut total = 0;
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                total += u64::from(w);
                cumulative.push(total);
                Backend {
                    target: RouteTarget {
                        release: "r".into(),
                        index: i as u32,
                        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
                        weight: w,
                    },
                    stats: m.stats("e", "r"),
                    in_flight: Arc::default(),
                }
            })
            .collect::<Vec<_>>();
        let uniform = weights.iter().all(|w| *w == weights[0]);
        Table {
            backends,
            cumulative,
            total,
            uniform,
        }
    }

    #[test]
    fn weighted_picks_follow_the_weights() {
        let t = table(&[10, 90]);
        let mut counts = [0usize; 2];
        for n in 0..10_000 {
            counts[t.pick(n)] += 1;
        }
        assert!((900..=1100).contains(&counts[0]), "{counts:?}");
        let t = table(&[1, 1, 1]);
        let picks: Vec<usize> = (0..6).map(|n| t.pick(n)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        forward_headers(&mut h, SocketAddr::from(([127, 0, 0, 2], 5000)), None);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::TE).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get("x-app").map(|v| v.as_bytes()), Some(&b"kept"[..]));
        assert_eq!(
            h.get(X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"10.0.0.1, 127.0.0.2"[..])
        );
        assert_eq!(
            h.get(X_FORWARDED_HOST).map(|v| v.as_bytes()),
            Some(&b"shop.example"[..])
        );
        assert_eq!(
            h.get(X_FORWARDED_PROTO).map(|v| v.as_bytes()),
            Some(&b"http"[..])
        );

        let mut u = HeaderMap::new();
        u.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        u.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let proto = upgrade_protocol(&u);
        assert_eq!(
            proto.as_ref().map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        forward_headers(
            &mut u,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            proto.as_ref(),
        );
        assert_eq!(
            u.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            u.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }
}
