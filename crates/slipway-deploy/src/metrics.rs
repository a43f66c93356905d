//! Per-release request counters (requests, 5xx answers, a latency histogram) kept by the
//! router with atomics, and the [`MetricProvider`] trait that metric analysis reads.
//! Counters are cumulative: an analysis takes two snapshots and compares the difference
//! ([`ReleaseMetrics::since`]). The router is the first provider; Prometheus queries and
//! HTTP checks will be others.

use crate::target::BoxFuture;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Four buckets per power of two of microseconds: about 19 % resolution from 1 µs to
/// over an hour.
const BUCKETS: usize = 4 * 32;

/// Counters of one release behind one router.
pub struct ReleaseStats {
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for ReleaseStats {
    fn default() -> ReleaseStats {
        ReleaseStats {
            requests: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ReleaseStats {
    /// One answered request: its status and the time to its response headers.
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ReleaseMetrics {
        ReleaseMetrics {
            requests: self.requests.load(Ordering::Relaxed),
            errors_5xx: self.errors_5xx.load(Ordering::Relaxed),
            latency_buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (exp - 2)) & 3) as usize;
    (exp * 4 + sub).min(BUCKETS - 1)
}

/// The upper bound of a bucket in microseconds.
fn bucket_upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64 + 1;
    }
    let exp = i / 4;
    let sub = (i % 4) as u64;
    ((4 + sub + 1) << (exp - 2)).saturating_sub(0)
}

/// Cumulative counters of a release at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseMetrics {
    pub requests: u64,
    pub errors_5xx: u64,
    /// Counts per latency bucket (see [`ReleaseMetrics::latency_quantile`]).
    pub latency_buckets: Vec<u64>,
}

impl ReleaseMetrics {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &ReleaseMetrics) -> ReleaseMetrics {
        ReleaseMetrics {
            requests: self.requests.saturating_sub(earlier.requests),
            errors_5xx: self.errors_5xx.saturating_sub(earlier.errors_5xx),
            latency_buckets: self
                .latency_buckets
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    n.saturating_sub(earlier.latency_buckets.get(i).copied().unwrap_or(0))
                })
                .collect(),
        }
    }

    /// The share of 5xx answers, `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors_5xx as f64 / self.requests as f64)
    }

    /// The latency under which a `q` share of requests answered (upper bucket bound).
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(Duration::from_micros(bucket_upper(i)));
            }
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricError(pub String);

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MetricError {}

/// Where metric analysis reads a release's figures.
pub trait MetricProvider: Send + Sync {
    fn release_metrics<'a>(
        &'a self,
        environment: &'a str,
        release: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseMetrics, MetricError>>;
}

/// The router's counters of every environment, by release.
#[derive(Default)]
pub struct RouterMetrics {
    by_env: RwLock<HashMap<String, HashMap<String, Arc<ReleaseStats>>>>,
}

impl RouterMetrics {
    /// The counters of a release, created on first use.
    pub fn stats(&self, environment: &str, release: &str) -> Arc<ReleaseStats> {
        if let Some(s) = self
            .by_env
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(environment)
            .and_then(|m| m.get(release))
        {
            return s.clone();
        }
        let mut w = self.by_env.write().unwrap_or_else(|e| e.into_inner());
        w.entry(environment.to_string())
            .or_default()
            .entry(release.to_string())
            .or_default()
            .clone()
    }

    pub fn snapshot(&self, environment: &str, release: &str) -> Option<ReleaseMetrics> {
        self.by_env
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(environment)
            .and_then(|m| m.get(release))
            .map(|s| s.snapshot())
    }
}

impl MetricProvider for RouterMetrics {
    fn release_metrics<'a>(
        &'a self,
        environment: &'a str,
        release: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseMetrics, MetricError>> {
        Box::pin(async move {
            self.snapshot(environment, release).ok_or_else(|| {
                MetricError(format!(
                    "the router has no requests for release {release} of {environment}"
                ))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            1_000,
            65_535,
            1 << 30,
            u64::MAX,
        ] {
            let b = bucket_of(us);
            assert!(b >= last, "{us}");
            last = b;
            if us < (1 << 40) {
                assert!(
                    bucket_upper(b) > us,
                    "{us} -> bucket {b} upper {}",
                    bucket_upper(b)
                );
                assert!(
                    bucket_upper(b) as f64 <= (us as f64 * 1.26).max(us as f64 + 1.0),
                    "{us}"
                );
            }
        }
    }

    #[test]
    fn quantiles_and_windows() {
        let s = ReleaseStats::default();
        for _ in 0..98 {
            s.record(200, Duration::from_micros(1_000));
        }
        s.record(503, Duration::from_millis(50));
        s.record(500, Duration::from_millis(50));
        let a = s.snapshot();
        assert_eq!(a.requests, 100);
        assert_eq!(a.errors_5xx, 2);
        let p50 = a.latency_quantile(0.5).expect("p50");
        assert!(
            p50 >= Duration::from_micros(1_000) && p50 < Duration::from_micros(1_300),
            "{p50:?}"
        );
        let p99 = a.latency_quantile(0.99).expect("p99");
        assert!(p99 >= Duration::from_millis(50), "{p99:?}");
        s.record(200, Duration::from_micros(10));
        let window = s.snapshot().since(&a);
        assert_eq!(window.requests, 1);
        assert_eq!(window.error_rate(), Some(0.0));
        assert_eq!(a.error_rate(), Some(0.02));
    }
}
