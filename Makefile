# modelpilot — one entry point for set-up, checks, tests and the demo.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
PACKAGES := operator/src/modelpilot_operator runtime-image/src/modelpilot_runtime
MYPY_TARGETS := $(patsubst %/__init__.py,%,$(wildcard $(addsuffix /__init__.py,$(PACKAGES)))) $(if $(wildcard e2e/*.py),e2e) tests

.PHONY: all host-deps venv torchserve-env check fmt crds rbac test unit integration cluster-build cluster-up cluster-down demo demo-runtime demo-down clean

all: test

$(STAMP): pyproject.toml
	@echo ">> creating virtual environment in $(VENV)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip uv
	@$(BIN)/uv pip install -q --python $(BIN)/python -e '.[operator,runtime,dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The TorchServe backend's test tier needs torch, TorchServe and Java (about 25 s and 4.3 GB
# cold, see docs/torchserve.md). MODELPILOT_SKIP_TORCHSERVE=1 leaves it out; its tests then skip.
TS_STAMP := $(VENV)/.torchserve
$(TS_STAMP): $(STAMP) runtime-image/torchserve/install.sh runtime-image/torchserve/overrides.txt
	@echo ">> installing torch, TorchServe and Java for the TorchServe backend"
	@runtime-image/torchserve/install.sh $(BIN)/python
	@touch $(TS_STAMP)

torchserve-env: $(TS_STAMP)

TEST_ENV := $(STAMP) $(if $(filter 1,$(MODELPILOT_SKIP_TORCHSERVE)),,$(TS_STAMP))

# crds/ is the one source; the chart carries a copy that the check keeps identical.
crds: $(STAMP)
	$(BIN)/python -m modelpilot_operator.crdgen --out crds/
	$(BIN)/python -m modelpilot_operator.crdgen --out charts/modelpilot/crds/

rbac: $(STAMP)
	$(BIN)/python -m modelpilot_operator.rbac --out .

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(MYPY_TARGETS)
	$(BIN)/lint-imports
	$(BIN)/python -m modelpilot_operator.crdgen --check crds/
	$(BIN)/python -m modelpilot_operator.rbac --check --out .
	$(BIN)/python -m modelpilot_operator.crdgen --check charts/modelpilot/crds/

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

unit: $(TEST_ENV)
	$(BIN)/python -m pytest tests/unit -q

# The pod network runs as root with iproute2 (ip netns, a bridge), nsenter and nftables
# (kube-proxy's mode and the forwarding guard); Debian's packages where they are missing.
host-deps:
	@missing=""; for t in ip nsenter nft; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing the pod network's host tools (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 util-linux nftables >/dev/null; \
	fi

# The local cluster: real etcd + kube-apiserver + controllers built from Go modules.
cluster-build: $(STAMP)
	$(BIN)/python -m e2e.cluster build

cluster-up: $(STAMP) host-deps
	$(BIN)/python -m e2e.cluster up

cluster-down: $(STAMP)
	$(BIN)/python -m e2e.cluster down

integration: $(STAMP) host-deps
	@if [ -f e2e/cluster.py ]; then \
	  $(MAKE) cluster-build && $(BIN)/python -m pytest tests/integration -q -m integration; \
	else echo ">> no local cluster in this tree yet: integration tier skipped"; fi

test: check unit integration

# For now: check an example ModelDeployment, then the runtime serving sample models on :8080
# (see README); the cluster demo comes later.
# The main job: the local cluster, the chart, a canary promoted and one rolled back, a plot.
demo: $(STAMP) host-deps
	$(BIN)/python -m e2e.demo

# The runtime alone: serve the sample models on localhost:8080 for curl.
demo-runtime: $(STAMP)
	$(BIN)/modelpilot validate --show-defaults examples/canary.yaml
	$(BIN)/python -m modelpilot_runtime.demo

demo-down: $(STAMP)
	$(BIN)/python -m e2e.demo down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
