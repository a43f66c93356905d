#!/usr/bin/env bash
# Issue 4's log load: JOBS jobs of one pipeline run at once, each writing MB megabytes of
# numbered 50-byte lines through the server (masker, durable group-committed appends,
# live hub); then every job's stored log is read back over HTTP and every line checked,
# in order. Default: 50 jobs x 10 MB.
#
# usage: bench/server-log-load.sh [JOBS] [MB]
#        bench/server-log-load.sh --quick          (10 jobs x 1 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-50}
mb=${2:-10}
if [ "$jobs" = "--quick" ]; then jobs=10; mb=1; fi
cargo build --release --quiet --bin slipway --example server_bench
# SQLite, then PostgreSQL side by side when SLIPWAY_BENCH_POSTGRES_URL is set (an
# administrator URL, e.g. from scripts/setup-postgres.sh).
SLIPWAY_BENCH_POSTGRES_URL= target/release/examples/server_bench log-load "$jobs" "$mb"
if [ -n "${SLIPWAY_BENCH_POSTGRES_URL:-}" ]; then
    target/release/examples/server_bench log-load "$jobs" "$mb"
fi
