#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, once per machine:
# grpcurl (from the Go module proxy), used by the end-to-end suite, and Java 17
# with Maven (from Debian), which build and test the Kotlin SDK, and Node.js 20+
# with Chromium (from Debian), which build and test the web SDK in a real browser,
# redis-server (Debian) for the ScyllaDB + Redis tests (tests/services.sh
# resolves Cassandra from Maven Central), and the duckdb Python package in a
# virtual environment (from PyPI), the correctness suite's independent oracle.
set -euo pipefail

GRPCURL_VERSION="v1.9.4"
gobin="$(go env GOPATH)/bin"
if [ ! -x "$gobin/grpcurl" ]; then
  echo "setup: installing grpcurl $GRPCURL_VERSION into $gobin"
  go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
fi
echo "setup: grpcurl $("$gobin/grpcurl" -version 2>&1 | awk '{print $2}')"

missing=()
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "setup: $(javac -version 2>&1), $(mvn -v 2>/dev/null | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
echo "setup: node $(node --version), npm $(npm --version), $(chromium --version 2>/dev/null)"

# DuckDB for the correctness suite (tests/e2e/correctness.rs runs tests/duckdb/oracle.py
# with this interpreter). Test environment only: the server never needs it.
DUCKDB_VERSION="2.0.0"
venv="${TALLY_VENV:-$HOME/.cache/tally/venv}"
if ! "$venv/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  echo "setup: installing duckdb $DUCKDB_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "duckdb==$DUCKDB_VERSION"
fi
echo "setup: duckdb $("$venv/bin/python" -c 'import duckdb; print(duckdb.__version__)') in $venv"
