# Every target bootstraps .venv/ on first use: a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
EXPORT ?= exports

.PHONY: install tools producer consumer serve demo test soak inspect bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

producer: $(STAMP)
	$(PY) -m producer $(ARGS)

consumer: $(STAMP)
	$(PY) -m consumer $(ARGS)

serve: $(STAMP)
	$(PY) -m consumer --mode serve $(ARGS)

demo: $(STAMP)
	$(PY) scripts/demo.py $(ARGS)

inspect: $(STAMP)
	$(PY) -m shared.inspect $(EXPORT) $(ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

# strace lets a test check the order of fsync and rename calls; installed where it is missing.
tools:
	@command -v strace >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq >/dev/null && apt-get install -y -qq strace >/dev/null; } || \
		echo "strace could not be installed: the fsync-order test will be skipped"

test: $(STAMP) tools
	$(PY) -m pytest $(ARGS)

# the chaos test as a long soak: the producer killed with -9 KILLS times in a row
KILLS ?= 300
soak: $(STAMP)
	CHAOS_KILLS=$(KILLS) $(PY) -m pytest -s tests/test_chaos.py

clean:
	rm -rf $(VENV) exports work .pytest_cache
