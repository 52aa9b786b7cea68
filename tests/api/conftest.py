"""Real indexes for the service tests, built once per session over the first 120 Cranfield documents
(a dataset folder of its own, ``cranfield`` in this package's data folder: the service checks that each
index was built from the corpus it serves): BM25, splade-tiny learned-sparse and MiniLM dense; the app
serves all three (and hybrid fuses them)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import data_dir, needs_java

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
pytest.importorskip("httpx", reason="needs httpx (the 'dev' extra)")

API_KEY = "test-key"
DOCS = 120
SPLADE_DOCS = DOCS  # (the name older tests use)


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> Path:
    """The data folder of these tests: ``cranfield`` is the first 120 Cranfield documents with their
    queries and judgements (BEIR layout); every other dataset links to the shared one."""
    real = data_dir()
    root = tmp_path_factory.mktemp("api-data")
    for dataset in real.iterdir():
        if dataset.name != "cranfield":
            (root / dataset.name).symlink_to(dataset)
    source, folder = real / "cranfield", root / "cranfield"
    (folder / "qrels").mkdir(parents=True)
    docs = [line for line in (source / "corpus.jsonl").read_text().splitlines() if line.strip()][:DOCS]
    (folder / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    kept = {json.loads(line)["_id"] for line in docs}
    header, *rows = (source / "qrels" / "test.tsv").read_text().splitlines()
    rows = [row for row in rows if row.split("\t")[1] in kept]
    (folder / "qrels" / "test.tsv").write_text("\n".join([header, *rows]) + "\n")
    judged = {row.split("\t")[0] for row in rows}
    queries = [line for line in (source / "queries.jsonl").read_text().splitlines()
               if line.strip() and json.loads(line)["_id"] in judged]
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n")
    return root


@pytest.fixture(scope="session")
def cranfield(shared_data):
    """The 120-document Cranfield of these tests (its own fixture: the session-wide one is the full set)."""
    from sparsa.data import load_dataset

    return load_dataset(shared_data / "cranfield")


@pytest.fixture(scope="session")
def index_root(tmp_path_factory, cranfield) -> Path:
    """``bm25``, ``splade`` and ``dense`` over the test corpus, built with the library (each manifest
    records the corpus: name ``cranfield`` and the hash of its ids)."""
    needs_java()
    from sparsa.indexes import build_index
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    root = tmp_path_factory.mktemp("indexes")
    corpus = cranfield.corpus
    build_index("bm25", corpus, root / "bm25", show_progress=False, corpus_name="cranfield")
    encoder = SpladeEncoder(SpladeConfig(model="splade-tiny", device="cpu"))
    build_index("splade", corpus, root / "splade", encoder=encoder, show_progress=False,
                corpus_name="cranfield")
    dense = DenseEncoder(DenseConfig(model="minilm-l6", device="cpu"))
    build_index("dense", corpus, root / "dense", encoder=dense, show_progress=False, corpus_name="cranfield")
    return root


def service_config(index_root: Path, shared_data: Path, **changes):
    from sparsa.api import ServiceConfig

    fields = {"indexes": {name: index_root / name for name in ("bm25", "splade", "dense")},
                  "dataset": shared_data / "cranfield", "api_key": API_KEY, "index_root": index_root,
                  "data_dir": shared_data}
    return ServiceConfig(**{**fields, **changes})


@pytest.fixture(scope="session")
def loaded_state(index_root, shared_data):
    from sparsa.api import ServiceState

    return ServiceState(service_config(index_root, shared_data)).load(strict=True)


@pytest.fixture(scope="session")
def client(loaded_state):
    from fastapi.testclient import TestClient

    from sparsa.api import create_app

    with TestClient(create_app(loaded_state.config, loaded_state),
                    raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def spare_index(index_root, tmp_path) -> Path:
    """A private copy of the BM25 index root, for tests that damage or replace indexes."""
    root = tmp_path / "indexes"
    root.mkdir()
    shutil.copytree(index_root / "bm25", root / "bm25")
    return root


@pytest.fixture(scope="session")
def qa_state(index_root, shared_data):
    """BM25 plus the QA pipeline (``sparsa.rag.pipeline``) with SmolLM2 as the reader."""
    pytest.importorskip("sparsa.rag.pipeline", reason="the QA pipeline is not in this checkout")
    from sparsa.api import ServiceState

    config = service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"},
                            qa_model="smollm2-135m-instruct")
    return ServiceState(config).load(strict=True)


def wait_until(predicate, seconds: float, step: float = 0.1) -> bool:
    """Poll ``predicate`` every ``step`` seconds until it is true (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
