"""TILDEv2: scoring maths on a hand-made example, expansion, the store round trip, rerank ordering."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsa.errors import ConfigError, IndexCorruptError
from sparsa.models import resolve_model
from sparsa.rerank.tilde import TildeV2Reranker, TildeV2Store, build_tildev2_store, tildev2_score_ref
from sparsa.rerank.tilde_model import max_per_token, tildev2_scores
from sparsa.rerank.tokens import STOPWORDS, PassageTokenizer
from sparsa.types import Document, Query


@dataclass(frozen=True)
class _Config:
    batch_size: int = 2
    max_passage_tokens: int = 64


class HandWeights:
    """An encoder stand-in returning fixed (token -> weight) tables, so scores can be computed by hand."""

    def __init__(self, tables: dict[str, dict[str, float]]):
        self.tokenizer = PassageTokenizer(resolve_model("splade-tiny"))
        self.config, self.path = _Config(), Path("hand-made")
        self.by_ids = {tuple(self.tokenizer.ids([text])[0].tolist()): self._table(t)
                       for text, t in tables.items()}

    def _table(self, table: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        pairs = sorted((int(self.tokenizer.query_ids(word)[0]), w) for word, w in table.items())
        return np.array([i for i, _ in pairs], np.int32), np.array([w for _, w in pairs], np.float32)

    def encode(self, passages):
        return [self.by_ids[tuple(p.passage.tolist())] for p in passages]


@pytest.fixture
def hand_store(tmp_path):
    docs = [Document("a", "the cat sat on the mat"), Document("b", "a cat and a dog")]
    encoder = HandWeights({docs[0].text: {"cat": 0.5, "sat": 1.0, "mat": 0.25},
                           docs[1].text: {"cat": 2.0, "dog": 1.0}})
    return build_tildev2_store(docs, tmp_path / "store", encoder, show_progress=False), docs


def test_scores_by_hand(hand_store):
    path, docs = hand_store
    reranker = TildeV2Reranker.open(path)
    # "cat" twice counts twice; "bird" matches nothing: a = .5+.5+1 = 2.0, b = 2+2+1 = 5.0
    hits = reranker.rerank(Query("q", "cat cat sat dog bird"), docs)
    assert [(h.doc_id, h.score) for h in hits] == [("b", 5.0), ("a", 2.0)]
    store = reranker.store
    query = store.tokenizer.query_ids("cat cat sat dog bird")
    for doc in docs:
        assert tildev2_score_ref(query, store.passage(doc.id)) == store.score(query, store.rows([doc.id]))[0]
    assert store.score(store.tokenizer.query_ids(""), store.rows(["a"])).tolist() == [0.0]


def test_torch_scores_take_the_max_over_positions():
    passage_ids = torch.tensor([[[7, 9, 7, 0]]])  # one query, one passage; token 7 twice
    weights = torch.tensor([[[0.5, 2.0, 1.5, 0.0]]])
    query_ids, mask = torch.tensor([[7, 7, 9, 3]]), torch.tensor([[1, 1, 1, 0]])
    assert tildev2_scores(query_ids, mask, passage_ids, weights).tolist() == [[1.5 + 1.5 + 2.0]]
    ids, w = max_per_token(np.array([7, 9, 7, 5]), np.array([0.5, 2.0, 1.5, 0.0]))
    assert ids.tolist() == [7, 9] and w.tolist() == [1.5, 2.0]  # zero weights are not stored


def test_expansion_keeps_every_original_term(tilde_expander, scifact_slice):
    _, docs = scifact_slice
    texts = [d.full_text for d in docs[:6]]
    expanded = tilde_expander.expand(texts, show_progress=False)
    tok = tilde_expander.tokenizer
    for text, e in zip(texts, expanded, strict=True):
        assert np.array_equal(e.passage, tok.ids([text], 64)[0])  # the passage itself, unchanged
        assert len(e.added) == 8 and len(set(e.added.tolist())) == 8
        assert not set(e.added.tolist()) & set(e.passage.tolist())  # only new terms
        assert not set(tok.tokens(e.added)) & STOPWORDS
        assert all(not (t.startswith("[") and t.endswith("]")) for t in tok.tokens(e.added))


def test_store_round_trip(tilde_store, scifact_slice, tildev2_encoder, tilde_expander):
    _, docs = scifact_slice
    store = TildeV2Store(tilde_store)
    assert len(store) == len(docs) and store.doc_ids == [d.id for d in docs]
    manifest = json.loads((tilde_store / "sparsa.json").read_text())
    assert manifest["kind"] == "tildev2-store" and manifest["num_passages"] == len(docs)
    assert manifest["expander"]["config"]["expansion_terms"] == 8
    ids, weights = tildev2_encoder.encode(tilde_expander.expand([docs[3].full_text], show_progress=False))[0]
    table = store.passage(docs[3].id)
    assert list(table) == ids.tolist()
    np.testing.assert_allclose(list(table.values()), weights, rtol=1e-3)  # stored as float16
    assert store.token_ids.dtype == np.uint16 and store.weights.dtype == np.float16
    assert not [p for p in tilde_store.parent.iterdir() if ".building" in p.name]


def test_store_refuses_damage(tilde_store, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tilde_store, broken)
    np.save(broken / "offsets.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(IndexCorruptError, match="offsets.npy has the wrong size"):
        TildeV2Store(broken)
    with pytest.raises(IndexCorruptError, match="no sparsa.json"):
        TildeV2Store(tmp_path)


def test_rerank_matches_batch_and_reference(tilde_store, scifact_slice):
    queries, docs = scifact_slice
    reranker = TildeV2Reranker.open(tilde_store)
    singles = [reranker.rerank(q, docs) for q in queries]
    assert reranker.rerank_batch(queries, [docs] * len(queries), show_progress=False) == singles
    for q, hits in zip(queries, singles, strict=True):
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True) and {h.doc_id for h in hits} == {d.id for d in docs}
        ids = reranker.store.tokenizer.query_ids(q.text)
        for hit in hits[:5]:
            assert (hit.score
                    == pytest.approx(tildev2_score_ref(ids, reranker.store.passage(hit.doc_id)), rel=1e-5))
    assert reranker.rerank(queries[0], docs, top_k=3) == singles[0][:3]
    with pytest.raises(ConfigError, match="not in the TILDEv2 store"):
        reranker.rerank(queries[0], [Document("no-such-doc", "text")])
    with pytest.raises(ConfigError, match="candidate lists"):
        reranker.rerank_batch(queries, [docs])
