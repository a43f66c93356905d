#!/usr/bin/env bash
# Blue-green and rollback through the real `slipway server` under steady load: a project
# whose pipeline ships the demo service (examples/demo/src/main.rs, built once here) to
# production (process target, 2 instances, blue-green, v1 kept warm). Deploys v1 through a
# pipeline, measures wrk directly against one instance and through the environment's
# router (interleaved), then drives wrk at the router while v2 is pushed and deployed and
# `slipway rollback production` brings v1 back. Fails on any failed request, and (not
# with --quick) on a rollback command of 1 s or more.
#
# usage: bench/server-bluegreen.sh [--quick]     (--quick: one 3 s run each way, for CI)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq wrk > /dev/null
fi
cargo build --release --quiet -p slipway-cli
exec python3 bench/server_bluegreen.py --slipway target/release/slipway "$@"
