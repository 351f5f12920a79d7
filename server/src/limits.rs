//! Per-key rate limits (token buckets) and a bound on concurrent raw scans.
//!
//! Every API key has two buckets: events it may send per second (ingest) and
//! requests it may make per second (reports, sessions, admin). A bucket holds
//! up to two seconds of its rate, at least one full batch, so short bursts
//! pass. A request that finds too few tokens is refused with
//! `RESOURCE_EXHAUSTED` and a `RetryInfo` saying when enough will be there;
//! nothing of it is stored. The operator key from the configuration is not
//! limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Principal;
use crate::error::{Error, Result};

/// The `[rate_limits]` settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Events per second one key may send (0: unlimited).
    pub events_per_second: f64,
    /// Requests per second one key may make to the query, session and admin
    /// services (0: unlimited).
    pub requests_per_second: f64,
    /// Reports scanning raw events at once; more wait up to `scan_wait_secs`.
    pub max_concurrent_scans: usize,
    /// How long a report waits for a scan slot before it is refused.
    pub scan_wait_secs: u64,
    /// Longest a report or funnel may compute (then `DEADLINE_EXCEEDED`).
    pub query_timeout_secs: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            events_per_second: 100_000.0,
            requests_per_second: 100.0,
            max_concurrent_scans: std::thread::available_parallelism().map_or(2, |n| n.get()),
            scan_wait_secs: 10,
            query_timeout_secs: 60,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per key and kind of work.
struct Buckets {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    fn new(rate: f64, at_least: f64) -> Self {
        Self {
            rate,
            burst: (rate * 2.0).max(at_least),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, key: &str, cost: f64, what: &str, now: Instant) -> Result<()> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().expect("limits lock");
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            return Ok(());
        }
        let wait = Duration::from_secs_f64(((cost - bucket.tokens) / self.rate).max(0.001));
        Err(Error::ResourceExhausted {
            message: format!(
                "rate limit of this key: {} {what} per second; retry in {} ms",
                self.rate,
                wait.as_millis().max(1)
            ),
            retry_after: wait,
        })
    }
}

/// The limits of one server.
pub struct Limits {
    events: Buckets,
    requests: Buckets,
    scans: std::sync::Arc<Semaphore>,
    scan_wait: Duration,
    /// Longest a report may compute.
    pub query_timeout: Duration,
}

impl Limits {
    /// Limits from the configuration; `max_batch_events` sets the smallest
    /// event bucket (one full batch always fits).
    pub fn new(config: &RateLimitConfig, max_batch_events: usize) -> Self {
        Self {
            events: Buckets::new(config.events_per_second, max_batch_events as f64),
            requests: Buckets::new(config.requests_per_second, 1.0),
            scans: std::sync::Arc::new(Semaphore::new(config.max_concurrent_scans.max(1))),
            scan_wait: Duration::from_secs(config.scan_wait_secs),
            query_timeout: Duration::from_secs(config.query_timeout_secs.max(1)),
        }
    }

    fn key_id(principal: &Principal) -> Option<&str> {
        match principal {
            Principal::Operator => None,
            Principal::Key(key) => Some(&key.key_id),
        }
    }

    /// Takes `events` from the caller's event bucket.
    pub fn ingest(&self, principal: &Principal, events: usize) -> Result<()> {
        match Self::key_id(principal) {
            Some(id) => self.events.take(id, events as f64, "events", Instant::now()),
            None => Ok(()),
        }
    }

    /// Takes one request from the caller's request bucket.
    pub fn request(&self, principal: &Principal) -> Result<()> {
        match Self::key_id(principal) {
            Some(id) => self.requests.take(id, 1.0, "requests", Instant::now()),
            None => Ok(()),
        }
    }

    /// Waits for a raw-scan slot; refused when none frees up in time.
    pub async fn scan_slot(&self) -> Result<OwnedSemaphorePermit> {
        match tokio::time::timeout(self.scan_wait, self.scans.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::ResourceExhausted {
                message: "every raw-scan slot is busy with other reports; retry shortly".into(),
                retry_after: Duration::from_secs(1),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate_and_say_when_to_retry() {
        let b = Buckets::new(10.0, 1.0);
        let t0 = Instant::now();
        // Burst of two seconds.
        for _ in 0..20 {
            b.take("k", 1.0, "requests", t0).unwrap();
        }
        let Err(Error::ResourceExhausted { retry_after, .. }) = b.take("k", 1.0, "requests", t0) else {
            panic!("the 21st request in the same instant is refused");
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        // Another key has its own bucket.
        b.take("other", 1.0, "requests", t0).unwrap();
        // Half a second later, five more fit.
        let later = t0 + Duration::from_millis(500);
        for _ in 0..5 {
            b.take("k", 1.0, "requests", later).unwrap();
        }
        assert!(b.take("k", 1.0, "requests", later).is_err());
    }

    #[test]
    fn a_full_batch_always_fits_and_zero_means_unlimited() {
        let b = Buckets::new(100.0, 1000.0);
        b.take("k", 1000.0, "events", Instant::now()).unwrap();
        let off = Buckets::new(0.0, 1.0);
        for _ in 0..10_000 {
            off.take("k", 1e9, "events", Instant::now()).unwrap();
        }
    }
}
