# Sourced by bench-h2load.sh and bench-cpu.sh: h2load at hand, the release
# binaries built, the bench tokens signed, the two CheckRequest frames every
# h2load run replays written to "$out", and one server at a time.

command -v h2load > /dev/null || {
    echo "h2load not found: apt-get install nghttp2-client" >&2
    exit 1
}
cargo build --release --locked --quiet --bin arbiter --bin arbiter-load --example bare_ext_authz
if [ ! -f target/bench/jwks.json ] || [ ! -f target/bench/tokens.txt ]; then
    target/release/arbiter-load tokens --count 100 --out target/bench
fi
target/release/arbiter-load frame --request benches/load/request.json \
    --tokens target/bench/tokens.txt --out "$out/zero-trust.bin"
target/release/arbiter-load frame --request benches/load/request.json --out "$out/allow.bin"

# With RUST_BACKTRACE set, every error value regorus makes captures a backtrace.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

server_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2> /dev/null || true
        wait "$server_pid" 2> /dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT
