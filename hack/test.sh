#!/usr/bin/env bash
# The test command (README): every unit and integration test.
#
# The gateway's PostgreSQL tests (tests/postgres.rs) need a server: unless
# DS_TEST_POSTGRES_URL already names one, a throwaway server is started here (its own
# directory, a Unix socket only, no TCP port to collide on) and removed at the end.
#
# The real-API-server tests (tests/real_kube) need etcd, kube-apiserver and
# kube-controller-manager: unless DS_KUBE_BIN already names a directory holding them,
# hack/kube/build.sh builds them (once; they are cached) and DS_KUBE_BIN is set to its
# answer. A failed build fails the run: those tests never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DS_KUBE_BIN:-}" ]; then
  DS_KUBE_BIN=$(bash hack/kube/build.sh | tail -n 1)
fi
export DS_KUBE_BIN
echo "Kubernetes control plane for the tests: $DS_KUBE_BIN"

if [ -z "${DS_TEST_POSTGRES_URL:-}" ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
    echo "PostgreSQL is missing (no /usr/lib/postgresql/*/bin/initdb): install it (apt-get install -y postgresql) or set DS_TEST_POSTGRES_URL" >&2
    exit 1
  fi
  pg_dir=$(mktemp -d /tmp/ds-test-pg.XXXXXX)
  # PostgreSQL refuses to run as root: run it as the postgres user then.
  as_pg=()
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$pg_dir"
    as_pg=(runuser -u postgres --)
  fi
  stop_pg() {
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  }
  trap stop_pg EXIT
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -A trust --no-sync >"$pg_dir/initdb.log" 2>&1 ||
    { cat "$pg_dir/initdb.log" >&2; exit 1; }
  # Durability does not matter for a throwaway server; connections do (tests in parallel).
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 \
    -o "-c listen_addresses='' -k $pg_dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || { cat "$pg_dir/server.log" >&2; exit 1; }
  export DS_TEST_POSTGRES_URL="postgres://postgres@localhost/postgres?host=$pg_dir"
  echo "throwaway PostgreSQL for the tests: $DS_TEST_POSTGRES_URL"
fi

cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads=4
