//! `GET /metrics` on the gRPC port: Prometheus text with ingest, RPC and store figures.

use tally_proto::v1;

use crate::grpc_web::http1;
use crate::harness::*;

/// The value of one sample line, 0 when absent (the registry is per process,
/// shared by the tests running beside this one: compare before and after).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(server: &TestServer) -> String {
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let response = String::from_utf8(http1(server.addr, request.as_bytes()).await).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4")
    );
    body.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_verdicts_rejections_rpcs_and_store_latency() {
    let server = TestServer::start().await;
    server.site("m", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["m"]).await;
    let before = scrape(&server).await;

    let now = now_micros();
    let mut events: Vec<v1::Event> = (0..3)
        .map(|i| pageview(900 + i, now - 1000, "https://m.example/", "metrics"))
        .collect();
    let mut old = pageview(950, now - 40 * 86_400_000_000, "https://m.example/", "metrics");
    old.event_id = uuid::Uuid::from_u128(951).to_string();
    events.push(old);
    let sent = server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "m".into(),
                events: events.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((sent.accepted, sent.rejected), (3, 1));
    // The same batch again: three duplicates; and a call with a bad key.
    server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "m".into(),
                events: events[..3].to_vec(),
            },
        ))
        .await
        .unwrap();
    let refused = server
        .ingest()
        .track(authed("not-a-key", v1::TrackRequest::default()))
        .await
        .unwrap_err();

    let after = scrape(&server).await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert!(delta("tally_ingest_events_total{verdict=\"accepted\"}") >= 3.0);
    assert!(delta("tally_ingest_events_total{verdict=\"duplicate\"}") >= 3.0);
    assert!(delta("tally_ingest_rejections_total{reason=\"REJECT_REASON_TIMESTAMP_TOO_OLD\"}") >= 1.0);
    let track = "method=\"tally.v1.IngestService/Track\"";
    assert!(delta(&format!("tally_rpcs_total{{{track},code=\"OK\"}}")) >= 2.0);
    let code = match refused.code() {
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        other => panic!("a bad key is refused as unauthenticated, got {other:?}"),
    };
    assert!(delta(&format!("tally_rpcs_total{{{track},code=\"{code}\"}}")) >= 1.0);
    assert!(delta(&format!("tally_rpc_duration_seconds_count{{{track}}}")) >= 3.0);
    // Both accepted batches went through the store.
    assert!(delta("tally_store_append_seconds_count") >= 2.0);
    // Histogram buckets are cumulative: +Inf holds the count.
    assert_eq!(
        sample(&after, "tally_store_append_seconds_bucket{le=\"+Inf\"}"),
        sample(&after, "tally_store_append_seconds_count")
    );
    assert!(after.contains("# TYPE tally_realtime_streams gauge"));
    server.stop().await;
}
