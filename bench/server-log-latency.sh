#!/usr/bin/env bash
# Issue 4's live-log figure: a job prints lines stamped with bash's $EPOCHREALTIME; a
# server-sent events client on /api/v1/jobs/{id}/log/stream receives them over HTTP; the
# delay of every line from the job writing it to the client holding it (the line goes
# through the runner's masker, the database, then the log hub). Target: p99 under 200 ms.
#
# usage: bench/server-log-latency.sh [SECONDS] [LINES_PER_SECOND]   (default 20 50)
#        bench/server-log-latency.sh --quick                         (3 s)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
rate=${2:-50}
[ "$secs" = "--quick" ] && secs=3
cargo build --release --quiet --bin slipway --example server_bench
# SQLite, then PostgreSQL side by side when SLIPWAY_BENCH_POSTGRES_URL is set (an
# administrator URL, e.g. from scripts/setup-postgres.sh).
SLIPWAY_BENCH_POSTGRES_URL= target/release/examples/server_bench log-latency "$secs" "$rate"
if [ -n "${SLIPWAY_BENCH_POSTGRES_URL:-}" ]; then
    target/release/examples/server_bench log-latency "$secs" "$rate"
fi
