#!/usr/bin/env bash
# Planning a generated 1,000-job pipeline (anchors, extends, !reference, rules, needs):
# in-process (load + check + plan) and end to end (`slipway list --json`, a process start
# and git included). Target: under 50 ms in-process.
#
# usage: bench/plan-1000.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=30
[ "${1:-}" = "--quick" ] && iterations=5
cargo build --release --quiet --bin slipway --example plan_bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/gen_pipeline.py 1000 "$work/.gitlab-ci.yml"
(cd "$work" && git init -q -b main && git add . && git -c user.email=b@example.com -c user.name=bench commit -qm gen)
echo "pipeline: $(grep -c '^[a-z].*-[0-9][0-9][0-9][0-9]:$' "$work/.gitlab-ci.yml") jobs, $(wc -l < "$work/.gitlab-ci.yml") lines"
echo "in-process: $(target/release/examples/plan_bench "$work/.gitlab-ci.yml" "$iterations")"
slipway=$PWD/target/release/slipway
times=()
for _ in $(seq "$iterations"); do
  s=$(date +%s%N)
  (cd "$work" && "$slipway" list --json > /dev/null)
  e=$(date +%s%N)
  times+=( $(( (e - s) / 1000 )) )
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | sed -n "$(( (iterations + 1) / 2 ))p")
echo "end-to-end slipway list --json: median $(awk "BEGIN{printf \"%.1f\", $median/1000}") ms over $iterations runs"
