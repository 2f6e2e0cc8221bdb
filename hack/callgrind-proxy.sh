#!/usr/bin/env bash
# User-space instructions per request of `ds model-proxy` and of nginx as a reverse proxy,
# counted by valgrind's callgrind (repeatable, unlike timings on a shared machine): each
# proxy runs alone under callgrind with one worker, in front of the same nginx upstream
# that answers every request with a fixed TensorFlow-Serving body, while wrk drives it.
# Kernel time (system calls) is not counted; `hack/bench-proxy.sh` measures whole CPU time.
#
# Usage: hack/callgrind-proxy.sh
#   env: DS_BIN=path (default: build with --release), SECONDS_PER_RUN=10, CONNS=16,
#        QUERY_LOG=1 (also run ds model-proxy with --query-log to a file),
#        KEEP=dir (keep the callgrind outputs there for callgrind_annotate)
# Needs root for apt-get when nginx, wrk or valgrind are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/proxy-bench.sh
source hack/lib/proxy-bench.sh

SECS=${SECONDS_PER_RUN:-10}
CONNS=${CONNS:-16}
BASE_PORT=${BASE_PORT:-38700}
UP=$((BASE_PORT + 1))
PX=$((BASE_PORT + 2))
ADMIN=$((BASE_PORT + 3))
PREDICT_PATH=/v1/models/iris:predict

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v valgrind >/dev/null; then
    echo "installing nginx, wrk and valgrind from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk valgrind >/dev/null
fi

WORK=$(mktemp -d)
chmod a+rx "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${DS_BIN:-}" ]; then
    DS=$DS_BIN
else
    cargo build --release --locked --bin ds
    cp "${CARGO_TARGET_DIR:-target}/release/ds" "$WORK/ds"
    DS="$WORK/ds"
fi

write_upstream_conf "$WORK" "$UP"
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# The reverse proxy as in hack/bench-proxy.sh, as one process (no master) so callgrind
# follows the worker.
NGINX_MASTER=off write_proxy_conf "$WORK" 1 "$PX" "$UP"

write_post_lua "$WORK/post.lua"

wait_ready() {
    for _ in $(seq 150); do
        curl -fsS -o /dev/null -X POST "http://127.0.0.1:$PX$PREDICT_PATH" 2>/dev/null && return
        sleep 0.2
    done
    echo "proxy did not come up" >&2
    exit 1
}

# name stop-signal command... : runs the command under callgrind, drives it, stops it with
# the signal (nginx without a master ends gracefully on QUIT, ds on INT), prints a line.
measure() {
    local name=$1 signal=$2
    shift 2
    local out="$WORK/$name.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" 2>"$WORK/$name.valgrind" &
    local pid=$!
    wait_ready
    local requests
    requests=$(wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$WORK/post.lua" "http://127.0.0.1:$PX$PREDICT_PATH" |
        awk '/requests in/ { print $1 }')
    kill -"$signal" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local instructions
    instructions=$(awk '/I[ ]+refs:/ { gsub(",", "", $NF); print $NF }' "$WORK/$name.valgrind")
    echo "| $name | $requests | $instructions | $((instructions / requests)) |"
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"
        cp "$out" "$KEEP/"
    fi
}

echo "wrk -t1 -c$CONNS for ${SECS}s per proxy; one worker each; instructions include start-up"
echo
echo "| proxy | requests | instructions | instructions/request |"
echo "| --- | ---: | ---: | ---: |"
measure nginx QUIT nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" -g 'daemon off;'
COMMON=(model-proxy --listen "127.0.0.1:$PX" --admin-listen "127.0.0.1:$ADMIN"
    --upstream "http://127.0.0.1:$UP" --class-names setosa,versicolor,virginica
    --deployment-id bench --worker-threads 1)
RUST_LOG=warn measure ds-model-proxy INT "$DS" "${COMMON[@]}"
if [ -n "${QUERY_LOG:-}" ]; then
    RUST_LOG=warn measure ds-model-proxy-query-log INT "$DS" "${COMMON[@]}" \
        --query-log "$WORK/queries.jsonl"
fi
