//! Figures for `tests/bench.sh`: when `TALLY_BENCH_FIGURES` names a file, each
//! [`record`] appends one JSON line `{"key": ..., "value": ...}` to it; the
//! script turns them into one table with the brief's targets. Without the
//! variable, benchmarks only print, as before.

use std::io::Write as _;

/// Records figure `key` (e.g. `ingest.tally.batch`) with `value`.
pub fn record(key: &str, value: f64) {
    let Some(path) = std::env::var_os("TALLY_BENCH_FIGURES") else {
        return;
    };
    let line = serde_json::json!({ "key": key, "value": value }).to_string();
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(err) = written {
        panic!(
            "cannot append to TALLY_BENCH_FIGURES={}: {err}",
            path.to_string_lossy()
        );
    }
}
