# The two commands of the README: `make demo` and `make test`. Each runs scripts/setup first,
# with its purpose, so it installs what that command needs and nothing more.
.PHONY: setup setup-demo setup-demo-ha demo-ha demo-ha-down setup-test setup-packages demo demo-down test lint build bench packages bench-metrics bench-failover bench-provision bench-backup bench-operations bench-console stress-failover soak-failover time-to-first-db

CARGO ?= cargo

# Everything (what every purpose needs).
setup:
	scripts/setup all

setup-demo:
	scripts/setup demo

setup-test:
	scripts/setup test

setup-packages:
	scripts/setup packages

build: setup-test
	$(CARGO) build --workspace --all-targets

# Reuses a demo that already runs (prints its state and what to try); `make demo-down` first
# to start afresh.
demo: setup-demo
	scripts/demo

demo-down:
	scripts/demo-down

setup-demo-ha:
	scripts/setup demo-ha

# High availability: three Consul servers (TLS only), three schedulers electing a leader on
# them, three agents, one MariaDB instance; prints the leader and how to kill it (docs/ha.md).
demo-ha: setup-demo-ha
	scripts/demo-ha

demo-ha-down:
	scripts/demo-ha-down

# From a machine without the project's images to the demo's first database answer, phase by
# phase (removes the images and the base cache first; see docs/development.md).
time-to-first-db:
	scripts/time-to-first-db $(ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The install test (tests/tests/install.rs) installs the packages `packages` builds.
# The end-to-end suites run the release daemons the packages hold (what ships; a debug agent
# costs 3.3 times the idle CPU, benchmarks.md); `cargo test` alone builds and runs debug ones.
# RUST_LIB_BACKTRACE=0: a failed end-to-end test ends with its reason, not with an error's
# 40-frame backtrace (CI keeps only the head and the tail of a failure's output).
test: setup-test lint
	$(CARGO) build --workspace --bins
	scripts/packages
	RUST_LIB_BACKTRACE=0 MOFANG_TEST_BINARIES="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/release" $(CARGO) test --workspace

# .deb and .rpm of mofang-agent and mofang-scheduler (with the CLI) in target/packages/.
packages: setup-packages
	scripts/packages

# Scheduler benchmark: 1,000 gRPC agents, 10,000 creations over REST (see docs/benchmarks.md).
bench: setup-test
	$(CARGO) run --release -q -p mofang-tests --bin bench-scheduler

# Metrics benchmark: agent /metrics vs mysqld_exporter + redis_exporter at 10 and 50 containers
# (see docs/benchmarks.md).
bench-metrics: setup-test
	$(CARGO) run --release -q -p mofang-tests --bin bench-metrics

# Failover benchmark: RTO and lost writes over 20 kills and 20 host partitions per scenario,
# Redis Sentinel as the anchor (see docs/benchmarks.md). E.g. ARGS="--rounds 5".
bench-failover: setup-test
	$(CARGO) run --release -q -p mofang-tests --bin bench-failover -- $(ARGS)

# Console benchmark: the web console's pages answering with 2,000 instances in the store,
# in-process, no Docker (see docs/benchmarks.md). E.g. ARGS="--instances 5000".
bench-console:
	$(CARGO) run --release -q -p mofang-tests --bin bench-console -- $(ARGS)

# Day-2 operations: time and longest write outage of restart, resize, upgrade and scale on a
# 3-member MariaDB instance under writes, next to the same work by hand (see docs/benchmarks.md).
bench-operations: setup-test
	$(CARGO) run --release -q -p mofang-tests --bin bench-operations

# Provisioning latency: MariaDB and Redis 1 primary + 2 replicas created N times, phase by
# phase, next to a bare `docker run` of the same image to its ping (see docs/benchmarks.md).
# E.g. ARGS="--runs 10" (default 5).
bench-provision: setup-test
	$(CARGO) run --release -q -p mofang-tests --bin bench-provision -- $(ARGS)

# Backup benchmark: throughput against mariadb-backup | zstd by hand, restore time, the
# primary's write p99 with and without a replica backup, on one generated dataset (see
# docs/benchmarks.md). E.g. ARGS="--mib 1024 --write-secs 30" (default 2048 MiB, 30 s).
# The daemons are release builds here (their zstd and sha256 are the figures).
bench-backup: setup-test
	$(CARGO) build --release -q -p mofang-agent -p mofang-scheduler --bins
	MOFANG_TEST_BINARIES=$${CARGO_TARGET_DIR:-target}/release $(CARGO) run --release -q -p mofang-tests --bin bench-backup -- $(ARGS)

# The failover suite N times in a row with every core saturated by stress-ng (outside
# `make test`: about 2 minutes a run). E.g. ARGS="10 8" (runs, test threads).
stress-failover: setup-test
	scripts/stress-failover $(ARGS)

# Failover soak: every fault (kill, stop, pause, partition, agent kill -9, scheduler kill -9,
# the leader kill -9 of three schedulers on Consul,
# two kills in a row) on MariaDB and Redis under a set writer, with stress-ng on every core;
# exits non-zero if MariaDB lost an acknowledged write or members did not converge. Bounded:
# ARGS="--rounds 20 --minutes 60" (default 20 rounds per scenario, no time bound).
soak-failover: setup-test
	$(CARGO) run --release -q -p mofang-tests --bin bench-failover -- --soak --stress $(ARGS)
