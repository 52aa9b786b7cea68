"""Dense indexes: exact top-k, faiss persistence round trips, incremental add, resumable builds, errors."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from sparsa.artifacts import read_manifest
from sparsa.errors import ConfigError, UnknownNameError
from sparsa.indexes import build_index, open_index
from sparsa.indexes.dense_index import DenseIndex
from sparsa.types import Corpus, Document

pytest.importorskip("faiss", reason="needs the 'faiss' extra")

DIM = 32
WORDS = ["protein", "cell", "cancer", "vitamin", "bone", "gene", "virus", "heart", "brain", "sleep", "diet",
         "drug", "mouse", "trial"]


class HashingDenseEncoder:
    """Deterministic bag-of-hashed-words vectors, L2-normalised (a test fixture; DenseEncoder
    is tested apart)."""

    def __init__(self, fail_after: int | None = None, dim: int = DIM):
        self.calls, self.fail_after, self.dim = 0, fail_after, dim

    def encode(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        for token in re.findall(r"[a-z]+", text.lower()):
            v[zlib.crc32(token.encode()) % self.dim] += 1.0
        return v / max(np.linalg.norm(v), 1e-9)

    def encode_documents(self, texts, show_progress=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        return np.stack([self.encode(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    encode_queries = encode_documents

    def spec(self):
        return {"name": "hashing-dense", "config": {"dim": self.dim, "device": "auto"}}


def make_corpus(n: int, start: int = 0) -> Corpus:
    rng = np.random.default_rng(start)
    return Corpus(Document(f"d{i}", " ".join(rng.choice(WORDS, size=6))) for i in range(start, start + n))


def brute_force(encoder, corpus: Corpus, query: str, k: int) -> list[str]:
    vectors = encoder.encode_documents([d.full_text for d in corpus.documents])
    scores = vectors @ encoder.encode(query)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return [corpus.documents[i].id for i in order], scores[order]


def test_flat_index_returns_the_exact_top_k(tmp_path):
    encoder, corpus = HashingDenseEncoder(), make_corpus(60)
    index = open_index(build_index("dense", corpus, tmp_path / "flat", encoder=encoder, shard_size=16))
    assert isinstance(index, DenseIndex) and index.num_documents == 60
    for query in ("protein cancer", "sleep diet drug", "brain"):
        hits = index.search_vectors(encoder.encode_documents([query]), 5)[0]
        _, expected_scores = brute_force(encoder, corpus, query, 5)
        np.testing.assert_allclose([h.score for h in hits], expected_scores, rtol=1e-5)
        # ids can differ only inside ties: each returned doc must score what brute force says
        by_id = dict(zip([d.id for d in corpus.documents], encoder.encode_documents(
            [d.full_text for d in corpus.documents]) @ encoder.encode(query), strict=True))
        assert all(abs(by_id[h.doc_id] - h.score) < 1e-5 for h in hits)
    assert index.search_vectors(encoder.encode_documents(["gene"]), 1000)[0].__len__() == 60  # k above n: all


@pytest.mark.parametrize("structure", ["hnsw", "ivfpq"])
def test_faiss_round_trip_and_incremental_add(tmp_path, structure):
    encoder = HashingDenseEncoder()
    first, second = make_corpus(400), make_corpus(100, start=400)
    path = build_index("dense", first, tmp_path / structure, encoder=encoder, structure=structure)
    index = open_index(path)
    queries = encoder.encode_documents(["protein cell", "virus heart trial"])
    before = index.search_vectors(queries, 10)
    # persisted: same answers after reload
    again = open_index(path, verify="sha256").search_vectors(queries, 10)
    assert before == again
    assert (path / f"{structure}.faiss").is_file()

    grown = index.add(second, encoder)
    assert grown.num_documents == 500 and read_manifest(path, verify="sha256")["num_documents"] == 500
    assert grown.doc_ids[400:] == [d.id for d in second.documents]
    # a new document, searched with its own vector, is found first (or tied first)
    own = encoder.encode_documents([second.documents[7].full_text])
    top = grown.search_vectors(own, 10)[0]
    assert top[0].score == pytest.approx(1.0, abs=0.05 if structure == "ivfpq" else 1e-5)
    if structure == "hnsw":
        assert second.documents[7].id in {h.doc_id for h in top if h.score > 1 - 1e-5}
    with pytest.raises(ConfigError, match="more than once"):
        grown.add(make_corpus(3, start=400), encoder)
    with pytest.raises(ConfigError, match="encoded by"):
        grown.add(make_corpus(3, start=900), HashingDenseEncoder(dim=16))


def test_interrupted_build_resumes_from_finished_shards(tmp_path):
    corpus = make_corpus(50)
    crashing = HashingDenseEncoder(fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index("dense", corpus, tmp_path / "idx", encoder=crashing, shard_size=10)
    assert not (tmp_path / "idx").exists()
    rerun = HashingDenseEncoder()
    index = open_index(build_index("dense", corpus, tmp_path / "idx", encoder=rerun, shard_size=10))
    assert rerun.calls == 3 and index.num_documents == 50  # 2 of 5 shards were reused


def test_build_from_vectors_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    spec = {"name": "dense", "config": {"model": "elsewhere"}}
    index = open_index(DenseIndex.build_from_vectors([f"v{i}" for i in range(40)], vectors,
                                                     tmp_path / "v", spec, shard_size=16))
    best = int(np.argmax(vectors @ vectors[3]))
    assert index.search_vectors(vectors[3], 1)[0][0].doc_id == f"v{best}"
    assert index.encoder_spec == spec
    with pytest.raises(ConfigError, match="dimensions"):
        index.search_vectors(np.zeros((1, 4), np.float32), 3)
    with pytest.raises(ConfigError, match="k must be"):
        index.search_vectors(vectors[:1], 0)
    with pytest.raises(UnknownNameError):
        build_index("dense", make_corpus(3), tmp_path / "x", encoder=HashingDenseEncoder(), structure="annoy")
    with pytest.raises(ConfigError, match="needs an encoder"):
        build_index("dense", make_corpus(3), tmp_path / "y")
    with pytest.raises(ConfigError, match="more than once"):
        DenseIndex.build_from_vectors(["a", "a"], vectors[:2], tmp_path / "z", spec)
    with pytest.raises(ConfigError, match="unknown setting"):
        build_index("dense", make_corpus(30), tmp_path / "w", encoder=HashingDenseEncoder(), structure="hnsw",
                    structure_config={"efs": 3})
