//! The scale-out backend against real servers: Cassandra (a CQL stand-in for
//! ScyllaDB) and redis-server, started once per run by `tests/services.sh`,
//! which exports `TALLY_TEST_CQL` and `TALLY_TEST_REDIS`. Each test gets a
//! keyspace and a Redis key prefix of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tally_proto::v1;
use tally_server::storage::scylla::{ScyllaOptions, ScyllaStore};
use tally_server::storage::{Store, conformance};

use crate::harness::*;

/// The shared servers' addresses; fails (never skips) without them.
pub fn services() -> (String, String) {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the ScyllaDB + Redis tests need Cassandra and redis-server. \
                 Run `bash tests/services.sh` (it prints the exports) or the whole suite with `bash tests/run.sh`"
            )
        })
    };
    (get("TALLY_TEST_CQL"), get("TALLY_TEST_REDIS"))
}

/// Options for a fresh keyspace and key prefix, named after `tag`.
pub fn fresh_options(tag: &str) -> ScyllaOptions {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (cql, redis) = services();
    let keyspace = format!(
        "t_{}_{}_{}",
        tag,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    ScyllaOptions {
        nodes: cql.split(',').map(str::to_owned).collect(),
        redis_prefix: format!("{keyspace}:"),
        keyspace,
        redis_url: redis,
        ..ScyllaOptions::default()
    }
}

/// Drops a test keyspace (Cassandra keeps a few hundred tables at most in
/// comfort; the suite makes many keyspaces).
pub async fn drop_keyspace(store: &ScyllaStore, keyspace: &str) {
    store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_store_passes_the_conformance_suite() {
    let previous: std::sync::Mutex<Option<(Arc<ScyllaStore>, String)>> = Default::default();
    conformance::run_all(|| async {
        let old = previous.lock().unwrap().take();
        if let Some((store, keyspace)) = old {
            drop_keyspace(&store, &keyspace).await;
        }
        let options = fresh_options("conf");
        let store = Arc::new(ScyllaStore::connect(&options).await.unwrap());
        *previous.lock().unwrap() = Some((store.clone(), options.keyspace));
        store as Arc<dyn Store>
    })
    .await;
    let last = previous.lock().unwrap().take();
    if let Some((store, keyspace)) = last {
        drop_keyspace(&store, &keyspace).await;
    }
}

/// Two instances sharing one keyspace and key prefix, with site "s" and its
/// ingest and query keys.
async fn two_instances(tag: &str) -> (TestServer, TestServer, String, String, ScyllaOptions) {
    let options = fresh_options(tag);
    let a = TestServer::start_scale_out(&options).await;
    let b = TestServer::start_scale_out(&options).await;
    a.site("s", "UTC").await;
    let ingest = a.key(v1::KeyKind::Ingest, &["s"]).await;
    let query = b.key(v1::KeyKind::Query, &["s"]).await;
    (a, b, ingest, query, options)
}

async fn stop_all(a: TestServer, b: TestServer, options: &ScyllaOptions) {
    a.stop().await;
    b.stop().await;
    let store = ScyllaStore::connect(options).await.unwrap();
    drop_keyspace(&store, &options.keyspace).await;
}

async fn track(server: &TestServer, key: &str, events: Vec<v1::Event>) -> v1::TrackResponse {
    let request = v1::TrackRequest {
        site_id: "s".into(),
        events,
    };
    server
        .ingest()
        .track(authed(key, request))
        .await
        .unwrap()
        .into_inner()
}

/// Every stored event of site "s" in the last two hours, in time order.
async fn export(server: &TestServer) -> Vec<v1::RecordedEvent> {
    let now = now_micros();
    let request = v1::ExportEventsRequest {
        site_id: "s".into(),
        time_range: Some(v1::TimeRange {
            start_time: Some(ts(now - 2 * 3_600_000_000)),
            end_time: Some(ts(now + 60_000_000)),
        }),
        ..Default::default()
    };
    let mut stream = server
        .admin()
        .export_events(authed(ADMIN_KEY, request))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        events.extend(chunk.events);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visit_continues_when_its_events_alternate_between_instances() {
    let (a, b, ingest, _, options) = two_instances("visits").await;
    let minute = 60_000_000;
    let start = now_micros() - 90 * minute;
    // ann: one event every 10 minutes, alternating instances: one visit.
    // bob: two events 40 minutes apart (over the 30-minute timeout): two visits.
    let plan: Vec<(u128, i64, &str, bool)> = vec![
        (1, 0, "ann", true),
        (2, 10, "ann", false),
        (3, 20, "ann", true),
        (4, 30, "ann", false),
        (5, 40, "ann", true),
        (6, 0, "bob", false),
        (7, 40, "bob", true),
    ];
    for (id, at, visitor, on_a) in &plan {
        let server = if *on_a { &a } else { &b };
        let event = pageview(
            *id,
            start + at * minute,
            &format!("https://s.example/{id}"),
            visitor,
        );
        assert_eq!(track(server, &ingest, vec![event]).await.accepted, 1);
    }
    let events = export(&b).await;
    assert_eq!(events.len(), plan.len());
    let session_of = |id: u128| {
        let id = uuid::Uuid::from_u128(id).to_string();
        events
            .iter()
            .find(|e| e.event_id == id)
            .unwrap()
            .session_id
            .clone()
    };
    let ann: std::collections::HashSet<String> = (1..=5).map(session_of).collect();
    assert_eq!(
        ann.len(),
        1,
        "ann's five events form one visit across both instances"
    );
    assert_ne!(
        session_of(6),
        session_of(7),
        "bob's 40-minute gap starts a new visit"
    );
    assert!(!ann.contains(&session_of(6)));
    stop_all(a, b, &options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_instance_sees_events_ingested_on_the_other() {
    let (a, b, ingest, query, options) = two_instances("watch").await;
    let request = v1::WatchRealtimeRequest {
        site_id: "s".into(),
        ..Default::default()
    };
    let mut stream = a
        .query()
        .watch_realtime(authed(&query, request))
        .await
        .unwrap()
        .into_inner();
    let snapshot = |update: v1::RealtimeUpdate| match update.update {
        Some(v1::realtime_update::Update::Snapshot(report)) => Some(report),
        _ => None,
    };
    let first = snapshot(stream.message().await.unwrap().unwrap()).unwrap();
    assert_eq!(first.active_visitors, 0);
    let now = now_micros();
    let events = (0..3u128)
        .map(|n| pageview(100 + n, now, "https://s.example/from-b", &format!("visitor-{n}")))
        .collect();
    let sent = std::time::Instant::now();
    assert_eq!(track(&b, &ingest, events).await.accepted, 3);
    let report = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Some(report) = snapshot(stream.message().await.unwrap().unwrap())
                && report.active_visitors == 3
            {
                return report;
            }
        }
    })
    .await
    .expect("instance A shows B's events within 5 s");
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(report.top_pages[0].value, "/from-b");
    assert_eq!(report.top_pages[0].pageviews, 3);
    // B's own view counts them once, not once more through the channel.
    let own = b
        .query()
        .run_realtime_report(authed(
            &query,
            v1::RunRealtimeReportRequest {
                site_id: "s".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.top_pages[0].pageviews, 3);
    stop_all(a, b, &options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_landing_on_the_other_instance_is_a_duplicate() {
    let (a, b, ingest, _, options) = two_instances("retry").await;
    let now = now_micros();
    let batch: Vec<v1::Event> = (0..50u128)
        .map(|n| pageview(1000 + n, now - n as i64 * 1_000_000, "https://s.example/", "ann"))
        .collect();
    let first = track(&a, &ingest, batch.clone()).await;
    assert_eq!((first.accepted, first.duplicates), (50, 0));
    // The client did not hear back and resends to the other instance, with one new event.
    let mut retry = batch;
    retry.push(pageview(2000, now, "https://s.example/new", "ann"));
    let second = track(&b, &ingest, retry).await;
    assert_eq!((second.accepted, second.duplicates), (1, 50));
    assert!(
        second.results[..50]
            .iter()
            .all(|r| r.verdict() == v1::Verdict::Duplicate)
    );
    assert_eq!(export(&a).await.len(), 51, "stored once each");
    stop_all(a, b, &options).await;
}
