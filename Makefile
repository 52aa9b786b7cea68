# The two commands a newcomer needs (see README.md):
#   make demo   set up, pull the default models, index SciFact, search it, report nDCG@10
#   make test   set up and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export SPARSA_HOME ?= $(HOME)/.cache/sparsa

.PHONY: install demo test bench clean

# torch comes first and pinned: the machine's local CPU wheel, not a multi-GB CUDA build from PyPI.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[all]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/sparsa demo

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench_bm25.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
