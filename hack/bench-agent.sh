#!/usr/bin/env bash
# Agent benchmark (issue 4): propagation latency over CHANGES updates (default 1000) and a
# cold restart with DEPLOYMENTS owned deployments (default 5000). Prints Markdown tables
# for docs/benchmarks.md. Loopback only; everything stops by itself.
# Also passed through: RESTARTS=n (restart n times), DS_BIN_ALT=<ds binary> (alternate the
# restarts with it: A/B in one run), RSS_TIMELINE=1 (the restart's RSS over time on stderr),
# AGENT_WRAP="heaptrack -o /tmp/ht" (run the restarted agent under a profiler),
# FIRST_START_WRAP=… (the same for the first start's agent).
# SIM_ONLY=1 (only the simulator's own apply rate, e.g. under perf).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin ds --example agent_bench
target_dir="${CARGO_TARGET_DIR:-target}"
# Run private copies: a shared target directory may be rebuilt from another tree meanwhile.
bin_dir="$(mktemp -d)"
trap 'rm -rf "$bin_dir"' EXIT
cp "$target_dir/release/ds" "$target_dir/release/examples/agent_bench" "$bin_dir/"
DS_BIN="$bin_dir/ds" "$bin_dir/agent_bench"
