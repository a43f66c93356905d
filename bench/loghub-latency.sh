#!/usr/bin/env bash
# The live log hub's share of log-line latency: one job writing ~10,000 lines a second
# (store, then publish) to 50 live subscribers, in one process; percentiles of the time
# from publish to each subscriber receiving the line. The end-to-end figure of issue 4
# (job to a browser's SSE client) adds the HTTP layer on top of this.
#
# usage: bench/loghub-latency.sh [LINES] [SUBSCRIBERS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p slipway-server --example loghub_latency
target/release/examples/loghub_latency "${1:-20000}" "${2:-50}"
