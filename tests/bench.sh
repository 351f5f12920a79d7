#!/usr/bin/env bash
# Every performance figure of the brief in one run, printed as one table with
# its target and whether it is met.
#
#   bash tests/bench.sh            # full: 10M-event reports and footprint (about 15 minutes on 2 cores once built)
#   bash tests/bench.sh --quick    # small sizes, a few minutes once built
#
# It builds the benchmarks once, then runs, each next to its baseline in the
# same process: ingest (a no-op tonic server), enrichment (a native event),
# reports (DuckDB over the same raw events), realtime latency, ingest against
# Cassandra + Redis (raw Cassandra writes of the same rows), and the footprint
# of a `tally serve` process holding the data set (bytes per event on disk,
# start-up, RSS). Each bench appends its figures to a JSON lines file
# (TALLY_BENCH_FIGURES); tests/bench_table.py turns them into the table.
# Logs and figures stay in $CARGO_TARGET_DIR/bench/<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "usage: bash tests/bench.sh [--quick]" >&2; exit 2 ;;
esac

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally/target}"
export CARGO_INCREMENTAL=0
bash tests/setup.sh

out="$CARGO_TARGET_DIR/bench/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
export TALLY_BENCH_FIGURES="$out/figures.jsonl"
: > "$TALLY_BENCH_FIGURES"

if [ "$quick" = 1 ]; then
  ingest_events=100000 enrich_events=50000 realtime_seconds=5
  report_events=200000 report_runs=10 footprint_events=200000 scylla_events=30000
else
  ingest_events=400000 enrich_events=200000 realtime_seconds=20
  report_events=10000000 report_runs=50 footprint_events=10000000 scylla_events=200000
fi

source tests/services.sh
trap services_stop EXIT

echo "bench: building the benchmarks (release profile) ..."
cargo bench --locked -p tally-server --no-run 2>&1 | grep -v '^ *\(Compiling\|Executable\)' || true

started=$SECONDS
run() {
  local bench=$1
  shift
  echo "bench: $bench ($*) ..."
  local t0=$SECONDS
  env "$@" cargo bench --locked -q -p tally-server --bench "$bench" > "$out/$bench.log" 2> "$out/$bench.err" || {
    echo "bench: $bench failed; its output:" >&2
    cat "$out/$bench.log" "$out/$bench.err" >&2
    exit 1
  }
  cat "$out/$bench.log"
  echo "bench: $bench took $((SECONDS - t0)) s"
}

run ingest BENCH_EVENTS=$ingest_events
run enrich BENCH_EVENTS=$enrich_events
run realtime BENCH_SECONDS=$realtime_seconds
run reports BENCH_EVENTS=$report_events BENCH_RUNS=$report_runs
run footprint BENCH_EVENTS=$footprint_events
# Cassandra and redis-server only now, so that they take nothing from the
# benches before.
services_start
services_wait
run ingest_scylla BENCH_EVENTS=$scylla_events TALLY_TEST_CQL="$TALLY_TEST_CQL" TALLY_TEST_REDIS="$TALLY_TEST_REDIS"
services_stop

# The web tracker as served: gzip -9 of the committed asset.
tracker_bytes=$(gzip -9c server/assets/tally.js | wc -c)
echo "{\"key\": \"tracker.gzip_bytes\", \"value\": $tracker_bytes}" >> "$TALLY_BENCH_FIGURES"

echo "bench: all figures in $TALLY_BENCH_FIGURES ($((SECONDS - started)) s of benchmarks)"
echo
python3 tests/bench_table.py "$TALLY_BENCH_FIGURES" --machine "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
