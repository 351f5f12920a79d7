//! Process metrics in the Prometheus text format, served at `GET /metrics` on
//! the gRPC port.
//!
//! Counters and histograms are plain atomics in one process-wide registry
//! ([`metrics()`]); the layer that serves them also times every request by
//! its path (the gRPC method) and counts it by gRPC status.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tonic::body::Body;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Records the time since `started`.
    pub fn since(&self, started: Instant) {
        self.observe(started.elapsed().as_secs_f64());
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Counters by a label value, created on first use.
#[derive(Default)]
pub struct Family {
    values: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
}

impl Family {
    /// Adds `n` to the counter of `label`.
    pub fn add(&self, label: &str, n: u64) {
        if n == 0 {
            return;
        }
        let counter = {
            let mut values = self.values.lock().expect("metrics lock");
            match values.get(label) {
                Some(c) => c.clone(),
                None => values.entry(label.to_owned()).or_default().clone(),
            }
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        let values = self.values.lock().expect("metrics lock");
        values
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Every metric of the process.
#[derive(Default)]
pub struct Metrics {
    /// Ingested events by verdict.
    pub events: Family,
    /// Rejected events by reason.
    pub rejections: Family,
    /// Store appends (one per ingest batch), seconds until durable.
    pub store_append: Histogram,
    /// Visit assignment per ingest batch, seconds.
    pub store_sessionize: Histogram,
    /// Raw event scans of reports, seconds for the whole report.
    pub report_raw: Histogram,
    /// Reports answered from rollups, seconds.
    pub report_rollups: Histogram,
    /// Reports by how they were answered: cache, rollups, raw.
    pub reports: Family,
    /// Events waiting for the embedded store's writer.
    pub write_queue: AtomicI64,
    /// Open `WatchRealtime` streams.
    pub realtime_streams: AtomicI64,
    /// Group commits refused because the disk was nearly full.
    pub disk_full_refusals: AtomicI64,
    /// RPCs by "method code".
    rpcs: Family,
    /// RPC latency by method (until the response headers).
    rpc_latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn rpc(&self, method: &str, code: &str, seconds: f64) {
        self.rpcs.add(&format!("{method} {code}"), 1);
        let histogram = {
            let mut latency = self.rpc_latency.lock().expect("metrics lock");
            latency.entry(method.to_owned()).or_default().clone()
        };
        histogram.observe(seconds);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, label: &str, family: &Family| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, n) in family.snapshot() {
                let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape(&value));
            }
        };
        counter(
            &mut out,
            "tally_ingest_events_total",
            "Events received, by verdict (accepted, duplicate, rejected, excluded).",
            "verdict",
            &self.events,
        );
        counter(
            &mut out,
            "tally_ingest_rejections_total",
            "Rejected events, by reason.",
            "reason",
            &self.rejections,
        );
        counter(
            &mut out,
            "tally_reports_total",
            "Reports, by how they were answered (cache, rollups, raw).",
            "source",
            &self.reports,
        );
        let _ = writeln!(
            out,
            "# HELP tally_rpcs_total RPCs, by method and gRPC status.\n# TYPE tally_rpcs_total counter"
        );
        for (key, n) in self.rpcs.snapshot() {
            let (method, code) = key.split_once(' ').unwrap_or((&key, ""));
            let _ = writeln!(
                out,
                "tally_rpcs_total{{method=\"{}\",code=\"{}\"}} {n}",
                escape(method),
                escape(code)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tally_rpc_duration_seconds Time to the response headers, by method.\n# TYPE tally_rpc_duration_seconds histogram"
        );
        let latency: Vec<_> = {
            let map = self.rpc_latency.lock().expect("metrics lock");
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (method, histogram) in latency {
            histogram.write(
                &mut out,
                "tally_rpc_duration_seconds",
                &format!("method=\"{}\"", escape(&method)),
            );
        }
        for (name, help, histogram) in [
            (
                "tally_store_append_seconds",
                "Store appends of ingest batches, until durable.",
                &self.store_append,
            ),
            (
                "tally_store_sessionize_seconds",
                "Visit assignment of ingest batches in the store.",
                &self.store_sessionize,
            ),
            (
                "tally_report_raw_seconds",
                "Reports computed from raw events.",
                &self.report_raw,
            ),
            (
                "tally_report_rollups_seconds",
                "Reports computed from rollups.",
                &self.report_rollups,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            histogram.write(&mut out, name, "");
        }
        for (name, help, value) in [
            (
                "tally_write_queue_events",
                "Events waiting for the embedded store's writer.",
                &self.write_queue,
            ),
            (
                "tally_realtime_streams",
                "Open WatchRealtime streams.",
                &self.realtime_streams,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tally_disk_full_refusals_total Group commits refused because the disk was nearly full.\n\
             # TYPE tally_disk_full_refusals_total counter\ntally_disk_full_refusals_total {}",
            self.disk_full_refusals.load(Ordering::Relaxed)
        );
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics` and times every other request.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<Request<B>> for MetricsService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path() == "/metrics" && request.method() == Method::GET {
            let mut response = Response::new(Body::new(metrics().render()));
            *response.status_mut() = StatusCode::OK;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return Box::pin(std::future::ready(Ok(response)));
        }
        // Only gRPC methods ("/package.Service/Method") get a series: other
        // paths are unbounded.
        let path = request.uri().path();
        let method = (path.starts_with("/tally.v1.") || path.starts_with("/grpc."))
            .then(|| path.trim_start_matches('/').to_owned());
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if let Some(method) = method {
                // Errors come trailers-only, with the status in the headers;
                // without one the call went on to send a message.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| tonic::Code::from_i32(c).description_name());
                metrics().rpc(&method, code, started.elapsed().as_secs_f64());
            }
            Ok(response)
        })
    }
}

trait CodeName {
    fn description_name(self) -> &'static str;
}

impl CodeName for tonic::Code {
    fn description_name(self) -> &'static str {
        use tonic::Code as C;
        match self {
            C::Ok => "OK",
            C::Cancelled => "CANCELLED",
            C::Unknown => "UNKNOWN",
            C::InvalidArgument => "INVALID_ARGUMENT",
            C::DeadlineExceeded => "DEADLINE_EXCEEDED",
            C::NotFound => "NOT_FOUND",
            C::AlreadyExists => "ALREADY_EXISTS",
            C::PermissionDenied => "PERMISSION_DENIED",
            C::ResourceExhausted => "RESOURCE_EXHAUSTED",
            C::FailedPrecondition => "FAILED_PRECONDITION",
            C::Aborted => "ABORTED",
            C::OutOfRange => "OUT_OF_RANGE",
            C::Unimplemented => "UNIMPLEMENTED",
            C::Internal => "INTERNAL",
            C::Unavailable => "UNAVAILABLE",
            C::DataLoss => "DATA_LOSS",
            C::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_families_count_by_label() {
        let m = Metrics::default();
        m.store_append.observe(0.0002);
        m.store_append.observe(0.003);
        m.store_append.observe(60.0);
        m.events.add("accepted", 5);
        m.events.add("accepted", 2);
        m.rpc("tally.v1.IngestService/Track", "OK", 0.001);
        let text = m.render();
        assert!(
            text.contains("tally_store_append_seconds_bucket{le=\"0.00025\"} 1"),
            "{text}"
        );
        assert!(text.contains("tally_store_append_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("tally_store_append_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("tally_store_append_seconds_count 3"));
        assert!(text.contains("tally_ingest_events_total{verdict=\"accepted\"} 7"));
        assert!(text.contains("tally_rpcs_total{method=\"tally.v1.IngestService/Track\",code=\"OK\"} 1"));
    }
}
