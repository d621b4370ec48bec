# knode: the two commands a new user runs are `make up` and `make test`.
# Everything else is a building block of those two.

CARGO        ?= cargo
PREFIX       ?= /usr/local
CNI_BIN_DIR  ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d

.PHONY: up test bench bootstrap build install-cni install-knode unit netns-test lint fuzz clean

## up: install packages, build, install knode and the CNI plugins, start the agent
up: bootstrap build install-cni install-knode
	@scripts/up.sh

## test: every test (unit, netns, integration), installing what they need first
test: bootstrap
	scripts/test.sh

## bench: every benchmark, side by side with the reference tools
bench: bootstrap
	scripts/bench.sh

bootstrap:
	scripts/bootstrap.sh

build:
	$(CARGO) build --release --bins
	CARGO=$(CARGO) scripts/build-pause.sh --release

install-knode:
	install -d $(PREFIX)/bin
	install -m 0755 target/release/knode $(PREFIX)/bin/knode
	install -m 0755 target/release/knode-pause $(PREFIX)/bin/knode-pause

install-cni:
	install -d $(CNI_BIN_DIR)
	install -m 0755 target/release/knode-bridge target/release/knode-host-local target/release/knode-loopback $(CNI_BIN_DIR)/

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## fuzz: run the CNI config/env fuzz target briefly (FUZZ_SECONDS, default 60)
fuzz:
	scripts/fuzz.sh

clean:
	$(CARGO) clean
