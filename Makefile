# The two commands of the README: `make demo` and `make test`. Each runs scripts/setup first.
.PHONY: setup demo demo-down test lint build

CARGO ?= cargo

setup:
	scripts/setup

build: setup
	$(CARGO) build --workspace --all-targets

demo: setup
	$(CARGO) run -q -p mofang-tests --bin demo

demo-down:
	-docker rm -f $$(docker ps -aq --filter label=mofang.demo=1) 2>/dev/null
	rm -rf .demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: setup lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
