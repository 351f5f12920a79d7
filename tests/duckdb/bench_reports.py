"""Times report queries in DuckDB over the raw events a benchmark exported.

Usage: bench_reports.py EVENTS.csv QUERIES.json RUNS

The CSV has a header row; QUERIES.json is a list of {"name": ..., "sql": ...}
over a table `events` made from it. Each query runs once to warm up, then
RUNS times; the script prints one JSON object: load seconds, and per query
its p50 and p99 in milliseconds and its result rows (for a sanity check).
"""

import json
import sys
import time

import duckdb


def percentile(sorted_values, q):
    # Nearest rank.
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def main():
    csv_path, queries_path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(queries_path) as f:
        queries = json.load(f)
    con = duckdb.connect()
    started = time.perf_counter()
    con.execute(
        "CREATE TABLE events AS SELECT * FROM read_csv(?, header = true, auto_detect = true)",
        [csv_path],
    )
    load_seconds = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM events").fetchone()[0]
    out = {"load_seconds": load_seconds, "rows": rows, "threads": con.execute(
        "SELECT current_setting('threads')").fetchone()[0], "queries": {}}
    for q in queries:
        result = con.execute(q["sql"]).fetchall()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            con.execute(q["sql"]).fetchall()
            times.append((time.perf_counter() - t) * 1000.0)
        times.sort()
        out["queries"][q["name"]] = {
            "p50_ms": percentile(times, 0.5),
            "p99_ms": percentile(times, 0.99),
            "rows": [[str(v) for v in row] for row in result[:10]],
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
