#!/usr/bin/env bash
# Installs what building and testing Axon needs and a fresh machine may lack.
# Idempotent and quiet when everything is there. Used by `make run`, `make test` and .ci/run.
#
#   scripts/bootstrap.sh          build prerequisites (libclang for the rocksdb crate's bindgen)
#   scripts/bootstrap.sh --release
#                                 the same, before a release build (`make run`): says so when
#                                 that build will compile RocksDB for the first time
#   scripts/bootstrap.sh --test   also the real-client test dependencies: a Python venv with
#                                 matrix-nio, and matrix-js-sdk from npm (before a debug build);
#                                 and Garage, the S3-compatible store of the S3 media tests,
#                                 built once into ~/.cache/axon-tools (cargo install)
#   scripts/bootstrap.sh --check-libclang
#                                 only say whether bindgen would find libclang (exit 0/1)
set -euo pipefail

want_test=0
profile=""
case "${1:-}" in
    --test) want_test=1 profile=debug ;;
    --release) profile=release ;;
esac

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
apt_updated=0
apt_install() {
    if ! command -v apt-get >/dev/null; then
        echo "bootstrap: please install $* with your package manager" >&2
        exit 1
    fi
    if [[ $apt_updated -eq 0 ]]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    echo "bootstrap: installing $*" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# Whether bindgen (through clang-sys) will find a loadable libclang. This mirrors clang-sys's
# own search: $LIBCLANG_PATH if set, else `llvm-config --prefix`/lib and the usual library
# directories, for files named libclang.so, libclang-*.so, libclang.so.* or libclang-*.so.*,
# ignoring libclang-cpp (a different library that Debian images often ship on their own).
# AXON_BOOTSTRAP_ROOT prefixes every searched directory; tests point it at a fake tree.
libclang_dirs() {
    local root="${AXON_BOOTSTRAP_ROOT:-}"
    if [[ -n "${LIBCLANG_PATH:-}" ]]; then
        echo "$LIBCLANG_PATH"
        return
    fi
    if [[ -z "$root" ]] && command -v llvm-config >/dev/null; then
        local prefix
        prefix=$(llvm-config --prefix 2>/dev/null || true)
        [[ -n "$prefix" ]] && echo "$prefix/lib" && echo "$prefix/lib64"
    fi
    local pattern dir
    for pattern in "/usr/local/llvm*/lib*" "/usr/local/lib*/*/*" "/usr/local/lib*/*" "/usr/local/lib*" \
        "/usr/lib*/*/*" "/usr/lib*/*" "/usr/lib*"; do
        for dir in $root$pattern; do
            [[ -d "$dir" ]] && echo "$dir"
        done
    done
}

have_libclang() {
    local dir file name
    while IFS= read -r dir; do
        for file in "$dir"/libclang.so "$dir"/libclang-*.so "$dir"/libclang.so.* "$dir"/libclang-*.so.*; do
            [[ -e "$file" ]] || continue
            name=${file##*/}
            [[ "$name" == *-cpp.* ]] && continue
            return 0
        done
    done < <(libclang_dirs)
    return 1
}

if [[ "${1:-}" == "--check-libclang" ]]; then
    if have_libclang; then echo "libclang: found"; exit 0; else echo "libclang: missing"; exit 1; fi
fi

have_libclang || apt_install libclang-dev
command -v c++ >/dev/null || apt_install g++

# The first build compiles RocksDB's C++ sources; say so rather than leave a long silence.
if [[ -n $profile ]] && ! compgen -G "${CARGO_TARGET_DIR:-target}/$profile/build/librocksdb-sys-*/output" >/dev/null; then
    echo "bootstrap: first $profile build: cargo compiles RocksDB (C++) once, about 10-15 minutes" \
        "on 2 cores; cargo shows its progress below. Later builds take seconds." >&2
fi

if [[ $want_test -eq 1 ]]; then
    venv="${AXON_VENV:-$HOME/.cache/axon-venv}"
    if ! "$venv/bin/python" -c "import nio" 2>/dev/null; then
        command -v python3 >/dev/null || apt_install python3
        if ! python3 -m venv "$venv" 2>/dev/null; then
            rm -rf "$venv"
            apt_install python3-venv
            python3 -m venv "$venv"
        fi
        echo "bootstrap: installing matrix-nio into $venv" >&2
        "$venv/bin/pip" install -q --disable-pip-version-check -r complement-tests/clients/requirements.txt
    fi
    # matrix-js-sdk (Element Web's SDK) for the JavaScript client tests; it needs Node >= 20.
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm
    fi
    js=complement-tests/clients/js
    if [[ ! -d "$js/node_modules/matrix-js-sdk" || "$js/package-lock.json" -nt "$js/node_modules" ]]; then
        echo "bootstrap: installing matrix-js-sdk into $js" >&2
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        touch "$js/node_modules"
    fi
    # Garage (S3-compatible object store) for complement-tests/tests/media_s3.rs: a binary
    # crate on crates.io, compiled once into a cached location (a long build: ~15-30 min on 2
    # cores), rebuilt only when missing or of another version.
    garage_version=2.5.0
    tools="${AXON_TOOLS:-$HOME/.cache/axon-tools}"
    if ! "$tools/bin/garage" --version 2>/dev/null | grep -q "$garage_version"; then
        echo "bootstrap: building Garage $garage_version into $tools (once)" >&2
        CARGO_TARGET_DIR="$tools/target" nice -n 10 cargo install garage --version "$garage_version" \
            --locked --no-default-features --features bundled-libs,lmdb --root "$tools" --force
        rm -rf "$tools/target"
    fi
fi
