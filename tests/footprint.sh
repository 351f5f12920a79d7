#!/usr/bin/env bash
# Storage footprint of the embedded store with a generated data set: bytes per
# event on disk (`du` of the data directory), server RSS and start-up time.
#
# Usage: bash tests/footprint.sh [EVENTS]   (default 1,000,000)
# Needs the release binary: cargo build --release -p tally-server --bin tally
# (TALLY_BIN overrides its path).
#
# It serves a fresh data directory, sends `tally generate` events (28 days,
# seed 1, with the generator's geo-IP database), waits until the compactor
# has moved every sealed hour into segments, restarts the server (graceful
# stop) and prints: the start-up time (process start to "tally serving": the
# store, the visit state, the realtime window and the rollups rebuilt), the
# RSS once serving, and the data directory's size per event.
set -euo pipefail

EVENTS=${1:-1000000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TALLY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/tally}
WORK=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
export TALLY_ADMIN_KEY=footprint-operator-key-0123456789
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$BIN" generate --events 1 --output /dev/null --write-geoip-db "$WORK/geo.mmdb" >/dev/null

serve() {
  "$BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --geoip-db "$WORK/geo.mmdb" >"$WORK/$1.log" 2>&1 &
  SERVER=$!
  STARTED=$(date +%s.%N)
  until grep -q "tally serving" "$WORK/$1.log"; do
    kill -0 "$SERVER" || { cat "$WORK/$1.log"; exit 1; }
    sleep 0.1
  done
  READY=$(date +%s.%N)
}

serve first
"$BIN" generate --target "http://127.0.0.1:$PORT" --key "$TALLY_ADMIN_KEY" --site footprint \
  --create-site --events "$EVENTS" --seed 1 >"$WORK/generate.log"
# The compactor runs every 30 s; wait for a round that moved every hour.
sleep 35
until [ "$(grep -c "packs compacted into segments" "$WORK/first.log")" -ge 1 ]; do sleep 5; done
sleep 10
kill -TERM "$SERVER"
wait "$SERVER" || true

serve second
RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER/status")
BYTES=$(du -sb "$WORK/data" | cut -f1)
BLOCKS=$(du -sk "$WORK/data" | cut -f1)
awk -v e="$EVENTS" -v s="$STARTED" -v r="$READY" -v rss="$RSS_KB" -v b="$BYTES" -v k="$BLOCKS" 'BEGIN {
  printf "events: %d\n", e
  printf "start-up (process start to serving): %.1f s\n", r - s
  printf "server RSS once serving: %.0f MiB\n", rss / 1024
  printf "data directory: %.1f bytes per event (apparent), %.1f (allocated)\n", b / e, k * 1024 / e
}'
grep -E "dedup window loaded|visit state rebuilt|realtime window rebuilt|rollups rebuilt" "$WORK/second.log" | sed 's/^/  /'
