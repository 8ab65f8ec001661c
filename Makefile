# Every target bootstraps .venv/ on first use: a fresh clone needs only python3 and make.
# `make help` lists the targets: each one's line below carries its `## description`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
EXPORT ?= exports
WORK ?= work
TB_PORT ?= 6006
KILLS ?= 300

.PHONY: help install tools producer consumer serve demo cluster tensorboard test soak inspect bench bench-check kserve-venv clean

help: ## list the targets (variables: ARGS, EXPORT, WORK, TB_PORT, KILLS)
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 16

install: $(STAMP) ## create .venv/ with every pinned dependency

# tensorflow-serving-api (TF Serving's protos and gRPC stubs) pins the full tensorflow package,
# which would install beside tensorflow-cpu; without its dependencies it works on tensorflow-cpu.
TF_SERVING_API := tensorflow-serving-api==2.21.0
# tritonclient (the Open Inference Protocol tests' client) declares protobuf<7; it works on ours.
TRITON_CLIENT := tritonclient==2.73.0

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	$(PY) -m pip install --quiet --no-deps $(TF_SERVING_API) $(TRITON_CLIENT)
	touch $(STAMP)

producer: $(STAMP) ## train and publish versions into EXPORT (ARGS="--model mlp ...")
	$(PY) -m producer $(ARGS)

consumer: $(STAMP) ## watch EXPORT and evaluate or keep training each version (ARGS=...)
	$(PY) -m consumer $(ARGS)

serve: $(STAMP) ## serve each new version over TF Serving's REST API on 127.0.0.1:8501
	$(PY) -m consumer --mode serve $(ARGS)

demo: $(STAMP) ## the whole handoff end to end: producer, consumers, a server, a summary
	$(PY) scripts/demo.py $(ARGS)

cluster: $(STAMP) ## one ps and two workers on localhost train; a consumer evaluates the chief's versions
	$(PY) scripts/cluster.py $(ARGS)

tensorboard: $(STAMP) ## training curves (EXPORT/events) beside eval curves (WORK/eval)
	$(PY) -m tensorboard.main --logdir_spec train:$(EXPORT)/events,eval:$(WORK)/eval \
		--host 127.0.0.1 --port $(TB_PORT) $(ARGS)

inspect: $(STAMP) ## show what the versions in EXPORT hold, part by part
	$(PY) -m shared.inspect $(EXPORT) $(ARGS)

bench: $(STAMP) tools ## benchmarks against baselines; writes docs/BENCHMARKS.md (ARGS=--quick)
	$(PY) -m bench $(ARGS)

# strace lets a test check the order of fsync and rename calls; wrk drives the serving bench's
# HTTP load from native code, h2load (Debian's nghttp2-client) its gRPC load. Each is installed
# where it is missing (tool:package).
tools: ## install strace, wrk and h2load if missing (the fsync-order test; the serving bench)
	@for pair in strace:strace wrk:wrk h2load:nghttp2-client; do tool=$${pair%%:*}; \
		command -v $$tool >/dev/null 2>&1 || { \
		command -v apt-get >/dev/null 2>&1 && apt-get update -qq >/dev/null && \
		apt-get install -y -qq $${pair#*:} >/dev/null; } || \
		echo "$$tool could not be installed: what needs it is skipped"; done

test: $(STAMP) tools ## the test suite: real TensorFlow, files, processes; under 10 minutes
	$(PY) -m pytest $(ARGS)

# The quick bench takes minutes, so it has its own target instead of a place in `make test`
bench-check: $(STAMP) tools ## run every benchmark small (2-3 minutes): they still run, not how fast
	$(PY) -m pytest -m bench tests/test_bench.py $(ARGS)

# KServe's SDK pins protobuf<7: its clients get a venv of their own, which the OIP client test
# uses when it is there (CI builds it; make test skips that test without it)
kserve-venv: ## build .venv-kserve/ with KServe's Python SDK for the OIP client test
	tests/kserve_env.sh

soak: $(STAMP) ## the chaos tests as soaks: -9 KILLS times in a row; 50 uploads to a bucket
	CHAOS_KILLS=$(KILLS) $(PY) -m pytest -s tests/test_chaos.py
	MIRROR_CHAOS_VERSIONS=50 $(PY) -m pytest -s tests/test_objstore_serving.py -k chaos

clean: ## remove .venv/, exports/, work/ and caches
	rm -rf $(VENV) exports work .pytest_cache
