//! Two `tally` processes on the scale-out backend (`--scylla`, `--redis`),
//! sharing the Cassandra and redis-server of `tests/services.sh`: they start
//! together (one creates the schema, the other waits its turn), and an event
//! resent to the other process is a duplicate. `tally rebuild` on both
//! backends: progress on stderr, the same result when run twice, clear
//! errors.

use std::ffi::OsString;

use tally_proto::v1;

use crate::process::{Tally, authed, export_recent, now_timestamp, site_with_ingest_key, tally_binary};

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

/// `tally serve` flags for the scale-out backend on the test services, with a
/// keyspace and key prefix of its own.
pub(crate) fn args(keyspace: &str) -> Vec<OsString> {
    let (cql, redis) = services();
    [
        "--scylla",
        &cql,
        "--redis",
        &redis,
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
    let args = args(&format!("e2e_{}", std::process::id()));
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

/// Runs `tally rebuild` with `args`; returns whether it succeeded and its stderr.
fn rebuild(args: &[OsString]) -> (bool, String) {
    let output = std::process::Command::new(tally_binary())
        .arg("rebuild")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ten_events(first: u128) -> Vec<v1::Event> {
    (0..10u128)
        .map(|n| v1::Event {
            event_id: uuid::Uuid::from_u128(first + n).to_string(),
            timestamp: Some(now_timestamp()),
            r#type: v1::EventType::Pageview as i32,
            url: format!("https://shop.example/{n}"),
            anonymous_id: format!("visitor-{n}"),
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_recomputes_the_scale_out_state_and_can_run_again() {
    let args = args(&format!("e2e_rebuild_{}", std::process::id()));
    let tally = Tally::start_with_args(&args).await;
    let key = site_with_ingest_key(tally.channel().await, "shop").await;
    assert_eq!(track(&tally, &key, ten_events(0x5e00)).await.accepted, 10);
    // Next to the running instance, twice: the same work each time.
    let (ok, first) = rebuild(&args);
    assert!(ok, "{first}");
    assert!(
        first.contains("rebuild: site shop: rolling up 1 hours"),
        "{first}"
    );
    assert!(
        first.contains("rebuild: site shop: 1/1 hours, 10 events"),
        "{first}"
    );
    assert!(
        first.contains("10 event ids of the dedup window remembered"),
        "{first}"
    );
    assert!(
        first.contains("realtime counters recounted from 10 events"),
        "{first}"
    );
    assert!(first.contains("rebuild: done: 1 sites, 10 events"), "{first}");
    let (ok, second) = rebuild(&args);
    assert!(ok, "{second}");
    let without_time = |text: &str| {
        text.lines()
            .map(|l| {
                l.split(", ")
                    .filter(|p| !p.ends_with(" s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_time(&first), without_time(&second));
    // The instance answers as before: the events stay duplicates.
    assert_eq!(track(&tally, &key, ten_events(0x5e00)).await.duplicates, 10);
    // A site that does not exist is named, and nothing runs.
    let mut unknown = args.clone();
    unknown.extend(["--site", "nosuch"].map(OsString::from));
    let (ok, error) = rebuild(&unknown);
    assert!(!ok);
    assert!(error.contains("site nosuch not found"), "{error}");
    assert!(!error.contains("rolling up"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_reads_every_event_of_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut tally = Tally::start(dir.path()).await;
    let key = site_with_ingest_key(tally.channel().await, "shop").await;
    assert_eq!(track(&tally, &key, ten_events(0x5f00)).await.accepted, 10);
    let data_dir = [OsString::from("--data-dir"), dir.path().into()];
    // The server holds the store: a clear refusal.
    let (ok, error) = rebuild(&data_dir);
    assert!(!ok);
    assert!(error.contains("is a server using it? stop it first"), "{error}");
    tally.terminate();
    assert!(tally.wait_exit(std::time::Duration::from_secs(30)).success());
    for _ in 0..2 {
        let (ok, out) = rebuild(&data_dir);
        assert!(ok, "{out}");
        assert!(out.contains("rebuild: site shop: 1 hours, 10 events"), "{out}");
        assert!(out.contains("rebuild: done: 1 sites, 10 events"), "{out}");
    }
}
