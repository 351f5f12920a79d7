//! Two `tally` processes on the scale-out backend (`--scylla`, `--redis`),
//! sharing the Cassandra and redis-server of `tests/services.sh`: they start
//! together (one creates the schema, the other waits its turn), and an event
//! resent to the other process is a duplicate.

use std::ffi::OsString;

use tally_proto::v1;

use crate::process::{Tally, authed, export_recent, now_timestamp, site_with_ingest_key};

pub(crate) fn services() -> (String, String) {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the scale-out tests need Cassandra and redis-server. \
                 Run `bash tests/services.sh` (it prints the exports) or the whole suite with `bash tests/run.sh`"
            )
        })
    };
    (get("TALLY_TEST_CQL"), get("TALLY_TEST_REDIS"))
}

/// `tally serve` flags for the scale-out backend on a keyspace and key prefix of its own.
pub(crate) fn args(cql: &str, redis: &str, keyspace: &str) -> Vec<OsString> {
    [
        "--scylla",
        cql,
        "--redis",
        redis,
        "--scylla-keyspace",
        keyspace,
        "--redis-prefix",
        &format!("{keyspace}:"),
    ]
    .into_iter()
    .map(OsString::from)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_cluster_and_one_redis() {
    let (cql, redis) = services();
    let args = args(&cql, &redis, &format!("e2e_{}", std::process::id()));
    // Both start at once on an empty keyspace.
    let (a, b) = tokio::join!(Tally::start_with_args(&args), Tally::start_with_args(&args));
    let key = site_with_ingest_key(a.channel().await, "shop").await;
    let events: Vec<v1::Event> = (0..10u128)
        .map(|n| v1::Event {
            event_id: uuid::Uuid::from_u128(0xe2e0 + n).to_string(),
            timestamp: Some(now_timestamp()),
            r#type: v1::EventType::Pageview as i32,
            url: format!("https://shop.example/{n}"),
            anonymous_id: "ann".into(),
            ..Default::default()
        })
        .collect();
    assert_eq!(track(&b, &key, events.clone()).await.accepted, 10);
    let again = track(&a, &key, events).await;
    assert_eq!((again.accepted, again.duplicates), (0, 10));
    let stored = export_recent(a.channel().await, "shop").await;
    assert_eq!(stored.len(), 10);
    let visits: std::collections::HashSet<&str> = stored.iter().map(|e| e.session_id.as_str()).collect();
    assert_eq!(visits.len(), 1, "one visitor, one visit");
}

async fn track(tally: &Tally, key: &str, events: Vec<v1::Event>) -> v1::TrackResponse {
    let request = v1::TrackRequest {
        site_id: "shop".into(),
        events,
    };
    v1::ingest_service_client::IngestServiceClient::new(tally.channel().await)
        .track(authed(key, request))
        .await
        .unwrap()
        .into_inner()
}
