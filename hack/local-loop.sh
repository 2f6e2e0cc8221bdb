#!/usr/bin/env bash
# The whole loop on one machine, on top of `ds dev`:
#   1. `ds dev` (gateway + simulated cluster + agent) in a fresh data directory;
#   2. `ds deployment create` through the deployer `local`, waiting for the rollout, and
#      `kubectl get deploy` against the simulated cluster;
#   3. a TensorFlow-Serving stand-in (hack/stand-in-model.py) behind `ds model-proxy`,
#      one predict request with hack/payload.json through the proxy, and its metrics.
# The simulated cluster runs no containers, so the model and its proxy run here as local
# processes, the way the pod would run them side by side.
#
# Usage: bash hack/local-loop.sh        (DS_BIN=path/to/ds to skip the cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${DS_BIN:-}" ]]; then
  cargo build --quiet
  DS_BIN="${CARGO_TARGET_DIR:-target}/debug/ds"
fi
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 1. ds dev
"$DS_BIN" dev --data-dir "$work/ds-data" --listen 127.0.0.1:0 --cluster-listen 127.0.0.1:0 \
  --agent-health 127.0.0.1:0 --rollout-delay 0.5 >"$work/dev.out" 2>"$work/dev.log" &
pids+=($!)
for _ in $(seq 1 300); do
  grep -q '^export DS_API_KEY=' "$work/dev.out" 2>/dev/null && break
  sleep 0.1
done
grep -q '^export DS_API_KEY=' "$work/dev.out" || { echo "ds dev did not start:"; cat "$work/dev.log"; exit 1; }
eval "$(grep '^export DS_' "$work/dev.out")"
echo "== ds dev: gateway $DS_GATEWAY"

# 2. a deployment through the agent into the simulated cluster
"$DS_BIN" deployment create --deployer local --model-name iris \
  --image tensorflow/serving:2.15.0 --replicas 2 --class-names setosa,versicolor,virginica \
  --wait --timeout 60s
"$DS_BIN" deployment ls
if command -v kubectl >/dev/null; then
  kubectl --kubeconfig "$work/ds-data/kubeconfig" get deploy,svc -n default
fi
deployment_id="$("$DS_BIN" deployment get iris -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("id") or d.get("deployment",{}).get("id",""))')"

# 3. the stand-in model behind the model-proxy, one request through it
model_port="$(free_port)"
python3 hack/stand-in-model.py "$model_port" >/dev/null &
pids+=($!)
proxy_port="$(free_port)"
admin_port="$(free_port)"
"$DS_BIN" model-proxy --listen "127.0.0.1:$proxy_port" --admin-listen "127.0.0.1:$admin_port" \
  --upstream "http://127.0.0.1:$model_port" --class-names setosa,versicolor,virginica \
  --deployment-id "$deployment_id" 2>"$work/proxy.log" &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "== predict through ds model-proxy"
answer="$(curl -fsS -H 'Content-Type: application/json' --data @hack/payload.json \
  "http://127.0.0.1:$proxy_port/v1/models/iris:predict")"
echo "$answer"
python3 -c 'import json,sys; p=json.loads(sys.argv[1])["predictions"]; assert len(p)==3, p' "$answer"
echo "== proxy metrics"
curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep -E '^ds_proxy_(requests_total|predictions)' || true
echo "== the loop works"
