"""``sparsa.search``: every index kind opens through ``open_retriever`` as the one ``Retriever``.

Real indexes over the first 80 Cranfield documents, built with ``build_index_job`` (the job behind
``sparsa index``): BM25 (Lucene), splade-tiny learned-sparse (exact, Seismic, Lucene-impact backends)
and MiniLM dense. A query made of a document's own text must find that document first.
"""

from __future__ import annotations

import json
import shutil

import pytest

from sparsa.artifacts import read_manifest
from sparsa.config import load_settings
from sparsa.errors import ConfigError, IndexCorruptError, UnknownNameError
from sparsa.indexes import build_index, build_index_job
from sparsa.search import EncodedRetriever, Retriever, open_retriever
from sparsa.types import Corpus, Query
from tests.conftest import needs_java

pytestmark = pytest.mark.slow

DOCS = 80
PROBES = (3, 41, 77)  # documents whose own text is used as a query


@pytest.fixture(scope="module")
def corpus(cranfield) -> Corpus:
    return Corpus(cranfield.corpus.documents[:DOCS])


@pytest.fixture(scope="module")
def probes(corpus) -> list[Query]:
    return [Query(corpus.documents[i].id, corpus.documents[i].full_text) for i in PROBES]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def bm25_index(root, corpus):
    needs_java()
    return build_index_job("bm25", corpus, root / "bm25", threads=1, show_progress=False)


@pytest.fixture(scope="module")
def splade_index(root, corpus):
    pytest.importorskip("seismic", reason="needs the 'seismic' extra")
    needs_java()  # the lucene-impact backend
    return build_index_job("splade", corpus, root / "splade", backends=("exact", "seismic", "lucene-impact"),
                           device="cpu", threads=1, show_progress=False)


@pytest.fixture(scope="module")
def dense_index(root, corpus):
    return build_index_job("dense", corpus, root / "dense", device="cpu", show_progress=False)


def check_finds_its_own_documents(retriever, probes: list[Query]) -> None:
    assert isinstance(retriever, Retriever)
    run = retriever.search(probes, k=5, show_progress=False)
    assert [run[q.id][0].doc_id for q in probes] == [q.id for q in probes]
    for q in probes:  # the single-query form answers as the batch does (bf16 CPU encoders: to ~1e-3)
        one = retriever.search_text(q.text, k=5)
        assert [h.doc_id for h in one] == [h.doc_id for h in run[q.id]]
        assert [h.score for h in one] == pytest.approx([h.score for h in run[q.id]], rel=1e-3, abs=1e-3)


def test_bm25_index_opens_as_a_retriever(bm25_index, probes):
    retriever = open_retriever(bm25_index)
    assert read_manifest(bm25_index)["kind"] == "bm25"
    check_finds_its_own_documents(retriever, probes)
    with pytest.raises(ConfigError, match="only splade indexes have search backends"):
        open_retriever(bm25_index, backend="seismic")


@pytest.mark.parametrize("backend", [None, "exact", "seismic", "lucene-impact"])
def test_splade_index_opens_as_a_retriever_on_every_backend(splade_index, probes, backend):
    manifest = read_manifest(splade_index)
    assert manifest["kind"] == "splade" and manifest["default_backend"] == "exact"
    retriever = open_retriever(splade_index, backend=backend, device="cpu")
    assert isinstance(retriever, EncodedRetriever)
    assert retriever.index.searcher.name == (backend or "exact")
    check_finds_its_own_documents(retriever, probes)


def test_dense_index_opens_as_a_retriever(dense_index, probes):
    manifest = read_manifest(dense_index)
    assert manifest["kind"] == "dense" and manifest["encoder"]["config"]["model"] == "minilm-l6"
    retriever = open_retriever(dense_index)
    assert isinstance(retriever, EncodedRetriever)
    check_finds_its_own_documents(retriever, probes)


def test_a_query_encoder_of_another_model_is_refused(dense_index):
    from sparsa.indexes import open_index
    from sparsa.registry import build_encoder

    splade = build_encoder({"name": "splade", "config": {"model": "splade-tiny", "device": "cpu"}})
    with pytest.raises(ConfigError, match="does not match the index's document encoder"):
        EncodedRetriever(splade, open_index(dense_index))


def test_an_index_written_as_kind_sparse_still_opens(splade_index, probes, tmp_path):
    """Learned-sparse manifests written before "splade" became the one name say "sparse"."""
    old = tmp_path / "old-splade"
    shutil.copytree(splade_index, old)
    manifest = json.loads((old / "sparsa.json").read_text())
    (old / "sparsa.json").write_text(json.dumps({**manifest, "kind": "sparse"}))
    assert read_manifest(old, verify="sha256")["kind"] == "splade"
    retriever = open_retriever(old, verify="sha256", device="cpu")
    check_finds_its_own_documents(retriever, probes)
    new = open_retriever(splade_index, device="cpu").search(probes, k=5, show_progress=False)
    assert retriever.search(probes, k=5, show_progress=False) == new


def test_fusion_of_every_kind_is_a_retriever(bm25_index, splade_index, dense_index, probes):
    from sparsa.retrieval.fusion import HybridRetriever

    hybrid = HybridRetriever([open_retriever(p, device="cpu")
                              for p in (bm25_index, splade_index, dense_index)], depth=20)
    check_finds_its_own_documents(hybrid, probes)


def test_names_resolve_under_sparsa_home(bm25_index, corpus, probes, tmp_path, monkeypatch):
    """A bare name is $SPARSA_HOME/indexes/<name> for open_retriever and the library's builds alike (as for
    sparsa index --out), never a folder in the working directory."""
    shutil.copytree(bm25_index, tmp_path / "indexes" / "tiny-bm25")
    monkeypatch.setenv("SPARSA_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    load_settings.cache_clear()
    try:
        run = open_retriever("tiny-bm25").search(probes, k=1, show_progress=False)
        assert [run[q.id][0].doc_id for q in probes] == [q.id for q in probes]
        built = build_index("bm25", corpus, "built-bm25", show_progress=False, threads=1)
        assert built == tmp_path / "indexes" / "built-bm25" and not (tmp_path / "built-bm25").exists()
        run = open_retriever("built-bm25").search(probes, k=1, show_progress=False)
        assert [run[q.id][0].doc_id for q in probes] == [q.id for q in probes]
    finally:
        monkeypatch.undo()
        load_settings.cache_clear()


def test_unknown_kind_and_missing_index(tmp_path, corpus):
    with pytest.raises(UnknownNameError, match="unknown index kind 'sparse'"):
        build_index_job("sparse", corpus, tmp_path / "x")  # the old name is read in manifests, not built
    with pytest.raises(IndexCorruptError, match="not a sparsa index"):
        open_retriever(tmp_path / "nothing")
