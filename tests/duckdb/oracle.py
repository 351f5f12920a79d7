#!/usr/bin/env python3
"""An independent oracle for Tally's reports: DuckDB over exported events.

Usage:
    oracle.py EVENTS.jsonl [QUERIES.json | -]

EVENTS.jsonl holds one tally.v1.RecordedEvent per line in proto JSON (field
names as in common.proto, enums by name, timestamps in RFC 3339), as written
from AdminService/ExportEvents; EVENTS.jsonl.gz is read as gzip. QUERIES.json (or stdin) is

    {"queries": [{"name": "...", "sql": "..."}, ...]}

The events are loaded into the table `events` (bots included, export order
kept in `seq`) with these derived columns:

    us        BIGINT   timestamp, microseconds since the epoch
    kind      VARCHAR  pageview, custom, screen_view, identify, engagement
    is_view   BOOLEAN  page and screen views
    device    VARCHAR  desktop, mobile, tablet, tv, console, bot or ''

and these macros, written from the report semantics in README.md:

    num_text(x)            a number as report text (Rust's f64 Display: 3, 12.5)
    prop_text(props, key)  a custom property as report text, NULL when absent
    prop_num(props, key)   a custom property as a number (numbers, numeric strings)
    referrer_text(r)       a referrer without scheme, query, fragment and final '/'
    day_start(date, tz)    the first instant of a date ('YYYY-MM-DD') in tz, in us

Each query's result is printed as JSON, in one object:

    {"load_seconds": 1.2, "events": 1000000,
     "results": {"name": {"columns": [...], "rows": [[...], ...], "seconds": 0.01}}}

Values are JSON numbers, strings, booleans or null; query timestamps as text.
"""

import json
import sys
import time

import duckdb

COLUMNS = {
    "event_id": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "type": "VARCHAR",
    "name": "VARCHAR",
    "url": "VARCHAR",
    "received_at": "TIMESTAMPTZ",
    "hostname": "VARCHAR",
    "path": "VARCHAR",
    "referrer": "VARCHAR",
    "properties": "MAP(VARCHAR, STRUCT(string_value VARCHAR, number_value DOUBLE, bool_value BOOLEAN))",
    "revenue": "STRUCT(currency_code VARCHAR, units BIGINT, nanos INTEGER)",
    "visitor_id": "VARCHAR",
    "session_id": "VARCHAR",
    "user_id": "VARCHAR",
    "bot": "BOOLEAN",
    "browser": "VARCHAR",
    "browser_version": "VARCHAR",
    "os": "VARCHAR",
    "os_version": "VARCHAR",
    "device_type": "VARCHAR",
    "country": "VARCHAR",
    "region": "VARCHAR",
    "city": "VARCHAR",
    "source": "VARCHAR",
    "medium": "VARCHAR",
    "campaign": "VARCHAR",
    "utm_source": "VARCHAR",
    "utm_medium": "VARCHAR",
    "utm_term": "VARCHAR",
    "utm_content": "VARCHAR",
    "app_version": "VARCHAR",
    "locale": "VARCHAR",
    "non_interaction": "BOOLEAN",
}

# proto3 JSON leaves out empty strings and false: missing means empty here.
STRINGS = [c for c, t in COLUMNS.items() if t == "VARCHAR"]

MACROS = [
    # Rust prints whole floats without a fraction ("3"), others in their
    # shortest round-trip form ("12.5"), as DuckDB does.
    """CREATE MACRO num_text(x) AS
         CASE WHEN x = trunc(x) AND abs(x) < 1e15 THEN CAST(CAST(x AS BIGINT) AS VARCHAR)
              ELSE CAST(x AS VARCHAR) END""",
    """CREATE MACRO prop_text(props, k) AS
         CASE WHEN props[k].string_value IS NOT NULL THEN props[k].string_value
              WHEN props[k].number_value IS NOT NULL THEN num_text(props[k].number_value)
              WHEN props[k].bool_value IS NOT NULL THEN CAST(props[k].bool_value AS VARCHAR)
         END""",
    """CREATE MACRO prop_num(props, k) AS
         coalesce(props[k].number_value, TRY_CAST(trim(props[k].string_value) AS DOUBLE))""",
    """CREATE MACRO referrer_text(r) AS
         regexp_replace(
           split_part(split_part(
             CASE WHEN position('://' IN r) > 0 THEN substr(r, position('://' IN r) + 3) ELSE r END,
             '?', 1), '#', 1),
           '/$', '')""",
    """CREATE MACRO day_start(d, tz) AS
         epoch_us(timezone(tz, CAST(CAST(d AS DATE) AS TIMESTAMP)))""",
]


def load(con, path):
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items()) + "}"
    strings = ", ".join(f"coalesce({c}, '') AS {c}" for c in STRINGS)
    con.execute(
        f"""
        CREATE TABLE events AS
        SELECT * EXCLUDE ({", ".join(STRINGS)}, bot, non_interaction, properties),
               {strings},
               coalesce(bot, false) AS bot,
               coalesce(non_interaction, false) AS non_interaction,
               coalesce(properties, MAP {{}}) AS properties,
               epoch_us("timestamp") AS us,
               lower(replace(coalesce(type, ''), 'EVENT_TYPE_', '')) AS kind,
               type IN ('EVENT_TYPE_PAGEVIEW', 'EVENT_TYPE_SCREEN_VIEW') AS is_view,
               CASE device_type
                 WHEN 'DEVICE_TYPE_DESKTOP' THEN 'desktop'
                 WHEN 'DEVICE_TYPE_MOBILE' THEN 'mobile'
                 WHEN 'DEVICE_TYPE_TABLET' THEN 'tablet'
                 WHEN 'DEVICE_TYPE_TV' THEN 'tv'
                 WHEN 'DEVICE_TYPE_CONSOLE' THEN 'console'
                 WHEN 'DEVICE_TYPE_BOT' THEN 'bot'
                 ELSE '' END AS device,
               seq
        FROM (
          SELECT *, row_number() OVER () AS seq
          FROM read_json(?, format = 'newline_delimited', columns = {columns})
        )
        """,
        [path],
    )


def plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    events_path = sys.argv[1]
    source = sys.argv[2] if len(sys.argv) == 3 else "-"
    queries = json.load(sys.stdin if source == "-" else open(source, encoding="utf-8"))["queries"]

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for macro in MACROS:
        con.execute(macro)
    started = time.monotonic()
    load(con, events_path)
    load_seconds = time.monotonic() - started
    count = con.execute("SELECT count(*) FROM events").fetchone()[0]

    results = {}
    for query in queries:
        started = time.monotonic()
        try:
            cursor = con.execute(query["sql"])
        except duckdb.Error as err:
            sys.exit(f"oracle: query {query['name']!r} failed: {err}\n{query['sql']}")
        columns = [d[0] for d in cursor.description]
        rows = [[plain(v) for v in row] for row in cursor.fetchall()]
        results[query["name"]] = {
            "columns": columns,
            "rows": rows,
            "seconds": round(time.monotonic() - started, 4),
        }
    json.dump({"load_seconds": round(load_seconds, 3), "events": count, "results": results}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
