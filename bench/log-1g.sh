#!/usr/bin/env bash
# A job that prints 1 GiB (16,777,216 lines of 64 bytes, each with a masked secret in it):
# the whole log must reach the disk, masked, and Slipway's memory must stay flat. Peak RSS
# comes from GNU time (-v), for the run alone and with --report (the log streamed into the
# JSON report), next to a one-line job for reference.
#
# usage: bench/log-1g.sh [MIB]      (default 1024; CI's smoke run uses 64)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
cargo build --release --quiet --bin slipway
slipway=$PWD/target/release/slipway
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
repo=$work/repo
mkdir -p "$repo"
secret='s3cr3t!!'   # 8 bytes, like [MASKED]: the masked log is exactly as long
# 63 characters and a newline.
line='a job printing a lot of output; the token is $TOKEN; ok!!!!!!'
cat >"$repo/.gitlab-ci.yml" <<YAML
big-log:
  script:
    # Not \`yes | head\`: under pipefail, yes's SIGPIPE would fail the job, as on GitLab.
    - head -c $((mib * 1024 * 1024)) < <(yes "$line")
small:
  script:
    - echo one line
YAML
(cd "$repo" && git init -q -b main && git add -A && git -c user.email=b@example.com -c user.name=bench commit -qm log)
expected_lines=$((mib * 1024 * 1024 / 64))

measure() { # label args...
  local label=$1; shift
  (cd "$repo" && /usr/bin/time -v -o "$work/time.txt" "$slipway" run --data "$work/data" \
      --secret "TOKEN=$secret" "$@" >"$work/stdout.txt")
  local rss wall
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt")
  printf '%-32s wall %8s  peak RSS %6.1f MB\n' "$label" "$wall" "$(awk -v k="$rss" 'BEGIN{print k/1024}')"
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
measure "small job (reference)" small
measure "$mib MiB job" big-log
log=$(ls -t "$work"/data/projects/*/pipelines/*/big-log.log | head -1)
lines=$(grep -c 'the token is \[MASKED\]; ok' "$log")
leaks=$(grep -c -F "$secret" "$log" || true)
console=$(grep -c 'the token is \[MASKED\]; ok' "$work/stdout.txt")
echo "  log file: $(stat -c %s "$log") bytes, $lines masked job lines of $expected_lines expected, $leaks unmasked"
echo "  console: $console job lines"
[ "$lines" = "$expected_lines" ] && [ "$console" = "$expected_lines" ] && [ "$leaks" = 0 ] \
  || { echo "the log is incomplete or not masked" >&2; exit 1; }
measure "$mib MiB job with --report" big-log --report "$work/report.json"
echo "  report: $(stat -c %s "$work/report.json") bytes, $(grep -c -F "$secret" "$work/report.json" || true) unmasked"
