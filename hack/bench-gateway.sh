#!/usr/bin/env bash
# Gateway benchmarks (issue 2): Watch fan-out to 1,000 and 10,000 agent streams (latency
# from an update RPC to its arrival, gateway RSS per stream) and CreateDeployment RPCs per
# second on SQLite. The gateway and the load generator (benches/gateway_load.rs) run as
# two processes on loopback; results go to docs/benchmarks.md (## Gateway).
# Needs about 2 x STREAMS open files per process (ulimit -n).
# DATABASE_URL=postgres://… runs the gateway on that (empty) PostgreSQL database instead of
# a fresh SQLite file; the data directory then keeps the admin key between the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin ds
cargo bench --bench gateway_load --no-run
target_dir="${CARGO_TARGET_DIR:-target}"
loadgen=$(ls -t "$target_dir"/release/deps/gateway_load-* | grep -v '\.d$' | head -1)
work=$(mktemp -d)
port=${PORT:-18800}
url="http://127.0.0.1:$port"

start_gateway() {
  database=()
  if [ -n "${DATABASE_URL:-}" ]; then
    database=(--database "$DATABASE_URL")
  else
    rm -rf "$work/data"
  fi
  RUST_LOG=warn "$target_dir/release/ds" gateway --insecure --data-dir "$work/data" \
    --listen "127.0.0.1:$port" "${database[@]}" >"$work/gateway.out" 2>"$work/gateway.err" &
  gw_pid=$!
  for _ in $(seq 100); do
    [ -s "$work/data/admin.key" ] && curl -sf "$url/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "gateway did not start" >&2; cat "$work/gateway.err" >&2; exit 1
}
stop_gateway() { kill "$gw_pid"; wait "$gw_pid" || true; }
trap 'kill "${gw_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

# A fresh gateway per measurement, so the RSS baseline holds no earlier streams.
for streams in 1000 10000; do
  start_gateway
  "$loadgen" fanout --url "$url" --api-key "$(cat "$work/data/admin.key")" \
    --streams "$streams" --updates "${UPDATES:-30}" --gateway-pid "$gw_pid"
  stop_gateway
done
start_gateway
"$loadgen" create --url "$url" --api-key "$(cat "$work/data/admin.key")" \
  --concurrency "${CONCURRENCY:-64}" --conns 4 --seconds "${SECONDS_RUN:-10}"
stop_gateway
