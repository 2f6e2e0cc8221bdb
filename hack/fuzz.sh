#!/usr/bin/env bash
# Fuzzes the model proxy's HTTP/1.1 head parser and framing against hyper (fuzz/, target
# h1_framing: see fuzz/fuzz_targets/h1_framing.rs) for a bounded time, starting from the
# seeds in fuzz/corpus/h1_framing/. Exits non-zero when an input crashes the target (a
# disagreement with hyper, or a panic); the input is kept in fuzz/artifacts/h1_framing/ and
# `cargo +nightly fuzz run h1_framing fuzz/artifacts/h1_framing/<file>` replays it.
#
# Usage: hack/fuzz.sh [libFuzzer flags…]
#   env: FUZZ_SECONDS=60 (fuzzing time, after the build), or FUZZ_RUNS=N with FUZZ_SEED=1:
#        a fixed number of inputs from a fixed seed, so the same commit fuzzes the same
#        inputs on every machine (CI uses this: a red CI then reproduces here, and a new
#        finding shows up when the code changes, not at random), FUZZ_TARGET=h1_framing,
#        FUZZ_TOOLCHAIN=stable (cargo-fuzz passes -Z flags: on a stable rustc they are
#        allowed by RUSTC_BOOTSTRAP=1, so CI needs no nightly download; set
#        FUZZ_TOOLCHAIN=nightly to use a nightly you have)
# Installs cargo-fuzz from crates.io when missing.
# The first build takes about 3 minutes (docs/model-proxy.md, Fuzzing); new inputs the fuzzer
# finds go to a scratch directory, so the repository's corpus stays as committed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
target=${FUZZ_TARGET:-h1_framing}
toolchain=${FUZZ_TOOLCHAIN:-stable}

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "the Rust toolchain '$toolchain' is not installed: rustup toolchain install $toolchain, or unset FUZZ_TOOLCHAIN" >&2
    exit 1
fi
if [ "$toolchain" != nightly ]; then
    export RUSTC_BOOTSTRAP=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# -a: overflow checks and debug assertions on, so arithmetic slips crash too.
cargo +"$toolchain" fuzz build -a "$target"
if [ -n "${FUZZ_RUNS:-}" ]; then
    budget=(-runs="$FUZZ_RUNS" -seed="${FUZZ_SEED:-1}")
else
    budget=(-max_total_time="$seconds")
fi
cargo +"$toolchain" fuzz run -a "$target" "$scratch" "fuzz/corpus/$target" -- \
    "${budget[@]}" -max_len=4096 -timeout=10 "$@"
