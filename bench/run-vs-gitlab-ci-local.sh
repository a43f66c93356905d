#!/usr/bin/env bash
# `slipway run` against gitlab-ci-local 4.72.0, side by side in one run, on
#   (a) 22 jobs: a build with an artifact, 20 parallel tests, a deploy;
#   (b) 200 jobs in a repository of 5,000 files (bench/gen_run_repo.py).
# Both run every job in a shell on this machine (gitlab-ci-local with
# --shell-executor-no-image), each in its own copy of the same git repository (with a
# remote named origin, which gitlab-ci-local needs). Runs alternate between the tools;
# the figures are medians of wall time and the largest peak RSS seen (GNU time's %M: the
# biggest process of the run), and the script fails unless both report the same outcome
# for every job.
#
# gitlab-ci-local is installed from npm into ${SLIPWAY_BENCH_CACHE:-~/.cache/slipway-bench}
# (outside the repository); rsync comes from apt when missing (root).
#
# usage: bench/run-vs-gitlab-ci-local.sh [--quick] [--isolation] [--only=a|b] [ITERATIONS]
#   --quick      1 timed run of each (the CI smoke test)
#   --isolation  also time gitlab-ci-local --shell-isolation (a copy per job, as Slipway
#                gives every job its own workspace): slow, one run per pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=5
isolation=0
kinds="a b"
for arg in "$@"; do
  case "$arg" in
    --quick) iterations=1 ;;
    --isolation) isolation=1 ;;
    --only=a|--only=b) kinds=${arg#--only=} ;;
    [0-9]*) iterations=$arg ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done

GCL_VERSION=4.72.0
cache=${SLIPWAY_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slipway-bench}
gcl_dir=$cache/gitlab-ci-local-$GCL_VERSION
gcl=$gcl_dir/node_modules/.bin/gitlab-ci-local
if ! command -v rsync >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >&2 \
      || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >&2; }
  else
    echo "gitlab-ci-local needs rsync: install it" >&2; exit 1
  fi
fi
if [ ! -x "$gcl" ]; then
  command -v npm >/dev/null || { echo "gitlab-ci-local needs node and npm" >&2; exit 1; }
  mkdir -p "$gcl_dir"
  npm install --prefix "$gcl_dir" --no-audit --no-fund --loglevel=error "gitlab-ci-local@$GCL_VERSION" >&2
fi
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian: apt-get install time)" >&2; exit 1; }

cargo build --release --quiet --bin slipway
slipway=$PWD/target/release/slipway
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

make_repo() { # kind dir
  python3 bench/gen_run_repo.py "$1" "$2"
  (
    cd "$2"
    git init -q -b main
    git add -A
    git -c user.email=bench@example.com -c user.name=bench commit -qm "benchmark"
    git remote add origin https://example.com/bench/project.git
    git update-ref refs/remotes/origin/main HEAD
    git symbolic-ref refs/remotes/origin/HEAD refs/remotes/origin/main
  )
}

ms() { date +%s%N; }

# One timed run: tool kind label -> "<wall ms> <peak KB>" on stdout, output kept in $work.
# Each timed run starts with the other tool's writes flushed (`sync`), so neither pays
# for the other's disk write-back.
run_gcl() { # dir log extra-args...
  local dir=$1 log=$2; shift 2
  local s e
  sync
  s=$(ms)
  (cd "$dir" && /usr/bin/time -f "%M %U %S" -o "$log.time" "$gcl" --shell-executor-no-image --no-color "$@" >"$log" 2>&1) || true
  e=$(ms)
  echo "$(( (e - s) / 1000000 )) $(tail -1 "$log.time" | awk '{printf "%d %d", $1, ($2 + $3) * 1000}')"
}
run_slipway() { # dir data log
  local dir=$1 data=$2 log=$3
  local s e
  sync
  s=$(ms)
  (cd "$dir" && /usr/bin/time -f "%M %U %S" -o "$log.time" "$slipway" run --data "$data" --report "$log.json" >"$log" 2>&1) || true
  e=$(ms)
  echo "$(( (e - s) / 1000000 )) $(tail -1 "$log.time" | awk '{printf "%d %d", $1, ($2 + $3) * 1000}')"
}

# Outcomes as sorted "name status" lines. gitlab-ci-local names parallel jobs
# `test: [1/20]` where GitLab (and Slipway) say `test 1/20`; WARN is an allowed failure.
outcomes_gcl() {
  sed -n -E 's/^ (PASS|FAIL|WARN) +(.*[^ ]) *$/\2 \1/p' "$1" \
    | sed -E 's/: \[([0-9]+\/[0-9]+)\] / \1 /; s/ +(pre_script|after_script)$//' \
    | sed -E 's/ PASS$/ success/; s/ FAIL$/ failed/; s/ WARN$/ failed-allowed/' | sort
}
outcomes_slipway() {
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
for j in r["jobs"]:
    s = j["status"]
    if s == "failed" and j["allow_failure"]:
        s = "failed-allowed"
    print(j["name"], s)
' "$1" | sort
}

# Every job's script (from Slipway's run) through bash, $(nproc) at a time.
floor() { # repo dir
  local dir=$1 s e
  python3 - "$dir" "$work/floor-scripts" <<'PY'
import os, sys
repo, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
# Each job's commands from the pipeline file (the generated pipelines are plain: a job
# key, its `    - ` script lines, `parallel: N` for N copies).
import re
text = open(os.path.join(repo, ".gitlab-ci.yml")).read()
jobs = []
for line in text.splitlines():
    if re.match(r"^[a-z][^ :]*:$", line) and not line.startswith("stages"):
        jobs.append({"cmds": [], "copies": 1})
    elif jobs and line.startswith("    - "):
        jobs[-1]["cmds"].append(line[6:])
    elif jobs and re.match(r"^  parallel: [0-9]+$", line):
        jobs[-1]["copies"] = int(line.split()[-1])
n = 0
for job in jobs:
    for _ in range(job["copies"]):
        with open(os.path.join(out, f"job{n:03d}.sh"), "w") as f:
            # Every command runs (no set -e): outside a workspace some checks fail.
            for c in job["cmds"]:
                f.write(f"printf '%s\\n' '$ job command'\n{c}\n")
        n += 1
PY
  sync
  s=$(ms)
  mkdir -p "$work/floor-run"
  (cd "$work/floor-run" && ls "$work"/floor-scripts/*.sh | xargs -P "$(nproc)" -n 1 bash --noprofile --norc >/dev/null 2>&1) || true
  e=$(ms)
  rm -rf "$work/floor-scripts" "$work/floor-run"
  echo $(( (e - s) / 1000000 ))
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
maxof() { sort -n | tail -1; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "slipway $("$slipway" --version | cut -d' ' -f2), gitlab-ci-local $("$gcl" --version), $iterations timed runs each"
printf '%-34s %10s %10s %8s %12s %12s\n' pipeline "slipway" "gcl" ratio "slipway RSS" "gcl RSS"
status=0
for kind in $kinds; do
  label=$([ $kind = a ] && echo "(a) 22 jobs" || echo "(b) 200 jobs, 5,000 files")
  make_repo $kind "$work/$kind-gcl"
  make_repo $kind "$work/$kind-slipway"
  data=$work/$kind-data
  # Warm-up: both tools' state (gitlab-ci-local's .gitlab-ci-local, Slipway's workspaces).
  run_gcl "$work/$kind-gcl" "$work/$kind-gcl-warm.log" >/dev/null
  run_slipway "$work/$kind-slipway" "$data" "$work/$kind-slipway-warm.log" >/dev/null
  : >"$work/$kind.gcl" ; : >"$work/$kind.slipway"
  for i in $(seq "$iterations"); do
    run_gcl "$work/$kind-gcl" "$work/$kind-gcl-$i.log" >>"$work/$kind.gcl"
    run_slipway "$work/$kind-slipway" "$data" "$work/$kind-slipway-$i.log" >>"$work/$kind.slipway"
  done
  outcomes_gcl "$work/$kind-gcl-$iterations.log" >"$work/$kind.out-gcl"
  outcomes_slipway "$work/$kind-slipway-$iterations.log.json" >"$work/$kind.out-slipway"
  jobs=$(wc -l <"$work/$kind.out-slipway")
  if ! diff -u "$work/$kind.out-gcl" "$work/$kind.out-slipway" >"$work/$kind.diff"; then
    echo "$label: the outcomes differ (gitlab-ci-local -, slipway +):" >&2
    cat "$work/$kind.diff" >&2
    tail -30 "$work/$kind-gcl-$iterations.log" >&2
    status=1
  fi
  s_ms=$(cut -d' ' -f1 "$work/$kind.slipway" | median)
  g_ms=$(cut -d' ' -f1 "$work/$kind.gcl" | median)
  s_kb=$(cut -d' ' -f2 "$work/$kind.slipway" | maxof)
  g_kb=$(cut -d' ' -f2 "$work/$kind.gcl" | maxof)
  ratio=$(awk -v g="$g_ms" -v s="$s_ms" 'BEGIN { printf "%.1fx", g / (s > 0 ? s : 1) }')
  printf '%-34s %8s ms %8s ms %8s %9s MB %9s MB\n' "$label ($jobs same outcomes)" "$s_ms" "$g_ms" "$ratio" \
    "$(awk -v k="$s_kb" 'BEGIN{printf "%.1f", k/1024}')" "$(awk -v k="$g_kb" 'BEGIN{printf "%.1f", k/1024}')"
  echo "  slipway runs (ms): $(cut -d' ' -f1 "$work/$kind.slipway" | tr '\n' ' ')"
  echo "  gitlab-ci-local runs (ms): $(cut -d' ' -f1 "$work/$kind.gcl" | tr '\n' ' ')"
  echo "  CPU time (user+sys, median): slipway $(cut -d' ' -f3 "$work/$kind.slipway" | median) ms, gitlab-ci-local $(cut -d' ' -f3 "$work/$kind.gcl" | median) ms"
  # The floor both tools stand on: one bash per job, as many at once as Slipway runs
  # (the cores), with no runner at all.
  floor_ms=$(floor "$work/$kind-slipway")
  echo "  floor (one bash per job running its commands, $(nproc) at a time, no runner): $floor_ms ms"
  if [ "$isolation" = 1 ]; then
    rm -rf "$work/$kind-gcl/.gitlab-ci-local"
    iso=$(run_gcl "$work/$kind-gcl" "$work/$kind-gcl-iso.log" --shell-isolation)
    outcomes_gcl "$work/$kind-gcl-iso.log" | diff -q - "$work/$kind.out-slipway" >/dev/null \
      || { echo "$label: --shell-isolation outcomes differ" >&2; status=1; }
    i_ms=$(echo "$iso" | cut -d' ' -f1)
    i_kb=$(echo "$iso" | cut -d' ' -f2)
    echo "  gitlab-ci-local --shell-isolation: $i_ms ms ($(awk -v g="$i_ms" -v s="$s_ms" 'BEGIN { printf "%.0fx", g / (s > 0 ? s : 1) }') slipway's median), peak $(awk -v k="$i_kb" 'BEGIN{printf "%.1f", k/1024}') MB"
    rm -rf "$work/$kind-gcl/.gitlab-ci-local"
  fi
done
exit $status
