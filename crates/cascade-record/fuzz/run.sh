#!/usr/bin/env bash
# Runs a fuzz target of the record batch codec with cargo-fuzz (libFuzzer).
#
#   crates/cascade-record/fuzz/run.sh [TARGET] [SECONDS]     # defaults: decode_batch 60
#   crates/cascade-record/fuzz/run.sh check                  # compile-check on stable only
#
# Targets: decode_batch (arbitrary bytes through every decoder), round_trip (structured records
# built with BatchBuilder must decode back to themselves).
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, because libFuzzer's
# instrumentation uses -Zsanitizer. With only a stable toolchain, RUSTC_BOOTSTRAP=1 lets stable
# accept the nightly flags (set FUZZ_TOOLCHAIN=bootstrap). None of this is part of the normal
# build or `cargo test`: this crate is outside the main workspace, and the same decode paths
# are exercised on stable by the property and exhaustive-mutation tests in src/tests.rs.
#
# Corpus: fuzz/corpus/TARGET (git-ignored), seeded from fuzz/seeds/TARGET (committed; the first
# byte of a decode_batch input is a mode byte, odd = fix the CRC up before decoding). Crashes
# land in fuzz/artifacts/TARGET; replay one with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…`.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-decode_batch}
if [ "$target" = check ]; then
  # Builds and lints the targets without libFuzzer's instrumentation: works on stable.
  exec cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings
fi
secs=${2:-60}
jobs=${FUZZ_JOBS:-1}
case ${FUZZ_TOOLCHAIN:-nightly} in
  nightly) cargo=(cargo +nightly) ;;
  bootstrap) export RUSTC_BOOTSTRAP=1; cargo=(cargo) ;;
  *) echo "FUZZ_TOOLCHAIN must be nightly or bootstrap" >&2; exit 2 ;;
esac
corpus=(fuzz/corpus/"$target")
mkdir -p "${corpus[0]}"
[ -d fuzz/seeds/"$target" ] && corpus+=(fuzz/seeds/"$target")
"${cargo[@]}" fuzz run "$target" "${corpus[@]}" --jobs "$jobs" -- -max_total_time="$secs" -max_len=4096
