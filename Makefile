# Set-up and everyday commands. `make serve` and `make test` do all set-up on a fresh machine.
# the system's Python when it is 3.11 or later and can make a venv with pip: Debian's is built with profile-guided
# and link-time optimisation, a pyenv build by default with neither (docs/performance.md#the-interpreter)
PYTHON ?= $(or $(shell for p in /usr/bin/python3 python3; do $$p -c 'import sys, ensurepip, venv; \
	sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $$p && break; done),python3)
VENV   := .venv
PY     := $(VENV)/bin/python
QA     := $(VENV)/bin/qa
STAMP  := $(VENV)/.installed
INDEX  ?= index
HOST   ?= 127.0.0.1
PORT   ?= 8000
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install serve test test-fast index rebuild eval browser-deps bench-deps soak bench bench-build clean

install: $(STAMP)

# torch==2.13.0 first: a CPU build lies on this machine's disk; a bare torch would pull a multi-GB CUDA build
$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# build index/ from seeds/ when it is missing or older than any seed
$(INDEX)/manifest.json: $(STAMP) $(wildcard seeds/*)
	$(QA) build seeds --index-dir $(INDEX) --quiet

index: $(INDEX)/manifest.json

serve: $(INDEX)/manifest.json
	$(QA) serve --index-dir $(INDEX) --host $(HOST) --port $(PORT)

rebuild: $(STAMP)
	scripts/rebuild_index.sh

eval: $(STAMP)
	$(QA) build eval/squad-dev/articles.jsonl --index-dir /tmp/qa-squad-index --quiet
	$(QA) eval eval/squad-dev/questions.jsonl --index-dir /tmp/qa-squad-index

# Debian's chromium and chromium-driver for the browser tests (never a test tool's own browser download)
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "browser tests need: sudo apt-get install chromium chromium-driver" >&2; fi; \
	fi

# Debian's wrk, the load generator of scripts/bench_query.py (which falls back to a Python one without it)
bench-deps:
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "the load benchmark needs: sudo apt-get install wrk" >&2; fi; \
	fi

# 10 minutes of mixed traffic with writes and a full rebuild; DURATION=60 for a short run
DURATION ?= 600
soak: $(STAMP)
	$(PY) scripts/soak --duration $(DURATION)

bench: $(STAMP) bench-deps
	$(PY) scripts/bench_query.py
	$(PY) scripts/bench_build.py

# `qa build` of squad-dev (torch, onnx) against sentence-transformers' encode() of the same paragraphs
bench-build: $(STAMP)
	$(PY) scripts/bench_build.py

test: $(STAMP) browser-deps
	$(PY) -m pytest -q

# the edit-test loop: every test but those on the real model (slow) and in Chromium (browser)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
