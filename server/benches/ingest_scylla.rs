//! Ingest throughput of `tally` on the scale-out backend (Cassandra or
//! ScyllaDB, and Redis) next to the raw write rate of the same rows written by
//! this benchmark straight to Cassandra, in one process and one run.
//!
//! Run with the test services (`bash tests/services.sh` prints the exports):
//! `TALLY_TEST_CQL=127.0.0.1:PORT TALLY_TEST_REDIS=redis://127.0.0.1:PORT/
//! cargo bench -p tally-server --bench ingest_scylla`. `BENCH_EVENTS=N` sets the
//! events (default 200,000), `BENCH_CLIENTS=N` the concurrent client tasks
//! (default 32), each waiting for its answer before it sends again.
//!
//! End to end, `tally` authenticates, validates, enriches (user agent, bot,
//! source, visitor id), forms visits (Redis: one read and one compare-and-set
//! script per batch), claims the event ids (one Redis script per batch),
//! writes the events to Cassandra (unlogged batches of one partition, in
//! parallel), marks the ids stored and their hours changed for the shared
//! rollups and report cache (one Redis pipeline), adds them to the realtime
//! per-minute counters and HyperLogLogs and publishes them to the other
//! instances (one Redis pipeline), and answers. The rollup worker runs as
//! in production (it leaves the running hour alone). The raw case writes the rows that `tally` stored (read back from
//! it) to a second keyspace with the same statement, batches and concurrency,
//! and nothing else: the ceiling that Cassandra sets on this machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use prost::Message;
use scylla::statement::batch::{Batch, BatchType};
use tally_proto::v1::{self, ingest_service_client::IngestServiceClient};
use tally_server::config::Config;
use tally_server::domain::{SiteId, StoredEvent};
use tally_server::realtime::SystemClock;
use tally_server::realtime::redis::RedisRealtime;
use tally_server::storage::EventStore;
use tally_server::storage::scylla::{ScyllaOptions, ScyllaStore};

mod figures;

const ADMIN_KEY: &str = "bench-operator-key-0123456789";

/// A row of `events`: bucket, timestamp, id, body.
type RawRow = (i64, i64, Vec<u8>, Vec<u8>);

async fn connect(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// The same allocator as the `tally` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHANNELS: usize = 4;
const BATCH: usize = 100;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the services with `bash tests/services.sh` and export what it prints"
        )
    })
}

fn options(keyspace: &str) -> ScyllaOptions {
    ScyllaOptions {
        nodes: env("TALLY_TEST_CQL").split(',').map(str::to_owned).collect(),
        keyspace: keyspace.into(),
        redis_url: env("TALLY_TEST_REDIS"),
        redis_prefix: format!("{keyspace}:"),
        ..ScyllaOptions::default()
    }
}

/// Starts `tally` on the scale-out store with site "bench"; returns its
/// address, an ingest key and the store.
async fn start_tally(options: &ScyllaOptions) -> (SocketAddr, String, Arc<ScyllaStore>) {
    let store = Arc::new(ScyllaStore::connect(options).await.unwrap());
    let realtime = RedisRealtime::connect(&options.redis_url, &options.redis_prefix, Arc::new(SystemClock))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        admin_key: Some(ADMIN_KEY.into()),
        ..Config::default()
    };
    let served = store.clone();
    tokio::spawn(async move {
        tally_server::server::run_with(
            listener,
            &config,
            served,
            Arc::new(realtime),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    let mut admin = v1::admin_service_client::AdminServiceClient::new(connect(addr).await);
    let site = v1::Site {
        site_id: "bench".into(),
        domain: "bench.example".into(),
        ..Default::default()
    };
    admin
        .create_site(authed(ADMIN_KEY, v1::CreateSiteRequest { site: Some(site) }))
        .await
        .unwrap();
    let key = v1::CreateApiKeyRequest {
        kind: v1::KeyKind::Ingest as i32,
        site_ids: vec!["bench".into()],
        name: "bench".into(),
        ..Default::default()
    };
    let secret = admin
        .create_api_key(authed(ADMIN_KEY, key))
        .await
        .unwrap()
        .into_inner()
        .secret;
    (addr, secret, store)
}

/// `count` browser page views forwarded by a backend, in batches of 100.
fn batches(count: usize) -> Vec<v1::TrackRequest> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let paths = ["/", "/pricing", "/docs", "/blog/launch", "/about"];
    let events: Vec<v1::Event> = (0..count)
        .map(|i| v1::Event {
            event_id: uuid::Uuid::now_v7().to_string(),
            timestamp: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: (i % 1_000_000) as i32 * 1000,
            }),
            r#type: v1::EventType::Pageview as i32,
            url: format!("https://bench.example{}", paths[i % paths.len()]),
            referrer: if i % 3 == 0 {
                "https://www.google.com/".into()
            } else {
                String::new()
            },
            context: Some(v1::Context {
                user_agent: format!(
                    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.0.0 Safari/537.36",
                    100 + i % 40
                ),
                ip: format!("10.{}.{}.{}", i % 7, (i / 7) % 250, i % 250),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    events
        .chunks(BATCH)
        .map(|c| v1::TrackRequest {
            site_id: "bench".into(),
            events: c.to_vec(),
        })
        .collect()
}

/// Sends every request from `clients` tasks, resending after `UNAVAILABLE`
/// as the SDKs do; returns events per second and the number of resends.
async fn drive(addr: SocketAddr, key: &str, requests: Vec<v1::TrackRequest>, clients: usize) -> (f64, u64) {
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(connect(addr).await);
    }
    let events: usize = requests.iter().map(|r| r.events.len()).sum();
    let queue = Arc::new(std::sync::Mutex::new(requests));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut client = IngestServiceClient::new(channels[i % CHANNELS].clone());
        let key = key.to_owned();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut resent) = (0i64, 0u64);
            loop {
                let Some(request) = queue.lock().unwrap().pop() else {
                    return (accepted, resent);
                };
                loop {
                    match client.track(authed(&key, request.clone())).await {
                        Ok(answer) => {
                            let answer = answer.into_inner();
                            accepted += i64::from(answer.accepted + answer.duplicates);
                            break;
                        }
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            resent += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(status) => panic!("track failed: {status:?}"),
                    }
                }
            }
        }));
    }
    let (mut accepted, mut resent) = (0, 0);
    for task in tasks {
        let (a, r) = task.await.unwrap();
        accepted += a;
        resent += r;
    }
    let elapsed = started.elapsed();
    assert_eq!(accepted as usize, events, "every event stored");
    (events as f64 / elapsed.as_secs_f64(), resent)
}

/// Writes `events` to the `events` table of `raw`'s keyspace with the
/// statement, batches and concurrency of the store; returns rows per second.
async fn write_raw(raw: &ScyllaStore, keyspace: &str, events: &[StoredEvent], clients: usize) -> f64 {
    let session = raw.session();
    let insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.events (site, bucket, ts, id, body) VALUES (?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await
        .unwrap();
    // Rows as the store makes them: the body without id and timestamp.
    let rows: Vec<RawRow> = events
        .iter()
        .map(|e| {
            let body = StoredEvent {
                event_id: Vec::new(),
                ts_micros: 0,
                ..e.clone()
            }
            .encode_to_vec();
            (
                e.ts_micros.div_euclid(3_600_000_000),
                e.ts_micros,
                e.event_id.clone(),
                body,
            )
        })
        .collect();
    let mut by_bucket: std::collections::BTreeMap<i64, Vec<&RawRow>> = Default::default();
    for row in &rows {
        by_bucket.entry(row.0).or_default().push(row);
    }
    let chunks: Vec<Vec<&RawRow>> = by_bucket
        .values()
        .flat_map(|rows| rows.chunks(BATCH).map(<[_]>::to_vec))
        .collect();
    let started = Instant::now();
    futures::stream::iter(chunks)
        .map(|chunk| {
            let insert = insert.clone();
            async move {
                let mut batch = Batch::new(BatchType::Unlogged);
                let values: Vec<_> = chunk
                    .iter()
                    .map(|(bucket, ts, id, body)| {
                        batch.append_statement(insert.clone());
                        (
                            "bench",
                            *bucket,
                            *ts,
                            id.as_slice(),
                            body.as_slice(),
                            36_806_400i32,
                        )
                    })
                    .collect();
                session.batch(&batch, values).await.map(|_| ())
            }
        })
        .buffer_unordered(clients)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let total = setting("BENCH_EVENTS", 200_000).max(BATCH);
    let clients = setting("BENCH_CLIENTS", 32).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let run = std::process::id();
        let tally_keyspace = format!("bench_tally_{run}");
        let raw_keyspace = format!("bench_raw_{run}");
        let (tally, key, store) = start_tally(&options(&tally_keyspace)).await;
        let raw = ScyllaStore::connect(&options(&raw_keyspace)).await.unwrap();
        println!("scale-out ingest benchmark: {total} events in batches of {BATCH}, {clients} client tasks");
        // Warm up (connections, prepared statements, JIT), then measure.
        drive(tally, &key, batches(total / 10), clients).await;
        let from = tally_server::domain::now_micros() - 3_600_000_000;
        let (ours, resent) = drive(tally, &key, batches(total), clients).await;
        let site = SiteId::parse("bench").unwrap();
        let stored: Vec<StoredEvent> = store
            .scan(&site, from, i64::MAX)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .concat();
        let sample: Vec<StoredEvent> = stored.into_iter().take(total).collect();
        let direct = write_raw(&raw, &raw_keyspace, &sample, clients).await;
        println!("{:<44} {:>12}", "case", "events/s");
        println!(
            "{:<44} {:>12.0}",
            "tally end to end (Track, batches of 100)", ours
        );
        println!(
            "{:<44} {:>12.0}",
            format!("raw Cassandra writes of the same {} rows", sample.len()),
            direct
        );
        println!("tally / raw: {:.1}%", 100.0 * ours / direct);
        figures::record("scylla.tally_eps", ours);
        figures::record("scylla.raw_eps", direct);
        println!("requests resent after UNAVAILABLE: {resent}");
        for keyspace in [&tally_keyspace, &raw_keyspace] {
            // Schema changes wait for the node to settle: more than a write's timeout.
            let mut drop = scylla::statement::Statement::new(format!("DROP KEYSPACE IF EXISTS {keyspace}"));
            drop.set_request_timeout(Some(std::time::Duration::from_secs(60)));
            if let Err(error) = raw.session().query_unpaged(drop, ()).await {
                eprintln!("keyspace {keyspace} not dropped: {error}");
            }
        }
    });
}
