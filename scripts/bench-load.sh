#!/usr/bin/env bash
# Throughput, latency and memory of a running Arbiter under arbiter-load, on
# this machine (the load generator shares it): the figures in BENCHMARKS.md.
#
#   scripts/bench-load.sh [zero-trust|example] [runs]
#
# For each policy set: repeated tokens as fast as possible, every token new
# as fast as possible, a fixed rate at half the repeated throughput (for the
# p99), and resident memory with 10,000 distinct tokens cached. Each
# scenario runs `runs` times (default 3); the median run is reported.
set -euo pipefail
cd "$(dirname "$0")/.."

sets=${1:-"zero-trust example"}
runs=${2:-3}
tokens=target/bench/tokens.txt
fresh_tokens=200000
out=target/bench/results
mkdir -p "$out"

cargo build --release --quiet --bin arbiter --bin arbiter-load
if [ ! -f "$tokens" ] || [ "$(wc -l < "$tokens")" -lt "$fresh_tokens" ]; then
    echo "signing $fresh_tokens RS256 tokens (once; a few minutes)..." >&2
    target/release/arbiter-load tokens --count "$fresh_tokens" --out target/bench
fi

# anyhow captures a backtrace for every error value when RUST_BACKTRACE is
# set, and policy evaluation makes such values; production runs without it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

arbiter_pid=
stop_arbiter() {
    if [ -n "$arbiter_pid" ]; then
        kill "$arbiter_pid" 2>/dev/null || true
        wait "$arbiter_pid" 2>/dev/null || true
        arbiter_pid=
    fi
}
trap stop_arbiter EXIT

start_arbiter() {
    target/release/arbiter serve --config "$1" > "$out/arbiter.log" 2>&1 &
    arbiter_pid=$!
    for _ in $(seq 100); do
        if curl -fs http://127.0.0.1:8181/readyz > /dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    echo "arbiter did not become ready; see $out/arbiter.log" >&2
    exit 1
}

load() {
    target/release/arbiter-load run --json --request benches/load/request.json \
        --tokens "$tokens" --connections 2 --concurrency 32 "$@"
}

median() {
    python3 scripts/bench-summary.py "$@"
}

rss_mib() {
    awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$arbiter_pid/status"
}

for set in $sets; do
    case $set in
        zero-trust) config=benches/load/arbiter.toml ;;
        example) config=benches/load/arbiter-example.toml ;;
        *) echo "unknown set $set" >&2; exit 2 ;;
    esac
    echo "== $set ($config), $(nproc) cores, $runs runs each"
    start_arbiter "$config"
    : > "$out/$set-repeated.jsonl"
    for _ in $(seq "$runs"); do
        load --token-use repeated --distinct-tokens 10000 --duration 10s --warmup 2s >> "$out/$set-repeated.jsonl"
    done
    printf 'repeated tokens, max rate: '
    median < "$out/$set-repeated.jsonl"
    echo "resident memory with 10,000 distinct tokens cached: $(rss_mib) MiB"
    half=$(median --half < "$out/$set-repeated.jsonl")
    : > "$out/$set-half.jsonl"
    for _ in $(seq "$runs"); do
        load --token-use repeated --distinct-tokens 10000 --rate "$half" --duration 10s --warmup 2s >> "$out/$set-half.jsonl"
    done
    printf 'repeated tokens at %s/s:  ' "$half"
    median < "$out/$set-half.jsonl"
    stop_arbiter

    # Every token new: a fresh Arbiter per run, so no token is in its cache.
    : > "$out/$set-fresh.jsonl"
    for _ in $(seq "$runs"); do
        start_arbiter "$config"
        load --token-use fresh --duration 4s --warmup 1s >> "$out/$set-fresh.jsonl"
        stop_arbiter
    done
    printf 'every token new, max rate: '
    median < "$out/$set-fresh.jsonl"
done
