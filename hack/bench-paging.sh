#!/usr/bin/env bash
# Paging proof (issue 15): DS_PAGING_COUNT deployments (default 10000) of 200 KiB each,
# about 2 GB, in one deployer of a gateway on a SQLite file in a temporary directory; a
# Watch and a List read the whole snapshot in pages, `ds deployment ls` lists them all.
# Prints the times and peak RSS figures docs/benchmarks.md quotes. RELEASE=1 builds with
# --release (the figures in the docs are of the debug build tests use).
set -euo pipefail
cd "$(dirname "$0")/.."
count="${DS_PAGING_COUNT:-10000}"
tmp="${TMPDIR:-/tmp}"
# The database, its WAL and headroom: three times the specs' size.
need_mib=$((count * 200 * 3 / 1024 + 512))
avail_mib=$(df -Pm "$tmp" | awk 'NR == 2 { print $4 }')
if [ "$avail_mib" -lt "$need_mib" ]; then
  echo "bench-paging: needs ${need_mib} MiB free in $tmp, has ${avail_mib} MiB" >&2
  exit 1
fi
# benches/paging.rs; `cargo bench` builds in release, so the debug build is asked for
# explicitly unless RELEASE=1.
if [ "${RELEASE:-0}" = 1 ]; then
  DS_PAGING_COUNT="$count" cargo bench --bench paging
else
  DS_PAGING_COUNT="$count" cargo bench --profile dev --bench paging
fi
