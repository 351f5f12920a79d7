#!/usr/bin/env bash
# Fuzzes each cargo-fuzz target in fuzz/ for a bounded time, starting from the
# committed corpus: `bash tests/fuzz.sh [seconds] [target...]` (default 60 s,
# every target). Installs cargo-fuzz when it is missing; needs the nightly
# toolchain. Prints one line per target with libFuzzer's final figures:
#
#   fuzz result: <target> passed|FAILED: <s> s, <runs> runs, <n> exec/s, cov: <edges>, ft: <features>, corpus: <inputs>
#
# and exits non-zero when a target crashed, hung (30 s) or ran out of memory;
# libFuzzer's report is printed and the input that did it is kept under
# fuzz/artifacts/<target>/ (replay it: cargo +nightly fuzz run <target> <file>).
# New inputs go to a temporary directory, so the committed corpus stays as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
CARGO_FUZZ_VERSION="0.13.2"
# The nightly build with coverage instrumentation shares nothing with the
# stable one: it gets a target directory of its own, outside the clone, so
# that consecutive runs reuse it.
export CARGO_TARGET_DIR="${TALLY_FUZZ_TARGET_DIR:-$HOME/.cache/tally/fuzz-target}"
# No sanitizer: the code fuzzed here forbids `unsafe`, and ASan would halve the
# executions per second and lengthen the build. 16 codegen units: a faster
# build for a few percent of speed.
build_flags=(--sanitizer none --codegen-units 16)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "fuzz: building ${targets[*]} ($(rustc +nightly --version))"
if ! cargo +nightly fuzz build "${build_flags[@]}"; then
  for target in "${targets[@]}"; do echo "fuzz result: $target FAILED: the build failed"; done
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
for target in "${targets[@]}"; do
  mkdir -p "$work/$target" "fuzz/corpus/$target"
  log="$work/$target.log"
  echo "fuzz: $target for $seconds s"
  status=0
  cargo +nightly fuzz run "${build_flags[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1 || status=$?
  # libFuzzer's last status line ("#<runs> DONE cov: .. ft: .. corp: ..
  # exec/s: .."), and its final stats.
  last="$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$log" | tail -n 1 || true)"
  field() { awk -v key="$1:" '{ for (i = 1; i < NF; i++) if ($i == key) { print $(i + 1); exit } }' <<<"$last"; }
  stat() { awk -v key="stat::$1:" '$1 == key { print $2 }' "$log" | tail -n 1; }
  figures="${seconds} s, $(stat number_of_executed_units) runs, $(stat average_exec_per_sec) exec/s, cov: $(field cov), ft: $(field ft), corpus: $(field corp)"
  if [ "$status" -eq 0 ] && grep -qE '^#[0-9]+[[:space:]]+DONE' "$log"; then
    echo "fuzz result: $target passed: $figures"
  else
    failed=1
    # The fuzzer's report: the panic or signal, the input that caused it.
    grep -vE '^#[0-9]+[[:space:]]|^[[:space:]]*(Compiling|Finished|Running|Blocking)' "$log" | tail -n 60
    echo "fuzz result: $target FAILED: $figures"
  fi
done
exit "$failed"
