//! Realtime latency: from the acknowledgment of an event by `Track` to the
//! first `WatchRealtime` snapshot that shows it, under a steady ingest load,
//! next to the same measurement without load, in one process and one run.
//!
//! Run: `cargo bench -p tally-server --bench realtime`. `BENCH_SECONDS=N` sets
//! each phase's length (default 20), `BENCH_RATE=N` the load in events per
//! second (default 10,000, in batches of 100 from 4 tasks), `BENCH_WATCHERS=N`
//! the open watches (default 4).
//!
//! A probe task sends one page view every 100 ms with a path of its own; the
//! paths count down, so that among the one-visitor pages of the "top pages"
//! list (100 entries) the newest probe comes first. Each watcher notes when a
//! probe path first appears in a snapshot; the latency is that moment minus
//! the moment the probe's `Track` call returned (a snapshot that arrives
//! before the acknowledgment counts as 0). The load is browser page views of
//! 50 paths from 20,000 visitors, every enrichment stage running, stored
//! durably (group commit) like any other ingest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tally_proto::v1::{
    self, ingest_service_client::IngestServiceClient, query_service_client::QueryServiceClient,
    realtime_update::Update,
};
use tonic::transport::Channel;

mod figures;
mod support;

use support::{ADMIN_KEY, authed, connect, setting, start_tally};

// The same allocator as the `tally` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 100;
const LOAD_TASKS: usize = 4;
const PROBE_EVERY: Duration = Duration::from_millis(100);
const PROBE_TOP: u64 = 9_999_999_999;

fn page_view(path: String, visitor: usize) -> v1::Event {
    v1::Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        timestamp: Some(tally_server::convert::micros_to_timestamp(
            tally_server::domain::now_micros(),
        )),
        r#type: v1::EventType::Pageview as i32,
        url: format!("https://bench.example{path}"),
        context: Some(v1::Context {
            user_agent: format!(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.0.0 Safari/537.36",
                100 + visitor % 30
            ),
            ip: format!("10.{}.{}.{}", visitor % 7, (visitor / 7) % 250, visitor % 250),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sends `rate` events a second in batches until `until`; returns how many it sent.
async fn load(channel: Channel, key: String, rate: usize, until: Instant, task: usize) -> usize {
    if rate == 0 {
        return 0;
    }
    let mut client = IngestServiceClient::new(channel);
    let per_task = (rate / LOAD_TASKS).max(BATCH);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(BATCH as f64 / per_task as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = task;
    let mut sent = 0;
    while Instant::now() < until {
        tick.tick().await;
        let events = (0..BATCH)
            .map(|_| {
                n += LOAD_TASKS;
                page_view(format!("/page/{}", n % 50), (n * 7919) % 20_000)
            })
            .collect();
        let request = v1::TrackRequest {
            site_id: "bench".into(),
            events,
        };
        client.track(authed(&key, request)).await.unwrap();
        sent += BATCH;
    }
    sent
}

/// Sends one probe every [`PROBE_EVERY`] until `until`; returns when each was acknowledged.
async fn probe(channel: Channel, key: String, until: Instant, first: u64) -> HashMap<u64, Instant> {
    let mut client = IngestServiceClient::new(channel);
    let mut acked = HashMap::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut n = first;
    while Instant::now() < until {
        tick.tick().await;
        let request = v1::TrackRequest {
            site_id: "bench".into(),
            events: vec![page_view(probe_path(n), 1_000_000 + n as usize)],
        };
        let reply = client.track(authed(&key, request)).await.unwrap().into_inner();
        assert_eq!(reply.accepted, 1);
        acked.insert(n, Instant::now());
        n += 1;
    }
    acked
}

fn probe_path(n: u64) -> String {
    format!("/probe/{:010}", PROBE_TOP - n)
}

/// Watches until `until`; returns when each probe was first seen and the snapshot count.
async fn watch(channel: Channel, until: Instant) -> (HashMap<u64, Instant>, usize) {
    let mut client = QueryServiceClient::new(channel);
    let request = v1::WatchRealtimeRequest {
        site_id: "bench".into(),
        top_limit: 100,
        ..Default::default()
    };
    let mut stream = client
        .watch_realtime(authed(ADMIN_KEY, request))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashMap::new();
    let mut snapshots = 0;
    while let Ok(Ok(Some(update))) = tokio::time::timeout_at(until.into(), stream.message()).await {
        let Some(Update::Snapshot(report)) = update.update else {
            continue;
        };
        let now = Instant::now();
        snapshots += 1;
        for page in &report.top_pages {
            let Some(n) = page
                .value
                .strip_prefix("/probe/")
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            seen.entry(PROBE_TOP - n).or_insert(now);
        }
    }
    (seen, snapshots)
}

struct Phase {
    latencies: Vec<Duration>,
    probes: usize,
    missed: usize,
    snapshots_per_second: f64,
    events_per_second: f64,
}

async fn phase(addr: SocketAddr, key: &str, rate: usize, watchers: usize, seconds: u64, first: u64) -> Phase {
    let channel = connect(addr).await;
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let watches: Vec<_> = (0..watchers)
        .map(|_| tokio::spawn(watch(channel.clone(), until)))
        .collect();
    let loads: Vec<_> = (0..LOAD_TASKS)
        .map(|task| tokio::spawn(load(channel.clone(), key.to_owned(), rate, until, task)))
        .collect();
    // Probes stop a second early, so that the last ones have time to show.
    let acked = probe(
        channel.clone(),
        key.to_owned(),
        until - Duration::from_secs(1),
        first,
    )
    .await;
    let mut sent = 0;
    for task in loads {
        sent += task.await.unwrap();
    }
    let load_elapsed = started.elapsed();
    let mut latencies = Vec::new();
    let mut missed = 0;
    let mut snapshots = 0;
    for task in watches {
        let (seen, count) = task.await.unwrap();
        snapshots += count;
        for (n, ack) in &acked {
            match seen.get(n) {
                Some(at) => latencies.push(at.saturating_duration_since(*ack)),
                None => missed += 1,
            }
        }
    }
    latencies.sort();
    Phase {
        latencies,
        probes: acked.len(),
        missed,
        snapshots_per_second: snapshots as f64 / watchers as f64 / seconds as f64,
        events_per_second: sent as f64 / load_elapsed.as_secs_f64(),
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn print(name: &str, key: &str, p: &Phase) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    figures::record(&format!("realtime.{key}.events_per_second"), p.events_per_second);
    figures::record(
        &format!("realtime.{key}.p50_ms"),
        ms(quantile(&p.latencies, 0.50)),
    );
    figures::record(
        &format!("realtime.{key}.p99_ms"),
        ms(quantile(&p.latencies, 0.99)),
    );
    figures::record(&format!("realtime.{key}.samples"), p.latencies.len() as f64);
    println!(
        "{name:<14} load {:>6.0} events/s  samples {:>5} ({} probes, {} missed)  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  snapshots/s per watch {:.1}",
        p.events_per_second,
        p.latencies.len(),
        p.probes,
        p.missed,
        ms(quantile(&p.latencies, 0.50)),
        ms(quantile(&p.latencies, 0.99)),
        ms(p.latencies.last().copied().unwrap_or_default()),
        p.snapshots_per_second,
    );
}

fn main() {
    let seconds = setting("BENCH_SECONDS", 20) as u64;
    let rate = setting("BENCH_RATE", 10_000);
    let watchers = setting("BENCH_WATCHERS", 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (addr, key, _store) = start_tally(dir.path()).await;
        println!("realtime latency, Track acknowledged -> WatchRealtime snapshot, {watchers} watches, {seconds} s per phase");
        let idle = phase(addr, &key, 0, watchers, seconds, 0).await;
        print("no load", "idle", &idle);
        let loaded = phase(addr, &key, rate, watchers, seconds, 1_000_000).await;
        print("steady load", "load", &loaded);
    });
}
