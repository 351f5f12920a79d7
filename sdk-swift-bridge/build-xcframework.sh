#!/usr/bin/env bash
# Builds TallyCoreFFI.xcframework (the Rust core for iOS devices and the
# simulator, with the generated header and modulemap) next to Package.swift.
# Runs on macOS with Xcode and the iOS Rust targets:
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
for triple in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios; do
  cargo build --locked --release -p tally-swift-bridge --target "$triple"
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/headers" "$work/simulator"
cp sdk-swift-bridge/include/TallyCoreFFI.h "$work/headers/"
cp sdk-swift-bridge/include/TallyCoreFFI.modulemap "$work/headers/module.modulemap"
lipo -create \
  "$target/aarch64-apple-ios-sim/release/libtally_swift_bridge.a" \
  "$target/x86_64-apple-ios/release/libtally_swift_bridge.a" \
  -output "$work/simulator/libtally_swift_bridge.a"

rm -rf sdk-swift-bridge/TallyCoreFFI.xcframework
xcodebuild -create-xcframework \
  -library "$target/aarch64-apple-ios/release/libtally_swift_bridge.a" -headers "$work/headers" \
  -library "$work/simulator/libtally_swift_bridge.a" -headers "$work/headers" \
  -output sdk-swift-bridge/TallyCoreFFI.xcframework
echo "built sdk-swift-bridge/TallyCoreFFI.xcframework"
