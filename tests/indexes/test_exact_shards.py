"""The exact learned-sparse engine sharded over devices (``indexes/exact_shards.py``) returns exactly the
single-device hits: ids, scores and order. Real splade-tiny vectors of 300 Cranfield documents and 80 of
its queries, sharded on the CPU (``cpu,cpu``: the same torch path a GPU shard runs)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from sparsa.cli.main import main
from sparsa.errors import ConfigError
from sparsa.indexes import build_index_job
from sparsa.indexes.exact_shards import ShardedExactSearcher, split_rows
from sparsa.indexes.exact_sparse import ExactSparseSearcher, exact_searcher
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.search import open_retriever
from sparsa.types import Corpus, Query, SparseVector

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

DOCS, QUERIES = 300, 80


@pytest.fixture(scope="module")
def index(cranfield, tmp_path_factory):
    corpus = Corpus(cranfield.corpus.documents[:DOCS])
    return build_index_job("splade", corpus, tmp_path_factory.mktemp("shards") / "cran-splade",
                           backends=("exact",), device="cpu", threads=1, show_progress=False)


@pytest.fixture(scope="module")
def vectors(index, cranfield):
    """(the index's matrix, the queries encoded by its own encoder, with an empty vector mixed in)."""
    retriever = open_retriever(index, device="cpu")
    texts = [q.text for q in cranfield.queries[:QUERIES]]
    queries = retriever.encoder.encode_queries(texts, show_progress=False)
    empty = SparseVector(np.zeros(0, np.int32), np.zeros(0, np.float32))
    return retriever.index.matrix, [*queries[:5], empty, *queries[5:]]


def _same(found, expected):
    assert [[(h.doc_id, h.score) for h in hits] for hits in found] == \
        [[(h.doc_id, h.score) for h in hits] for hits in expected]


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_shards_return_the_single_device_hits(vectors, k):
    matrix, queries = vectors
    single = ExactSparseSearcher(matrix, "cpu", backend="torch").search_vectors(queries, k)
    assert not single[5] and all(single[i] for i in range(5))  # the empty query finds nothing
    assert any(len(hits) == min(k, DOCS) for hits in single)
    for spec in ("cpu,cpu", ["cpu"] * 3):
        _same(exact_searcher(matrix, spec, backend="torch").search_vectors(queries, k), single)
    # uneven: a 7-row shard (k above its rows) beside a 283-row one; small batches cross chunk edges
    uneven = ShardedExactSearcher(matrix, "cpu,cpu,cpu", batch_size=16, backend="torch",
                                  bounds=[0, 10, 17, DOCS])
    _same(uneven.search_vectors(queries, k),
          ExactSparseSearcher(matrix, "cpu", batch_size=16, backend="torch").search_vectors(queries, k))
    # scipy shards (backend auto on the CPU) against one scipy searcher: its float sums differ from
    # torch's in the last bits, so it is compared with itself
    _same(exact_searcher(matrix, "cpu,cpu").search_vectors(queries, k),
          ExactSparseSearcher(matrix, "cpu").search_vectors(queries, k))


def test_ties_at_the_cut_are_broken_by_document_order(vectors):
    """Every document twice: each score is tied, so the k-th place always splits a pair."""
    matrix, queries = vectors
    twice = SparseMatrix.concat([matrix, SparseMatrix([f"{d}-copy" for d in matrix.doc_ids], matrix.indptr,
                                                      matrix.indices, matrix.values, matrix.dim)])
    single = ExactSparseSearcher(twice, "cpu", backend="torch").search_vectors(queries, 7)
    first = {d: i for i, d in enumerate(twice.doc_ids)}
    for hits in single:  # descending score; equal scores in document order
        assert all((a.score, -first[a.doc_id]) > (b.score, -first[b.doc_id]) for a, b in pairwise(hits))
    _same(ShardedExactSearcher(twice, ["cpu"] * 3, backend="torch",
                               bounds=[0, 123, 301, 2 * DOCS]).search_vectors(queries, 7), single)
    scipy = ExactSparseSearcher(twice, "cpu").search_vectors(queries, 7)
    for hits in scipy:  # the scipy path follows the same rule
        assert all((a.score, -first[a.doc_id]) > (b.score, -first[b.doc_id]) for a, b in pairwise(hits))
    _same(ShardedExactSearcher(twice, "cpu,cpu", bounds=[0, 301, 2 * DOCS]).search_vectors(queries, 7), scipy)


def test_rows_are_split_by_entries(vectors):
    matrix, _ = vectors
    bounds = split_rows(matrix.indptr, 3)
    assert bounds[0] == 0 and bounds[-1] == DOCS and bounds == sorted(set(bounds))
    shares = np.diff(matrix.indptr[bounds]) / matrix.nnz
    assert np.all(np.abs(shares - 1 / 3) < 0.05), shares
    assert split_rows(np.array([0, 5, 5, 5]), 3) == [0, 1, 2, 3]  # empty rows still get a shard each


def test_bad_devices_and_shards_are_refused(vectors):
    matrix, _ = vectors
    small = SparseMatrix(matrix.doc_ids[:2], matrix.indptr[:3], matrix.indices, matrix.values, matrix.dim)
    with pytest.raises(ConfigError, match="cannot cut 2 documents into 3 shards"):
        exact_searcher(small, "cpu,cpu,cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        exact_searcher(matrix, "cpu,gpu0")
    with pytest.raises(ConfigError, match="bounds"):
        ShardedExactSearcher(matrix, "cpu,cpu", bounds=[0, 0, DOCS])
    with pytest.raises(ConfigError, match="names several devices"):
        ExactSparseSearcher(matrix, "cpu,cpu")


def test_a_device_list_reaches_the_engine_from_the_library_and_the_cli(index, cranfield, tmp_path):
    topics = [Query(q.id, q.text) for q in cranfield.queries[:20]]
    sharded = open_retriever(index, device="cpu,cpu")
    assert isinstance(sharded.index.searcher, ShardedExactSearcher)
    expected = open_retriever(index, device="cpu").search(topics, k=50, show_progress=False)
    assert sharded.search(topics, k=50, show_progress=False) == expected
    queries = tmp_path / "q.tsv"
    queries.write_text("".join(f"{q.id}\t{q.text}\n" for q in topics))
    runs = []
    for device in ("cpu", "cpu,cpu,cpu"):
        out = tmp_path / f"{device}.trec"
        assert main(["-q", "search", "--index", str(index), "--queries", str(queries), "--k", "50",
                     "--device", device, "--out", str(out)]) == 0
        runs.append(out.read_text())
    assert runs[0] == runs[1] and runs[0].count("\n") > 100
    assert main(["-q", "search", "--index", str(index), "--query", "wing", "--device", "cuda:7"]) == 2


def test_the_service_serves_a_sharded_splade_index(index):
    pytest.importorskip("fastapi", reason="needs the 'serve' extra")
    from sparsa.api.served_index import open_served_index

    served = open_served_index("splade", index, "size", device="cpu,cpu")
    assert isinstance(served.searcher.index.searcher, ShardedExactSearcher)
    expected = open_retriever(index, device="cpu").search_text("wing", k=5)
    assert served.searcher.search_text("wing", k=5) == expected
    assert main(["-q", "serve", "--splade", str(index), "--splade-device", "cpu,gpu0"]) == 2  # before loading


def test_device_specs():
    import torch

    from sparsa.config import resolve_devices, settings_from_env

    assert settings_from_env({"SPARSA_DEVICE": "cuda:0,cuda:1"}).device == "cuda:0,cuda:1"
    with pytest.raises(ConfigError, match="SPARSA_DEVICE='gpu'"):
        settings_from_env({"SPARSA_DEVICE": "gpu"})
    assert resolve_devices(" cpu, cpu ") == ["cpu", "cpu"]
    with pytest.raises(ConfigError, match="already names every GPU"):
        resolve_devices("cuda:all,cuda:0")
    count = torch.cuda.device_count()
    if count == 0:
        with pytest.raises(ConfigError, match="torch sees no GPU"):
            resolve_devices("cuda:all")
    else:
        assert resolve_devices("cuda:*") == [f"cuda:{i}" for i in range(count)]
    with pytest.raises(ConfigError, match=f"cuda:{count}"):
        resolve_devices(f"cpu,cuda:{count}")


def test_a_device_list_is_refused_where_nothing_shards(cranfield, tmp_path):
    pytest.importorskip("seismic", reason="needs the 'seismic' extra")
    corpus = Corpus(cranfield.corpus.documents[:30])
    path = build_index_job("splade", corpus, tmp_path / "small", backends=("exact", "seismic"), device="cpu",
                           threads=1, show_progress=False)
    with pytest.raises(ConfigError, match="the seismic backend searches on the CPU"):
        open_retriever(path, backend="seismic", device="cpu,cpu")
    assert open_retriever(path, backend="seismic", device="cpu").search_text("wing", k=3)  # one device: fine


@pytest.mark.gpu
def test_two_gpus_return_the_one_gpu_hits(vectors):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    matrix, queries = vectors
    one = exact_searcher(matrix, "cuda:0").search_vectors(queries, 20)
    _same(exact_searcher(matrix, "cuda:all").search_vectors(queries, 20), one)
    _same(exact_searcher(matrix, "cuda:1,cuda:0").search_vectors(queries, 20), one)
