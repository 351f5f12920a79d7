#!/usr/bin/env bash
# Regenerates the Swift bindings (Swift source, C header, modulemap) from the
# built bridge library and fails if they differ from the committed files.
# With --write, updates the committed files instead. Needs only cargo: the
# bindings are made from the library's metadata, on any host.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
case "$(uname -s)" in
  Darwin) library="$target/debug/libtally_swift_bridge.dylib" ;;
  *) library="$target/debug/libtally_swift_bridge.so" ;;
esac

# The same set as the Kotlin build (sdk-kotlin-bridge/pom.xml), so that one
# feature resolution serves both and neither rebuilds the other's library.
cargo build --quiet --locked -p tally-kotlin-bridge -p tally-swift-bridge -p tally-uniffi-bindgen -p tally-server
generated="$(mktemp -d)"
trap 'rm -rf "$generated"' EXIT
"$target/debug/uniffi-bindgen" generate --language swift --no-format \
  --config sdk-swift-bridge/bindgen.toml --out-dir "$generated" "$library"

# Each generated file and where it is committed.
declare -A committed=(
  [TallyCore.swift]=sdk-swift-bridge/Sources/TallyCore/TallyCore.swift
  [TallyCoreFFI.h]=sdk-swift-bridge/include/TallyCoreFFI.h
  [TallyCoreFFI.modulemap]=sdk-swift-bridge/include/TallyCoreFFI.modulemap
)
unexpected="$(cd "$generated" && ls)"
drift=0
for file in "${!committed[@]}"; do
  unexpected="$(grep -vxF "$file" <<<"$unexpected" || true)"
  if [ "${1:-}" = "--write" ]; then
    cp "$generated/$file" "${committed[$file]}"
  elif ! diff -u "${committed[$file]}" "$generated/$file" >&2; then
    drift=1
  fi
done
if [ -n "$unexpected" ]; then
  echo "swift bindings: generated files with no committed place: $unexpected" >&2
  exit 1
fi
if [ "$drift" -ne 0 ]; then
  echo "swift bindings: out of date; run: bash sdk-swift-bridge/check-bindings.sh --write" >&2
  exit 1
fi
if [ "${1:-}" = "--write" ]; then echo "swift bindings: written"; else echo "swift bindings: up to date"; fi
