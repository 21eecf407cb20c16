# servekit: the two commands are `make serve` and `make test`.
# Every target creates/updates .venv first; each step is skipped when already done.

SHELL := /bin/bash
# The Python that creates .venv: python3.11, else python3 when that is 3.11.
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.servekit-installed
# Exits 0 for a Python 3.11. A .venv that is not a venv of one with pip (its creation
# stopped after bin/python, as without python3.11-venv, or another Python made it) is
# made again.
IS_PY311 := import sys; sys.exit(sys.version_info[:2] != (3, 11))
VENV_CHECK := import pip, sys; sys.prefix != sys.base_prefix or sys.exit(1); $(IS_PY311)
VENV_OK := $(shell $(PY) -c '$(VENV_CHECK)' >/dev/null 2>&1 && echo yes)
ARTIFACTS := artifacts
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv-remake sdk-ts serve test lint models artifacts servers bench bench-gpu bench-raw eval index cluster install clean

install: $(STAMP)

# Reinstall only when the dependency declaration changes. The Python SDK (sdk/python,
# its own package) is installed beside servekit, editable, for its tests.
$(STAMP): pyproject.toml sdk/python/pyproject.toml $(if $(VENV_OK),,venv-remake)
	@if ! $(PY) -c '$(VENV_CHECK)' >/dev/null 2>&1; then \
	  boot="$(PYTHON_BOOT)"; \
	  if [ -z "$$boot" ] || ! "$$boot" -c '$(IS_PY311)' >/dev/null 2>&1; then \
	    echo "servekit needs Python 3.11 to create $(VENV): $${boot:-no python3.11 or python3 is on PATH}$${boot:+ is $$("$$boot" -V 2>&1 | head -1)}; install python3.11 and python3.11-venv (Debian: apt-get install python3.11 python3.11-venv), or give make PYTHON_BOOT=/path/to/python3.11" >&2; \
	    exit 1; \
	  fi; \
	  if [ -e $(VENV) ]; then echo "$(VENV) is not a working Python 3.11 environment with pip: making it again"; fi; \
	  rm -rf $(VENV); \
	  "$$boot" -m venv $(VENV) && $(PY) -c '$(VENV_CHECK)' >/dev/null 2>&1 || { \
	    rm -rf $(VENV); \
	    echo "could not create $(VENV) with $$boot (no ensurepip?): install python3.11-venv (Debian: apt-get install python3.11-venv)" >&2; \
	    exit 1; \
	  }; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]" -e ./sdk/python
	@touch $@
venv-remake:

# The embedding model's versions, then the example recommender (trained, about 4 minutes
# on 2 cores the first time); each is skipped when an intact build is there. The
# recommender's training pins its numeric code paths (AVX2 kernels in torch, MKL, numpy
# and OpenBLAS; one thread) and takes no sum from MKL (see models/two_tower.py), so every
# x86-64 machine builds the bytes serve_config.yaml names (the same seed alone gives the
# same bytes only on the same kind of CPU).
PINNED_NUMERICS := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 OPENBLAS_CORETYPE=Haswell \
	NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" OMP_NUM_THREADS=1 \
	OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
models: $(STAMP)
	$(PY) -m models.build --out $(ARTIFACTS)
	$(PINNED_NUMERICS) $(PY) -m models.recommender_build --out $(ARTIFACTS)

# Every artifact: the models, and the example catalog's snapshot (below; 13 minutes on
# 2 cores the first time, then skipped while the file is there). Serving, testing and
# benchmarking need only the models.
SNAPSHOT := $(ARTIFACTS)/catalog/products.index
artifacts: models $(SNAPSHOT)
$(SNAPSHOT): | models
	$(PY) -m servekit index build --out $@

# The console shows servekit's own lines; VERBOSE=1 adds Ray's, HAProxy's and the access log.
serve: models
	$(PY) -m servekit serve serve_config.yaml $(if $(VERBOSE),--verbose)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The production stores the tests start as real servers (redis-server, PostgreSQL 15),
# and headless Chromium with its WebDriver for the dashboard's test.
servers:
	@bash scripts/install-servers.sh

# The TypeScript SDK's development dependencies (typescript, openapi-typescript) from the
# npm registry, again only when its lock file changes; its tests build it. Needs Node.js
# 20 or newer (its engines field) and npm: without them it stops with one line saying so.
SDK_TS := sdk/typescript
sdk-ts: $(SDK_TS)/node_modules/.package-lock.json

$(SDK_TS)/node_modules/.package-lock.json: $(SDK_TS)/package.json $(SDK_TS)/package-lock.json
	@node=$$(node -v 2>/dev/null); major=$${node#v}; \
	command -v npm >/dev/null && [ "$${major%%.*}" -ge 20 ] 2>/dev/null || { \
	  echo "make sdk-ts: the TypeScript SDK (and make test) needs Node.js 20 or newer and npm: install them (nodejs.org, or your distribution's nodejs and npm packages when they are 20 or newer); found node $${node:-none}, npm $$(command -v npm >/dev/null && echo yes || echo none)" >&2; exit 1; }
	cd $(SDK_TS) && npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

test: lint models servers sdk-ts
	$(PY) -m pytest

# Regenerate cluster/rayservice.yaml from serve_config.yaml and cluster/settings.yaml;
# refused while it would give a version of the manifest it replaces other bytes (ARGS=
# --allow-changed-versions when that manifest never reached a cluster).
cluster: $(STAMP)
	$(PY) -m servekit.kube $(ARGS)

# Serving benchmark: raw vs plain Ray Serve vs servekit (bench/results/latest.json, .png);
# then /v1/search against an in-process loop, and the embedding cache on and off under a
# Zipf query stream (bench/results/search.json); then the online read of one user's 20
# features against a local redis-server (bench/results/features.json, a few seconds); then
# /v1/recommendations against a single-text embedding and an in-process loop
# (bench/results/recommend.json).
# Its load generator is wrk (installed here from Debian's packages when missing and
# possible), else a slower asyncio client; the results say which one ran.
bench: models
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get install -y -qq wrk >/dev/null 2>&1; } || echo "wrk is not installed: using the asyncio client"
	$(PY) bench/serving.py
	$(PY) bench/search.py
	$(PY) bench/features.py
	$(PY) bench/recommend.py

# On a machine with an NVIDIA GPU and the CUDA builds installed (see the README): the
# example model on CUDA, eager PyTorch against the served runtime, ONNX Runtime's CUDA
# provider, and servekit over HTTP with each version dedicated on the GPU.
bench-gpu: models
	$(PY) bench/gpu.py --http --out bench/results/gpu-torch.json
	$(PY) bench/gpu.py --only onnx --http --out bench/results/gpu-onnx.json

bench-raw: models
	$(PY) bench/raw_runtime.py --store $(ARTIFACTS)

# Search quality: NDCG@10 and recall@10 of every version of the search model, vector vs
# lexical vs hybrid, on the example catalog's test queries (bench/results/eval.json).
# Options through EVAL_ARGS, e.g. make eval EVAL_ARGS="--items 5000 --split dev". Then the
# recommender against popularity and co-occurrence, and personalized search against plain
# search (bench/results/eval_recommend.json).
eval: models
	$(PY) bench/eval.py $(EVAL_ARGS)
	$(PY) bench/eval_recommend.py

# The example catalog's snapshot artifact (artifacts/catalog/products.index): its items
# with a ready vector index per version of the search model, for args.search.snapshots.
# Embeds 50,000 items per version the first time (minutes on 2 cores), shared with eval.
# Options through INDEX_ARGS, e.g. make index INDEX_ARGS="--versions v1 --tenant acme".
index: models
	$(PY) -m servekit index build $(INDEX_ARGS)

clean:
	rm -rf $(VENV) $(ARTIFACTS) .mypy_cache .ruff_cache .pytest_cache
