#!/usr/bin/env bash
# The state store's figures on SQLite and PostgreSQL side by side: durable log appends
# (one job; fifty at once) and job pickup latency (enqueue commit to claimed).
# PostgreSQL comes from scripts/setup-postgres.sh (run as root).
#
# usage: bench/db-store.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p slipway-db --example store_figures
bin=target/release/examples/store_figures
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" "$work/sqlite"
url=$(bash scripts/setup-postgres.sh)
db="slipway_bench_$$"
psql_url=${url%/*}
psql "$url" -qc "CREATE DATABASE $db"
"$bin" "$work/pg" "$psql_url/$db"
psql "$url" -qc "DROP DATABASE $db WITH (FORCE)"
