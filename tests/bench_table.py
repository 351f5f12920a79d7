#!/usr/bin/env python3
"""Prints the figures of tests/bench.sh as one Markdown table with the brief's targets.

Usage: bench_table.py FIGURES.jsonl [--machine TEXT]

FIGURES.jsonl holds lines {"key": ..., "value": ...} written by the benchmarks
(server/benches/figures). A figure that is missing shows as "not measured".
"""

import json
import math
import sys


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    machine = None
    if "--machine" in args:
        i = args.index("--machine")
        machine = args[i + 1]
        del args[i : i + 2]
    f = {}
    with open(args[0], encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                f[record["key"]] = record["value"]

    rows = []

    def get(key):
        value = f.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    def num(value, unit=""):
        if value is None:
            return "not measured"
        if abs(value) >= 100:
            text = f"{value:,.0f}"
        elif abs(value) >= 10:
            text = f"{value:.1f}"
        else:
            text = f"{value:.2f}"
        return f"{text}{unit}"

    def verdict(ok):
        if ok == "info":
            return ""
        return "not measured" if ok is None else ("met" if ok else "**not met**")

    def row(what, measured, reference, ratio, target, ok):
        rows.append((what, measured, reference, ratio, target, verdict(ok)))

    def both(*values):
        return None if any(v is None for v in values) else all(values)

    # Ingest, embedded store, next to a no-op tonic server.
    for key, what in [("batch", "ingest, `Track` batches of 100"), ("stream", "ingest, `TrackStream` 100 per message")]:
        ours, base = get(f"ingest.tally.{key}"), get(f"ingest.noop.{key}")
        ratio = None if ours is None or not base else ours / base
        row(what, num(ours, " ev/s"), f"no-op tonic {num(base, ' ev/s')}", num(None if ratio is None else 100 * ratio, "%"),
            ">= 150,000 ev/s and >= 30% of no-op",
            both(None if ours is None else ours >= 150_000, None if ratio is None else ratio >= 0.30))
    ours, base = get("ingest.tally.unary"), get("ingest.noop.unary")
    ratio = None if ours is None or not base else ours / base
    row("ingest, `Track` single events", num(ours, " ev/s"), f"no-op tonic {num(base, ' ev/s')}",
        num(None if ratio is None else 100 * ratio, "%"), ">= 50% of no-op", None if ratio is None else ratio >= 0.5)
    # CPU time of the whole process per event in the same runs: both servers
    # keep the cores busy in batches, so the rate ratio follows this one.
    for key, what in [("batch", "`Track` batches of 100"), ("stream", "`TrackStream`"), ("unary", "`Track` single events")]:
        ours, base = get(f"ingest.tally_cpu_us.{key}"), get(f"ingest.noop_cpu_us.{key}")
        if ours is None and base is None:
            continue
        ratio = None if ours is None or not base else base / ours
        row(f"ingest CPU per event, {what}", num(ours, " us"), f"no-op tonic {num(base, ' us')}",
            num(None if ratio is None else 100 * ratio, "% (no-op / tally)"), "(no target)", "info")
    warm, native, cold = get("enrich.warm_ns"), get("enrich.native_ns"), get("enrich.cold_ns")
    row("enrichment, browser event (warm UA cache)", num(warm, " ns"), f"native event {num(native, ' ns')}",
        num(None if warm is None or not native else warm / native, "x"), "(no target)", "info")
    row("enrichment, every user agent new", num(cold, " ns"), f"native event {num(native, ' ns')}",
        num(None if cold is None or not native else cold / native, "x"), "(no target)", "info")

    # Reports next to DuckDB over the same raw events.
    events = get("reports.events")
    names = [
        ("top_pages", "top 10 pages + visitors, 30 days"),
        ("daily", "daily visitors + page views, 30 days"),
        ("filtered_pages", "top 10 blog posts (page filter)"),
        ("ad_hoc_property", "ad hoc: custom property filter"),
        ("country_pages", "top 10 pages of one country"),
    ]
    for key, what in names:
        p50, p99 = get(f"reports.{key}.tally_p50_ms"), get(f"reports.{key}.tally_p99_ms")
        d50 = get(f"reports.{key}.duckdb_p50_ms")
        rollups = get(f"reports.{key}.rollups")
        label = f"report: {what} ({num(events)} events, {'rollups' if rollups else 'raw events'})"
        measured = f"p50 {num(p50, ' ms')}, p99 {num(p99, ' ms')}"
        if p50 is None or d50 is None:
            row(label, measured, "DuckDB not measured", "", "", None)
            continue
        if rollups:
            if key == "top_pages":
                target, ok = "p50 <= 15 ms, p99 <= 50 ms, >= 5x DuckDB", p50 <= 15 and p99 <= 50 and d50 / p50 >= 5
            else:
                target, ok = "p50 <= 15 ms, >= 5x DuckDB", p50 <= 15 and d50 / p50 >= 5
            row(label, measured, f"DuckDB p50 {num(d50, ' ms')}", f"{d50 / p50:.1f}x faster", target, ok)
        else:
            row(label, measured, f"DuckDB p50 {num(d50, ' ms')}", f"{p50 / d50:.2f}x DuckDB's time",
                "<= 2x DuckDB's time", p50 / d50 <= 2)

    for key, what in [("idle", "no other load"), ("load", "under steady ingest")]:
        p50, p99 = get(f"realtime.{key}.p50_ms"), get(f"realtime.{key}.p99_ms")
        rate = get(f"realtime.{key}.events_per_second")
        row(f"realtime: ack -> `WatchRealtime`, {what}" + (f" ({num(rate, ' ev/s')})" if rate else ""), f"p50 {num(p50, ' ms')}, p99 {num(p99, ' ms')}",
            "", "", "p99 < 1 s", None if p99 is None else p99 < 1000)

    ours, raw = get("scylla.tally_eps"), get("scylla.raw_eps")
    row("ingest, Cassandra + Redis, end to end", num(ours, " ev/s"), f"raw Cassandra writes {num(raw, ' ev/s')}",
        num(None if ours is None or not raw else 100 * ours / raw, "%"), ">= 10,000 ev/s", None if ours is None else ours >= 10_000)

    stored = get("footprint.events")
    per_event = get("footprint.bytes_per_event")
    row(f"storage, embedded ({num(stored)} generated events)", num(per_event, " B/event"), "", "", "<= 100 B/event",
        None if per_event is None else per_event <= 100)
    rss = get("footprint.rss_settled_mib")
    full = stored is not None and stored >= 10_000_000
    row(f"server RSS, {num(stored)} events stored, restarted, two reports, 45 s idle", num(rss, " MiB"),
        f"right after the reports {num(get('footprint.rss_reports_mib'), ' MiB')}, "
        f"peak {num(get('footprint.rss_peak_mib'), ' MiB')}", "", "< 300 MB with 10M events",
        None if rss is None or not full else rss * 1.048576 < 300)
    row("start-up with the data set (rollups rebuilt)", num(get("footprint.startup_s"), " s"), "", "", "(no target)", "info")
    tracker = get("tracker.gzip_bytes")
    row("web tracker, gzip -9", num(tracker, " B"), "", "", "< 4 KB", None if tracker is None else tracker < 4096)

    if machine:
        print(f"Machine: {machine}.")
        print()
    print("| figure | measured | baseline in the same run | ratio | target | |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if not full:
        print()
        print("RSS is judged only with 10M events stored (the full run).")


if __name__ == "__main__":
    main()
