#!/usr/bin/env bash
# Issue 4's memory figure: the resident memory (VmRSS) of the real `slipway server`
# binary (release build, SQLite, fresh data directory) once started and idle, and idle
# again after it ran a small pipeline (the pages of the code that ran stay mapped).
# Target: under 40 MB.
#
# usage: bench/server-idle-rss.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
settle=3
[ "${1:-}" = "--quick" ] && settle=1
cargo build --release --quiet --bin slipway --example server_bench
bin=$PWD/target/release/slipway
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/repo"
git -C "$dir/repo" init --quiet --initial-branch=main
printf 'job:\n  script: [echo hello]\n' > "$dir/repo/.gitlab-ci.yml"
git -C "$dir/repo" add -A
git -C "$dir/repo" -c user.name=b -c user.email=b@example.com commit --quiet -m ci
SLIPWAY_ADMIN_PASSWORD=bench-password-1 "$bin" server --data "$dir/data" \
    --listen 127.0.0.1:0 --executor shell 2> "$dir/log" &
pid=$!
for _ in $(seq 1 100); do
    url=$(sed -n 's/^Slipway server listening on //p' "$dir/log")
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { cat "$dir/log"; exit 1; }
rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"; }
sleep "$settle"
echo "idle after start: $(rss) MB resident"
cookies="$dir/cookies"
csrf=$(curl -fsS -c "$cookies" -H 'Content-Type: application/json' \
    -d '{"username":"admin","password":"bench-password-1"}' "$url/api/v1/session" |
    sed 's/.*"csrf_token":"\([0-9a-f]*\)".*/\1/')
curl -fsS -b "$cookies" -H "X-CSRF-Token: $csrf" -H 'Content-Type: application/json' \
    -d "{\"name\":\"app\",\"repository\":\"$dir/repo\"}" "$url/api/v1/projects" > /dev/null
curl -fsS -b "$cookies" -H "X-CSRF-Token: $csrf" -H 'Content-Type: application/json' \
    -d '{}' "$url/api/v1/projects/app/pipelines" > /dev/null
ok=
for _ in $(seq 1 300); do
    if curl -fsS -b "$cookies" "$url/api/v1/projects/app/pipelines" | grep -q '"status":"success"'; then
        ok=1
        break
    fi
    sleep 0.1
done
[ -n "$ok" ] || { echo "the pipeline did not succeed"; cat "$dir/log"; exit 1; }
sleep "$settle"
echo "idle after a pipeline: $(rss) MB resident"
# Where the resident pages are (file-backed code versus heap).
grep -E "^(Rss|Anonymous|Shared_Clean|Private_Clean|Private_Dirty)" "/proc/$pid/smaps_rollup" | tr -s " " | sed "s/^/  /"
if [ -n "${SLIPWAY_RSS_DETAIL:-}" ]; then
    awk '/^[0-9a-f]+-[0-9a-f]+ / {name=$6; range=$1} /^Rss:/ {if ($2 > 1000) print $2 " kB " range " " name}' "/proc/$pid/smaps" | sort -rn | head -15
fi
kill -TERM "$pid"
wait "$pid" || true
