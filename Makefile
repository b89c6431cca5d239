# The two commands of the README. Both install missing prerequisites first
# (scripts/bootstrap.sh), then call cargo.
CARGO_TARGET_DIR ?= $(HOME)/.cache/axon-target
AXON_VENV ?= $(HOME)/.cache/axon-venv
export CARGO_TARGET_DIR AXON_VENV

.PHONY: run test deps release-deps test-deps bench lint user fuzz

## Start a homeserver on 127.0.0.1:8008 with data under ./data.
run: release-deps
	cargo run --release

## Create an admin account on the server of `make run` (it may be running): make user NAME=alice
user: release-deps
	@test -n "$(NAME)" || { echo "usage: make user NAME=alice" >&2; exit 2; }
	cargo run --release -q -- user create $(NAME) --admin

## The test suite that CI runs.
test: test-deps
	AXON_PYTHON=$(AXON_VENV)/bin/python cargo test --workspace

deps:
	@scripts/bootstrap.sh

release-deps:
	@scripts/bootstrap.sh --release

test-deps:
	@scripts/bootstrap.sh --test

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## Fuzz the server against the spec's OpenAPI with schemathesis (see docs/testing.md).
fuzz: deps
	cargo build --workspace --bins --tests
	scripts/fuzz.sh

## Benchmarks against the release binary (see bench/README.md).
bench: release-deps
	cargo build --release -p axon -p axon-bench
	bench/run.sh
