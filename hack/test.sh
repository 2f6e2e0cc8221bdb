#!/usr/bin/env bash
# The test command (README): every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads=4
