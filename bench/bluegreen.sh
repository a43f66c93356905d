#!/usr/bin/env bash
# Blue-green through Slipway's router under steady load: deploy v1 (2 instances), drive
# wrk at the environment's address, deploy v2 with blue-green, then roll back to v1 (a
# switch back to the warm release). Reports failed requests through both switches
# (non-2xx and socket errors), the time from each request to all traffic on the new
# release, and the router's added latency (p50/p99) against hitting one instance
# directly with the same wrk settings in the same run.
#
# usage: bench/bluegreen.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=10
[ "${1:-}" = "--quick" ] && seconds=3
threads=1
conns=16
if ! command -v wrk > /dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk > /dev/null
fi
cargo build --release --quiet -p slipway-deploy --example version_service --bin slipway-deploy-demo
work=$(mktemp -d)
demo=""
cleanup() {
  { echo quit >&3; } 2> /dev/null || true
  if [ -n "$demo" ]; then
    for _ in $(seq 50); do kill -0 "$demo" 2> /dev/null || break; sleep 0.1; done
    kill "$demo" 2> /dev/null || true
  fi
  # Instances still listed in PID files (a demo that did not stop cleanly): their groups go.
  for f in "$work"/state/pids/*.json; do
    [ -e "$f" ] || continue
    pid=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' "$f" 2> /dev/null || true)
    [ -n "$pid" ] && kill -9 -- "-$pid" 2> /dev/null || true
  done
  [ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
for v in v1 v2; do
  mkdir -p "$work/$v"
  echo "$v" > "$work/$v/version.txt"
  cp target/release/examples/version_service "$work/$v/"
done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
router="http://127.0.0.1:$port/"
mkfifo "$work/in"
target/release/slipway-deploy-demo --state "$work/state" --listen "127.0.0.1:$port" \
  --command "exec ./version_service" --instances 2 --keep-warm 120000 \
  --release "d1=v1:$work/v1" --release "d2=v2:$work/v2" \
  < "$work/in" > "$work/events" 2> "$work/demo.err" &
demo=$!
exec 3> "$work/in"

# field EVENT DEPLOYMENT KEY: KEY of the first EVENT line about DEPLOYMENT (empty if none)
field() {
  python3 - "$work/events" "$@" << 'PY'
import json, sys
path, event, dep, key = sys.argv[1:5]
for line in open(path):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if v.get("event") != event:
        continue
    r = v.get("report", v)
    if dep and r.get("deployment") != dep:
        continue
    print(r.get(key, ""))
    break
PY
}
wait_for() {  # EVENT DEPLOYMENT
  for _ in $(seq 600); do
    [ -n "$(field "$1" "$2" event 2> /dev/null || true)$(field "$1" "$2" status 2> /dev/null || true)" ] && return 0
    sleep 0.05
  done
  echo "timed out waiting for $1 $2" >&2; cat "$work/demo.err" >&2; exit 1
}
# GET / on the router in plain bash (no process started per request): the body's last line.
get_root() {
  local line last=""
  exec 5<> "/dev/tcp/127.0.0.1/$port" || return 0
  printf 'GET / HTTP/1.0\r\nHost: bench\r\n\r\n' >&5
  while IFS= read -r line <&5; do last=$line; done
  exec 5>&-
  echo "$last"
}
wait_for ready ""
echo "deploy d1" >&3
wait_for done d1
[ "$(field done d1 status)" = success ] || { echo "v1 did not deploy" >&2; exit 1; }
instance=$(python3 -c 'import json,glob,sys; print(next(json.load(open(f))["port"] for f in glob.glob(sys.argv[1] + "/pids/*d1*")))' "$work/state")
echo "v1 serves at $router (instance at 127.0.0.1:$instance); wrk -t$threads -c$conns"

wrk_run() {  # URL OUT SECONDS
  wrk -t"$threads" -c"$conns" -d"${3}s" --latency "$1" > "$2"
}
summary() {  # WRK_OUTPUT -> "requests rps p50_ms p99_ms non2xx socket_errors"
  python3 - "$1" << 'PY'
import re, sys
t = open(sys.argv[1]).read()
# The percentile lines only: "+/- Stdev" columns also end in "%".
if not re.search(r"^\s+99%\s+[\d.]+(us|ms|s)$", t, re.M):
    sys.exit("wrk measured nothing:\n" + t)
def ms(s):
    n, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
req = int(re.search(r"(\d+) requests in", t).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)$", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)$", t, re.M).group(1))
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", t) or [0, 0])[1])
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
sock = sum(int(x) for x in m.groups()) if m else 0
print(req, rps, f"{p50:.3f}", f"{p99:.3f}", non2xx, sock)
PY
}

# Direct and through the router, interleaved three times (the machine is shared and
# noisy); the medians are compared.
rounds=3
[ "$seconds" -lt 10 ] && rounds=1
for i in $(seq "$rounds"); do
  wrk_run "http://127.0.0.1:$instance/" "$work/direct-$i.txt" "$seconds"
  wrk_run "$router" "$work/router-$i.txt" "$seconds"
done
median_of() {  # PREFIX -> the summary line with the median p99
  for f in "$work/$1"-*.txt; do summary "$f"; done | sort -k4 -g | sed -n "$(( (rounds + 1) / 2 ))p"
}
read -r d_req d_rps d_p50 d_p99 _ _ <<< "$(median_of direct)"
read -r r_req r_rps r_p50 r_p99 _ _ <<< "$(median_of router)"

# The switch run: steady load through the router, v1 -> v2 -> v1.
run=$((seconds + 6))
wrk_run "$router" "$work/switch.txt" "$run" &
wrk_pid=$!
sleep 2
echo "deploy d2" >&3
wait_for done d2
[ "$(field done d2 status)" = success ] || { echo "v2 did not deploy" >&2; exit 1; }
sleep $(( seconds / 2 + 1 ))
start=$(date +%s%N)
echo "rollback d3 d1" >&3
while [ "$(get_root)" != v1 ]; do :; done
seen=$(( ($(date +%s%N) - start) / 1000 ))
wait_for done d3
wait "$wrk_pid"
read -r s_req s_rps _ s_p99 s_non2xx s_sock <<< "$(summary "$work/switch.txt")"
v2_ms=$(field done d2 switch_ms)
rb_ms=$(field done d3 switch_ms)
swap_us=$(python3 -c '
import json, sys
print(max(json.loads(l).get("swap_us", 0) for l in open(sys.argv[1]) if "\"routed\"" in l))' "$work/events")

python3 - << PY
d50, d99, r50, r99 = $d_p50, $d_p99, $r_p50, $r_p99
print(f"medians of $rounds interleaved {$seconds} s runs each")
print(f"direct to one instance: {$d_rps:.0f} req/s, p50 {d50:.3f} ms, p99 {d99:.3f} ms ({$d_req} requests)")
print(f"through the router:     {$r_rps:.0f} req/s, p50 {r50:.3f} ms, p99 {r99:.3f} ms ({$r_req} requests)")
print(f"router added latency:   p50 +{r50 - d50:.3f} ms, p99 +{r99 - d99:.3f} ms (p99 ratio {r99 / d99:.2f})")
print(f"switch run ({$run} s, v1 -> v2 -> v1): {$s_req} requests, {$s_rps:.0f} req/s, p99 {$s_p99} ms, non-2xx {$s_non2xx}, socket errors {$s_sock}")
print(f"deploy v2 (start, health checks, switch): {float('$v2_ms'):.1f} ms from the request to all traffic on v2")
print(f"rollback to warm v1: {float('$rb_ms'):.2f} ms in the engine from the command to all traffic on v1; {$seen / 1000:.1f} ms until a polling client saw v1")
print(f"route table swap: at most {float('$swap_us'):.1f} us")
PY
if [ "$s_non2xx" != 0 ] || [ "$s_sock" != 0 ]; then
  echo "FAILED: requests failed through the switches" >&2
  exit 1
fi
