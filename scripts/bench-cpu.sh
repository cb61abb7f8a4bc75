#!/usr/bin/env bash
# CPU time per request, the server's and h2load's, read from /proc and
# time(1) around one h2load run against each target: where the machine's
# two cores go, which the throughput ratios of bench-h2load.sh only imply.
#
#   scripts/bench-cpu.sh [rounds=3] [seconds=8]
#
# Targets as in bench-h2load.sh: bare, bare-fifo, allow, zero-trust (and the same
# zero-trust policy without its net.cidr_contains line, `zero-trust-nocidr`,
# to price the network check).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
seconds=${2:-8}
out=target/bench/cpu
mkdir -p "$out"
. scripts/bench-h2.sh

# The zero-trust decision without the network check, beside the original.
nocidr=$out/zero-trust-nocidr
mkdir -p "$nocidr/policy"
cp benches/load/zero-trust/data.json "$nocidr/policy/"
grep -v 'net.cidr_contains' benches/load/zero-trust/policy.rego > "$nocidr/policy/policy.rego"
sed -e "s#paths = \[\"../load/zero-trust\"\]#paths = [\"$PWD/$nocidr/policy\"]#" \
    -e "s#jwks_file = \"../../target/bench/jwks.json\"#jwks_file = \"$PWD/target/bench/jwks.json\"#" \
    benches/h2load/zero-trust.toml > "$nocidr/arbiter.toml"

# utime + stime of a process, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

run_one() {
    local name=$1 frame
    case $name in
        bare)
            target/release/examples/bare_ext_authz 127.0.0.1:9191 > "$out/$name.log" 2>&1 &
            frame=$out/allow.bin
            ;;
        bare-fifo)
            target/release/examples/bare_ext_authz 127.0.0.1:9191 fifo > "$out/$name.log" 2>&1 &
            frame=$out/allow.bin
            ;;
        allow) target/release/arbiter serve --config benches/h2load/allow.toml > "$out/$name.log" 2>&1 &
            frame=$out/allow.bin ;;
        zero-trust) target/release/arbiter serve --config benches/h2load/zero-trust.toml > "$out/$name.log" 2>&1 &
            frame=$out/zero-trust.bin ;;
        zero-trust-nocidr) target/release/arbiter serve --config "$nocidr/arbiter.toml" > "$out/$name.log" 2>&1 &
            frame=$out/zero-trust.bin ;;
    esac
    server_pid=$!
    for _ in $(seq 200); do
        (exec 3<> /dev/tcp/127.0.0.1/9191) 2> /dev/null && break
        sleep 0.05
    done
    sleep 0.5
    local before after
    before=$(ticks "$server_pid")
    /usr/bin/time -f "%U %S" -o "$out/$name.time" \
        h2load -c 8 -m 16 -t 1 -D "$seconds" -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$frame" http://127.0.0.1:9191/envoy.service.auth.v3.Authorization/Check > "$out/$name.txt"
    after=$(ticks "$server_pid")
    stop_server
    local requests failed rate
    requests=$(awk '/^requests:/ { print $8 }' "$out/$name.txt")
    rate=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out/$name.txt")
    failed=$(awk '/^requests:/ { print $10 }' "$out/$name.txt")
    [ "$failed" = 0 ] || { echo "$name: $failed requests failed" >&2; exit 1; }
    python3 - "$name" "$requests" "$((after - before))" "$(getconf CLK_TCK)" "$out/$name.time" "$rate" << 'PY'
import sys
name, requests, ticks, hz, timefile, rate = sys.argv[1:]
requests, ticks, hz = int(requests), int(ticks), int(hz)
user, system = map(float, open(timefile).read().split())
print(f"{name} {float(rate):.0f} {1e6 * ticks / hz / requests:.1f} {1e6 * (user + system) / requests:.1f}")
PY
}

: > "$out/runs.txt"
for round in $(seq "$rounds"); do
    for name in bare bare-fifo allow zero-trust zero-trust-nocidr; do
        run_one "$name" | tee -a "$out/runs.txt"
    done
    echo "-- round $round done" >&2
done
python3 - "$out/runs.txt" << 'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, rate, server, client = line.split()
    runs.setdefault(name, []).append((float(rate), float(server), float(client)))
print(f"{'target':18} {'req/s':>8} {'server us/req':>14} {'h2load us/req':>14}")
for name, rows in runs.items():
    rate, server, client = (statistics.median(r[i] for r in rows) for i in range(3))
    print(f"{name:18} {rate:8,.0f} {server:14.1f} {client:14.1f}")
PY
