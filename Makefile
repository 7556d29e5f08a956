# The two commands of the README: `make demo` and `make test`. Each runs scripts/setup first.
.PHONY: setup demo demo-down test lint build bench bench-failover

CARGO ?= cargo

setup:
	scripts/setup

build: setup
	$(CARGO) build --workspace --all-targets

demo: setup
	scripts/demo

demo-down:
	scripts/demo-down

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: setup lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# Scheduler benchmark: 1,000 gRPC agents, 10,000 creations over REST (see docs/benchmarks.md).
bench: setup
	$(CARGO) run --release -q -p mofang-tests --bin bench-scheduler

# Failover benchmark: RTO and lost writes over 20 kills and 20 host partitions per scenario,
# Redis Sentinel as the anchor (see docs/benchmarks.md). E.g. ARGS="--rounds 5".
bench-failover: setup
	$(CARGO) run --release -q -p mofang-tests --bin bench-failover -- $(ARGS)
