#!/usr/bin/env bash
# Benchmarks of the hot paths against the release binary on this machine:
#   - whoami requests per second (token lookup + auth on every request)
#   - password logins per second (argon2id-bound)
#   - idle RSS of the server process, after start-up and after the load
#   - send -> sync latency at 100 and 1 000 events/s, and with the receiver in 1 000 quiet rooms (axon-bench latency)
#   - sustained events/s into one room and spread over 1 000 rooms (axon-bench throughput)
#   - to-device messages/s delivered to 100 long-polling receivers (axon-bench to_device)
#   - group fan-out: 16 senders -> 16 receivers closed loop, 1 sender -> 1 000 receivers at 20/s (axon-bench fanout),
#     with long-polls and over the WebSocket transport (fanout_ws)
#   - /keys/query and /keys/claim requests/s over 1 000 devices with keys (axon-bench keys)
#   - read receipts: 1 000 members of one room posting receipts, 100 of them long-polling (axon-bench receipts)
#   - typing: 10 typers toggling -> 100 receivers; presence: one status change -> 1 000 room-mates
#   - push rules: 2 000 events into a 1 000-member room, evaluated after commit (axon-bench push_rules);
#     notify requests/s to a push gateway on loopback, 100 users x 100 messages (axon-bench push_gateway)
#   - message search latency over 1 000 000 events and the indexing cost per event (axon-bench search;
#     BENCH_SEARCH_EVENTS changes the count); directory search over 100 000 users is an in-process
#     measurement: cargo test --release --workspace --lib user_directory_latency -- --ignored --nocapture
# Load comes from wrk on loopback; every run is bounded in time and stops by itself.
# Results go to stdout and bench/results/latest.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/axon-target}"
BIN="${AXON_BIN:-$TARGET/release/axon}"
LOADGEN="$TARGET/release/axon-bench"
DURATION="${BENCH_DURATION:-10s}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
[[ -x "$BIN" && -x "$LOADGEN" ]] || { echo "build first: cargo build --release -p axon -p axon-bench" >&2; exit 1; }
command -v wrk >/dev/null || { sudo_apt=""; [[ $(id -u) -ne 0 ]] && sudo_apt=sudo; $sudo_apt apt-get install -y -qq wrk >/dev/null; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }

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
login = { per_second = 1000000.0, burst = 1000000 }
failed_login_per_account = { per_second = 1000000.0, burst = 1000000 }
register = { per_second = 1000000.0, burst = 1000000 }
events = { per_second = 1000000.0, burst = 1000000 }
[logging]
level = "warn"
[metrics]
listen = "127.0.0.1:$metrics_port"
[outbound]
# The push_gateway phase's gateway runs in axon-bench on loopback.
allowed_ip_ranges = ["127.0.0.1/32"]
TOML

"$BIN" --config "$work/axon.toml" >/dev/null 2>"$work/stderr" &
pid=$!
export AXON_PID=$pid # axon-bench reports the server's CPU time per delivery from /proc
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/_matrix/client/versions" >/dev/null && break; sleep 0.1; done

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
sleep 2
rss_idle=$(rss_kib)

session=$(curl -s -X POST "$base/_matrix/client/v3/register" -d '{"username":"bench","password":"bench-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"])')
token=$(curl -s -X POST "$base/_matrix/client/v3/register" \
  -d "{\"username\":\"bench\",\"password\":\"bench-password\",\"auth\":{\"type\":\"m.login.dummy\",\"session\":\"$session\"}}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

echo "== whoami: wrk -t1 -c$CONNECTIONS -d$DURATION"
wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $token" \
  "$base/_matrix/client/v3/account/whoami" | tee "$work/whoami.txt"

cat > "$work/login.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"type":"m.login.password","identifier":{"type":"m.id.user","user":"bench"},"password":"bench-password","device_id":"BENCHDEV"}'
LUA
echo "== login: wrk -t1 -c8 -d$DURATION"
wrk -t1 -c8 -d"$DURATION" --latency -s "$work/login.lua" "$base/_matrix/client/v3/login" | tee "$work/login.txt"

rss_after=$(rss_kib)

# Let in-flight logins (argon2 saturates both cores) finish, so that the event phase measures
# events and not the tail of the login burst.
sleep 3
echo "== events"
"$LOADGEN" "$base" latency 100 10 | tee "$work/events.txt"
"$LOADGEN" "$base" latency 1000 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" latency 100 10 1000 | tee -a "$work/events.txt"
"$LOADGEN" "$base" throughput 1 64 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" throughput 1000 64 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" to_device 100 16 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" fanout 16 16 0 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" fanout 1000 1 20 10 | tee -a "$work/events.txt"
# The same two shapes with the receivers on the WebSocket transport of /sync.
"$LOADGEN" "$base" fanout_ws 16 16 0 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" fanout_ws 1000 1 20 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" keys 100 10 16 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" receipts 1000 100 10 | tee -a "$work/events.txt"
echo "== typing and presence"
"$LOADGEN" "$base" typing 100 10 10 | tee -a "$work/events.txt"
"$LOADGEN" "$base" presence 1000 20 | tee -a "$work/events.txt"
echo "== notifications"
"$LOADGEN" "$base" push_rules 1000 2000 64 | tee -a "$work/events.txt"
"$LOADGEN" "$base" push_gateway 100 100 | tee -a "$work/events.txt"
echo "== search"
"$LOADGEN" "$base" search "${BENCH_SEARCH_EVENTS:-1000000}" 64 | tee -a "$work/events.txt"
echo "== relations"
"$LOADGEN" "$base" relations 50 20 200 | tee -a "$work/events.txt"
rss_events=$(rss_kib)
errors=$(cat "$work/whoami.txt" "$work/login.txt" | grep -c "Non-2xx" || true)

mkdir -p bench/results
{
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)  cores: $(nproc)"
  echo "whoami req/s: $(awk '/Requests\/sec/ {print $2}' "$work/whoami.txt")  p50: $(awk '$1=="50%" {print $2}' "$work/whoami.txt")  p99: $(awk '$1=="99%" {print $2}' "$work/whoami.txt")"
  echo "login  req/s: $(awk '/Requests\/sec/ {print $2}' "$work/login.txt")  p50: $(awk '$1=="50%" {print $2}' "$work/login.txt")  p99: $(awk '$1=="99%" {print $2}' "$work/login.txt")"
  echo "idle RSS after start: $((rss_idle / 1024)) MiB ($rss_idle KiB); after the load: $((rss_after / 1024)) MiB"
  echo "runs with non-2xx responses: $errors"
  cat "$work/events.txt"
  echo "RSS after the event load: $((rss_events / 1024)) MiB"
} | tee bench/results/latest.txt
