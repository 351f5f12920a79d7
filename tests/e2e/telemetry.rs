//! Traces: `tally serve --otlp-endpoint` exports a span per RPC, continuing
//! the caller's `traceparent`, with store calls as child spans, to a real
//! OTLP/gRPC collector (a minimal one, run by the test on loopback).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tally_proto::v1;

use crate::process::{Tally, authed, site_with_ingest_key, tally_binary};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_and_store_spans_reach_the_collector_in_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let dir = tempfile::tempdir().unwrap();
    let flags = [
        std::ffi::OsStr::new("--otlp-endpoint"),
        std::ffi::OsStr::new(&endpoint),
    ];
    let tally = Tally::start_with(&tally_binary(), dir.path(), &flags).await;
    let key = site_with_ingest_key(tally.channel().await, "traced").await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = authed(
        &key,
        v1::TrackRequest {
            site_id: "traced".into(),
            events: vec![v1::Event {
                event_id: uuid::Uuid::now_v7().to_string(),
                timestamp: Some(prost_types::Timestamp {
                    seconds: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs() as i64,
                    nanos: 0,
                }),
                r#type: v1::EventType::Pageview as i32,
                url: "https://traced.example/".into(),
                anonymous_id: "a".into(),
                ..Default::default()
            }],
        },
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let mut ingest = v1::ingest_service_client::IngestServiceClient::new(tally.channel().await);
    assert_eq!(ingest.track(request).await.unwrap().into_inner().accepted, 1);

    // The batch processor exports within a few seconds.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (rpc, append) = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let in_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace_id).collect();
        let rpc = in_trace
            .iter()
            .find(|s| s.name == "tally.v1.IngestService/Track")
            .map(|s| (*s).clone());
        let append = in_trace
            .iter()
            .find(|s| s.name == "store.append")
            .map(|s| (*s).clone());
        if let (Some(rpc), Some(append)) = (rpc, append) {
            break (rpc, append);
        }
        assert!(
            Instant::now() < deadline,
            "no RPC and store spans in trace {trace_id}; got {:?}",
            spans
                .iter()
                .map(|s| (&s.name, hex(&s.trace_id)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The RPC span continues the caller's span; the store call is inside it
    // (directly or through the visit assignment).
    assert_eq!(hex(&rpc.parent_span_id), caller_span);
    assert!(!append.parent_span_id.is_empty());
    assert!(append.start_time_unix_nano >= rpc.start_time_unix_nano);
    assert!(append.end_time_unix_nano <= rpc.end_time_unix_nano);
}
