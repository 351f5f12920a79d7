//! The tracker against a real server over loopback: exactly-once delivery,
//! rejections, outages, restarts and opt-out.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_sdk::proto as v1;
use tally_sdk::{Client, RetryPolicy, TrackEvent, Tracker, TrackerConfig};
use tally_server::config::Config;
use tally_server::storage::embedded::EmbeddedStore;

const ADMIN_KEY: &str = "sdk-test-operator-key-0123";

struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves on `addr` from the store in `dir`.
    async fn start(addr: SocketAddr, dir: &std::path::Path) -> Self {
        let store = Arc::new(EmbeddedStore::open(dir).unwrap());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let config = Config {
            admin_key: Some(ADMIN_KEY.into()),
            ..Config::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tally_server::server::run(listener, &config, store, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn admin(addr: SocketAddr) -> Client {
    Client::builder(format!("http://{addr}"))
        .key(ADMIN_KEY)
        .build()
        .unwrap()
}

/// Creates site "s" and returns an ingest key for it.
async fn site(addr: SocketAddr) -> String {
    let admin = admin(addr);
    let site = v1::Site {
        site_id: "s".into(),
        domain: "s.example".into(),
        ..Default::default()
    };
    admin.create_site(site).await.unwrap();
    let request = v1::CreateApiKeyRequest {
        kind: v1::KeyKind::Ingest as i32,
        site_ids: vec!["s".into()],
        name: "sdk".into(),
        ..Default::default()
    };
    admin.create_api_key(request).await.unwrap().secret
}

/// Every stored event id of site "s", with repetitions.
async fn stored_ids(addr: SocketAddr) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let request = v1::ExportEventsRequest {
        site_id: "s".into(),
        time_range: Some(v1::TimeRange {
            start_time: Some(prost_types::Timestamp {
                seconds: now - 3600,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: now + 3600,
                nanos: 0,
            }),
        }),
        chunk_size: 10_000,
        ..Default::default()
    };
    let mut chunks = admin(addr).export_events(request).await.unwrap();
    let mut ids = Vec::new();
    while let Some(chunk) = chunks.message().await.unwrap() {
        ids.extend(chunk.events.into_iter().map(|e| e.event_id));
    }
    ids
}

fn config(addr: SocketAddr, key: &str, queue: &std::path::Path) -> TrackerConfig {
    let mut config = TrackerConfig::new(format!("http://{addr}"), key, queue);
    config.flush_interval = Duration::from_millis(50);
    config.retry = RetryPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    config.request_timeout = Duration::from_secs(5);
    config
}

fn assert_exactly_once(tracked: &[String], stored: &[String]) {
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no event stored twice");
    let tracked: HashSet<&String> = tracked.iter().collect();
    assert_eq!(unique, tracked, "exactly the tracked events are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tracked_event_is_delivered_once() {
    let data = tempfile::tempdir().unwrap();
    let queue = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let server = Server::start(addr, data.path()).await;
    let key = site(addr).await;
    let tracker = Tracker::start(config(addr, &key, queue.path())).unwrap();
    let mut tracked = Vec::new();
    for i in 0..500 {
        let event = match i % 3 {
            0 => TrackEvent::pageview(format!("https://s.example/p/{i}")),
            1 => TrackEvent::screen("Checkout").number("step", f64::from(i)),
            _ => TrackEvent::custom("purchase")
                .revenue("EUR", 12, 340_000_000)
                .flag("first", i % 2 == 0),
        };
        tracked.push(tracker.track(event).unwrap());
    }
    tracker.flush(Duration::from_secs(20)).await.unwrap();
    let stats = tracker.stats();
    assert_eq!(
        (stats.queued, stats.delivered, stats.rejected, stats.dropped),
        (0, 500, 0, 0)
    );
    assert_exactly_once(&tracked, &stored_ids(addr).await);
    tracker.shutdown(Duration::from_secs(1)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_are_reported_once_and_dropped() {
    let data = tempfile::tempdir().unwrap();
    let queue = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let server = Server::start(addr, data.path()).await;
    let key = site(addr).await;
    let reported: Arc<Mutex<Vec<tally_sdk::Rejected>>> = Arc::default();
    let mut config = config(addr, &key, queue.path());
    let sink = reported.clone();
    config.on_rejected = Some(Arc::new(move |r: &tally_sdk::Rejected| {
        sink.lock().unwrap().push(r.clone())
    }));
    let tracker = Tracker::start(config).unwrap();
    let good = tracker.track(TrackEvent::pageview("https://s.example/")).unwrap();
    let bad = tracker.track(TrackEvent::pageview("not a url")).unwrap();
    tracker.flush(Duration::from_secs(20)).await.unwrap();
    let reported = reported.lock().unwrap().clone();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].event_id, bad);
    assert_eq!(reported[0].reason, v1::RejectReason::InvalidUrl);
    assert_eq!(reported[0].field, "url");
    assert_eq!(tracker.stats().rejected, 1);
    assert_exactly_once(&[good], &stored_ids(addr).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_out_an_outage_and_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let queue = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let server = Server::start(addr, data.path()).await;
    let key = site(addr).await;
    server.stop().await;

    // The server is down: events queue up, sends fail and back off.
    let tracker = Tracker::start(config(addr, &key, queue.path())).unwrap();
    let mut tracked: Vec<String> = (0..60)
        .map(|i| tracker.track(TrackEvent::custom(format!("e{i}"))).unwrap())
        .collect();
    let err = tracker.shutdown(Duration::from_millis(300)).await.unwrap_err();
    assert!(
        matches!(err, tally_sdk::FlushError::Timeout { pending: 60 }),
        "{err:?}"
    );
    assert!(tracker.stats().failed_attempts > 0);
    drop(tracker);

    // A new tracker on the same queue (the app restarted) and the server back.
    let server = Server::start(addr, data.path()).await;
    let tracker = Tracker::start(config(addr, &key, queue.path())).unwrap();
    tracked.extend((0..10).map(|i| tracker.track(TrackEvent::custom(format!("after{i}"))).unwrap()));
    tracker.flush(Duration::from_secs(20)).await.unwrap();
    assert_exactly_once(&tracked, &stored_ids(addr).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_out_clears_the_queue_and_is_remembered() {
    let queue = tempfile::tempdir().unwrap();
    let addr = free_addr(); // nothing listens: events stay queued
    let tracker = Tracker::start(config(addr, "tly_ing_x", queue.path())).unwrap();
    for i in 0..5 {
        tracker.track(TrackEvent::custom(format!("e{i}"))).unwrap();
    }
    assert_eq!(tracker.stats().queued, 5);
    assert!(!tracker.is_opted_out());
    tracker.set_opt_out(true).unwrap();
    assert!(tracker.is_opted_out());
    assert_eq!(tracker.stats().queued, 0);
    assert!(matches!(
        tracker.track(TrackEvent::custom("x")),
        Err(tally_sdk::TrackRefused::OptedOut)
    ));
    drop(tracker);
    let tracker = Tracker::start(config(addr, "tly_ing_x", queue.path())).unwrap();
    assert!(tracker.is_opted_out(), "the choice survives a restart");
    assert!(matches!(
        tracker.track(TrackEvent::custom("x")),
        Err(tally_sdk::TrackRefused::OptedOut)
    ));
    tracker.set_opt_out(false).unwrap();
    assert!(tracker.track(TrackEvent::custom("x")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_background_starts_a_new_session() {
    let queue = tempfile::tempdir().unwrap();
    let mut config = config(free_addr(), "tly_ing_x", queue.path());
    config.session_timeout = Duration::ZERO;
    let tracker = Tracker::start(config).unwrap();
    let first = tracker.session_id();
    tracker.on_foreground(); // without a background: same session
    assert_eq!(tracker.session_id(), first);
    tracker.on_background();
    tracker.on_foreground();
    assert_ne!(tracker.session_id(), first, "away longer than the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_their_session_and_mark_its_start() {
    use prost::Message;
    let queue = tempfile::tempdir().unwrap();
    let mut config = config(free_addr(), "tly_ing_x", queue.path());
    config.session_timeout = Duration::from_secs(3600);
    let tracker = Tracker::start(config).unwrap();
    tracker.track(TrackEvent::custom("a")).unwrap();
    tracker.track(TrackEvent::custom("b")).unwrap();
    drop(tracker);
    let mut config = config_for(queue.path());
    config.session_timeout = Duration::ZERO;
    let tracker = Tracker::start(config).unwrap();
    tracker.track(TrackEvent::custom("c")).unwrap();
    drop(tracker);

    let (queued, _) = tally_sdk::queue::DiskQueue::open(queue.path(), &Default::default()).unwrap();
    let hints: Vec<(String, bool)> = queued
        .peek(10)
        .map(|bytes| v1::Event::decode(bytes).unwrap().session.unwrap())
        .map(|hint| (hint.session_id, hint.session_start))
        .collect();
    assert_eq!(hints.len(), 3);
    assert_eq!((hints[0].1, hints[1].1, hints[2].1), (true, false, true));
    assert_eq!(hints[0].0, hints[1].0);
    assert_ne!(hints[1].0, hints[2].0, "a new process starts a new session");
}

fn config_for(queue: &std::path::Path) -> TrackerConfig {
    config(free_addr(), "tly_ing_x", queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts() {
    let queue = tempfile::tempdir().unwrap();
    let mut config = config(free_addr(), "tly_ing_x", queue.path());
    config.max_queue_events = 10;
    let tracker = Tracker::start(config).unwrap();
    let outcomes: Vec<bool> = (0..15)
        .map(|i| tracker.track(TrackEvent::custom(format!("e{i}"))).is_ok())
        .collect();
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 10);
    assert_eq!(tracker.stats().dropped, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_its_deadline_when_the_server_hangs() {
    // A listener that accepts connections and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = black_hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });
    let queue = tempfile::tempdir().unwrap();
    let mut config = config(addr, "tly_ing_x", queue.path());
    config.request_timeout = Duration::from_secs(60);
    let tracker = Tracker::start(config).unwrap();
    tracker.track(TrackEvent::custom("stuck")).unwrap();
    let started = std::time::Instant::now();
    let result = tracker.shutdown(Duration::from_millis(300)).await;
    assert!(
        matches!(result, Err(tally_sdk::FlushError::Timeout { pending: 1 })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(tracker);
    let (queued, _) = tally_sdk::queue::DiskQueue::open(queue.path(), &Default::default()).unwrap();
    assert_eq!(queued.len(), 1, "the event stays queued for the next start");
}
