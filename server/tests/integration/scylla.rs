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
    let mut drop = scylla::statement::Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
    drop.set_request_timeout(Some(std::time::Duration::from_secs(60)));
    if let Err(error) = store.session().query_unpaged(drop, ()).await {
        // Only tidying up: the next run starts a fresh Cassandra anyway.
        eprintln!("keyspace {keyspace} not dropped: {error}");
    }
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

/// The realtime report of site "s" on `server`.
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
    assert_eq!(track(&b, &ingest, events).await.accepted, 3);
    let acknowledged = std::time::Instant::now();
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
    // The product aims at under a second (see the realtime benchmark); this
    // bound leaves room for a loaded test machine.
    assert!(
        acknowledged.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        acknowledged.elapsed()
    );
    assert_eq!(report.top_pages[0].value, "/from-b");
    assert_eq!(report.top_pages[0].pageviews, 3);
    // B's own view counts them once, not once more through the channel.
    let own = realtime(&b, &query, false).await;
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

/// A request that died while writing its events (`kill -9`, a timeout, a
/// failed Redis round trip after the write) leaves their claims pending; once
/// past their deadline the next claim rechecks the rows in Cassandra: the
/// events whose rows landed are duplicates, the others are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_request_died_mid_write_is_a_duplicate_for_what_it_stored() {
    let (a, b, ingest, query, options) = two_instances("died").await;
    let now = now_micros();
    let landed: Vec<v1::Event> = (0..20u128)
        .map(|n| pageview(3000 + n, now - n as i64 * 1_000_000, "https://s.example/a", "ann"))
        .collect();
    let lost: Vec<v1::Event> = (0..5u128)
        .map(|n| pageview(4000 + n, now - n as i64 * 1_000_000, "https://s.example/b", "bob"))
        .collect();
    assert_eq!(track(&a, &ingest, landed.clone()).await.accepted, 20);
    // The dead request's claims: pending past their deadline, on the events
    // it wrote and on the ones it did not get to write.
    let client = redis::Client::open(options.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    for event in landed.iter().chain(&lost) {
        let mut key = format!("{}d:s:", options.redis_prefix).into_bytes();
        key.extend_from_slice(uuid::Uuid::parse_str(&event.event_id).unwrap().as_bytes());
        let () = redis::cmd("SET")
            .arg(key)
            .arg("p1")
            .arg("PX")
            .arg(600_000)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let resend: Vec<v1::Event> = landed.iter().chain(&lost).cloned().collect();
    let again = track(&b, &ingest, resend.clone()).await;
    assert_eq!((again.accepted, again.duplicates), (5, 20));
    assert!(
        again.results[..20]
            .iter()
            .all(|r| r.verdict() == v1::Verdict::Duplicate)
    );
    // Settled now: a third send is all duplicates, and every event is stored once.
    let third = track(&a, &ingest, resend).await;
    assert_eq!((third.accepted, third.duplicates), (0, 25));
    assert_eq!(export(&a).await.len(), 25, "stored once each");
    let live = realtime(&b, &query, false).await;
    let pageviews: i64 = live.minutes.iter().map(|m| m.pageviews).sum();
    assert_eq!(pageviews, 25, "counted once each");
    stop_all(a, b, &options).await;
}

/// A TCP proxy in front of a server, which can cut every connection (and
/// refuse new ones) and later let them through again: the server becomes
/// unreachable without being stopped.
struct Proxy {
    addr: std::net::SocketAddr,
    open: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = tokio::sync::watch::Sender::new(true);
        let opened = open.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*opened.borrow() {
                    continue; // dropped: refused
                }
                let mut open = opened.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { addr, open }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// A redis-server of the test's own, with an append-only file synced on
/// every write, so that a restart keeps what it acknowledged.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    async fn start() -> Self {
        services(); // the same requirement as the other tests: fail clearly without them
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (tests/services.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("redis-server did not open port {}", self.port);
    }

    /// Starts it again without its data (a Redis without persistence that
    /// restarted).
    async fn restart_empty(&mut self) {
        self.dir = tempfile::tempdir().unwrap();
        self.restart().await;
    }

    /// Kills it (SIGKILL: no goodbye to clients).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the writer of a fault test saw.
#[derive(Debug, Default)]
struct Outage {
    /// Batches acknowledged.
    acknowledged: usize,
    /// Answers `UNAVAILABLE` with a `RetryInfo` delay.
    unavailable: usize,
}

/// The page views of batch `b` of a fault test: 20 new events of 5 visitors,
/// `b` seconds before `now`.
fn fault_batch(b: usize, now: i64) -> Vec<v1::Event> {
    (0..20u128)
        .map(|n| {
            let id = 10_000 + (b as u128) * 100 + n;
            pageview(
                id,
                now - (b as i64) * 1_000_000,
                "https://s.example/",
                &format!("v{}", n % 5),
            )
        })
        .collect()
}

/// Sends `batches` batches of 20 new page views, each until it is
/// acknowledged, retrying after `UNAVAILABLE` (which must carry `RetryInfo`;
/// any other error fails the test) for at most `patience`. Progress goes to
/// `progress`.
async fn write_through_outage(
    server: &TestServer,
    key: &str,
    batches: usize,
    patience: std::time::Duration,
    progress: tokio::sync::watch::Sender<Outage>,
) {
    use tonic_types::StatusExt;
    let now = now_micros();
    let started = std::time::Instant::now();
    for b in 0..batches {
        let events = fault_batch(b, now);
        loop {
            assert!(started.elapsed() < patience, "no recovery in {patience:?}");
            let request = v1::TrackRequest {
                site_id: "s".into(),
                events: events.clone(),
            };
            match server.ingest().track(authed(key, request)).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    // A retry of a batch that was stored before the answer got lost.
                    assert_eq!(answer.accepted + answer.duplicates, 20, "{answer:?}");
                    progress.send_modify(|o| o.acknowledged += 1);
                    break;
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    let retry = status.get_details_retry_info();
                    assert!(retry.is_some(), "UNAVAILABLE carries RetryInfo: {status:?}");
                    progress.send_modify(|o| o.unavailable += 1);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Runs a writer of 30 batches while `fault` happens after the 5th
/// acknowledgment and `repair` after the third `UNAVAILABLE`; then every
/// event is stored exactly once.
async fn survive_fault(
    server: &TestServer,
    key: &str,
    patience: std::time::Duration,
    fault: impl FnOnce() -> futures::future::BoxFuture<'static, ()>,
    repair: impl FnOnce() -> futures::future::BoxFuture<'static, ()>,
) {
    let (progress, mut seen) = tokio::sync::watch::channel(Outage::default());
    let started = std::time::Instant::now();
    let writer = write_through_outage(server, key, 30, patience, progress);
    let injector = async {
        seen.wait_for(|o| o.acknowledged >= 5).await.unwrap();
        fault().await;
        seen.wait_for(|o| o.unavailable >= 3).await.unwrap();
        repair().await;
    };
    tokio::join!(writer, injector);
    eprintln!("fault: over after {:?}", started.elapsed());
    let outage = seen.borrow();
    eprintln!("fault: {:?}", *outage);
    assert_eq!(outage.acknowledged, 30);
    assert!(outage.unavailable >= 3);
    drop(outage);
    let events = export(server).await;
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(events.len(), 600, "every acknowledged event, once");
    assert_eq!(ids.len(), 600);
}

/// After a fault test: everything sent is remembered (resending the first
/// batch changes nothing), and the rollups, a raw scan and the realtime
/// counters all count the 600 page views of 5 visitors once.
async fn derived_state_is_right(server: &TestServer, key: &str) {
    let again = fault_batch(0, now_micros());
    assert_eq!(track(server, key, again).await.duplicates, 20);
    for (include_bots, source) in [
        (false, v1::DataSource::Rollups),
        (true, v1::DataSource::RawEvents),
    ] {
        let answer = report(server, pages_request("today", include_bots)).await;
        let metadata = answer.metadata.as_ref().unwrap();
        assert_eq!(metadata.data_source(), source);
        let total = &answer.totals[0].metric_values;
        assert_eq!((int(&total[0]), int(&total[1])), (600, 5), "{source:?}");
    }
    let live = realtime(server, ADMIN_KEY, false).await;
    let pageviews: i64 = live.minutes.iter().map(|m| m.pageviews).sum();
    assert_eq!((pageviews, live.active_visitors), (600, 5));
}

/// Runs `tally rebuild` for every site of `options`' keyspace (as the
/// command does), returning what it did.
async fn rebuild(options: &ScyllaOptions) -> Vec<tally_server::rebuild::SiteRebuilt> {
    let store = ScyllaStore::connect(options).await.unwrap();
    let realtime = tally_server::realtime::redis::RedisRealtime::connect(
        &options.redis_url,
        &options.redis_prefix,
        Arc::new(tally_server::realtime::SystemClock),
    )
    .await
    .unwrap();
    let sites = tally_server::rebuild::sites(&store, &[]).await.unwrap();
    let rollups = tally_server::rollup::Rollups::new(false);
    tally_server::rebuild::rebuild_shared(&store, &realtime, &rollups, &sites, &mut |line| {
        eprintln!("rebuild: {line}")
    })
    .await
    .unwrap()
}

/// Ingest through a kill of a Redis of the test's own, restarted with its
/// data (`keep`, from its append-only file) or empty; returns the server,
/// its ingest key, options and Redis (stopped when dropped) once every
/// batch is acknowledged.
async fn through_redis_restart(
    tag: &str,
    keep: bool,
) -> (
    TestServer,
    String,
    ScyllaOptions,
    Arc<tokio::sync::Mutex<OwnRedis>>,
) {
    let redis = std::sync::Arc::new(tokio::sync::Mutex::new(OwnRedis::start().await));
    let mut options = fresh_options(tag);
    options.redis_url = redis.lock().await.url();
    let server = TestServer::start_scale_out(&options).await;
    server.site("s", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let (kill, restart) = (redis.clone(), redis.clone());
    survive_fault(
        &server,
        &key,
        std::time::Duration::from_secs(120),
        || Box::pin(async move { kill.lock().await.kill() }),
        || {
            Box::pin(async move {
                let mut redis = restart.lock().await;
                if keep {
                    redis.restart().await;
                } else {
                    // Back empty: every claim, visit, token and counter is gone.
                    redis.restart_empty().await;
                }
            })
        },
    )
    .await;
    (server, key, options, redis)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_unavailable_and_ingest_recovers_by_itself() {
    let (server, key, options, _redis) = through_redis_restart("redisfault", true).await;
    // The counts of a batch whose realtime update was cut by the kill may be
    // missing: the rebuild recounts them (and changes nothing else).
    let rebuilt = rebuild(&options).await;
    assert_eq!(rebuilt[0].events, 600);
    derived_state_is_right(&server, &key).await;
    server.stop().await;
    let store = ScyllaStore::connect(&options).await.unwrap();
    drop_keyspace(&store, &options.keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_during_ingest_loses_nothing_acknowledged_and_rebuild_restores_it() {
    let (server, key, options, _redis) = through_redis_restart("redisloss", false).await;
    // Rollups need no rebuild: hours without a token are scanned again.
    let mut report_rollups = v1::RunReportRequest {
        site_id: "s".into(),
        metrics: vec![v1::Metric::Pageviews as i32],
        date_ranges: vec![v1::DateRange {
            start_date: "today".into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        ..Default::default()
    };
    let before = report(&server, report_rollups.clone()).await;
    assert_eq!(
        before.metadata.as_ref().unwrap().data_source(),
        v1::DataSource::Rollups
    );
    assert_eq!(int(&before.totals[0].metric_values[0]), 600);
    let rebuilt = rebuild(&options).await;
    assert_eq!(
        (rebuilt[0].events, rebuilt[0].ids, rebuilt[0].realtime),
        (600, 600, 600)
    );
    derived_state_is_right(&server, &key).await;
    // Running it again changes nothing.
    let again = rebuild(&options).await;
    assert_eq!(again, rebuilt);
    report_rollups.skip_cache = true;
    let after = report(&server, report_rollups).await;
    assert_eq!(int(&after.totals[0].metric_values[0]), 600);
    derived_state_is_right(&server, &key).await;
    server.stop().await;
    let store = ScyllaStore::connect(&options).await.unwrap();
    drop_keyspace(&store, &options.keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_going_away_is_unavailable_and_ingest_recovers_by_itself() {
    let (cql, _) = services();
    let proxy = std::sync::Arc::new(Proxy::start(cql.split(',').next().unwrap().to_owned()).await);
    let mut options = fresh_options("cqlfault");
    options.nodes = vec![proxy.addr.to_string()];
    options.request_timeout = std::time::Duration::from_secs(2);
    let server = TestServer::start_scale_out(&options).await;
    server.site("s", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let (cut, restore) = (proxy.clone(), proxy.clone());
    survive_fault(
        &server,
        &key,
        std::time::Duration::from_secs(120),
        || Box::pin(async move { cut.cut() }),
        || Box::pin(async move { restore.restore() }),
    )
    .await;
    derived_state_is_right(&server, &key).await;
    server.stop().await;
    proxy.restore();
    options.request_timeout = std::time::Duration::from_secs(10);
    let store = ScyllaStore::connect(&options).await.unwrap();
    drop_keyspace(&store, &options.keyspace).await;
}

/// Runs `cassandra-ctl ACTION` of `tests/services.sh` (stop: the process
/// ends; start: returns once the CQL port is open).
async fn cassandra_ctl(action: &'static str) {
    let ctl = std::env::var("TALLY_TEST_CASSANDRA_CTL").expect(
        "TALLY_TEST_CASSANDRA_CTL is not set: start the services with tests/services.sh, which exports it",
    );
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || std::process::Command::new(ctl).arg(action).status())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "cassandra-ctl {action}: {status}");
    eprintln!("fault: cassandra {action} took {:?}", started.elapsed());
}

/// Stops the Cassandra of `tests/services.sh` for real during ingest (its
/// process ends) and starts it again on the same data and port. Every other
/// scale-out test uses that Cassandra, so this one runs alone, after them:
/// `tests/run.sh` runs it with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the shared Cassandra: run alone, as tests/run.sh does after the other tests"]
async fn cassandra_stopped_and_restarted_during_ingest_loses_nothing() {
    let mut options = fresh_options("cqlrestart");
    options.request_timeout = std::time::Duration::from_secs(2);
    let server = TestServer::start_scale_out(&options).await;
    server.site("s", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    survive_fault(
        &server,
        &key,
        std::time::Duration::from_secs(300),
        || Box::pin(cassandra_ctl("stop")),
        || Box::pin(cassandra_ctl("start")),
    )
    .await;
    derived_state_is_right(&server, &key).await;
    server.stop().await;
    let store = ScyllaStore::connect(&options).await.unwrap();
    drop_keyspace(&store, &options.keyspace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookieless_visitor_ids_agree_across_instances() {
    // Without an anonymous id, the visitor id is a keyed hash of address and
    // user agent with the day's salt: every instance must use the same secret
    // and salt, whichever creates them first.
    let (a, b, ingest, _, options) = two_instances("salts").await;
    let now = now_micros();
    let browser = |id: u128, ip: &str| v1::Event {
        anonymous_id: String::new(),
        context: Some(v1::Context {
            ip: ip.into(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0".into(),
            ..Default::default()
        }),
        ..pageview(id, now - 60_000_000 + id as i64, "https://s.example/", "")
    };
    // First uses of the day's salt on both instances at once.
    let (on_a, on_b) = tokio::join!(
        track(
            &a,
            &ingest,
            vec![browser(1, "203.0.113.7"), browser(2, "203.0.113.8")]
        ),
        track(
            &b,
            &ingest,
            vec![browser(3, "203.0.113.7"), browser(4, "203.0.113.8")]
        ),
    );
    assert_eq!(on_a.accepted + on_b.accepted, 4);
    let events = export(&a).await;
    let visitor = |id: u128| {
        let id = uuid::Uuid::from_u128(id).to_string();
        events
            .iter()
            .find(|e| e.event_id == id)
            .unwrap()
            .visitor_id
            .clone()
    };
    assert_eq!(
        visitor(1),
        visitor(3),
        "the same browser is one visitor on both instances"
    );
    assert_eq!(visitor(2), visitor(4));
    assert_ne!(visitor(1), visitor(2), "another address is another visitor");
    stop_all(a, b, &options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_rollups_agree_with_raw_events() {
    let options = fresh_options("engine");
    let server = TestServer::start_scale_out(&options).await;
    crate::engine::rollups_agree_with_raw_events(&server).await;
    server.stop().await;
    let store = ScyllaStore::connect(&options).await.unwrap();
    drop_keyspace(&store, &options.keyspace).await;
}

/// Page views of `visitors` visitors, `per_visitor` each, spread over the
/// hours `hours_ago` (the visitor's index picks the hour and the page),
/// with ids from `first_id`.
fn spread(
    first_id: u128,
    visitors: usize,
    per_visitor: usize,
    hours_ago: &[i64],
    now: i64,
) -> Vec<v1::Event> {
    let hour = 3_600_000_000i64;
    let mut events = Vec::new();
    for v in 0..visitors {
        for k in 0..per_visitor {
            let id = first_id + (v * per_visitor + k) as u128;
            let at = now - hours_ago[v % hours_ago.len()] * hour - (k as i64) * 60_000_000;
            let page = format!("https://s.example/p{}", (v + k) % 4);
            events.push(pageview(id, at, &page, &format!("w{v}")));
        }
    }
    events
}

/// Page views and visitors by page of site "s", from `start` to today.
fn pages_request(start: &str, include_bots: bool) -> v1::RunReportRequest {
    v1::RunReportRequest {
        site_id: "s".into(),
        metrics: vec![v1::Metric::Pageviews as i32, v1::Metric::Visitors as i32],
        dimensions: vec![standard(v1::Dimension::Page)],
        date_ranges: vec![v1::DateRange {
            start_date: start.into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        include_bots,
        ..Default::default()
    }
}

/// The top pages of the last 7 days (page, page views, visitors), and the
/// source of the answer.
async fn top_pages(server: &TestServer, include_bots: bool) -> (Vec<(String, i64, i64)>, v1::DataSource) {
    let answer = report(server, pages_request("6daysAgo", include_bots)).await;
    let mut rows = two_int_rows(&answer.rows);
    rows.sort();
    (rows, answer.metadata.unwrap().data_source())
}

/// What `top_pages` should say about `events`, counted here.
fn expected_pages(events: &[v1::Event]) -> Vec<(String, i64, i64)> {
    let mut pages: std::collections::BTreeMap<String, (i64, std::collections::HashSet<String>)> =
        Default::default();
    for e in events {
        let path = e.url.trim_start_matches("https://s.example").to_owned();
        let entry = pages.entry(path).or_default();
        entry.0 += 1;
        entry.1.insert(e.anonymous_id.clone());
    }
    pages
        .into_iter()
        .map(|(p, (n, v))| (p, n, v.len() as i64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_count_every_event_once_when_two_instances_ingest() {
    let (a, b, ingest, _, options) = two_instances("rollups").await;
    let now = now_micros();
    // Visitors over this hour, the last ones, and two days ago; half of the
    // batches go to each instance.
    let first = spread(1, 60, 3, &[0, 1, 2, 50], now);
    for (i, batch) in first.chunks(40).enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            track(server, &ingest, batch.to_vec()).await.accepted as usize,
            batch.len()
        );
    }
    let (rows, source) = top_pages(&b, false).await;
    assert_eq!(source, v1::DataSource::Rollups);
    assert_eq!(rows, expected_pages(&first));

    // A third instance rolls up the dirty hours, as each instance's worker
    // does; rows of those hours are now stored for every instance.
    let store = Arc::new(ScyllaStore::connect(&options).await.unwrap());
    let worker = tally_server::rollup::Rollups::new(false);
    let rolled = worker.shared().settle(store.as_ref()).await.unwrap();
    let hours: std::collections::HashSet<i64> = first
        .iter()
        .map(|e| {
            let t = e.timestamp.as_ref().unwrap();
            (t.seconds * 1_000_000).div_euclid(3_600_000_000)
        })
        .collect();
    // Some hours may already have been rolled up by the instances' workers.
    assert!(rolled.hours as usize <= hours.len(), "{rolled:?}");
    let stored: i64 = store
        .session()
        .query_unpaged(
            format!(
                "SELECT COUNT(*) FROM {}.rollup_hours WHERE site = 's'",
                options.keyspace
            ),
            (),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .first_row::<(i64,)>()
        .unwrap()
        .0;
    assert_eq!(stored as usize, hours.len());

    // More events in the same (rolled-up) hours and a late one in an old
    // hour, on both instances, some of them resent to the other: each
    // report right after counts every acknowledged event once.
    let second = spread(10_000, 30, 2, &[0, 2, 50, 70], now);
    let mut sent = first.clone();
    for (i, batch) in second.chunks(15).enumerate() {
        let (server, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert_eq!(
            track(server, &ingest, batch.to_vec()).await.accepted as usize,
            batch.len()
        );
        assert_eq!(
            track(other, &ingest, batch.to_vec()).await.duplicates as usize,
            batch.len()
        );
        sent.extend_from_slice(batch);
        for reader in [&a, &b] {
            let (rows, source) = top_pages(reader, false).await;
            assert_eq!(source, v1::DataSource::Rollups);
            assert_eq!(rows, expected_pages(&sent), "after batch {i}");
        }
    }
    let (raw, source) = top_pages(&a, true).await;
    assert_eq!(source, v1::DataSource::RawEvents);
    assert_eq!(raw, expected_pages(&sent));
    let rolled = worker.shared().settle(store.as_ref()).await.unwrap();
    assert!(rolled.hours > 0);
    let (rows, _) = top_pages(&a, false).await;
    assert_eq!(rows, expected_pages(&sent));
    stop_all(a, b, &options).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_counters_live_in_redis_and_every_instance_reads_them() {
    let (a, b, ingest, query, options) = two_instances("counters").await;
    let minute = 60_000_000i64;
    let now = now_micros();
    // 3 minutes ago .. now: minute m gets m + 4 page views of visitors m, m + 1, ..
    let mut events = Vec::new();
    let mut expected: std::collections::BTreeMap<i64, (i64, std::collections::HashSet<String>)> =
        Default::default();
    for m in 0..4i64 {
        let at = now - m * minute;
        for k in 0..(m + 4) {
            let visitor = format!("c{}", m + k % 3);
            events.push(pageview(
                5_000 + (m * 10 + k) as u128,
                at - k * 1_000_000,
                "https://s.example/live",
                &visitor,
            ));
            let entry = expected
                .entry((at - k * 1_000_000).div_euclid(minute))
                .or_default();
            entry.0 += 1;
            entry.1.insert(visitor);
        }
    }
    // Split between the instances.
    let half = events.len() / 2;
    assert_eq!(
        track(&a, &ingest, events[..half].to_vec()).await.accepted as usize,
        half
    );
    assert_eq!(
        track(&b, &ingest, events[half..].to_vec()).await.accepted as usize,
        events.len() - half
    );
    // The counters in Redis, read directly.
    let client = redis::Client::open(options.redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    for (m, (pageviews, visitors)) in &expected {
        let key = format!("{}rt:s:{m}", options.redis_prefix);
        let stored: Option<i64> = redis::cmd("HGET")
            .arg(&key)
            .arg("pv")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(stored, Some(*pageviews), "minute {m}");
        let distinct: i64 = redis::cmd("PFCOUNT")
            .arg(format!("{key}:p"))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(distinct, visitors.len() as i64, "minute {m}");
    }
    // Every instance reports them, per minute.
    for server in [&a, &b] {
        let live = realtime(server, &query, false).await;
        let by_minute: std::collections::BTreeMap<i64, (i64, i64)> = live
            .minutes
            .iter()
            .filter(|c| c.pageviews > 0)
            .map(|c| (c.minute.as_ref().unwrap().seconds / 60, (c.pageviews, c.visitors)))
            .collect();
        let want: std::collections::BTreeMap<i64, (i64, i64)> = expected
            .iter()
            .map(|(m, (n, v))| (*m, (*n, v.len() as i64)))
            .collect();
        assert_eq!(by_minute, want);
        let all: std::collections::HashSet<&String> = expected.values().flat_map(|(_, v)| v).collect();
        assert_eq!(live.active_visitors, all.len() as i64);
    }
    stop_all(a, b, &options).await;
}
