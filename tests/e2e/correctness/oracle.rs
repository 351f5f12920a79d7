//! The DuckDB side: events exported from the server as JSON lines, and
//! `tests/duckdb/oracle.py`, which loads them and runs the shapes' SQL.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, SecondsFormat};
use tally_proto::v1;
use tonic::transport::Channel;

use crate::process::{ADMIN_KEY, authed};

/// The Python of the test environment, with duckdb (made by `tests/setup.sh`).
pub fn python() -> PathBuf {
    let venv = std::env::var_os("TALLY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/tally/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tests/setup.sh` (it installs duckdb into a virtual environment)",
        python.display()
    );
    python
}

/// Appends `value` as a JSON string. Plain text (most of it) is copied as
/// is; anything that needs escaping goes through serde_json.
fn push_json_str(out: &mut String, value: &str) {
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(value).to_string());
    }
}

/// One JSON line, its fields written in order.
struct Line(String);

impl Line {
    fn text(&mut self, key: &str, value: &str) {
        self.0.push('"');
        self.0.push_str(key);
        self.0.push_str("\":");
        push_json_str(&mut self.0, value);
        self.0.push(',');
    }

    fn raw(&mut self, key: &str, value: impl std::fmt::Display) {
        let _ = write!(self.0, "\"{key}\":{value},");
    }
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    let ts = ts.cloned().unwrap_or_default();
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
        .expect("a valid timestamp")
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A recorded event in proto JSON (names as in common.proto, enums by name),
/// without `url` and `received_at`, which no report reads: a tenth less to
/// write and load.
pub fn event_json(e: &v1::RecordedEvent) -> String {
    let mut line = Line(String::with_capacity(700));
    line.0.push('{');
    line.text("event_id", &e.event_id);
    line.text("timestamp", &timestamp(e.timestamp.as_ref()));
    line.text("type", e.r#type().as_str_name());
    for (key, value) in [
        ("name", &e.name),
        ("hostname", &e.hostname),
        ("path", &e.path),
        ("referrer", &e.referrer),
        ("visitor_id", &e.visitor_id),
        ("session_id", &e.session_id),
        ("user_id", &e.user_id),
        ("browser", &e.browser),
        ("browser_version", &e.browser_version),
        ("os", &e.os),
        ("os_version", &e.os_version),
        ("country", &e.country),
        ("region", &e.region),
        ("city", &e.city),
        ("source", &e.source),
        ("medium", &e.medium),
        ("campaign", &e.campaign),
        ("utm_source", &e.utm_source),
        ("utm_medium", &e.utm_medium),
        ("utm_term", &e.utm_term),
        ("utm_content", &e.utm_content),
        ("app_version", &e.app_version),
        ("locale", &e.locale),
    ] {
        line.text(key, value);
    }
    line.text("device_type", e.device_type().as_str_name());
    line.raw("bot", e.bot);
    line.raw("non_interaction", e.non_interaction);
    if !e.properties.is_empty() {
        let mut props = String::from("{");
        let mut keys: Vec<&String> = e.properties.keys().collect();
        keys.sort();
        for key in keys {
            push_json_str(&mut props, key);
            match &e.properties[key].value {
                Some(v1::property_value::Value::StringValue(s)) => {
                    props.push_str(":{\"string_value\":");
                    push_json_str(&mut props, s);
                    props.push_str("},");
                }
                Some(v1::property_value::Value::NumberValue(n)) => {
                    let _ = write!(props, ":{{\"number_value\":{}}},", serde_json::Value::from(*n));
                }
                Some(v1::property_value::Value::BoolValue(b)) => {
                    let _ = write!(props, ":{{\"bool_value\":{b}}},");
                }
                None => props.push_str(":{},"),
            }
        }
        props.pop();
        props.push('}');
        line.raw("properties", props);
    }
    if let Some(m) = &e.revenue {
        let mut money = String::from("{\"currency_code\":");
        push_json_str(&mut money, &m.currency_code);
        let _ = write!(money, ",\"units\":\"{}\",\"nanos\":{}}}", m.units, m.nanos);
        line.raw("revenue", money);
    }
    line.0.pop();
    line.0.push('}');
    line.0
}

/// Exports every event of `site` (bots included) in `[from, to)` seconds to
/// `path` as gzipped JSON lines (the system's `gzip`, on its own core: a
/// tenth of the disk space); returns how many.
pub async fn export_jsonl(channel: Channel, site: &str, from: i64, to: i64, path: &Path) -> usize {
    let mut admin =
        v1::admin_service_client::AdminServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let request = v1::ExportEventsRequest {
        site_id: site.into(),
        time_range: Some(v1::TimeRange {
            start_time: at(from),
            end_time: at(to),
        }),
        include_bots: true,
        chunk_size: 10_000,
    };
    let mut chunks = admin
        .export_events(authed(ADMIN_KEY, request))
        .await
        .unwrap()
        .into_inner();
    let mut gzip = Command::new("gzip")
        .args(["-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(path).unwrap())
        .spawn()
        .expect("gzip runs");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, gzip.stdin.take().unwrap());
    let mut count = 0;
    while let Some(chunk) = chunks.message().await.unwrap() {
        for event in &chunk.events {
            out.write_all(event_json(event).as_bytes()).unwrap();
            out.write_all(b"\n").unwrap();
        }
        count += chunk.events.len();
    }
    out.flush().unwrap();
    drop(out);
    let status = gzip.wait().unwrap();
    assert!(status.success(), "gzip failed: {status}");
    count
}

/// The result of one query.
#[derive(Debug, serde::Deserialize)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows of JSON values.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Time DuckDB took.
    pub seconds: f64,
}

/// What the oracle answered.
#[derive(Debug, serde::Deserialize)]
pub struct Answer {
    /// Time to load the events.
    pub load_seconds: f64,
    /// Events loaded.
    pub events: usize,
    /// Results by query name.
    pub results: HashMap<String, QueryResult>,
}

/// `oracle.py` at work on a list of queries.
pub struct Running {
    child: std::process::Child,
}

/// Starts `oracle.py` on the events in `events` with `queries` (name, SQL);
/// it runs while the caller does other work.
pub fn start(python: &Path, events: &Path, queries: &[(String, String)]) -> Running {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("duckdb/oracle.py");
    let list: Vec<serde_json::Value> = queries
        .iter()
        .map(|(name, sql)| serde_json::json!({ "name": name, "sql": sql }))
        .collect();
    let queries_path = events.with_extension("queries.json");
    std::fs::write(&queries_path, serde_json::json!({ "queries": list }).to_string()).unwrap();
    let child = Command::new(python)
        .arg(&script)
        .arg(events)
        .arg(&queries_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running { child }
}

impl Running {
    /// Waits for the answers.
    pub fn wait(self) -> Answer {
        let output = self.child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "oracle.py failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("oracle.py prints one JSON object")
    }
}
