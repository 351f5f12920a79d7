//! Reports over a generated data set (default 10,000,000 events over 28 days),
//! `tally` next to DuckDB over the same raw events, in one run.
//!
//! Run: `cargo bench -p tally-server --bench reports`. `BENCH_EVENTS=N` sets the
//! data set size, `BENCH_RUNS=N` the timed runs per query (default 50),
//! `TALLY_PYTHON` a Python with the `duckdb` package (default the test venv,
//! `~/.cache/tally/venv/bin/python`, that `tests/setup.sh` makes). Reports
//! answered from raw events run a tenth as often (at least 3 times).
//!
//! The events come from `tally generate`'s model (seed 1) and go in through
//! `TrackStream`, as a client would send them (the ingest rate, rollups
//! included, is printed). The bench then exports the stored, enriched events
//! from the store to CSV, loads them into an in-memory DuckDB table, and
//! times each report in both: `tally` over gRPC on loopback with the cache
//! bypassed (`skip_cache`), DuckDB in-process (no network, no encoding).
//! Before timing, the top rows of both are compared.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use futures::StreamExt;
use tally_proto::v1::{self, Dimension as D, Metric as M};
use tally_server::domain::{EventKind, PropValue, SiteId};
use tally_server::generate::model::{Settings, plan};
use tally_server::rollup::Rollups;
use tally_server::storage::EventStore;

mod figures;
mod support;

use support::{ADMIN_KEY, authed, connect, setting, start_tally_with};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn standard(d: D) -> v1::DimensionSpec {
    v1::DimensionSpec {
        kind: Some(v1::dimension_spec::Kind::Standard(d as i32)),
    }
}

fn string_filter(dim: v1::DimensionSpec, match_type: v1::MatchType, value: &str) -> v1::FilterExpression {
    v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::Filter(v1::Filter {
            dimension: Some(dim),
            condition: Some(v1::filter::Condition::StringMatch(v1::StringMatch {
                match_type: match_type as i32,
                value: value.into(),
                case_sensitive: true,
            })),
        })),
    }
}

struct Case {
    name: &'static str,
    /// Short name of its figures for `tests/bench.sh`.
    key: &'static str,
    request: v1::RunReportRequest,
    /// SQL over `events`; `{from}` and `{to}` are the resolved range in microseconds.
    sql: &'static str,
}

fn cases() -> Vec<Case> {
    let base = v1::RunReportRequest {
        site_id: "bench".into(),
        date_ranges: vec![v1::DateRange {
            start_date: "29daysAgo".into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        skip_cache: true,
        ..Default::default()
    };
    vec![
        Case {
            name: "top 10 pages, page views + visitors, 30 days",
            key: "top_pages",
            request: v1::RunReportRequest {
                metrics: vec![M::Pageviews as i32, M::Visitors as i32],
                dimensions: vec![standard(D::Page)],
                limit: 10,
                ..base.clone()
            },
            sql: "SELECT path, count(*) FILTER (WHERE kind IN (1, 3)) AS pv, count(DISTINCT visitor) \
                  FROM events WHERE NOT bot AND kind <> 4 AND ts >= {from} AND ts < {to} \
                  GROUP BY path ORDER BY pv DESC, path LIMIT 10",
        },
        Case {
            name: "daily visitors + page views, 30 days",
            key: "daily",
            request: v1::RunReportRequest {
                metrics: vec![M::Visitors as i32, M::Pageviews as i32],
                dimensions: vec![standard(D::TimeDay)],
                ..base.clone()
            },
            sql: "SELECT day, count(DISTINCT visitor), count(*) FILTER (WHERE kind IN (1, 3)) \
                  FROM events WHERE NOT bot AND kind <> 4 AND ts >= {from} AND ts < {to} \
                  GROUP BY day ORDER BY day",
        },
        Case {
            name: "top 10 blog posts (page filter), 30 days",
            key: "filtered_pages",
            request: v1::RunReportRequest {
                metrics: vec![M::Pageviews as i32, M::Visitors as i32],
                dimensions: vec![standard(D::Page)],
                filter: Some(string_filter(standard(D::Page), v1::MatchType::Prefix, "/posts/")),
                limit: 10,
                ..base.clone()
            },
            sql: "SELECT path, count(*) FILTER (WHERE kind IN (1, 3)) AS pv, count(DISTINCT visitor) \
                  FROM events WHERE NOT bot AND kind <> 4 AND ts >= {from} AND ts < {to} \
                  AND starts_with(path, '/posts/') GROUP BY path ORDER BY pv DESC, path LIMIT 10",
        },
        Case {
            name: "ad hoc: events with plan = pro by name, 30 days",
            key: "ad_hoc_property",
            request: v1::RunReportRequest {
                metrics: vec![M::Events as i32, M::Visitors as i32],
                dimensions: vec![standard(D::EventName)],
                filter: Some(string_filter(
                    v1::DimensionSpec {
                        kind: Some(v1::dimension_spec::Kind::Property("plan".into())),
                    },
                    v1::MatchType::Exact,
                    "pro",
                )),
                ..base.clone()
            },
            sql: "SELECT name, count(*) AS n, count(DISTINCT visitor) \
                  FROM events WHERE NOT bot AND kind <> 4 AND ts >= {from} AND ts < {to} \
                  AND plan = 'pro' GROUP BY name ORDER BY n DESC, name",
        },
        Case {
            name: "top 10 pages from one country (raw scan), 30 days",
            key: "country_pages",
            request: v1::RunReportRequest {
                metrics: vec![M::Pageviews as i32, M::Visitors as i32],
                dimensions: vec![standard(D::Page)],
                filter: Some(string_filter(standard(D::Country), v1::MatchType::Exact, "US")),
                limit: 10,
                ..base
            },
            sql: "SELECT path, count(*) FILTER (WHERE kind IN (1, 3)) AS pv, count(DISTINCT visitor) \
                  FROM events WHERE NOT bot AND kind <> 4 AND ts >= {from} AND ts < {to} \
                  AND country = 'US' GROUP BY path ORDER BY pv DESC, path LIMIT 10",
        },
    ]
}

async fn ingest(addr: SocketAddr, key: &str, events: usize) -> (usize, f64) {
    let now_ms = tally_server::domain::now_micros() / 1000;
    let data = plan(&Settings {
        seed: 1,
        events,
        days: 28,
        end_ms: now_ms - 60_000,
        domain: "bench.example".into(),
    });
    // Events are built from the (compact) plan as the streams send them, so
    // 10M events never sit in memory as messages.
    let data = std::sync::Arc::new(data);
    let total = data.events.len();
    let started = Instant::now();
    let streams = 4;
    let per = total.div_ceil(streams);
    let mut tasks = Vec::new();
    for first in (0..total).step_by(per) {
        let end = (first + per).min(total);
        let channel = connect(addr).await;
        let key = key.to_owned();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = v1::ingest_service_client::IngestServiceClient::new(channel);
            let requests =
                futures::stream::iter((first..end).step_by(100)).map(move |from| v1::TrackRequest {
                    site_id: "bench".into(),
                    events: data.events[from..(from + 100).min(end)]
                        .iter()
                        .map(|p| data.event(p))
                        .collect(),
                });
            let response = client
                .track_stream(authed(&key, requests))
                .await
                .unwrap()
                .into_inner();
            response.accepted as usize + response.duplicates as usize
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    (stored, started.elapsed().as_secs_f64())
}

/// Writes the stored events that reports see to CSV, with the columns the
/// queries use; the day is the UTC date (the site's time zone).
async fn export(store: &tally_server::storage::embedded::EmbeddedStore, path: &Path) -> usize {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "ts,day,visitor,kind,bot,path,name,country,plan").unwrap();
    let site = SiteId::parse("bench").unwrap();
    let mut chunks = store.scan(&site, i64::MIN, i64::MAX);
    let mut rows = 0;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    while let Some(chunk) = chunks.next().await {
        for e in chunk.unwrap() {
            let day = chrono::DateTime::from_timestamp_micros(e.ts_micros)
                .unwrap()
                .format("%Y-%m-%d");
            let plan = match e.properties.get("plan").and_then(|p| p.value.as_ref()) {
                Some(PropValue::Str(s)) => s.clone(),
                Some(other) => other.to_text(),
                None => String::new(),
            };
            let name = if e.event_kind() == Some(EventKind::Pageview) {
                "pageview".to_owned()
            } else {
                e.name.clone()
            };
            writeln!(
                out,
                "{},{day},{},{},{},{},{},{},{}",
                e.ts_micros,
                e.visitor,
                e.kind,
                e.bot,
                quote(&e.path),
                quote(&name),
                quote(&e.country),
                quote(&plan)
            )
            .unwrap();
            rows += 1;
        }
    }
    out.flush().unwrap();
    rows
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Bytes the files under `path` take on disk (allocated blocks, as `du`).
fn du_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => du_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn text_row(row: &v1::Row) -> Vec<String> {
    row.dimension_values
        .iter()
        .cloned()
        .chain(row.metric_values.iter().map(|v| match v.value {
            Some(v1::metric_value::Value::IntValue(n)) => n.to_string(),
            Some(v1::metric_value::Value::DoubleValue(x)) => x.to_string(),
            None => String::new(),
        }))
        .collect()
}

#[tokio::main]
async fn main() {
    let events = setting("BENCH_EVENTS", 10_000_000);
    let runs = setting("BENCH_RUNS", 50);
    let python = std::env::var("TALLY_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/tally/venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    // The generator's address blocks, so countries are filled in.
    let geo = dir.path().join("geo.mmdb");
    std::fs::write(&geo, tally_server::generate::geoip_database()).unwrap();
    let config = tally_server::config::Config {
        geoip_db: vec![geo],
        ..Default::default()
    };
    let (addr, key, store) = start_tally_with(&dir.path().join("data"), config).await;
    eprintln!("reports: generating and ingesting {events} events ...");
    let (stored, seconds) = ingest(addr, &key, events).await;
    println!(
        "ingest through TrackStream (4 streams, batches of 100, rollups kept): {stored} events in {seconds:.1} s = {:.0} events/s",
        stored as f64 / seconds
    );
    figures::record("reports.events", stored as f64);
    figures::record("reports.ingest_eps", stored as f64 / seconds);
    println!(
        "on disk after ingest (minute packs): {:.1} bytes per event; process RSS (server + bench client): {:.0} MiB",
        store.disk_space().unwrap() as f64 / stored as f64,
        support::memory_mib(std::process::id()).0
    );
    // The background compactor moves sealed hours into columnar segments;
    // do it now (every hour, the current one included) and measure.
    let started = Instant::now();
    let compacting = store.clone();
    tokio::task::spawn_blocking(move || compacting.compact_now(i64::MAX))
        .await
        .unwrap()
        .unwrap();
    println!(
        "compacted into columnar segments in {:.1} s; on disk: {:.1} bytes per event (data directory, `du`: {:.1})",
        started.elapsed().as_secs_f64(),
        store.disk_space().unwrap() as f64 / stored as f64,
        du_bytes(&dir.path().join("data")) as f64 / stored as f64
    );
    let parts: Vec<String> = store
        .disk_usage()
        .unwrap()
        .iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(name, bytes)| format!("{name} {:.1}", *bytes as f64 / stored as f64))
        .collect();
    println!("  bytes per event by part: {}", parts.join(", "));
    let mut files: Vec<String> = std::fs::read_dir(dir.path().join("data/keyspaces"))
        .unwrap()
        .flatten()
        .map(|entry| {
            let per_event = du_bytes(&entry.path()) as f64 / stored as f64;
            format!("{} {per_event:.1}", entry.file_name().to_string_lossy())
        })
        .collect();
    files.sort();
    println!(
        "  bytes per event by keyspace directory (`du`): {}",
        files.join(", ")
    );

    // What a restart costs: the rollups rebuilt from the raw events, and their size.
    let rollups = Rollups::new(true);
    let started = Instant::now();
    rollups.rebuild(store.as_ref()).await.unwrap();
    println!(
        "rollups rebuilt from raw events in {:.1} s; they hold {:.0} MiB",
        started.elapsed().as_secs_f64(),
        rollups.read("bench", |r| r.heap_bytes()).unwrap_or_default() as f64 / 1048576.0
    );
    drop(rollups);

    let csv = dir.path().join("events.csv");
    let started = Instant::now();
    let rows = export(&store, &csv).await;
    eprintln!(
        "reports: exported {rows} events to CSV in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut client = v1::query_service_client::QueryServiceClient::new(connect(addr).await);
    let mut queries = Vec::new();
    let mut answers = Vec::new();
    for case in cases() {
        let first = client
            .run_report(authed(ADMIN_KEY, case.request.clone()))
            .await
            .unwrap()
            .into_inner();
        let range = &first.metadata.as_ref().unwrap().resolved_ranges[0];
        let micros = |t: &prost_types::Timestamp| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000;
        let sql = case
            .sql
            .replace("{from}", &micros(range.start_time.as_ref().unwrap()).to_string())
            .replace("{to}", &micros(range.end_time.as_ref().unwrap()).to_string());
        queries.push(serde_json::json!({ "name": case.name, "sql": sql }));
        // Raw scans take long on large data sets: fewer runs of those.
        let raw = first.metadata.as_ref().unwrap().data_source() == v1::DataSource::RawEvents;
        let case_runs = if raw { (runs / 10).max(3) } else { runs };
        let mut times = Vec::with_capacity(case_runs);
        let mut last = first;
        for _ in 0..case_runs {
            let t = Instant::now();
            last = client
                .run_report(authed(ADMIN_KEY, case.request.clone()))
                .await
                .unwrap()
                .into_inner();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        answers.push((case.name, case.key, times, last));
    }
    let queries_path = dir.path().join("queries.json");
    std::fs::write(&queries_path, serde_json::to_vec(&queries).unwrap()).unwrap();
    eprintln!("reports: timing DuckDB ...");
    let output = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/duckdb/bench_reports.py"
        ))
        .arg(&csv)
        .arg(&queries_path)
        .arg(runs.to_string())
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (run tests/setup.sh, or set TALLY_PYTHON)"));
    assert!(
        output.status.success(),
        "DuckDB failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let duck: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let mut table = String::new();
    writeln!(
        table,
        "| report ({} events; DuckDB {} threads, load {:.1} s) | source | tally p50 | tally p99 | DuckDB p50 | DuckDB p99 | DuckDB p50 / tally p50 |",
        duck["rows"],
        duck["threads"],
        duck["load_seconds"].as_f64().unwrap_or_default()
    )
    .unwrap();
    writeln!(table, "|---|---|---|---|---|---|---|").unwrap();
    for (name, key, times, last) in &answers {
        let d = &duck["queries"][*name];
        let d50 = d["p50_ms"].as_f64().unwrap_or(f64::NAN);
        let d99 = d["p99_ms"].as_f64().unwrap_or(f64::NAN);
        let t50 = percentile(times, 0.5);
        let metadata = last.metadata.as_ref().unwrap();
        figures::record(&format!("reports.{key}.tally_p50_ms"), t50);
        figures::record(&format!("reports.{key}.tally_p99_ms"), percentile(times, 0.99));
        figures::record(&format!("reports.{key}.duckdb_p50_ms"), d50);
        figures::record(&format!("reports.{key}.duckdb_p99_ms"), d99);
        figures::record(
            &format!("reports.{key}.rollups"),
            f64::from(u8::from(metadata.data_source() == v1::DataSource::Rollups)),
        );
        writeln!(
            table,
            "| {name} | {}{} | {t50:.2} ms | {:.2} ms | {d50:.2} ms | {d99:.2} ms | {:.2}x |",
            metadata
                .data_source()
                .as_str_name()
                .trim_start_matches("DATA_SOURCE_")
                .to_lowercase(),
            if metadata.exact { "" } else { ", estimated" },
            percentile(times, 0.99),
            d50 / t50
        )
        .unwrap();
        // The first rows of both, side by side, for a look.
        let ours: Vec<Vec<String>> = last.rows.iter().take(3).map(text_row).collect();
        eprintln!("  {name}\n    tally:  {ours:?}\n    duckdb: {}", d["rows"]);
    }
    println!("{table}");
    // Tables that compaction replaced are deleted once no reader holds them.
    println!(
        "on disk at the end: {:.1} bytes per event (data directory, `du`)",
        du_bytes(&dir.path().join("data")) as f64 / stored as f64
    );
}
