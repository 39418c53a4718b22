# cutover — developer entry points. Everything a fresh machine needs is installed by
# deploy/local/bootstrap.sh (called by the targets that need it).
SHELL := /bin/bash
STACK := deploy/local/stack.sh
# Tests and the dev binary carry the fault-injection points (inert unless FAILPOINTS is set);
# release builds (bench, Dockerfile) do not.
FEATURES := --features failpoints

.PHONY: help bootstrap up down status restart-broker destroy build test test-only test-rules lint fmt clean demo bench

help:
	@echo "make demo      stack + legacy shop + cutover run + live workload view (Ctrl-C stops)"
	@echo "make bench     catch-up vs native logical replication, stage ceilings, latency, RSS"
	@echo "make up        start the local stack (2x PostgreSQL, Apache Kafka, schema registry)"
	@echo "make down      stop it (data kept);  make destroy  stop and delete its data"
	@echo "make status    show what runs where"
	@echo "make test      start the stack if needed, then lint + unit + integration tests"
	@echo "make lint      cargo fmt --check and clippy -D warnings"
	@echo "make test-rules  promtool check + unit tests of the alert rules"

bootstrap:
	@bash deploy/local/bootstrap.sh

up:
	@bash deploy/local/bootstrap.sh stack
	@cargo build --quiet --bin cutover $(FEATURES)
	@bash $(STACK) up

down:
	@bash $(STACK) down

status:
	@bash $(STACK) status

restart-broker:
	@bash $(STACK) restart-broker

destroy:
	@bash $(STACK) destroy

demo: up
	@bash deploy/demo/demo.sh

bench: up
	@cargo build --quiet --release --bin cutover
	@bash deploy/bench/bench.sh

build:
	cargo build --all-targets $(FEATURES)

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets $(FEATURES) -- -D warnings

# The README's test command: stack up (idempotent), lint, alert-rule unit tests, then every
# test with nextest.
test: up lint test-rules test-only

# promtool comes from Debian's prometheus package (deploy/local/bootstrap.sh installs it).
test-rules:
	@bash deploy/local/bootstrap.sh stack
	promtool check rules deploy/prometheus/alerts.yml
	promtool check config --syntax-only deploy/prometheus/prometheus.yml
	cd deploy/prometheus && promtool test rules alerts_test.yml

test-only:
	@bash deploy/local/bootstrap.sh nextest
	@bash $(STACK) sweep-tests
	cargo nextest run --all-targets --profile ci $(FEATURES)

fmt:
	cargo fmt --all

clean:
	cargo clean
