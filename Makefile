# The two commands a newcomer needs (see README.md):
#   make demo   set up, pull the default models, index SciFact (BM25 and SPLADE), report nDCG@10,
#               answer one question, then serve the API and web page (Ctrl-C stops)
#   make test   set up and run the test suite (what CI runs)
# Both install the locked versions (constraints.txt). `make test-latest` tries the newest releases instead,
# and `make lock` records them once they pass.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export SPARSA_HOME ?= $(HOME)/.cache/sparsa
# No wheel cache: the venv is ~3.6 GB (triton alone ~1 GB) and a cached copy of every wheel only costs disk.
export PIP_NO_CACHE_DIR ?= 1

.PHONY: install demo test test-latest lock bench clean

# Installs take the exact versions the test suite passed with (constraints.txt); `make lock` refreshes them.
# torch comes first: the machine's local CPU wheel, not a multi-GB CUDA build from PyPI.
LOCK := constraints.txt
$(VENV)/.installed: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) torch
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[all]"
	touch $@

install: $(VENV)/.installed

RUNS ?= runs
DEMO_QUESTION ?= Does vitamin D deficiency increase the risk of bone fractures?
# True when an index folder has a manifest and every file it lists with the right size.
index_ok = $(BIN)/python -c "import sys; from sparsa.artifacts import read_manifest; read_manifest(sys.argv[1])" \
	"$(SPARSA_HOME)/indexes/$(1)" 2>/dev/null

demo: install
	@if $(call index_ok,scifact-bm25); then $(BIN)/sparsa demo; else $(BIN)/sparsa demo --rebuild; fi
	@if $(call index_ok,scifact-splade); then echo "index scifact-splade: built and valid, not rebuilt"; \
	else $(BIN)/sparsa index --dataset scifact --kind splade --out scifact-splade --replace; fi
	@mkdir -p $(RUNS)
	$(BIN)/sparsa -q search --index scifact-splade --dataset scifact --k 100 --out $(RUNS)/scifact-splade.trec
	$(BIN)/sparsa eval --run $(RUNS)/scifact-splade.trec --dataset scifact
	$(BIN)/sparsa ask "$(DEMO_QUESTION)" --index scifact-bm25 --dataset scifact
	$(BIN)/sparsa serve

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Opt-in drift check: the newest releases the version ranges in pyproject.toml allow, in a venv of their own
# (.venv-latest), through the same lint and tests. `make lock` then records them as the new lock.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q torch==$$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' $(LOCK))
	$(LATEST)/bin/python -m pip install -q -e ".[all]"
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/python -m pytest
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/passed.txt
	@echo "the newest releases pass; their differences from the lock ('make lock' records them):"
	@grep -v '^#' $(LOCK) | diff - $(LATEST)/passed.txt && echo "none: the lock is current" || true

lock: test-latest
	{ echo "# The versions 'make test' passed with, written by 'make lock' (Python $$($(LATEST)/bin/python -c \
	'import platform; print(platform.python_version())'), $$(date -u +%F)). Edit pyproject.toml, not this file."; \
	cat $(LATEST)/passed.txt; } > $(LOCK)

bench: install
	$(BIN)/python bench/bench_bm25.py

clean:
	rm -rf $(VENV) $(LATEST) *.egg-info .pytest_cache
