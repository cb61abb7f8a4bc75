#!/usr/bin/env bash
# The soak (tests/it/soak.rs): Envoy and the arbiter binary under steady load
# while the IdP rotates keys and the policy reloads, reporting errors, wrong
# decisions, latency percentiles and resident memory over time.
#
#   scripts/soak.sh [seconds=600] [requests/s=400]
#
# SOAK_ROTATE_SECONDS (60), SOAK_RELOAD_SECONDS (15) and SOAK_REPORT_SECONDS
# (30) in the environment change the other periods.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-envoy.sh > /dev/null
unset RUST_BACKTRACE
SOAK_SECONDS="${1:-600}" SOAK_RATE="${2:-400}" \
    cargo test --release --locked --test it soak:: -- --ignored --nocapture --test-threads 1
