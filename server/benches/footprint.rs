//! Footprint of a `tally serve` process holding a generated data set: bytes
//! per event on disk, start-up time, and resident memory after start-up and
//! after reports (brief: <= 100 bytes per raw event, RSS < 300 MB with 10M
//! events stored).
//!
//! Run: `cargo bench -p tally-server --bench footprint`. `BENCH_EVENTS=N` sets
//! the data set size (default 10,000,000). The bench starts the `tally`
//! binary of this build as its own process on a fresh data directory, sends
//! `tally generate`'s events (seed 1, 28 days) to it, waits until the
//! background compactor has moved every sealed hour into columnar segments
//! (as on a server that has run a while), stops it with SIGTERM,
//! measures the directory, starts it again on the same directory and reads
//! `VmRSS` / `VmHWM` of the server process from `/proc`: after start-up (the
//! rollups rebuilt from the raw events), after a 30-day top-pages report
//! and an ad-hoc report on a custom property, and once more after 45 s idle,
//! when the allocator has handed back the start-up's scratch memory. So the
//! figures are the server's alone, not a benchmark client's.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_proto::v1::{self, Dimension as D, Metric as M};

mod figures;
mod support;

use support::{ADMIN_KEY, authed, setting};

const TALLY: &str = env!("CARGO_BIN_EXE_tally");
/// Idle seconds after the reports before the settled RSS is read.
const SETTLE_SECONDS: u64 = 45;

/// A free loopback address.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `tally serve` on `data`; returns once it answers. The caller stops it ([`stop`]).
#[allow(clippy::zombie_processes)]
async fn serve(data: &Path, geo: &Path, addr: &str, log: &Path) -> (Child, Duration) {
    let started = Instant::now();
    let log = std::fs::File::create(log).unwrap();
    let mut child = Command::new(TALLY)
        .args(["serve", "--listen", addr, "--data-dir"])
        .arg(data)
        .arg("--geoip-db")
        .arg(geo)
        .env("TALLY_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", format!("warn,{COMPACTOR_TARGET}=info"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(1800);
    loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tally did not answer within 30 minutes");
        }
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            let mut admin = v1::admin_service_client::AdminServiceClient::new(channel);
            if admin
                .list_sites(authed(ADMIN_KEY, v1::ListSitesRequest {}))
                .await
                .is_ok()
            {
                return (child, started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The log target of the embedded store's compactor, and its line for a
/// round that moved packs into columnar segments.
const COMPACTOR_TARGET: &str = "tally_server::storage::embedded";
const COMPACTED: &str = "packs compacted into segments";

/// Waits until the compactor has moved every sealed hour into segments: a
/// round that compacted something after `seen` such lines (or two whole
/// rounds, 60 s, without one: everything was compacted during ingest), then
/// a whole round (30 s) that found nothing more. Returns the compacting
/// rounds seen.
async fn wait_for_compaction(log: &Path, seen: usize) -> usize {
    let rounds = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(COMPACTED)
            .count()
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1800);
    let mut last = (rounds(), Instant::now());
    loop {
        assert!(Instant::now() < deadline, "no compaction within 30 minutes");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rounds();
        if now != last.0 {
            last = (now, Instant::now());
        } else if (now > seen || started.elapsed() > Duration::from_secs(65))
            && last.1.elapsed() > Duration::from_secs(32)
        {
            return now;
        }
    }
}

/// Bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                disk_bytes(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// Stops `child` with SIGTERM (a graceful shutdown) and waits for it.
fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "tally exited with {status} on SIGTERM");
}

fn report(metrics: &[M], dimension: D, filter: Option<v1::FilterExpression>) -> v1::RunReportRequest {
    v1::RunReportRequest {
        site_id: "bench".into(),
        metrics: metrics.iter().map(|m| *m as i32).collect(),
        dimensions: vec![v1::DimensionSpec {
            kind: Some(v1::dimension_spec::Kind::Standard(dimension as i32)),
        }],
        date_ranges: vec![v1::DateRange {
            start_date: "29daysAgo".into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        filter,
        limit: 10,
        skip_cache: true,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let events = setting("BENCH_EVENTS", 10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let geo = dir.path().join("geo.mmdb");
    std::fs::write(&geo, tally_server::generate::geoip_database()).unwrap();
    let addr = free_addr();

    let first_log = dir.path().join("first.log");
    let (server, _) = serve(&data, &geo, &addr, &first_log).await;
    eprintln!("footprint: generating and sending {events} events ...");
    let started = Instant::now();
    let output = Command::new(TALLY)
        .args([
            "generate",
            "--target",
            &format!("http://{addr}"),
            "--key",
            ADMIN_KEY,
        ])
        .args(["--site", "bench", "--create-site", "--seed", "1"])
        .args(["--events", &events.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tally generate failed: {}",
        output.status
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let accepted = summary["accepted"].as_u64().unwrap_or_default();
    assert_eq!(accepted as usize, events, "every event accepted: {summary}");
    let seconds = started.elapsed().as_secs_f64();
    let (rss_ingest, hwm_ingest) = support::memory_mib(server.id());
    // As a server that has run a while: sealed hours compacted into columnar
    // segments (every 30 s in the background).
    eprintln!("footprint: waiting for the compactor to move every sealed hour into segments ...");
    let compacting = Instant::now();
    let seen = std::fs::read_to_string(&first_log)
        .unwrap_or_default()
        .matches(COMPACTED)
        .count();
    let rounds = wait_for_compaction(&first_log, seen).await;
    eprintln!(
        "footprint: {} compacting rounds after ingest, quiet since; waited {:.0} s",
        rounds - seen,
        compacting.elapsed().as_secs_f64()
    );
    stop(server);
    let bytes = disk_bytes(&data);

    let (server, startup) = serve(&data, &geo, &addr, &dir.path().join("second.log")).await;
    let (rss_started, _) = support::memory_mib(server.id());
    let channel = support::connect(addr.parse().unwrap()).await;
    let mut query = v1::query_service_client::QueryServiceClient::new(channel);
    let plan_pro = v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::Filter(v1::Filter {
            dimension: Some(v1::DimensionSpec {
                kind: Some(v1::dimension_spec::Kind::Property("plan".into())),
            }),
            condition: Some(v1::filter::Condition::StringMatch(v1::StringMatch {
                match_type: v1::MatchType::Exact as i32,
                value: "pro".into(),
                case_sensitive: true,
            })),
        })),
    };
    for request in [
        report(&[M::Pageviews, M::Visitors], D::Page, None),
        report(&[M::Events, M::Visitors], D::EventName, Some(plan_pro)),
    ] {
        let response = query.run_report(authed(ADMIN_KEY, request)).await.unwrap();
        assert!(
            !response.into_inner().rows.is_empty(),
            "a report over the data set has rows"
        );
    }
    let (rss_reports, _) = support::memory_mib(server.id());
    // Start-up frees the scratch memory of the rebuild (up to a third of the
    // peak); the allocator hands it back to the system when its threads next
    // work, or when `tally` asks it to (every 5 s). Idle for 45 s, the server
    // is as it stays.
    eprintln!("footprint: idle for {SETTLE_SECONDS} s ...");
    tokio::time::sleep(Duration::from_secs(SETTLE_SECONDS)).await;
    let (rss_settled, hwm) = support::memory_mib(server.id());
    stop(server);

    println!(
        "footprint: {events} generated events sent in {seconds:.1} s ({:.0} events/s)",
        events as f64 / seconds
    );
    println!(
        "on disk after shutdown: {bytes} bytes, {:.1} bytes per event (everything in the data directory)",
        bytes as f64 / events as f64
    );
    println!("server RSS while ingesting: {rss_ingest:.0} MiB at the end (peak {hwm_ingest:.0} MiB)");
    println!(
        "restart: answering after {:.2} s; RSS {rss_started:.0} MiB",
        startup.as_secs_f64()
    );
    println!("after two 30-day reports: RSS {rss_reports:.0} MiB (peak since restart {hwm:.0} MiB)");
    println!("idle {SETTLE_SECONDS} s later: RSS {rss_settled:.0} MiB");
    figures::record("footprint.events", events as f64);
    figures::record("footprint.bytes_per_event", bytes as f64 / events as f64);
    figures::record("footprint.startup_s", startup.as_secs_f64());
    figures::record("footprint.rss_ingest_mib", rss_ingest);
    figures::record("footprint.rss_started_mib", rss_started);
    figures::record("footprint.rss_reports_mib", rss_reports);
    figures::record("footprint.rss_settled_mib", rss_settled);
    figures::record("footprint.rss_peak_mib", hwm.max(hwm_ingest));
}
