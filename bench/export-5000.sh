#!/usr/bin/env bash
# Exporting a 5,000-file commit from a mirror into a job workspace: Slipway's
# `Mirror::export` (read-tree + parallel checkout-index) against `git archive | tar -x`,
# side by side in one run.
#
# usage: bench/export-5000.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=15
[ "${1:-}" = "--quick" ] && iterations=3
cargo build --release --quiet -p slipway-server --example export_bench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
(
  cd "$work/src"
  for d in $(seq 0 49); do
    mkdir -p "dir$d"
    for f in $(seq 0 99); do
      printf 'file %s/%s\n%s\n' "$d" "$f" "$(head -c 600 /dev/zero | tr '\0' x)" > "dir$d/f$f.txt"
    done
  done
  git init -q -b main && git add . && git -c user.email=b@example.com -c user.name=bench commit -qm gen
)
git clone -q --bare "$work/src" "$work/m.git"
commit=$(git --git-dir="$work/m.git" rev-parse HEAD)
target/release/examples/export_bench "$work/m.git" "$commit" "$iterations"
