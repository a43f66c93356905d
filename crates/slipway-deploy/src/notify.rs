//! Deployment notifications (started, succeeded, failed, rolled back) posted to webhooks:
//! Slack-compatible incoming webhooks (`{"text": ...}`) and generic JSON webhooks signed
//! with HMAC-SHA256. Notifying never blocks a deployment: [`Notifier::notify`] puts the
//! event on a bounded queue (dropped, and counted, when full) and background tasks
//! deliver it, retrying with exponential backoff on connection errors, timeouts, 429
//! and 5xx answers.
//!
//! Generic webhooks carry these headers (the same on every retry of a delivery):
//! - `X-Slipway-Event`: `deployment.started`, `deployment.succeeded`, ...
//! - `X-Slipway-Delivery`: a unique id per delivery, for de-duplication;
//! - `X-Slipway-Timestamp`: Unix seconds when this attempt was signed;
//! - `X-Slipway-Signature`: `sha256=` and the lowercase hex HMAC-SHA256, keyed with the
//!   webhook's secret, of `TIMESTAMP.BODY` (the timestamp header, a dot, the raw body).
//!   Receivers recompute it, compare in constant time and reject old timestamps.

use crate::http::{HttpClient, HttpError};
use crate::target::BoxFuture;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use hyper::Method;
use serde::Serialize;
use sha2::Sha256;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Semaphore};

/// Events waiting for delivery; past this, new ones are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 1024;
/// Deliveries in progress at once.
const PARALLEL_DELIVERIES: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub enum WebhookKind {
    /// Slack's incoming-webhook format (also Mattermost, Rocket.Chat, Discord's `/slack`).
    Slack,
    /// The event as JSON, signed when a secret is set.
    Json { secret: Option<String> },
}

#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub kind: WebhookKind,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            WebhookKind::Slack => "slack",
            WebhookKind::Json { secret: Some(_) } => "json (signed)",
            WebhookKind::Json { secret: None } => "json",
        };
        // The URL of a Slack webhook is itself a credential: show only its origin.
        let origin: String = self
            .url
            .splitn(4, '/')
            .take(3)
            .collect::<Vec<_>>()
            .join("/");
        write!(f, "Webhook({kind}, {origin}/...)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NotificationKind {
    #[serde(rename = "deployment.started")]
    Started,
    #[serde(rename = "deployment.succeeded")]
    Succeeded,
    #[serde(rename = "deployment.failed")]
    Failed,
    #[serde(rename = "deployment.rolled_back")]
    RolledBack,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Started => "deployment.started",
            NotificationKind::Succeeded => "deployment.succeeded",
            NotificationKind::Failed => "deployment.failed",
            NotificationKind::RolledBack => "deployment.rolled_back",
        }
    }
}

/// The JSON body of a generic webhook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub event: NotificationKind,
    /// The project, when the server knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub environment: String,
    pub deployment: String,
    pub version: Option<String>,
    pub digest: Option<String>,
    pub strategy: String,
    pub status: String,
    pub reason: Option<String>,
    /// Set for a rollback: the deployment whose release it brought back.
    pub rollback_to: Option<String>,
    /// Unix milliseconds.
    pub at_ms: u64,
}

impl Notification {
    fn slack_text(&self) -> String {
        let what = match self.event {
            NotificationKind::Started => "started",
            NotificationKind::Succeeded => "succeeded",
            NotificationKind::Failed => "failed",
            NotificationKind::RolledBack => "rolled back",
        };
        let version = self.version.as_deref().unwrap_or(&self.deployment);
        let mut text = format!(
            "Deployment {} of {version} to *{}* {what} ({})",
            self.deployment, self.environment, self.strategy
        );
        if let Some(r) = &self.reason {
            text.push_str(&format!(": {r}"));
        }
        text
    }
}

/// Retry schedule of one delivery.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Delivery counters, for status pages and tests.
#[derive(Debug, Default)]
pub struct NotifierStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

/// Where the webhooks of a notification come from: a fixed list, or (the server) the
/// hooks configured for the notification's project and environment, looked up when it
/// is delivered. The source may also complete the notification (the server names the
/// project and the environment as users know them).
pub trait WebhookSource: Send + Sync {
    fn webhooks(&self, n: Notification) -> BoxFuture<'_, (Notification, Vec<Webhook>)>;
}

impl WebhookSource for Vec<Webhook> {
    fn webhooks(&self, n: Notification) -> BoxFuture<'_, (Notification, Vec<Webhook>)> {
        Box::pin(async move { (n, self.clone()) })
    }
}

/// Whether the notifier can deliver to `url` (only `http://` for now: no TLS stack is
/// linked).
pub fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") {
        Ok(())
    } else {
        Err("only http:// webhooks are supported for now (no TLS stack is linked)".into())
    }
}

#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Notification>,
    stats: Arc<NotifierStats>,
}

impl Notifier {
    /// Start the background delivery for these webhooks. Refuses URLs it cannot reach
    /// (only `http://` for now).
    pub fn start(hooks: Vec<Webhook>, policy: RetryPolicy) -> Result<Notifier, String> {
        for h in &hooks {
            check_url(&h.url).map_err(|e| format!("{h:?}: {e}"))?;
        }
        Ok(Notifier::start_with(Arc::new(hooks), policy))
    }

    /// Start the background delivery to whatever `source` names for each notification
    /// (a URL the notifier cannot reach counts as a failed delivery).
    pub fn start_with(source: Arc<dyn WebhookSource>, policy: RetryPolicy) -> Notifier {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(NotifierStats::default());
        tokio::spawn(dispatch(rx, source, policy, stats.clone()));
        Notifier { tx, stats }
    }

    /// Queue an event; returns at once. `false` when the queue was full and it was
    /// dropped.
    pub fn notify(&self, n: Notification) -> bool {
        match self.tx.try_send(n) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> &NotifierStats {
        &self.stats
    }
}

async fn dispatch(
    mut rx: mpsc::Receiver<Notification>,
    source: Arc<dyn WebhookSource>,
    policy: RetryPolicy,
    stats: Arc<NotifierStats>,
) {
    let client = HttpClient::new();
    let slots = Arc::new(Semaphore::new(PARALLEL_DELIVERIES));
    let mut seq: u64 = 0;
    while let Some(n) = rx.recv().await {
        let (n, hooks) = source.webhooks(n).await;
        let n = Arc::new(n);
        for hook in hooks {
            if check_url(&hook.url).is_err() {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            seq += 1;
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let delivery = format!("{}-{}-{seq}", n.at_ms, std::process::id());
            let (client, n, stats) = (client.clone(), n.clone(), stats.clone());
            tokio::spawn(async move {
                let _permit = permit;
                deliver(&client, &hook, &n, &delivery, policy, &stats).await;
            });
        }
    }
}

async fn deliver(
    client: &HttpClient,
    hook: &Webhook,
    n: &Notification,
    delivery: &str,
    policy: RetryPolicy,
    stats: &NotifierStats,
) {
    let body = match &hook.kind {
        WebhookKind::Slack => serde_json::json!({ "text": n.slack_text() }).to_string(),
        WebhookKind::Json { .. } => serde_json::to_string(n).unwrap_or_default(),
    };
    let mut backoff = policy.first_backoff;
    for attempt in 1..=policy.attempts.max(1) {
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            (
                "user-agent",
                concat!("slipway/", env!("CARGO_PKG_VERSION")).to_string(),
            ),
        ];
        if let WebhookKind::Json { secret } = &hook.kind {
            let ts = unix_seconds();
            headers.push(("x-slipway-event", n.event.as_str().to_string()));
            headers.push(("x-slipway-delivery", delivery.to_string()));
            headers.push(("x-slipway-timestamp", ts.to_string()));
            if let Some(secret) = secret {
                headers.push(("x-slipway-signature", sign(secret, ts, body.as_bytes())));
            }
        }
        let result = client
            .send(
                Method::POST,
                &hook.url,
                &headers,
                Bytes::from(body.clone()),
                policy.timeout,
            )
            .await;
        let retry = match result {
            Ok(r) if (200..300).contains(&r.status) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) => r.status == 429 || r.status >= 500,
            Err(HttpError::Refused(_) | HttpError::Timeout | HttpError::Other(_)) => true,
        };
        if !retry || attempt == policy.attempts {
            break;
        }
        stats.retried.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
    stats.failed.fetch_add(1, Ordering::Relaxed);
}

/// `sha256=HEX` of HMAC-SHA256(secret, "TIMESTAMP.BODY").
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC accepts keys of any length; this arm is unreachable in practice.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_vectors_computed_elsewhere() {
        // Computed with Python's hmac module over "TIMESTAMP.BODY".
        assert_eq!(
            sign("Jefe", 0, b"what do ya want for nothing?"),
            "sha256=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert_eq!(
            sign(
                "whsec",
                1_700_000_000,
                br#"{"event":"deployment.succeeded"}"#
            ),
            "sha256=561f4aa077ccc27206085147547dc94da11dbc38a2b0e1e3f4cb2ae6a30c1741"
        );
    }

    #[test]
    fn webhook_debug_hides_the_secret_path() {
        let h = Webhook {
            url: "http://hooks.example/services/T000/B000/XXXX".into(),
            kind: WebhookKind::Slack,
        };
        let d = format!("{h:?}");
        assert!(!d.contains("XXXX"), "{d}");
        assert!(d.contains("http://hooks.example"), "{d}");
    }
}
