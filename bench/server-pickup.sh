#!/usr/bin/env bash
# Issue 4's pickup figure: the time from `git push` (through the installed post-receive
# hook, curl) and from a signed GitHub webhook to the first line of the first job's
# script, against a server started for the run (release build, SQLite, shell executor).
# Target: under 100 ms median. The peer, GitLab Runner, asks for jobs every 3 s.
#
# usage: bench/server-pickup.sh [N]        (N pushes and N webhooks; default 30)
#        bench/server-pickup.sh --quick    (5 of each)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-30}
[ "$n" = "--quick" ] && n=5
cargo build --release --quiet --bin slipway --example server_bench
# SQLite, then PostgreSQL side by side when SLIPWAY_BENCH_POSTGRES_URL is set (an
# administrator URL, e.g. from scripts/setup-postgres.sh).
SLIPWAY_BENCH_POSTGRES_URL= target/release/examples/server_bench pickup "$n"
if [ -n "${SLIPWAY_BENCH_POSTGRES_URL:-}" ]; then
    target/release/examples/server_bench pickup "$n"
fi
