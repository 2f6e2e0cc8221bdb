#!/usr/bin/env bash
# Builds the pinned Kubernetes control plane the real-API-server tests run: etcd,
# kube-apiserver and kube-controller-manager, from the Go modules pinned in
# hack/kube/go.mod (k8s.io/kubernetes and go.etcd.io/etcd/server/v3), into a cache
# directory keyed by the version. What is already there is not built again.
#
#   bash hack/kube/build.sh          # prints the bin directory on its last line
#   DS_KUBE_CACHE=DIR                # cache root (default ~/.cache/ds-deployer)
#
# Nothing is downloaded but Go modules (the Go module proxy); nothing is committed but
# go.mod and go.sum.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v go >/dev/null 2>&1; then
  echo "hack/kube/build.sh: no 'go' on PATH: install Go 1.26 or newer (the module needs go $(sed -n 's/^go //p' "$here/go.mod"))" >&2
  exit 1
fi

kube_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$here/go.mod")
if [ -z "$kube_version" ] || [ -z "$etcd_version" ]; then
  echo "hack/kube/build.sh: hack/kube/go.mod must require k8s.io/kubernetes and go.etcd.io/etcd/server/v3" >&2
  exit 1
fi
# The key includes go.sum so a change of any pinned module builds anew.
sum=$(sha256sum "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)
bin="${DS_KUBE_CACHE:-$HOME/.cache/ds-deployer}/kube-${kube_version}-etcd-${etcd_version}-${sum}/bin"
mkdir -p "$bin"

# package path -> binary name
declare -A targets=(
  [go.etcd.io/etcd/server/v3]=etcd
  [k8s.io/kubernetes/cmd/kube-apiserver]=kube-apiserver
  [k8s.io/kubernetes/cmd/kube-controller-manager]=kube-controller-manager
)

export GOFLAGS="-trimpath -mod=readonly"
export CGO_ENABLED=0
start=$(date +%s)
built=()
for pkg in "${!targets[@]}"; do
  name=${targets[$pkg]}
  if [ -x "$bin/$name" ]; then
    continue
  fi
  echo "building $name ($pkg) into $bin" >&2
  # Into a temporary name first: an interrupted build leaves no half-written binary.
  (cd "$here" && go build -ldflags='-s -w' -o "$bin/.$name.tmp" "$pkg") || {
    echo "hack/kube/build.sh: building $name failed (see above); the Go module proxy must be reachable for a cold build" >&2
    exit 1
  }
  mv "$bin/.$name.tmp" "$bin/$name"
  built+=("$name")
done
if [ ${#built[@]} -gt 0 ]; then
  echo "built ${built[*]} in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
