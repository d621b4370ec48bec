# knode: the two commands a new user runs are `make up` and `make test`.
# Everything else is a building block of those two.

CARGO        ?= cargo
PREFIX       ?= /usr/local
CNI_BIN_DIR  ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d

.PHONY: up test bench bootstrap build install unit netns-test lint fuzz clean

## up: install packages, build, install, start containerd and the agent, apply examples/
up: bootstrap build install
	@scripts/up.sh

## test: every test (unit, netns, integration), installing what they need first
test: bootstrap
	scripts/test.sh

## bench: every benchmark, side by side with the reference tools
bench:
	scripts/bootstrap.sh --bench
	scripts/bench.sh

bootstrap:
	scripts/bootstrap.sh

build:
	$(CARGO) build --release --bins
	CARGO=$(CARGO) scripts/build-pause.sh --release

## install: knode + knode-pause in $(PREFIX)/bin, the CNI plugins in $(CNI_BIN_DIR),
## knode.service, and /etc/knode/config.yaml unless one exists
install:
	PREFIX=$(PREFIX) CNI_BIN_DIR=$(CNI_BIN_DIR) scripts/install.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## fuzz: run the CNI config/env and DNS query fuzz targets briefly (FUZZ_SECONDS each, default 60)
fuzz:
	scripts/fuzz.sh

clean:
	$(CARGO) clean
