//! Correctness suite: a million generated events loaded into a real `tally`
//! server and, through `AdminService/ExportEvents`, into DuckDB; every report
//! shape of `shapes.rs` is asked of both and compared row by row.
//!
//! Its own test binary (not part of `e2e`), so that it does not share the
//! machine with the kill-and-restart suites while it runs. The server is the
//! optimised build, which cargo brings up to date first: a debug build
//! ingests a few thousand events a second, too slow for a million.
//!
//! Run it alone (after `bash tests/setup.sh`, which installs duckdb):
//!
//! ```sh
//! cargo test -p tally-tests --test correctness -- --nocapture
//! ```
//!
//! `TALLY_CORRECTNESS_EVENTS=N` changes the number of events (default
//! 1,000,000), `TALLY_RELEASE_BIN=path` uses a given `tally` binary instead of
//! building one.

#[allow(dead_code)]
#[path = "../process.rs"]
mod process;

mod funnels;
mod oracle;
mod report_sql;
mod shapes;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::Tz;
use tally_proto::v1;

use oracle::QueryResult;
use process::{ADMIN_KEY, Tally, authed, release_binary};
use report_sql::{Frame, METRIC_COLUMNS, Shape, column, is_count, is_unique};

const SITE: &str = "shop";
const SITE_ZONE: &str = "Europe/Berlin";
const SEED: u64 = 20_261_128;
/// Relative error allowed for unique counts when a response says it is not
/// exact: five standard errors of the rollups' HyperLogLog (2^12 registers,
/// 1.04 / 64 = 1.6%, `tally_server::rollup::sketch::STANDARD_ERROR`). The
/// suite compares about two thousand estimated counts: a bound of 3% (under
/// two standard errors) failed one run in two by chance alone.
const ESTIMATE_TOLERANCE: f64 = 5.0 * 1.04 / 64.0;
/// Relative error allowed between two floating-point means (summation order).
const FLOAT_TOLERANCE: f64 = 1e-9;

/// Writes a line that shows even when the test's output is captured.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "correctness: {line}");
}

/// Runs `tally generate` against `server`; returns its JSON summary.
fn generate(binary: &Path, server: &Tally, events: usize, end: DateTime<Utc>) -> serde_json::Value {
    let output = Command::new(binary)
        .args([
            "generate",
            "--target",
            &format!("http://{}", server.addr),
            "--key",
            ADMIN_KEY,
        ])
        .args(["--site", SITE, "--create-site", "--time-zone", SITE_ZONE])
        .args(["--seed", &SEED.to_string(), "--events", &events.to_string()])
        .args(["--end", &end.to_rfc3339()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tally generate failed: {}\n{stderr}",
        output.status
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "tally generate printed no JSON summary ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The end of the generated period: April 1 (00:00 UTC) of the latest year
/// where that lies in the past. Its four weeks hold the spring clock changes
/// of the United States (second Sunday of March) and of Europe (last Sunday
/// of March), so the time-zone shapes always cross a DST change, and the data
/// set is the same on every run of a year.
fn period_end() -> DateTime<Utc> {
    let now = Utc::now();
    let april = |year| Utc.with_ymd_and_hms(year, 4, 1, 0, 0, 0).unwrap();
    let this_year = april(now.year());
    if this_year < now - chrono::Duration::days(1) {
        this_year
    } else {
        april(now.year() - 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_match_duckdb_over_a_million_generated_events() {
    let events: usize = std::env::var("TALLY_CORRECTNESS_EVENTS")
        .ok()
        .map(|n| n.parse().expect("TALLY_CORRECTNESS_EVENTS is a number"))
        .unwrap_or(1_000_000);
    let python = oracle::python();
    let binary = release_binary();
    let dir = tempfile::tempdir().unwrap();
    let geo = dir.path().join("geo.mmdb");
    let status = Command::new(&binary)
        .args(["generate", "--events", "0", "--write-geoip-db"])
        .arg(&geo)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "tally generate --write-geoip-db: {status}");
    // The period lies up to a year back: ingest takes events that old here.
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, "[limits]\nmax_past_secs = 34560000\n").unwrap();
    let server = Tally::start_with(
        &binary,
        &dir.path().join("data"),
        &[
            "--geoip-db".as_ref(),
            geo.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
    )
    .await;
    let end = period_end();

    let started = Instant::now();
    let summary = generate(&binary, &server, events, end);
    say(&format!(
        "generated {events} events (seed {SEED}) in {:.1} s: {summary}",
        started.elapsed().as_secs_f64()
    ));
    assert_eq!(
        summary["accepted"], events,
        "every generated event is accepted: {summary}"
    );

    let started = Instant::now();
    let jsonl = dir.path().join("events.jsonl.gz");
    let (from, to) = (end.timestamp() - 30 * 86_400, end.timestamp() + 86_400);
    let exported = oracle::export_jsonl(server.channel().await, SITE, from, to, &jsonl).await;
    assert_eq!(exported, events, "the export holds every event, bots included");
    say(&format!(
        "exported {exported} events as gzipped JSON lines in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let site_zone: Tz = SITE_ZONE.parse().unwrap();
    // A request's time zone (the site's when empty) and today there.
    let frame_of = |tz: &str| {
        let tz = if tz.is_empty() { SITE_ZONE } else { tz };
        let today = Utc::now().with_timezone(&tz.parse::<Tz>().unwrap()).date_naive();
        (tz.to_string(), today)
    };
    let dates = shapes::Dates {
        last: (end.with_timezone(&site_zone) - chrono::Duration::days(1)).date_naive(),
        today: Utc::now().with_timezone(&site_zone).date_naive(),
    };
    let shapes = shapes::all(dates);
    assert!(shapes.len() >= 20);
    let frames: Vec<(String, chrono::NaiveDate)> =
        shapes.iter().map(|s| frame_of(&s.request.time_zone)).collect();
    let mut queries = Vec::new();
    for (shape, (tz, today)) in shapes.iter().zip(&frames) {
        let frame = Frame { tz, today: *today };
        queries.push((format!("{}/rows", shape.name), shape.rows_sql(&frame)));
        queries.push((format!("{}/totals", shape.name), shape.totals_sql(&frame)));
    }
    let funnels = funnels::all(|n| {
        (dates.last - chrono::Duration::days(n))
            .format("%Y-%m-%d")
            .to_string()
    });
    let funnel_frames: Vec<(String, chrono::NaiveDate)> =
        funnels.iter().map(|f| frame_of(&f.request.time_zone)).collect();
    for (funnel, (tz, today)) in funnels.iter().zip(&funnel_frames) {
        let frame = Frame { tz, today: *today };
        queries.push((funnel.name.to_string(), funnel.sql(&frame)));
    }
    // DuckDB works while the server answers the same questions.
    let started = Instant::now();
    let oracle = oracle::start(&python, &jsonl, &queries);
    let mut client = v1::query_service_client::QueryServiceClient::new(server.channel().await)
        .max_decoding_message_size(256 << 20);
    let mut responses = Vec::new();
    for shape in &shapes {
        let mut request = shape.request.clone();
        request.site_id = SITE.into();
        request.skip_cache = true;
        let asked = Instant::now();
        let response = client.run_report(authed(ADMIN_KEY, request)).await;
        responses.push((response.map(|r| r.into_inner()), asked.elapsed()));
    }
    let mut funnel_responses = Vec::new();
    for funnel in &funnels {
        let mut request = funnel.request.clone();
        request.site_id = SITE.into();
        let asked = Instant::now();
        let response = client.run_funnel_report(authed(ADMIN_KEY, request)).await;
        funnel_responses.push((response.map(|r| r.into_inner()), asked.elapsed()));
    }
    let engine_seconds = started.elapsed().as_secs_f64();
    let answer = oracle.wait();
    assert_eq!(answer.events, events);
    say(&format!(
        "tally answered {} reports and {} funnels in {engine_seconds:.1} s; duckdb loaded {} events in {:.1} s \
         and answered {} queries, {:.1} s in all",
        shapes.len(),
        funnels.len(),
        answer.events,
        answer.load_seconds,
        queries.len(),
        started.elapsed().as_secs_f64()
    ));

    let mut failures = Vec::new();
    let mut compared = 0;
    for ((shape, (tz, today)), (response, took)) in shapes.iter().zip(&frames).zip(responses) {
        let response = match response {
            Ok(response) => response,
            Err(status) => {
                failures.push(format!("{}: RunReport failed: {status:?}", shape.name));
                continue;
            }
        };
        let engine_ms = took.as_secs_f64() * 1000.0;
        let rows = &answer.results[&format!("{}/rows", shape.name)];
        let totals = &answer.results[&format!("{}/totals", shape.name)];
        match compare(shape, tz, &response, rows, totals) {
            Ok(n) => {
                compared += n;
                say(&format!(
                    "{:<36} {n:>5} rows compared of {:>5} (tally {engine_ms:>6.0} ms, duckdb {:>5.0} ms)",
                    shape.name,
                    response.row_count,
                    (rows.seconds + totals.seconds) * 1000.0
                ));
                if shape.request.dimensions.is_empty() && !response.rows.is_empty() {
                    let values = shape
                        .metric_list()
                        .into_iter()
                        .zip(&response.rows[0].metric_values);
                    let text: Vec<String> = values
                        .map(|(m, v)| match v.value {
                            Some(v1::metric_value::Value::IntValue(n)) => format!("{}={n}", column(m)),
                            Some(v1::metric_value::Value::DoubleValue(x)) => format!("{}={x:.2}", column(m)),
                            None => format!("{}=?", column(m)),
                        })
                        .collect();
                    say(&format!("  {}", text.join(" ")));
                }
            }
            Err(diff) => {
                say(&format!("{:<36} MISMATCH", shape.name));
                let frame = Frame { tz, today: *today };
                failures.push(format!(
                    "{}: {diff}\nrequest: {:?}\nSQL:\n{}",
                    shape.name,
                    shape.request,
                    shape.rows_sql(&frame)
                ));
            }
        }
    }
    for ((funnel, (tz, today)), (response, took)) in funnels.iter().zip(&funnel_frames).zip(funnel_responses)
    {
        let frame = Frame { tz, today: *today };
        let rows = &answer.results[funnel.name];
        let outcome = response
            .map_err(|status| format!("RunFunnelReport failed: {status:?}"))
            .and_then(|response| funnels::compare(funnel, &response, rows).map(|n| (n, response)));
        match outcome {
            Ok((n, response)) => {
                compared += n;
                let visitors: Vec<i64> = response.steps.iter().map(|s| s.visitors).collect();
                say(&format!(
                    "{:<36} {n:>5} steps compared: visitors {visitors:?} (tally {:>6.0} ms, duckdb {:>5.0} ms)",
                    funnel.name,
                    took.as_secs_f64() * 1000.0,
                    rows.seconds * 1000.0
                ));
            }
            Err(diff) => {
                say(&format!("{:<36} MISMATCH", funnel.name));
                failures.push(format!(
                    "{}: {diff}\nrequest: {:?}\nSQL:\n{}",
                    funnel.name,
                    funnel.request,
                    funnel.sql(&frame)
                ));
            }
        }
    }
    say(&format!(
        "{} report shapes and {} funnels, {compared} rows compared",
        shapes.len(),
        funnels.len()
    ));
    assert!(failures.is_empty(), "\n\n{}", failures.join("\n\n"));
}

/// A metric value of the engine as f64, checking its type.
fn engine_value(value: &v1::MetricValue, metric: v1::Metric) -> Result<f64, String> {
    match (&value.value, is_count(metric)) {
        (Some(v1::metric_value::Value::IntValue(n)), true) => Ok(*n as f64),
        (Some(v1::metric_value::Value::DoubleValue(x)), false) => Ok(*x),
        (other, _) => Err(format!("{metric:?} has a value of the wrong type: {other:?}")),
    }
}

/// A SQL value as f64 (NULL counts as 0: a range without events).
fn sql_value(value: &serde_json::Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

fn sql_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether two values agree: counts exactly, unique counts within the
/// estimate's error when the answer is not exact, means within rounding.
fn agrees(metric: v1::Metric, engine: f64, sql: f64, exact: bool) -> bool {
    if is_unique(metric) && !exact {
        return (engine - sql).abs() <= ESTIMATE_TOLERANCE * sql.abs().max(1.0);
    }
    if is_count(metric) {
        return engine == sql;
    }
    (engine - sql).abs() <= FLOAT_TOLERANCE * sql.abs().max(1.0)
}

struct SqlRow {
    dims: Vec<String>,
    values: Vec<f64>,
}

/// The SQL rows as dimension texts and the requested metrics' values.
fn sql_rows(result: &QueryResult, skip: usize, metrics: &[v1::Metric]) -> Vec<SqlRow> {
    let metric_at = |m: v1::Metric| {
        result
            .columns
            .iter()
            .position(|c| c == column(m))
            .expect("every metric column")
    };
    let first_metric = result.columns.len() - METRIC_COLUMNS.len();
    result
        .rows
        .iter()
        .map(|row| SqlRow {
            dims: row[skip..first_metric].iter().map(sql_text).collect(),
            values: metrics.iter().map(|m| sql_value(&row[metric_at(*m)])).collect(),
        })
        .collect()
}

fn show(dims: &[String], metrics: &[v1::Metric], values: &[f64]) -> String {
    let values: Vec<String> = metrics
        .iter()
        .zip(values)
        .map(|(m, v)| format!("{}={v}", column(*m)))
        .collect();
    format!("{dims:?} {}", values.join(" "))
}

/// Compares one report with DuckDB's rows and totals; returns the number of
/// rows compared, or what differs.
fn compare(
    shape: &Shape,
    tz: &str,
    response: &v1::RunReportResponse,
    rows: &QueryResult,
    totals: &QueryResult,
) -> Result<usize, String> {
    let metrics = shape.metric_list();
    let metadata = response.metadata.clone().unwrap_or_default();
    let exact = metadata.exact;
    let mut problems = Vec::new();
    if metadata.time_zone != tz {
        problems.push(format!("time zone {:?}, expected {tz:?}", metadata.time_zone));
    }
    let headers: Vec<i32> = response.metric_headers.iter().map(|h| h.metric).collect();
    if headers != shape.request.metrics {
        problems.push(format!("metric headers {headers:?}"));
    }

    // Date ranges resolved alike (DST included).
    for (i, row) in totals.rows.iter().enumerate() {
        let resolved = metadata.resolved_ranges.get(i);
        let micros =
            |t: Option<&prost_types::Timestamp>| t.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
        let got = resolved.map(|r| (micros(r.start_time.as_ref()), micros(r.end_time.as_ref())));
        let want = (row[1].as_i64(), row[2].as_i64());
        if got != Some(want) {
            problems.push(format!(
                "date range {i} resolved to {got:?}, DuckDB says {want:?} (did the day change during the run?)"
            ));
        }
    }

    // Rows: the same page in the same order.
    let sql_count = rows.rows.first().map_or(0, |r| r[0].as_i64().unwrap_or(-1));
    if response.row_count != sql_count {
        problems.push(format!("row_count {}, DuckDB {sql_count}", response.row_count));
    }
    let expected = sql_rows(rows, 1, &metrics);
    let mut differing = Vec::new();
    if exact {
        if response.rows.len() != expected.len() {
            problems.push(format!(
                "{} rows on the page, DuckDB {}",
                response.rows.len(),
                expected.len()
            ));
        }
        for (i, (got, want)) in response.rows.iter().zip(&expected).enumerate() {
            let values: Result<Vec<f64>, String> = got
                .metric_values
                .iter()
                .zip(&metrics)
                .map(|(v, m)| engine_value(v, *m))
                .collect();
            let values = values?;
            let same = got.dimension_values == want.dims
                && metrics
                    .iter()
                    .zip(values.iter().zip(&want.values))
                    .all(|(m, (a, b))| agrees(*m, *a, *b, exact));
            if !same {
                differing.push(format!(
                    "  row {i}: tally {} | duckdb {}",
                    show(&got.dimension_values, &metrics, &values),
                    show(&want.dims, &metrics, &want.values)
                ));
            }
        }
    } else {
        // Estimates may reorder rows with close counts: match rows by their
        // dimension values; a page cut by the limit may differ at its edge.
        let by_key: std::collections::HashMap<&Vec<String>, &SqlRow> =
            expected.iter().map(|r| (&r.dims, r)).collect();
        let mut matched = 0;
        for got in &response.rows {
            let Some(want) = by_key.get(&got.dimension_values) else {
                continue;
            };
            matched += 1;
            let values: Vec<f64> = got
                .metric_values
                .iter()
                .zip(&metrics)
                .map(|(v, m)| engine_value(v, *m))
                .collect::<Result<_, _>>()?;
            if !metrics
                .iter()
                .zip(values.iter().zip(&want.values))
                .all(|(m, (a, b))| agrees(*m, *a, *b, exact))
            {
                differing.push(format!(
                    "  tally {} | duckdb {}",
                    show(&got.dimension_values, &metrics, &values),
                    show(&want.dims, &metrics, &want.values)
                ));
            }
        }
        let cut = response.row_count as usize > response.rows.len();
        let needed = if cut {
            expected.len() * 8 / 10
        } else {
            expected.len()
        };
        if matched < needed || response.rows.len() != expected.len() {
            problems.push(format!(
                "estimated answer: {matched} of {} rows match DuckDB's {}",
                response.rows.len(),
                expected.len()
            ));
        }
    }

    // Totals: one row per range.
    let expected_totals = sql_rows(totals, 3, &metrics);
    if response.totals.len() != expected_totals.len() {
        problems.push(format!(
            "{} totals rows, {} date ranges",
            response.totals.len(),
            expected_totals.len()
        ));
    }
    let multi = expected_totals.len() > 1;
    for (i, (got, want)) in response.totals.iter().zip(&expected_totals).enumerate() {
        let values: Vec<f64> = got
            .metric_values
            .iter()
            .zip(&metrics)
            .map(|(v, m)| engine_value(v, *m))
            .collect::<Result<_, _>>()?;
        let want_dims = if multi {
            vec![sql_text(&totals.rows[i][0])]
        } else {
            Vec::new()
        };
        let dims_ok = got.dimension_values == want_dims;
        let values_ok = metrics
            .iter()
            .zip(values.iter().zip(&want.values))
            .all(|(m, (a, b))| agrees(*m, *a, *b, exact));
        if !dims_ok || !values_ok {
            differing.push(format!(
                "  totals {i}: tally {} | duckdb {}",
                show(&got.dimension_values, &metrics, &values),
                show(&want_dims, &metrics, &want.values)
            ));
        }
    }

    if !differing.is_empty() {
        let shown = differing.len().min(15);
        problems.push(format!(
            "{} rows differ (first {shown}):\n{}",
            differing.len(),
            differing[..shown].join("\n")
        ));
    }
    if problems.is_empty() {
        Ok(response.rows.len() + response.totals.len())
    } else {
        Err(problems.join("\n"))
    }
}
