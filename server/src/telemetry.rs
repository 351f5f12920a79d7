//! Logs and traces: the `tracing` subscriber, and OpenTelemetry export over
//! OTLP/gRPC when an endpoint is configured.
//!
//! Every RPC runs in a span named after its method (`tally.v1.IngestService/Track`),
//! whose parent is the caller's trace when the request carries W3C
//! `traceparent` (and `tracestate`) metadata; store calls and report
//! executors open child spans. Spans are exported in batches (the SDK's batch
//! processor), so tracing never waits on the collector.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Flushes and stops the trace exporter when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("tally: flushing traces failed: {err}");
        }
    }
}

/// Installs the process's subscriber: logs to stderr in `format`, and spans
/// exported to `otlp_endpoint` (e.g. `http://127.0.0.1:4317`) when given.
/// Call inside the Tokio runtime.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn,scylla=warn"));
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("tally")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    // Spans go to the collector whatever the log level (`RUST_LOG` filters logs only).
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("tally"))
            .with_filter(Targets::new().with_target("tally_server", tracing::Level::INFO))
    });
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(otel);
    match format {
        LogFormat::Json => registry.with(stderr.json().with_filter(filter)).try_init()?,
        LogFormat::Text => registry.with(stderr.with_filter(filter)).try_init()?,
    }
    Ok(Telemetry { provider })
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The span of one request: named after its gRPC method, continuing the
/// caller's trace from `traceparent`.
pub fn request_span(request: &http::Request<()>) -> tracing::Span {
    let method = request.uri().path().trim_start_matches('/');
    let (service, name) = method.split_once('/').unwrap_or((method, ""));
    let span = tracing::info_span!(
        "rpc",
        otel.name = %method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %name,
    );
    if request.headers().contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_extractor_reads_traceparent() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        use opentelemetry::trace::TraceContextExt;
        let remote = cx.span().span_context().clone();
        assert_eq!(remote.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert!(remote.is_remote());
    }
}
