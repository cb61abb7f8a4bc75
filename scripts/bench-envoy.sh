#!/usr/bin/env bash
# Envoy with Arbiter in its ext_authz filter, beside Envoy without
# authorization and Envoy with its native jwt_authn + RBAC doing the same
# checks (deploy/envoy/bench/), on the same machine in the same run, with
# load from wrk. Every configuration answers directly (no upstream), so the
# differences are the cost of authorization.
#
#   scripts/bench-envoy.sh [runs] [seconds]
#
# Needs wrk (Debian: apt-get install wrk) and Envoy (scripts/install-envoy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-3}
seconds=${2:-10}
envoy=${ENVOY:-.venv/bin/envoy}
out=target/bench/envoy
mkdir -p "$out"
command -v wrk > /dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
[ -x "$envoy" ] || { echo "Envoy is missing (scripts/install-envoy.sh)" >&2; exit 1; }

cargo build --release --quiet --bin arbiter --bin arbiter-load
[ -f target/bench/tokens.txt ] || target/release/arbiter-load tokens --count 10000 --out target/bench
token=$(head -1 target/bench/tokens.txt)
sed "s#JWKS_FILE#$PWD/target/bench/jwks.json#" deploy/envoy/bench/jwt-rbac.yaml > "$out/jwt-rbac.yaml"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap stop_all EXIT

wait_for() {
    for _ in $(seq 100); do
        curl -fs "$1" > /dev/null 2>&1 && return
        sleep 0.1
    done
    echo "$1 never answered" >&2
    exit 1
}

run_one() {
    local name=$1 config=$2
    if [ "$name" = ext-authz ]; then
        target/release/arbiter serve --config benches/load/arbiter.toml > "$out/arbiter.log" 2>&1 &
        pids+=($!)
        wait_for http://127.0.0.1:8181/readyz
    fi
    # Envoy workers (default: one per core); all three share the machine with wrk.
    "$envoy" -c "$config" --concurrency "${ENVOY_WORKERS:-$(nproc)}" --log-level warn > "$out/envoy-$name.log" 2>&1 &
    pids+=($!)
    wait_for http://127.0.0.1:9901/ready
    local status
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $token" \
        -H "x-device-id: dev-bench" -H "x-forwarded-for: 10.1.2.3" http://127.0.0.1:10000/api/orders/7)
    [ "$status" = 200 ] || { echo "$name: the benchmark request got $status, not 200" >&2; exit 1; }
    wrk -t1 -c32 -d"${seconds}s" --latency -H "authorization: Bearer $token" \
        -H "x-device-id: dev-bench" -H "x-forwarded-for: 10.1.2.3" \
        http://127.0.0.1:10000/api/orders/7 > "$out/$name.txt"
    stop_all
    # A run with any non-2xx answer or socket error measured failures, not
    # authorization: refuse to report it.
    if grep -qE 'Non-2xx|Socket errors' "$out/$name.txt"; then
        echo "$name: some requests failed or were denied:" >&2
        grep -E 'Non-2xx|Socket errors' "$out/$name.txt" >&2
        exit 1
    fi
    awk -v name="$name" '
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
        END { printf "%s %s %s %s 0\n", name, rps, p50, p99 }' "$out/$name.txt"
}

: > "$out/runs.txt"
for run in $(seq "$runs"); do
    for name in no-auth jwt-rbac ext-authz; do
        case $name in
            jwt-rbac) config=$out/jwt-rbac.yaml ;;
            *) config=deploy/envoy/bench/$name.yaml ;;
        esac
        run_one "$name" "$config" | tee -a "$out/runs.txt"
    done
done

python3 - "$out/runs.txt" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, bad = line.split()
    runs.setdefault(name, []).append((float(rps), p50, p99, int(bad)))
med = {}
for name, rs in runs.items():
    rs.sort()
    m = rs[len(rs) // 2]
    med[name] = m[0]
    print(f"{name:10} median {m[0]:9.0f} req/s  p50 {m[1]}  p99 {m[2]}  non-2xx {sum(r[3] for r in rs)}  (runs: {' '.join(str(round(r[0])) for r in rs)})")
if "ext-authz" in med and "jwt-rbac" in med:
    print(f"Envoy+Arbiter / Envoy jwt_authn+RBAC: {med['ext-authz'] / med['jwt-rbac']:.0%}")
if "ext-authz" in med and "no-auth" in med:
    print(f"Envoy+Arbiter / Envoy without authorization: {med['ext-authz'] / med['no-auth']:.0%}")
PY
