//! Soak: the optimised `tally` under sustained mixed load for a bounded time:
//! ingest at a fixed rate (4 clients, batches of 50, each batch resent with
//! the same ids until acknowledged), a report every 500 ms, and two
//! `WatchRealtime` streams. Checks, while it runs and at the end:
//!
//! - memory stays flat: RSS under 300 MiB, and RSS growth over the second
//!   half at most 256 bytes per event ingested then plus 32 MiB (what stored
//!   events legitimately keep in memory: dedup ids, the write buffer);
//! - latency stays within targets: report p99 <= 50 ms (brief: rollup-served
//!   reports), batch acknowledgement p99 < 1 s, and no realtime stream goes
//!   silent for more than 1 s while events flow (snapshots are pushed every
//!   250 ms when something changes);
//! - the final counts equal what was sent: page views per page exactly,
//!   visitors per page exactly (or within the sketch's error when the answer
//!   says it is estimated), and every visitor active in the realtime view
//!   (within the sketch's error beyond 512 a minute).
//!
//! Its own test binary. `TALLY_SOAK_SECS` sets the length (default 600 s:
//! the full form; `tests/run.sh` runs a shortened one), `TALLY_SOAK_RATE` the
//! ingest rate (default 2,000 events/s):
//!
//! ```sh
//! cargo test -p tally-tests --test soak -- --nocapture
//! ```

#[allow(dead_code)]
mod process;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_proto::v1;
use tokio::time::MissedTickBehavior;

use process::{ADMIN_KEY, Tally, authed, now_timestamp, release_binary, site_with_ingest_key};

const PAGES: u64 = 20;
const VISITORS: u64 = 5_000;
const CLIENTS: u64 = 4;
const BATCH: u64 = 50;
/// Five standard errors of the rollups' HyperLogLog (see the correctness suite).
const ESTIMATE_TOLERANCE: f64 = 5.0 * 1.04 / 64.0;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len().max(1));
    samples.get(rank - 1).copied().unwrap_or_default()
}

/// What the ingest clients had acknowledged: page views per page, visitors per page.
#[derive(Default)]
struct Sent {
    views: HashMap<u64, u64>,
    visitors: HashMap<u64, HashSet<u64>>,
    accepted: u64,
    resent: u64,
    ack_latency: Vec<Duration>,
}

fn top_pages_today() -> v1::RunReportRequest {
    v1::RunReportRequest {
        site_id: "soak".into(),
        metrics: vec![v1::Metric::Pageviews as i32, v1::Metric::Visitors as i32],
        dimensions: vec![v1::DimensionSpec {
            kind: Some(v1::dimension_spec::Kind::Standard(v1::Dimension::Page as i32)),
        }],
        // Yesterday too, in case the run crosses midnight (UTC, the site's zone).
        date_ranges: vec![v1::DateRange {
            start_date: "yesterday".into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        limit: 100,
        skip_cache: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_mixed_load_keeps_memory_flat_latency_in_bounds_and_counts_exact() {
    let seconds = setting("TALLY_SOAK_SECS", 600);
    let rate = setting("TALLY_SOAK_RATE", 2_000).max(CLIENTS * BATCH);
    let binary = release_binary();
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::start_with(&binary, &dir.path().join("data"), &[]).await;
    let pid = tally.child.id();
    let key = site_with_ingest_key(tally.channel().await, "soak").await;
    eprintln!(
        "soak: {seconds} s at {rate} events/s, {CLIENTS} clients, reports every 500 ms, 2 realtime streams"
    );

    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(Mutex::new(Sent::default()));
    let accepted = Arc::new(AtomicU64::new(0));

    // Ingest: each client sends a batch every CLIENTS * BATCH / rate seconds.
    let period = Duration::from_secs_f64((CLIENTS * BATCH) as f64 / rate as f64);
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (channel, key, running, sent, accepted) = (
            tally.channel().await,
            key.clone(),
            running.clone(),
            sent.clone(),
            accepted.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut ingest = v1::ingest_service_client::IngestServiceClient::new(channel);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                let events: Vec<(u64, u64, v1::Event)> = (0..BATCH)
                    .map(|i| {
                        let seq = (n * BATCH + i) * CLIENTS + client;
                        let (page, visitor) = (seq % PAGES, seq % VISITORS);
                        let event = v1::Event {
                            event_id: uuid::Uuid::from_u128(0x50a6_u128 << 112 | u128::from(seq)).to_string(),
                            timestamp: Some(now_timestamp()),
                            r#type: v1::EventType::Pageview as i32,
                            url: format!("https://soak.example/page/{page}"),
                            anonymous_id: format!("visitor-{visitor}"),
                            ..Default::default()
                        };
                        (page, visitor, event)
                    })
                    .collect();
                n += 1;
                let request = v1::TrackRequest {
                    site_id: "soak".into(),
                    events: events.iter().map(|(_, _, e)| e.clone()).collect(),
                };
                let started = Instant::now();
                let mut attempts = 0;
                let response = loop {
                    attempts += 1;
                    match ingest.track(authed(&key, request.clone())).await {
                        Ok(response) => break response.into_inner(),
                        Err(status) => {
                            assert!(attempts < 50, "a batch failed 50 times: {status:?}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                let took = started.elapsed();
                let mut sent = sent.lock().unwrap();
                sent.ack_latency.push(took);
                sent.resent += attempts - 1;
                for result in &response.results {
                    let (page, visitor, _) = &events[result.index as usize];
                    match result.verdict() {
                        v1::Verdict::Accepted => {
                            *sent.views.entry(*page).or_default() += 1;
                            sent.visitors.entry(*page).or_default().insert(*visitor);
                            sent.accepted += 1;
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        // A resent batch whose first answer was lost: stored once already.
                        v1::Verdict::Duplicate if attempts > 1 => {}
                        other => panic!("event {} answered {other:?}", result.index),
                    }
                }
            }
        }));
    }

    // Reports every 500 ms.
    let reports = {
        let (channel, running) = (tally.channel().await, running.clone());
        tokio::spawn(async move {
            let mut query = v1::query_service_client::QueryServiceClient::new(channel);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut latencies = Vec::new();
            while running.load(Ordering::Relaxed) {
                tick.tick().await;
                let started = Instant::now();
                let response = query.run_report(authed(ADMIN_KEY, top_pages_today())).await;
                latencies.push(started.elapsed());
                response.unwrap();
            }
            latencies
        })
    };

    // Two realtime streams: the longest silence while events flow.
    let mut watches = Vec::new();
    for _ in 0..2 {
        let (channel, running) = (tally.channel().await, running.clone());
        watches.push(tokio::spawn(async move {
            let mut query = v1::query_service_client::QueryServiceClient::new(channel);
            let request = v1::WatchRealtimeRequest {
                site_id: "soak".into(),
                top_limit: 100,
                ..Default::default()
            };
            let mut stream = query
                .watch_realtime(authed(ADMIN_KEY, request))
                .await
                .unwrap()
                .into_inner();
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            let mut snapshot = None;
            while running.load(Ordering::Relaxed) {
                let update = tokio::time::timeout(Duration::from_secs(5), stream.message())
                    .await
                    .expect("a realtime stream went silent for 5 s")
                    .unwrap()
                    .expect("the realtime stream stays open");
                if let Some(v1::realtime_update::Update::Snapshot(s)) = update.update {
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                    snapshot = Some(s);
                }
            }
            (longest, snapshot)
        }));
    }

    // Memory: (seconds, RSS MiB, events accepted) every second.
    let started = Instant::now();
    let mut memory = Vec::new();
    let mut next_report = 60;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = started.elapsed().as_secs();
        memory.push((t, rss_mib(pid), accepted.load(Ordering::Relaxed)));
        if t >= next_report {
            next_report += 60;
            eprintln!(
                "soak: {t} s, {} events accepted, RSS {:.0} MiB",
                accepted.load(Ordering::Relaxed),
                rss_mib(pid)
            );
        }
    }
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let mut report_latency = reports.await.unwrap();
    let mut realtime = Vec::new();
    for watch in watches {
        realtime.push(watch.await.unwrap());
    }
    let sent = Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap();
    let mut ack_latency = sent.ack_latency.clone();

    // The figures.
    let achieved = sent.accepted as f64 / started.elapsed().as_secs_f64();
    let (ack50, ack99) = (quantile(&mut ack_latency, 0.5), quantile(&mut ack_latency, 0.99));
    let (rep50, rep99) = (
        quantile(&mut report_latency, 0.5),
        quantile(&mut report_latency, 0.99),
    );
    let silence = realtime.iter().map(|(l, _)| *l).max().unwrap();
    let half = memory.len() / 2;
    let (_, rss_mid, events_mid) = memory[half];
    let (_, rss_end, events_end) = *memory.last().unwrap();
    let rss_max = memory.iter().map(|m| m.1).fold(0.0, f64::max);
    eprintln!(
        "soak: {} events accepted ({achieved:.0}/s), {} batches resent; ack p50 {ack50:?} p99 {ack99:?}; \
         {} reports p50 {rep50:?} p99 {rep99:?}; longest realtime silence {silence:?}; \
         RSS {:.0} MiB at 10 s, {rss_mid:.0} MiB at half time, {rss_end:.0} MiB at the end (max {rss_max:.0})",
        sent.accepted,
        sent.resent,
        report_latency.len(),
        memory.get(9).map_or(f64::NAN, |m| m.1),
    );

    // Memory stays flat.
    assert!(rss_max < 300.0, "RSS reached {rss_max:.0} MiB (target < 300 MiB)");
    let allowed = 32.0 + 256.0 * (events_end - events_mid) as f64 / 1048576.0;
    assert!(
        rss_end - rss_mid <= allowed,
        "RSS grew {:.1} MiB over the second half, more than the {allowed:.1} MiB its {} events may keep",
        rss_end - rss_mid,
        events_end - events_mid
    );
    // Latency stays within targets.
    assert!(
        rep99 <= Duration::from_millis(50),
        "report p99 {rep99:?} (target 50 ms)"
    );
    assert!(ack99 < Duration::from_secs(1), "acknowledgement p99 {ack99:?}");
    assert!(
        silence <= Duration::from_secs(1),
        "a realtime stream was silent for {silence:?}"
    );
    assert!(
        achieved >= 0.9 * rate as f64,
        "ingest kept up with {achieved:.0} of {rate} events/s"
    );

    // The final counts equal what was sent.
    let mut query = v1::query_service_client::QueryServiceClient::new(tally.channel().await);
    let response = query
        .run_report(authed(ADMIN_KEY, top_pages_today()))
        .await
        .unwrap()
        .into_inner();
    let exact = response.metadata.as_ref().unwrap().exact;
    assert_eq!(response.rows.len() as u64, PAGES);
    for row in &response.rows {
        let page: u64 = row.dimension_values[0]
            .strip_prefix("/page/")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected page {:?}", row.dimension_values));
        let int = |i: usize| match row.metric_values[i].value {
            Some(v1::metric_value::Value::IntValue(n)) => n as u64,
            ref other => panic!("not a count: {other:?}"),
        };
        assert_eq!(int(0), sent.views[&page], "page views of /page/{page}");
        let visitors = sent.visitors[&page].len() as f64;
        let reported = int(1) as f64;
        if exact {
            assert_eq!(reported, visitors, "visitors of /page/{page}");
        } else {
            assert!(
                (reported - visitors).abs() <= ESTIMATE_TOLERANCE * visitors,
                "visitors of /page/{page}: {reported} estimated, {visitors} sent"
            );
        }
    }
    // Every visitor was active in the last 5 minutes (each comes back every
    // VISITORS / rate seconds), and the streams saw them all: exactly up to
    // 512 a minute, then within the realtime sketch's error (the same
    // 4 KiB HyperLogLog).
    let expected = sent.visitors.values().flatten().collect::<HashSet<_>>().len() as f64;
    for (_, snapshot) in &realtime {
        let active = snapshot.as_ref().expect("a snapshot").active_visitors as f64;
        assert!(
            (active - expected).abs() <= ESTIMATE_TOLERANCE * expected,
            "active visitors in the realtime view: {active}, {expected} sent"
        );
    }
    drop(tally);
}
