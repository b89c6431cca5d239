#!/usr/bin/env bash
# Fuzzes Axon against the Matrix spec's Client-Server OpenAPI with schemathesis. The bar is
# zero server errors: the run fails on any 5xx answer, any panic or internal error in the
# server's log, and a server that died.
#
#   scripts/fuzz.sh            a bounded run (see the variables below); `make fuzz` runs this
#
# What it does: installs schemathesis into a venv (AXON_FUZZ_VENV, default
# ~/.cache/axon-fuzz-venv) if missing; bundles the spec's split YAML files into one document
# (scripts/fuzz/bundle_spec.py); starts the axon binary (AXON_BIN, else the debug build, built
# if missing) with a temporary configuration on a free port; registers a user and creates
# fixtures; keeps the operations the server implements (scripts/fuzz/prepare.py); then runs
# schemathesis's examples, coverage and fuzzing phases with the `not_a_server_error` check.
#
# Variables:
#   MATRIX_SPEC_DIR     the matrix-spec checkout (default: ../shared/matrix-spec beside the repo)
#   FUZZ_MAX_EXAMPLES   generated cases per operation and phase (default 25)
#   FUZZ_MAX_TIME       time budget of the schemathesis run, in seconds (default 300)
#   FUZZ_SEED           random seed (default 1, so runs repeat; set another to explore)
#   FUZZ_WORKERS        concurrent schemathesis workers (default 1: with more, hypothesis can
#                       fail inside itself under CPython 3.11, "AST constructor recursion depth")
#   FUZZ_KEEP           if set, keep the work directory (server log, reports) for inspection
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
spec_root=${MATRIX_SPEC_DIR:-$root/../shared/matrix-spec}
spec_dir=$spec_root/data/api/client-server
venv=${AXON_FUZZ_VENV:-$HOME/.cache/axon-fuzz-venv}
schemathesis_version=4.32.5
max_examples=${FUZZ_MAX_EXAMPLES:-25}
max_time=${FUZZ_MAX_TIME:-300}
seed=${FUZZ_SEED:-1}
workers=${FUZZ_WORKERS:-1}

if [[ ! -d $spec_dir ]]; then
    echo "fuzz: no Client-Server OpenAPI at $spec_dir; set MATRIX_SPEC_DIR to a matrix-spec checkout" >&2
    exit 1
fi

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
    echo "fuzz: installing schemathesis $schemathesis_version into $venv" >&2
    command -v python3 >/dev/null || { echo "fuzz: python3 is required" >&2; exit 1; }
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$schemathesis_version" pyyaml
fi
python=$venv/bin/python

bin=${AXON_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/axon-target}/debug/axon}
if [[ ! -x $bin ]]; then
    echo "fuzz: building $bin" >&2
    # The workspace build with tests, as `make test` builds it: `cargo build --bin axon` alone
    # resolves other features and would compile RocksDB a second time.
    (cd "$root" && cargo build --workspace --bins --tests)
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -n ${FUZZ_KEEP:-} ]]; then
        echo "fuzz: work directory kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
cat >"$work/axon.toml" <<TOML
server_name = "fuzz.local"
[http]
listen = ["127.0.0.1:$port"]
[database]
path = "$work/db"
cache_mib = 8
[registration]
mode = "open"
[limits]
login = { per_second = 100000.0, burst = 100000 }
failed_login_per_account = { per_second = 100000.0, burst = 100000 }
register = { per_second = 100000.0, burst = 100000 }
events = { per_second = 100000.0, burst = 100000 }
[logging]
level = "warn"
TOML

"$bin" --config "$work/axon.toml" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 300); do
    curl -fs "$base/_matrix/client/versions" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "fuzz: axon exited at start-up" >&2; exit 1; }
    sleep 0.1
done

"$python" "$root/scripts/fuzz/bundle_spec.py" "$spec_dir" "$work/bundled.json"
token=$("$python" "$root/scripts/fuzz/prepare.py" "$base" "$work/bundled.json" "$work/spec.json" "$work/schemathesis.toml")

echo "fuzz: schemathesis against $base (seed $seed, $max_examples examples, at most ${max_time}s)" >&2
status=0
# From the work directory: schemathesis keeps a cache directory where it runs.
cd "$work"
"$venv/bin/schemathesis" --no-color --config-file "$work/schemathesis.toml" run "$work/spec.json" \
    --url "$base" \
    --checks not_a_server_error \
    --phases examples,coverage,fuzzing \
    --max-examples "$max_examples" \
    --max-time "$max_time" \
    --seed "$seed" \
    --workers "$workers" \
    --request-timeout 20 \
    --suppress-health-check all \
    --generation-database none \
    --report ndjson --report-dir "$work/report" \
    --continue-on-failure || status=$?

"$python" "$root/scripts/fuzz/summary.py" "$work/report/"*.ndjson >&2 || true

failed=0
[[ $status -eq 0 ]] || failed=1
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "fuzz: FAIL: the server died during the run" >&2
    failed=1
fi
if grep -E "panicked|internal error|request parsing panicked" "$work/server.log" >&2; then
    echo "fuzz: FAIL: the server logged panics or internal errors (above)" >&2
    failed=1
fi
if [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$base/_matrix/client/v3/account/whoami") != 200 ]]; then
    echo "fuzz: warning: the fuzzing user's token stopped working during the run; later authenticated cases only saw 401" >&2
fi
if [[ $failed -ne 0 ]]; then
    FUZZ_KEEP=1
    echo "fuzz: FAILED" >&2
    exit 1
fi
echo "fuzz: passed: no server errors" >&2
