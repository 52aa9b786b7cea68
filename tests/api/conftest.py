"""Real indexes for the service tests, built once per session: BM25 over Cranfield (1,400 documents),
a splade-tiny learned-sparse index and a MiniLM dense index over its first 120 documents; the app
serves all three (and hybrid fuses them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sparsa.types import Corpus
from tests.conftest import needs_java

pytest.importorskip("fastapi", reason="needs the 'serve' extra")
pytest.importorskip("httpx", reason="needs httpx (the 'dev' extra)")

API_KEY = "test-key"
SPLADE_DOCS = 120


@pytest.fixture(scope="session")
def index_root(tmp_path_factory, cranfield) -> Path:
    """``bm25`` (all of Cranfield), ``splade`` and ``dense`` (its first 120 documents), built with the library."""
    needs_java()
    from sparsa.indexes import build_index
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    root = tmp_path_factory.mktemp("indexes")
    build_index("bm25", cranfield.corpus, root / "bm25", show_progress=False)
    subset = Corpus(cranfield.corpus.documents[:SPLADE_DOCS])
    encoder = SpladeEncoder(SpladeConfig(model="splade-tiny", device="cpu"))
    build_index("splade", subset, root / "splade", encoder=encoder, show_progress=False)
    dense = DenseEncoder(DenseConfig(model="minilm-l6", device="cpu"))
    build_index("dense", subset, root / "dense", encoder=dense, show_progress=False)
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

    with TestClient(create_app(loaded_state.config, loaded_state), raise_server_exceptions=False) as test_client:
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
