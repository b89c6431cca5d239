#!/usr/bin/env bash
# The floor under the fan-out benchmark (bench/src/bin/floor.rs): the same load generator
# against a server on Axon's stack (tokio, hyper, axum, serde_json, mimalloc) with nothing of
# a homeserver behind it, so that Axon's CPU per delivery can be read against the least this
# stack and machine need for one. Runs the fan-out shapes of issue 8 against it, each on a
# fresh server process:
#   bench/floor.sh                        fanout and fanout_ws, 1 000 receivers at 20 events/s
#   bench/floor.sh fanout 16 16 0 10      any axon-bench fanout/fanout_ws arguments
#   FLOOR_SHARED=1 bench/floor.sh …        the server serialises each body once and sends the
#                                          same bytes to every receiver (the stack alone)
# Results go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/axon-target}"
FLOOR="$TARGET/release/floor"
LOADGEN="$TARGET/release/axon-bench"
[[ -x "$FLOOR" && -x "$LOADGEN" ]] || { echo "build first: cargo build --release -p axon-bench" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {
    local port pid
    port=$(free_port)
    "$FLOOR" "127.0.0.1:$port" ${FLOOR_SHARED:+--shared} &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null && break; sleep 0.1; done
    echo "== floor${FLOOR_SHARED:+ (shared bodies)}: $*"
    AXON_PID=$pid "$LOADGEN" "http://127.0.0.1:$port" "$@" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

if [[ $# -gt 0 ]]; then
    run "$@"
else
    run fanout 1000 1 20 12
    run fanout_ws 1000 1 20 12
fi
