#!/usr/bin/env bash
# Runs every fuzz target for a while (default 60 s each), starting from the
# committed seeds in fuzz/seeds/<target> and keeping what it finds in
# fuzz/corpus/<target> (not committed). A crash stops it with the input in
# fuzz/artifacts/<target>/; turn that input into a regression test.
#
#   scripts/fuzz.sh [seconds] [target...]
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(check_request body token config_and_policy)
fi
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "--- fuzz $target for ${seconds}s"
    cargo fuzz run -O "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 2>&1 \
        | grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse)' || { echo "fuzz target $target failed" >&2; exit 1; }
done
