"""The SPLADE indexing path (CSR blocks streamed into shards) gives the same vectors and the same index as
the per-document path, resumes, and uses the CPU threads it is given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsa import token_batches
from sparsa.indexes import build_index, open_index
from sparsa.sparse_rows import SparseRows
from sparsa.types import SparseVector
from tests.indexes.test_learned_sparse import HashingEncoder

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def splade():
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    return SpladeEncoder(SpladeConfig(device="cpu", pooling="chunked"))


@pytest.fixture(scope="module")
def texts(scifact):
    return [d.full_text for d in scifact.corpus.documents[:23]]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 3, then 5 texts: rows cross chunk and shard boundaries."""
    monkeypatch.setattr(token_batches, "CHUNK_SIZES_CPU", (3, 5))


def test_stream_equals_the_dense_pooled_weights(splade, texts):
    """Same batches as the existing path (one chunk): bit for bit the same weights."""
    vectors = splade.encode(texts)
    dense = splade.encode_dense(texts).numpy()  # the existing batched path, whole [n, V] rows
    for row, vector in zip(dense, vectors, strict=True):
        np.testing.assert_array_equal(vector.indices, np.flatnonzero(row))
        np.testing.assert_array_equal(vector.values, row[vector.indices])


def assert_same_rows(a, b):
    """Same terms; weights equal up to float32 rounding (other batches pad to other lengths, which
    changes the order of float32 sums in the model)."""
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-5)


def test_small_chunks_come_back_in_order(splade, texts, small_chunks):
    offsets, blocks = zip(*splade.stream(texts), strict=True)
    assert list(offsets) == [0, 3, 8, 13, 18]
    reference = [SparseVector.from_dense(r) for r in splade.encode_dense(texts).numpy()]
    assert_same_rows(SparseRows.concat(blocks), SparseRows.from_vectors(reference))


class PerDocument:
    """The encoder as the per-document shard path sees it (no ``stream_documents``)."""

    def __init__(self, encoder):
        self.encoder, self.vocab_size = encoder, encoder.vocab_size

    def encode_documents(self, texts, show_progress=None):
        return self.encoder.encode_documents(texts, show_progress=show_progress)

    def spec(self):
        return self.encoder.spec()


def test_streamed_index_equals_the_per_document_index(splade, scifact, tmp_path, small_chunks):
    from sparsa.types import Corpus

    corpus = Corpus(scifact.corpus.documents[:23])
    fast = build_index("splade", corpus, tmp_path / "fast", encoder=splade, shard_size=7, threads=1)
    slow = build_index("splade", corpus, tmp_path / "slow", encoder=PerDocument(splade), shard_size=7)
    a, b = open_index(fast).matrix, open_index(slow).matrix
    assert a.doc_ids == b.doc_ids == [d.id for d in corpus.documents]
    assert_same_rows(a, b)


class StreamingHashing(HashingEncoder):
    """A bag-of-words encoder with the streaming interface, failing after ``fail_after`` blocks."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.blocks, self.limit, self.seen = 0, fail_after, []

    def stream_documents(self, texts, threads=None, show_progress=None):
        self.seen.append(len(texts))
        for start in range(0, len(texts), 4):
            self.blocks += 1
            if self.limit is not None and self.blocks > self.limit:
                raise RuntimeError("simulated crash")
            yield start, SparseRows.from_vectors([self.encode(t) for t in texts[start : start + 4]])


def test_streamed_build_resumes_from_finished_shards(cranfield, tmp_path):
    from sparsa.types import Corpus

    corpus = Corpus(cranfield.corpus.documents[:50])
    out = tmp_path / "idx"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index("splade", corpus, out, encoder=StreamingHashing(fail_after=6), shard_size=10)
    again = StreamingHashing()
    build_index("splade", corpus, out, encoder=again, shard_size=10)
    assert again.seen == [30]  # shards 0 and 1 (24 rows in 6 blocks of 4: 2 full shards) were kept
    reference = build_index("splade", corpus, tmp_path / "ref", encoder=HashingEncoder(), shard_size=10)
    a, b = open_index(out).matrix, open_index(reference).matrix
    for name in ("indptr", "indices", "values"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_a_shard_that_fails_in_the_writer_thread_fails_the_build(cranfield, tmp_path):
    """Shards are joined and checked in the writer thread: its error still reaches the caller, and no
    index (nor a shard of the failed part) is left behind."""
    from sparsa.types import Corpus

    encoder = StreamingHashing()
    encoder.vocab_size = 5  # every term id past 4 is outside the vocabulary: from_rows refuses the part
    out = tmp_path / "idx"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_index("splade", Corpus(cranfield.corpus.documents[:30]), out, encoder=encoder, shard_size=10)
    assert not out.exists()
    assert not list((tmp_path / ".idx.building" / "shards").glob("0*"))


def test_threads_set_the_cpu_encoders_torch_threads(splade, texts):
    seen = []
    hook = splade.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        list(splade.stream(texts[:4], threads=1))
    finally:
        hook.remove()
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def test_threads_bound_the_tokenizer_processes_feeding_a_gpu(monkeypatch):
    from sparsa import batching

    # Whether forking is safe depends on what earlier tests loaded (a JVM): fix it both ways here.
    monkeypatch.setattr(batching, "_fork_unsafe", lambda: False)
    assert token_batches.pool_workers(2) == 0  # too few threads: tokenise in one thread of the job
    assert token_batches.pool_workers(16) == 14  # the GPU feeder and the chunk collector keep two
    monkeypatch.setattr(batching, "_fork_unsafe", lambda: True)
    assert token_batches.pool_workers(16) == 0  # a JVM or Ray in this process: no fork


def test_cli_passes_threads_to_the_splade_build(tmp_path, monkeypatch, cranfield):
    from typer.testing import CliRunner

    from sparsa.cli.main import app

    corpus = tmp_path / "corpus.jsonl"
    import json

    corpus.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n"
                              for d in cranfield.corpus.documents[:6]))
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    result = CliRunner().invoke(app, ["index", "--corpus", str(corpus), "--kind", "splade", "--device", "cpu",
                                      "--threads", "1", "--out", str(tmp_path / "idx")])
    assert result.exit_code == 0, result.output
    assert calls[0] == 1
