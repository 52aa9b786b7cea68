"""Learned-sparse indexes: every backend agrees with exact search; builds resume; damage is caught."""

from __future__ import annotations

import re
import zlib
from collections import Counter

import numpy as np
import pytest

from sparsa.artifacts import read_manifest
from sparsa.errors import ConfigError, IndexCorruptError, UnknownNameError
from sparsa.indexes import build_index, open_index
from sparsa.types import SparseVector
from tests.conftest import needs_java

VOCAB = 4096


class HashingEncoder:
    """A small, deterministic bag-of-words encoder (a test fixture; real encoders live in retrieval/)."""

    vocab_size = VOCAB

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def encode(self, text: str) -> SparseVector:
        counts = Counter(zlib.crc32(t.encode()) % VOCAB for t in re.findall(r"[a-z]+", text.lower()))
        return SparseVector.from_dict({t: float(np.log1p(c)) for t, c in counts.items()})

    def encode_documents(self, texts, show_progress=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        return [self.encode(t) for t in texts]

    def spec(self):
        return {"name": "hashing", "config": {"vocab": VOCAB}}


def overlap_at(a, b, k=10):
    return len({h.doc_id for h in a[:k]} & {h.doc_id for h in b[:k]}) / k


@pytest.fixture(scope="module")
def cranfield_sparse(tmp_path_factory, cranfield):
    pytest.importorskip("seismic")
    needs_java()
    out = tmp_path_factory.mktemp("lsr") / "cran-hash"
    build_index("splade", cranfield.corpus, out, encoder=HashingEncoder(), shard_size=300,
                backends=("exact", "seismic", "lucene-impact"), show_progress=False)
    return out


def test_backends_agree_with_exact_search(cranfield_sparse, cranfield):
    encoder = HashingEncoder()
    queries = [encoder.encode(q.text) for q in cranfield.queries]  # a large batch: results stay in order
    exact = open_index(cranfield_sparse).search_vectors(queries, k=10)
    assert open_index(cranfield_sparse).num_documents == 1400
    first = cranfield.corpus.documents[0]
    top = open_index(cranfield_sparse).search_vectors([encoder.encode(first.full_text)], k=1)[0][0]
    assert top.doc_id == first.id  # a document is its own best match
    assert (top.score
            == pytest.approx(encoder.encode(first.full_text).dot(encoder.encode(first.full_text)), rel=1e-5))
    for backend, floor in (("lucene-impact", 0.95), ("seismic", 0.9)):
        from sparsa.indexes.learned_sparse import LearnedSparseIndex

        found = LearnedSparseIndex.open(cranfield_sparse, backend=backend).search_vectors(queries, k=10)
        assert np.mean([overlap_at(e, f) for e, f in zip(exact, found)]) >= floor, backend
        assert np.mean([e[0].doc_id == f[0].doc_id for e, f in zip(exact, found)]) >= floor, backend


def test_manifest_records_the_encoder(cranfield_sparse):
    index = open_index(cranfield_sparse)
    assert index.encoder_spec == HashingEncoder().spec()
    assert set(index.manifest["config"]["backends"]) == {"exact", "seismic", "lucene-impact"}
    assert index.search_vectors([SparseVector(np.zeros(0, np.int32), np.zeros(0, np.float32))], k=5) == [[]]
    with pytest.raises(ConfigError, match="k must be >= 1"):
        index.search_vectors([HashingEncoder().encode("wing")], k=0)


def test_interrupted_build_resumes_from_its_shards(tmp_path, cranfield):
    out = tmp_path / "resumable"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index("splade", cranfield.corpus, out, encoder=HashingEncoder(fail_after=3), shard_size=200)
    assert not out.exists() and len(list((tmp_path / ".resumable.building" / "shards").iterdir())) == 3
    second = HashingEncoder()
    build_index("splade", cranfield.corpus, out, encoder=second, shard_size=200)
    assert second.calls == 4  # 7 shards of 200, 3 reused
    assert open_index(out).num_documents == 1400
    assert not (tmp_path / ".resumable.building").exists()


def test_unknown_backend_and_missing_encoder(tmp_path, cranfield):
    with pytest.raises(UnknownNameError, match="unknown sparse backend 'seismik'"):
        build_index("splade", cranfield.corpus, tmp_path / "x", encoder=HashingEncoder(),
                    backends=("seismik",))
    with pytest.raises(ConfigError, match="needs an encoder"):
        build_index("splade", cranfield.corpus, tmp_path / "x")


def test_damaged_vectors_are_refused(tmp_path, cranfield):
    out = tmp_path / "damaged"
    build_index("splade", cranfield.corpus, out, encoder=HashingEncoder())
    (out / "vectors" / "values.npy").write_bytes(b"garbage")
    with pytest.raises(IndexCorruptError):
        open_index(out)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_exact_search_matches_brute_force_dot_products(backend):
    from sparsa.indexes.exact_sparse import ExactSparseSearcher
    from sparsa.indexes.sparse_matrix import SparseMatrix

    rng = np.random.default_rng(0)
    docs = [SparseVector.from_dict({int(t): float(rng.random()) for t in rng.integers(0, 50, 8)})
            for _ in range(40)]
    matrix = SparseMatrix.from_vectors([f"d{i}" for i in range(40)], docs, 50)
    queries = [SparseVector.from_dict({3: 1.0, 7: 0.5, 11: 2.0}), SparseVector.from_dict({0: 0.3, 49: 1.5}),
               SparseVector.from_dict({int(t): float(rng.random()) for t in rng.integers(0, 50, 12)})]
    found = ExactSparseSearcher(matrix, "cpu", batch_size=2, backend=backend).search_vectors(queries, k=5)
    for query, hits in zip(queries, found):
        expected = sorted(((query.dot(d), f"d{i}") for i, d in enumerate(docs) if query.dot(d) > 0),
                          reverse=True)[:5]
        assert [h.doc_id for h in hits] == [doc_id for _, doc_id in expected]
        assert [h.score for h in hits] == pytest.approx([score for score, _ in expected], rel=1e-6)
    assert matrix.row(3).to_dict() == pytest.approx(docs[3].to_dict())


def test_exact_build_defers_the_inverted_index_and_still_searches(tmp_path):
    """An index build only reads the built searcher's settings: the CSC postings wait for a search."""
    from sparsa.indexes.exact_sparse import ExactSparseSearcher
    from sparsa.indexes.sparse_matrix import SparseMatrix

    rng = np.random.default_rng(1)
    docs = [SparseVector.from_dict({int(t): float(rng.random()) for t in rng.integers(0, 30, 6)})
            for _ in range(25)]
    matrix = SparseMatrix.from_vectors([f"d{i}" for i in range(25)], docs, 30)
    built = ExactSparseSearcher.build(matrix, tmp_path, {})
    assert built._csc is None and built.settings() == {}
    query = [SparseVector.from_dict({int(t): 1.0 for t in rng.integers(0, 30, 5)})]
    assert built.search_vectors(query, k=7) == ExactSparseSearcher(matrix, "cpu").search_vectors(query, k=7)


def test_manifest_digests_match_each_file(tmp_path, cranfield):
    from sparsa.artifacts import file_sha256

    out = build_index("splade", cranfield.corpus, tmp_path / "idx", encoder=HashingEncoder())
    files = read_manifest(out, verify="sha256")["files"]
    assert files and all(meta["sha256"] == file_sha256(out / rel) for rel, meta in files.items())


@pytest.mark.gpu
def test_exact_search_on_cuda_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from sparsa.indexes.exact_sparse import ExactSparseSearcher
    from sparsa.indexes.sparse_matrix import SparseMatrix

    rng = np.random.default_rng(1)
    docs = [SparseVector.from_dict({int(t): float(rng.random()) for t in rng.integers(0, 500, 30)})
            for _ in range(2000)]
    matrix = SparseMatrix.from_vectors([f"d{i}" for i in range(2000)], docs, 500)
    queries = [SparseVector.from_dict({int(t): float(rng.random()) for t in rng.integers(0, 500, 10)})
               for _ in range(300)]
    cpu = ExactSparseSearcher(matrix, "cpu").search_vectors(queries, k=10)
    gpu = ExactSparseSearcher(matrix, "cuda", batch_size=256).search_vectors(queries, k=10)
    assert [{h.doc_id for h in q} for q in gpu] == [{h.doc_id for h in q} for q in cpu]


def test_quantization_round_trip():
    from sparsa.indexes.quantize import impact_dict, quantize

    values = np.array([0.004, 0.5, 1.234, 2.0], dtype=np.float32)
    assert quantize(values).tolist() == [1, 50, 123, 200]  # positive weights never vanish
    assert np.abs(quantize(values) / 100 - values).max() <= 0.006
    assert impact_dict(SparseVector.from_dict({7: 0.5, 9: 1.0})) == {"7": 50, "9": 100}
