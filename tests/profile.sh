#!/usr/bin/env bash
# Where the CPU goes while tally ingests, next to the no-op tonic server that
# the ingest ratios compare it with: a whole-process profile (perf, with call
# stacks) of each server's measured run of the ingest bench, split into the
# parts of the path an event takes.
#
#   bash tests/profile.sh                  # batches of 100 (Track)
#   bash tests/profile.sh stream           # 100 events per TrackStream message
#   bash tests/profile.sh unary            # single events
#
# It runs the bench twice: once as it is, for the CPU time per event of each
# server, then under perf, whose stack copies slow both servers down, for the
# share of each part. It prints, per part, the CPU time per event for each
# server (the first run's CPU per event times the part's share of the samples
# in the second run), and keeps each profiled run's stacks folded, one line
# per stack, for flame graph tools (e.g. `cargo install inferno`, then
# `inferno-flamegraph < tally.folded > tally.svg`). Files stay in
# $CARGO_TARGET_DIR/profile/<time>/. BENCH_EVENTS sets the events of the
# profiled run (the first run takes a quarter of them); BENCH_CLIENTS passes
# through to the bench.
set -euo pipefail
cd "$(dirname "$0")/.."

case="${1:-batch}"
case "$case" in
  batch | stream) events="${BENCH_EVENTS:-2000000}" ;;
  unary) events="${BENCH_EVENTS:-1000000}" ;;
  *) echo "usage: bash tests/profile.sh [batch|stream|unary]" >&2; exit 2 ;;
esac

if ! command -v perf >/dev/null; then
  echo "profile: installing perf from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally/target}"
export CARGO_INCREMENTAL=0
out="$CARGO_TARGET_DIR/profile/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"

echo "profile: building the ingest bench (release profile, with debug info) ..."
bench=$(cargo bench --locked -p tally-server --bench ingest --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ingest" and m.get("executable"):
        print(m["executable"])')
[ -x "$bench" ] || { echo "profile: the ingest bench did not build" >&2; exit 1; }

echo "profile: running the ingest bench, case $case, $((events / 4)) events per run, without perf ..."
BENCH_CASES="$case" BENCH_EVENTS="$((events / 4))" "$bench" > "$out/plain.log" 2> "$out/plain.err"
cat "$out/plain.log"

echo "profile: running it again under perf, $events events per run ..."
BENCH_CASES="$case" BENCH_EVENTS="$events" "$bench" > "$out/bench.log" 2> "$out/bench.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT

# Waits until the bench writes line $1 to stderr.
wait_for() {
  until grep -qx "$1" "$out/bench.err"; do
    kill -0 $pid 2>/dev/null || { echo "profile: the bench stopped early:" >&2; cat "$out/bench.err" >&2; exit 1; }
    sleep 0.02
  done
}

# Records the process from line $2 to line $3 of the bench's stderr into $1.
record() {
  wait_for "$2"
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p $pid -o "$out/$1.data" 2> "$out/$1.perf.err" &
  local perf_pid=$!
  wait_for "$3"
  kill -INT $perf_pid
  wait $perf_pid || true
  if [ ! -s "$out/$1.data" ]; then
    echo "profile: perf recorded nothing for the $1 run:" >&2
    cat "$out/$1.perf.err" >&2
    exit 1
  fi
  echo "profile: recorded the $1 run"
}
record noop "ingest: measuring no-op $case" "ingest: measured no-op $case"
record tally "ingest: measuring tally $case" "ingest: measured tally $case"
wait $pid
trap - EXIT

echo "profile: reading the stacks (perf script) ..."
for server in noop tally; do
  perf script -i "$out/$server.data" 2> /dev/null | python3 tests/profile_parts.py fold > "$out/$server.folded"
done
python3 tests/profile_parts.py table "$out/plain.log" "$case" "$out/noop.folded" "$out/tally.folded"
echo "profile: folded stacks in $out/noop.folded and $out/tally.folded"
