#!/usr/bin/env bash
# Workspace preparation on a repository of 5,000 files (bench/gen_run_repo.py): the first
# job in a new workspace, the next jobs of a run (tracked changes), the first job of a
# later run (every file compared), and a naive full copy for reference.
#
# usage: bench/workspace-prepare.sh [--quick] [FILES]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=7
files=5000
for arg in "$@"; do
  case "$arg" in
    --quick) rounds=1 ;;
    [0-9]*) files=$arg ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done
cargo build --release --quiet -p slipway-runner --example workspace_bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 bench/gen_run_repo.py files "$work/src" "$files"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $(du -sh "$work/src" | cut -f1) of source"
target/release/examples/workspace_bench "$work/src" "$rounds"
