#!/usr/bin/env bash
# How long the web pages take to render from the store (SQLite), over HTTP on an
# in-process server: the projects list, a project overview, the pipelines list, a
# pipeline of 30 jobs with needs, a job with a 5,000-line log; beside them the API's
# JSON list of the same pipelines and the list page of a project with one pipeline (a
# page that ran one query per row would grow with its rows).
#
# usage: bench/ui-pages.sh [PIPELINES] [ROUNDS]      (--quick: 40 pipelines, 30 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--quick" ]; then set -- 40 30; fi
cargo build --release --quiet -p slipway-server --example ui_pages
target/release/examples/ui_pages "${1:-200}" "${2:-200}"
