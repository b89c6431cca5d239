#!/usr/bin/env bash
# Media repository benchmarks against the release binary on this machine:
#   - upload and download throughput (MiB/s) of one 1 GiB file, streamed both ways, and the
#     server's RSS before and at its peak while uploading it (must stay flat: uploads stream)
#   - thumbnail generation time for a 12-megapixel JPEG (first request: decode once, make
#     and store the five standard sizes)
# Storage: the local filesystem (the default backend), in a temporary directory. MEDIA_SIZE_MIB
# changes the file size. Every run is bounded and stops by itself. Results go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/axon-target}"
BIN="${AXON_BIN:-$TARGET/release/axon}"
LOADGEN="${AXON_BENCH_BIN:-$TARGET/release/axon-bench}"
SIZE_MIB="${MEDIA_SIZE_MIB:-1024}"
[[ -x "$BIN" && -x "$LOADGEN" ]] || { echo "build first: cargo build --release -p axon -p axon-bench" >&2; exit 1; }

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
metrics_port=$(free_port)
cat > "$work/axon.toml" <<TOML
server_name = "bench.local"
[http]
listen = ["127.0.0.1:$port"]
[database]
path = "$work/db"
[registration]
mode = "open"
[limits]
register = { per_second = 1000000.0, burst = 1000000 }
[logging]
level = "warn"
[metrics]
listen = "127.0.0.1:$metrics_port"
[media]
max_upload_bytes = $(( (SIZE_MIB + 1) * 1024 * 1024 ))
TOML

"$BIN" --config "$work/axon.toml" >/dev/null 2>"$work/stderr" &
pid=$!
export AXON_PID=$pid
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/_matrix/client/versions" >/dev/null && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; storage: filesystem under $work"
"$LOADGEN" "$base" media "$SIZE_MIB"
"$LOADGEN" "$base" thumbnail
