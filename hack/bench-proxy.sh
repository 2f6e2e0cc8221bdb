#!/usr/bin/env bash
# Benchmark of `ds model-proxy` (issue 5): the same local upstream reached directly, through
# `ds model-proxy` (metrics on; query logs off, then on), and through nginx as the reference
# reverse proxy (proxy_pass with an upstream keepalive pool; once as is, once also adding a
# request ID both ways and X-Forwarded-For, the header work ds model-proxy does), driven by
# wrk at 1, 16 and 64 connections. Prints a Markdown table (requests/s, p50, p99) for
# docs/benchmarks.md, the two proxies' ratios paired round by round, then a 100 MB upload
# and download through the proxy with its peak memory.
#
# The upstream is nginx answering every request with a fixed TensorFlow-Serving body, so the
# upstream costs next to nothing and the proxies' own overhead shows.
#
# Usage: hack/bench-proxy.sh
#   env: DURATION=5s per run, ROUNDS=3, CONNS="1 16 64", BASE_PORT=38500,
#        WORKERS=2 (nginx worker_processes of the reverse proxy, and worker threads of every
#        ds model-proxy: both proxies get the same number of event loops),
#        DS_BIN=path (skip the release build, e.g. to try the script with a debug build),
#        BASELINE_BIN=path (an older `ds` build, run too as "ds model-proxy, baseline" with
#        metrics on and query logs off, for before/after ratios measured in the same run:
#        requests/s against nginx and against the current build, p99 and CPU per request)
# Needs root for apt-get when nginx or wrk are missing. Builds `ds` with --release.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/proxy-bench.sh
source hack/lib/proxy-bench.sh

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-"1 16 64"}
BASE_PORT=${BASE_PORT:-38500}
WORKERS=${WORKERS:-2}
UP=$((BASE_PORT + 1))         # upstream (nginx, fixed answer)
NGX=$((BASE_PORT + 2))        # nginx reverse proxy
DSP=$((BASE_PORT + 3))        # ds model-proxy, query logs off
DSA=$((BASE_PORT + 4))        #   its admin port
DSL=$((BASE_PORT + 5))        # ds model-proxy, query logs on
DSLA=$((BASE_PORT + 6))       #   its admin port
DSB=$((BASE_PORT + 7))        # BASELINE_BIN model-proxy, query logs off
DSBA=$((BASE_PORT + 8))       #   its admin port
NGH=$((BASE_PORT + 9))        # nginx reverse proxy doing ds model-proxy's header work
PREDICT_PATH=/v1/models/iris:predict

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    echo "installing nginx and wrk from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi

WORK=$(mktemp -d)
chmod a+rx "$WORK" # nginx workers run as nobody and serve /big from here
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${DS_BIN:-}" ]; then
    DS=$DS_BIN # e.g. a debug build, to try the script itself quickly
else
    echo "building ds (release)" >&2
    cargo build --release --locked --bin ds
    # A private copy: a shared target dir may get another branch's build meanwhile.
    cp "${CARGO_TARGET_DIR:-target}/release/ds" "$WORK/ds"
    DS="$WORK/ds"
fi

# --- the upstream: nginx with a fixed model answer --------------------------------------
head -c 100M /dev/urandom >"$WORK/big.bin"
chmod a+r "$WORK/big.bin"
write_upstream_conf "$WORK" "$UP"
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# --- the reference: nginx as a reverse proxy with a keepalive pool ----------------------
write_proxy_conf "$WORK" "$WORKERS" "$NGX" "$UP" "$NGH"
nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" -g 'daemon off;' &
NGX_PID=$!
PIDS+=("$NGX_PID")

# --- ds model-proxy, without and with query logs ----------------------------------------
COMMON=(--upstream "http://127.0.0.1:$UP" --class-names setosa,versicolor,virginica
    --deployment-id bench)
# Same number of event loops as nginx: DS_PROXY_WORKER_THREADS for ds model-proxy, and
# TOKIO_WORKER_THREADS for a baseline build that runs on tokio's multi-thread runtime.
export DS_PROXY_WORKER_THREADS=$WORKERS TOKIO_WORKER_THREADS=$WORKERS
RUST_LOG=warn "$DS" model-proxy --listen "127.0.0.1:$DSP" --admin-listen "127.0.0.1:$DSA" \
    "${COMMON[@]}" &
DS_PID=$!
PIDS+=("$DS_PID")
RUST_LOG=warn "$DS" model-proxy --listen "127.0.0.1:$DSL" --admin-listen "127.0.0.1:$DSLA" \
    "${COMMON[@]}" --query-log "$WORK/queries.jsonl" &
DSL_PID=$!
PIDS+=("$DSL_PID")
PORTS="$UP $NGX $NGH $DSP $DSL"
if [ -n "${BASELINE_BIN:-}" ]; then
    cp "$BASELINE_BIN" "$WORK/ds-baseline"
    RUST_LOG=warn "$WORK/ds-baseline" model-proxy --listen "127.0.0.1:$DSB" \
        --admin-listen "127.0.0.1:$DSBA" "${COMMON[@]}" &
    DSB_PID=$!
    PIDS+=("$DSB_PID")
    PORTS="$PORTS $DSB"
fi

for port in $PORTS; do
    for _ in $(seq 100); do
        curl -fsS -o /dev/null -X POST "http://127.0.0.1:$port$PREDICT_PATH" 2>/dev/null && break
        sleep 0.1
    done
done

write_post_lua "$WORK/post.lua"

# wrk prints latencies as 123.45us / 1.23ms / 1.20s: convert to milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# CPU time (clock ticks) used so far by these processes, all threads: "user system".
cpu_ticks() {
    local user=0 system=0 pid u s
    for pid in "$@"; do
        read -r u s < <(awk '{ print $14, $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0 0)
        user=$((user + u))
        system=$((system + s))
    done
    echo "$user $system"
}
CLK_TCK=$(getconf CLK_TCK)

# port conns pids-of-the-proxy... -> "rps p50 p99 errors cpu-us-per-request kernel-us-per-request"
run_wrk() {
    local port=$1 conns=$2
    shift 2
    local threads=2
    [ "$conns" -lt 2 ] && threads=1
    local url="http://127.0.0.1:$port$PREDICT_PATH"
    wrk -t"$threads" -c"$conns" -d"$WARMUP" -s "$WORK/post.lua" "$url" >/dev/null
    local out user0 sys0 user1 sys1
    read -r user0 sys0 < <(cpu_ticks "$@")
    out=$(wrk -t"$threads" -c"$conns" -d"$DURATION" --latency -s "$WORK/post.lua" "$url")
    read -r user1 sys1 < <(cpu_ticks "$@")
    local rps p50 p99 errors requests cpu kernel
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' <<<"$out")
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    # CPU per request: machine load from elsewhere slows a proxy down but does not make it
    # burn more CPU per request, so this compares the proxies even on a busy machine.
    per_request() {
        awk -v t="$1" -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }'
    }
    cpu=$(per_request $((user1 - user0 + sys1 - sys0)))
    # The kernel's share: on loopback, sending also runs the receiving side's TCP work.
    kernel=$(per_request $((sys1 - sys0)))
    echo "$rps $p50 $p99 $errors $cpu $kernel"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# name:port:pids whose CPU counts as the proxy's (none for direct; nginx: its workers).
NGX_WORKERS=$(pgrep -P "$NGX_PID" | tr '\n' ' ')
TARGETS=("direct:$UP:" "nginx proxy_pass (keepalive pool):$NGX:$NGX_WORKERS"
    "nginx, with request ID and X-Forwarded-For:$NGH:$NGX_WORKERS"
    "ds model-proxy (metrics):$DSP:$DS_PID" "ds model-proxy (metrics + query logs):$DSL:$DSL_PID")
DSB_NAME="ds model-proxy, baseline (metrics)"
[ -n "${BASELINE_BIN:-}" ] && TARGETS+=("$DSB_NAME:$DSB:$DSB_PID")
RAW="$WORK/raw.txt"
PAIRS="$WORK/pairs.txt" # the same, with the round: compares targets measured minutes apart
: >"$RAW"
: >"$PAIRS"
echo
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores;" \
    "$WORKERS nginx workers, $WORKERS ds model-proxy worker threads"
# Rounds interleave the targets, so a burst of load from elsewhere on the machine hits
# them alike, and each round starts one target later, so none always runs in the same
# slot (the slot right after "direct" measured a few percent low whatever ran in it);
# each figure is the median over the rounds.
for c in $CONNS; do
    for round in $(seq "$ROUNDS"); do
        shift_by=$(((round - 1) % ${#TARGETS[@]}))
        ORDER=("${TARGETS[@]:shift_by}" "${TARGETS[@]:0:shift_by}")
        for target in "${ORDER[@]}"; do
            IFS=: read -r name port pids <<<"$target"
            # shellcheck disable=SC2086 # pids is a list
            result=$(run_wrk "$port" "$c" $pids)
            echo "$c|$name|$result" >>"$RAW"
            echo "$c|$round|$name|$result" >>"$PAIRS"
        done
        echo "  connections $c, round $round done" >&2
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| target | connections | requests/s | p50 ms | p99 ms | proxy CPU µs/request | of which kernel |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for c in $CONNS; do
    for target in "${TARGETS[@]}"; do
        name=${target%%:*}
        rows=$(awk -F'|' -v c="$c" -v n="$name" '$1 == c && $2 == n { print $3 }' "$RAW")
        col() { awk -v i="$1" '{ print $i }' <<<"$rows" | median; }
        errors=$(awk '{ s += $4 } END { print s + 0 }' <<<"$rows")
        note=""
        [ "$errors" -gt 0 ] && note=" (wrk reported errors in $errors runs)"
        cpu=$(col 5)
        kernel=$(col 6)
        [ "$name" = direct ] && cpu="-" && kernel="-"
        echo "| $name$note | $c | $(col 1) | $(col 2) | $(col 3) | $cpu | $kernel |"
    done
done

# Round by round, the proxies against each other: a burst of load from elsewhere, or a
# scheduler placement that favours one run, moves both sides of a round alike.
paired() { # connections numerator denominator column(1 = req/s, 3 = p99, 5 = CPU µs/request)
    awk -F'|' -v c="$1" -v a="$2" -v b="$3" -v col="$4" '
        $1 == c && $3 == a { split($4, f, " "); x[$2] = f[col] }
        $1 == c && $3 == b { split($4, f, " "); y[$2] = f[col] }
        END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' "$PAIRS" |
        sort -g | awk '{ v[NR] = $1 } $1 > 1 { above++ }
            END {
                if (NR == 0) { print "-"; exit }
                printf "median %.3f (%.3f to %.3f), above 1 in %d of %d rounds\n",
                    v[int((NR + 1) / 2)], v[1], v[NR], above, NR
            }'
}
DSM="ds model-proxy (metrics)"
NGP="nginx proxy_pass (keepalive pool)"
echo
echo "paired by round (ratio of the two figures measured in the same round):"
for c in $CONNS; do
    echo "  $c connections:"
    echo "    req/s, ds model-proxy / nginx:           $(paired "$c" "$DSM" "$NGP" 1)"
    echo "    p99, ds model-proxy / nginx:             $(paired "$c" "$DSM" "$NGP" 3)"
    echo "    req/s, query logs on / off:              $(paired "$c" "ds model-proxy (metrics + query logs)" "$DSM" 1)"
    if [ -n "${BASELINE_BIN:-}" ]; then
        echo "    req/s, baseline / nginx:                 $(paired "$c" "$DSB_NAME" "$NGP" 1)"
        echo "    req/s, ds model-proxy / baseline:        $(paired "$c" "$DSM" "$DSB_NAME" 1)"
        echo "    p99, ds model-proxy / baseline:          $(paired "$c" "$DSM" "$DSB_NAME" 3)"
        echo "    CPU/request, ds model-proxy / baseline:  $(paired "$c" "$DSM" "$DSB_NAME" 5)"
    fi
done
echo
echo "raw runs (connections|target|req/s p50 p99 error-lines cpu-us/request kernel-us/request):"
sed 's/^/    /' "$RAW"

metric() { # admin-port name
    curl -fsS "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}
echo
echo "query-log proxy: $(wc -l <"$WORK/queries.jsonl") lines written," \
    "$(metric "$DSLA" ds_proxy_query_log_dropped_total) dropped (queue full)"
echo "predictions counted (versicolor) by the metrics-only proxy:" \
    "$(curl -fsS "http://127.0.0.1:$DSA/metrics" | awk '/^ds_proxy_predictions_total\{class="versicolor"\}/ { print $2 }')"

# --- 100 MB both ways through the proxy: memory stays flat ------------------------------
hwm() { awk '/^VmHWM/ { print $2 " " $3 }' "/proc/$1/status"; }
echo
echo "ds model-proxy peak RSS before the 100 MB transfers: $(hwm "$DS_PID")"
curl -fsS -o /dev/null -X POST --data-binary @"$WORK/big.bin" \
    -H 'content-type: application/octet-stream' "http://127.0.0.1:$DSP/upload"
want=$(sha256sum <"$WORK/big.bin" | cut -d' ' -f1)
got=$(curl -fsS "http://127.0.0.1:$DSP/big" | sha256sum | cut -d' ' -f1)
[ "$want" = "$got" ] && same=identical || same=DIFFERENT
echo "100 MB upload and download through ds model-proxy done; download $same to the source"
echo "ds model-proxy peak RSS after the 100 MB transfers: $(hwm "$DS_PID")"
