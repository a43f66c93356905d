#!/usr/bin/env bash
# Runs one cargo-fuzz target for a while:  fuzz/run.sh TARGET SECONDS [extra libFuzzer args]
#
# Installs cargo-fuzz when it is missing. Only the stable toolchain is needed: cargo-fuzz passes
# nightly-only flags to rustc, which RUSTC_BOOTSTRAP=1 allows. The code under test is safe Rust,
# so it runs without a sanitizer by default (much faster); set SANITIZER=address to use ASan.
# A dictionary fuzz/dicts/TARGET.dict is used when present. Findings go to fuzz/artifacts/TARGET/, the corpus grows in fuzz/corpus/TARGET/ (both ignored
# by git); the run ends with libFuzzer's statistics (number of executions and so on).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 TARGET SECONDS [extra libFuzzer args]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
mkdir -p "corpus/$target" "artifacts/$target"
dict=()
if [ -f "dicts/$target.dict" ]; then
    dict=(-dict="dicts/$target.dict")
fi

exec cargo fuzz run \
    --sanitizer "${SANITIZER:-none}" \
    "$target" \
    "corpus/$target" \
    -- \
    -max_total_time="$seconds" \
    -print_final_stats=1 \
    "${dict[@]}" \
    "$@"
