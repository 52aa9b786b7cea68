# The two commands a newcomer needs (see README.md):
#   make demo   set up, pull the default models, index SciFact (BM25 and SPLADE), report nDCG@10,
#               answer one question, then serve the API and web page (Ctrl-C stops)
#   make test   set up and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export SPARSA_HOME ?= $(HOME)/.cache/sparsa
# No wheel cache: the venv is ~3.6 GB (triton alone ~1 GB) and a cached copy of every wheel only costs disk.
export PIP_NO_CACHE_DIR ?= 1

.PHONY: install demo test bench clean

# torch comes first and pinned: the machine's local CPU wheel, not a multi-GB CUDA build from PyPI.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[all]"
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
	else $(BIN)/sparsa index --dataset scifact --kind splade --out scifact-splade; fi
	@mkdir -p $(RUNS)
	$(BIN)/sparsa -q search --index scifact-splade --dataset scifact --k 100 --out $(RUNS)/scifact-splade.trec
	$(BIN)/sparsa eval --run $(RUNS)/scifact-splade.trec --dataset scifact
	$(BIN)/sparsa ask "$(DEMO_QUESTION)" --index scifact-bm25 --dataset scifact
	$(BIN)/sparsa serve

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench_bm25.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
