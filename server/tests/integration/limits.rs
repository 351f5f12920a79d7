//! Limits: per-key rate limits with `RESOURCE_EXHAUSTED` and `RetryInfo`, batch
//! and message size limits; nothing of a refused request is stored.

use std::time::Duration;

use tally_proto::v1::{self, Metric as M};
use tally_server::config::Config;
use tally_server::limits::RateLimitConfig;
use tally_server::pipeline::IngestLimits;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::*;

fn retry_after(status: &tonic::Status) -> Duration {
    let info = status
        .get_details_retry_info()
        .expect("a refusal for load carries RetryInfo");
    info.retry_delay.expect("with a delay")
}

fn batch(from: u128, n: u128) -> v1::TrackRequest {
    let now = now_micros();
    v1::TrackRequest {
        site_id: "l".into(),
        events: (from + 1..from + n + 1)
            .map(|i| pageview(i, now - 1000, "https://l.example/", "limits"))
            .collect(),
    }
}

async fn pageviews(server: &TestServer) -> i64 {
    let r = report(
        server,
        v1::RunReportRequest {
            site_id: "l".into(),
            metrics: vec![M::Pageviews as i32],
            skip_cache: true,
            ..Default::default()
        },
    )
    .await;
    int(&r.totals[0].metric_values[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_retry_info_and_lose_nothing() {
    let server = TestServer::start_with(Config {
        limits: IngestLimits {
            max_batch_events: 50,
            ..IngestLimits::default()
        },
        rate_limits: RateLimitConfig {
            events_per_second: 100.0,
            requests_per_second: 2.0,
            ..RateLimitConfig::default()
        },
        max_message_bytes: 64 * 1024,
        ..Config::default()
    })
    .await;
    server.site("l", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["l"]).await;

    // The bucket holds two seconds: 200 events. Four batches of 50 pass...
    for i in 0..4 {
        let sent = server
            .ingest()
            .track(authed(&key, batch(i * 50, 50)))
            .await
            .unwrap();
        assert_eq!(sent.into_inner().accepted, 50);
    }
    // ...the fifth is refused whole, with the time until 50 events fit again.
    let refused = server
        .ingest()
        .track(authed(&key, batch(200, 50)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("100 events per second"),
        "{}",
        refused.message()
    );
    let wait = retry_after(&refused);
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "50 events at 100/s take at most 0.5 s to refill, got {wait:?}"
    );
    assert_eq!(
        pageviews(&server).await,
        200,
        "nothing of the refused batch is stored"
    );
    // After the delay the same batch goes in.
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let sent = server.ingest().track(authed(&key, batch(200, 50))).await.unwrap();
    assert_eq!(sent.into_inner().accepted, 50);
    assert_eq!(pageviews(&server).await, 250);

    // Queries: 2 per second, a burst of 4, per key.
    let query_key = server.key(v1::KeyKind::Query, &["l"]).await;
    let request = || v1::RunReportRequest {
        site_id: "l".into(),
        metrics: vec![M::Visitors as i32],
        ..Default::default()
    };
    for _ in 0..4 {
        server
            .query()
            .run_report(authed(&query_key, request()))
            .await
            .unwrap();
    }
    let refused = server
        .query()
        .run_report(authed(&query_key, request()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(retry_after(&refused) <= Duration::from_millis(500));
    // Another key has its own bucket; the operator is not limited.
    let other = server.key(v1::KeyKind::Query, &["l"]).await;
    server
        .query()
        .run_report(authed(&other, request()))
        .await
        .unwrap();
    for _ in 0..10 {
        server
            .query()
            .run_report(authed(ADMIN_KEY, request()))
            .await
            .unwrap();
    }

    // Size limits: more events than max_batch_events, and a message over
    // max_message_bytes, are refused as a whole with the limit named.
    let too_many = server
        .ingest()
        .track(authed(&key, batch(1000, 51)))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many.message().contains("the limit is 50"),
        "{}",
        too_many.message()
    );
    let mut huge = batch(2000, 1);
    huge.events[0].url = format!("https://l.example/{}", "x".repeat(70 * 1024));
    let too_big = server.ingest().track(authed(&key, huge)).await.unwrap_err();
    assert_eq!(too_big.code(), Code::OutOfRange, "{too_big:?}");
    assert!(too_big.message().contains("limit"), "{}", too_big.message());
    server.stop().await;
}
