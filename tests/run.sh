#!/usr/bin/env bash
# Runs the whole test suite: installs what it needs, checks format and lints,
# builds once and runs every test (unit, integration and end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."

# A target directory outside the clone lets consecutive runs reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tally/target}"
# Incremental caches double the target directory and do not help a run from a fresh clone.
export CARGO_INCREMENTAL=0
export GRPCURL="${GRPCURL:-$(go env GOPATH)/bin/grpcurl}"
# The soak test (tests/e2e/soak.rs) runs 10 minutes by default; a shortened form here.
export TALLY_SOAK_SECS="${TALLY_SOAK_SECS:-60}"

bash tests/setup.sh

# Cassandra and redis-server for the ScyllaDB + Redis tests: started once, in
# the background while the checks and the build run, stopped on exit.
source tests/services.sh
log="$(mktemp)"
trap 'services_stop; rm -f "$log"' EXIT
services_start

echo "== format"
cargo fmt --all --check
echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --all-targets --locked
# The correctness suite (tests/e2e/correctness) runs the optimised server.
cargo build --release --locked -p tally-server --bin tally
services_wait
echo "== tests"
status=0
# --no-fail-fast: a failing test binary does not hide the ones after it.
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
# Stops and restarts the one Cassandra during ingest: alone, once every
# other test that uses it is done.
echo "== fault test: Cassandra stopped and restarted during ingest"
cargo test --locked -p tally-server --test integration -- --ignored --exact \
  scylla::cassandra_stopped_and_restarted_during_ingest_loses_nothing 2>&1 | tee -a "$log" || status=$?
# Only the cargo tests use them: free the cores and memory for the SDK suites.
services_stop

echo "== kotlin sdk (mvn test: JUnit on the JVM against the tally binary)"
reports=sdk-kotlin-bridge/target/surefire-reports
rm -rf "$reports"
# The workspace build above made the bridge library, uniffi-bindgen and tally.
kotlin=0
(cd sdk-kotlin-bridge && mvn -q -B -Dstyle.color=never -Dcargo.skip=true test) || { kotlin=1; status=1; }

echo "== web sdk (npm ci && npm test: node:test against the tally binary, Chromium)"
# The workspace build above made tally; the tests find it in $CARGO_TARGET_DIR.
web_tap=sdk-web/test-results.tap
rm -f "$web_tap"
web=0
(cd sdk-web && npm ci --no-audit --no-fund --loglevel=error && npm test) || { web=1; status=1; }

echo "== swift bindings (regenerated = committed)"
swift=0
bash sdk-swift-bridge/check-bindings.sh || { swift=1; status=1; }

# One closing line for the whole run, summed over every test binary, the
# JUnit reports (one <testsuite> tag per class), the web SDK's TAP summary
# and the Swift drift check.
shopt -s nullglob
awk -v swift_failed="$swift" -v kotlin_failed="$kotlin" -v web_failed="$web" '
  function attr(tag, name) {
    return match(tag, " " name "=\"[0-9]+\"") ? substr(tag, RSTART + length(name) + 3, RLENGTH - length(name) - 4) + 0 : 0
  }
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
  /<testsuite / {
    junit++
    bad = attr($0, "failures") + attr($0, "errors"); skip = attr($0, "skipped")
    p += attr($0, "tests") - bad - skip; f += bad; s += skip
  }
  # node:test TAP summary (sdk-web): top-level lines only.
  /^# pass [0-9]+$/ { p += $3; tap++ }
  /^# fail [0-9]+$/ { f += $3 }
  /^# skipped [0-9]+$/ { s += $3 }
  END {
    if (kotlin_failed && !junit) f++ # the build failed before any test ran
    if (web_failed && !tap) f++
    if (swift_failed) f++; else p++
    printf "tests: %d passed, %d failed, %d skipped\n", p, f, s
  }' "$log" "$reports"/TEST-*.xml sdk-web/test-results.ta[p] # a glob: left out when missing
exit "$status"
