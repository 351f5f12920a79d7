#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, once per machine:
# grpcurl (from the Go module proxy), used by the end-to-end suite.
set -euo pipefail

GRPCURL_VERSION="v1.9.4"
gobin="$(go env GOPATH)/bin"
if [ ! -x "$gobin/grpcurl" ]; then
  echo "setup: installing grpcurl $GRPCURL_VERSION into $gobin"
  go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
fi
echo "setup: grpcurl $("$gobin/grpcurl" -version 2>&1 | awk '{print $2}')"
