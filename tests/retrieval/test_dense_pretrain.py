"""ICT / BFS / WLP pair construction on a small corpus, and the in-batch contrastive loss."""

from __future__ import annotations

import random

import pytest

from sparsa.errors import ConfigError, DataFormatError
from sparsa.retrieval.dense_pretrain import (
    bfs_pair,
    ict_pair,
    labelled_pairs,
    pretraining_pairs,
    read_pairs,
    split_sentences,
    wlp_pair,
)
from sparsa.types import Corpus, Document, Qrels, Query

SENTENCES = ["Vitamin D regulates calcium.", "Deficiency weakens bone.", "Trials in 2019 showed gains.",
             "(Older adults) benefit most."]
DOC = Document("d1", " ".join(SENTENCES), title="Vitamin D and bone")
CORPUS = Corpus([DOC, Document("d2", "One sentence only.", title="Short"),
                 Document("d3", "No title here. But two sentences."), Document("d4", "", title="Empty body")])


def test_sentence_split():
    assert split_sentences(DOC.text) == SENTENCES
    assert split_sentences("p < 0.05 was found. e.g. here") == ["p < 0.05 was found. e.g. here"]


def test_ict_removes_the_query_sentence_unless_kept():
    for seed in range(20):
        pair = ict_pair(DOC, random.Random(seed), keep_rate=0.0)
        assert pair.query in SENTENCES and pair.query not in pair.passage
        assert pair.passage.startswith(DOC.title) and pair.doc_id == "d1" and pair.task == "ict"
        rest = [s for s in SENTENCES if s != pair.query]
        assert all(s in pair.passage for s in rest)
        kept = ict_pair(DOC, random.Random(seed), keep_rate=1.0)
        assert kept.query in kept.passage
    assert ict_pair(CORPUS["d2"], random.Random(0)) is None  # one sentence: nothing left to find


def test_bfs_first_sentence_against_a_span_of_the_others():
    for seed in range(20):
        pair = bfs_pair(DOC, random.Random(seed))
        assert pair.query == SENTENCES[0] and SENTENCES[0] not in pair.passage
        later = SENTENCES[1:]
        used = [s for s in later if s in pair.passage]
        assert len(used) >= 2 and " ".join(used) == pair.passage  # a contiguous span, at least half
        assert later.index(used[-1]) - later.index(used[0]) == len(used) - 1
    assert bfs_pair(CORPUS["d2"], random.Random(0)) is None


def test_wlp_uses_titles_and_skips_untitled_documents():
    pair = wlp_pair(DOC, random.Random(0))
    assert (pair.query, pair.passage, pair.task) == (DOC.title, DOC.text, "wlp")
    assert (wlp_pair(CORPUS["d3"], random.Random(0)) is None
            and wlp_pair(CORPUS["d4"], random.Random(0)) is None)


def test_pretraining_pairs_mix_and_errors(tmp_path):
    mixed = pretraining_pairs(CORPUS, "mix", seed=1)
    assert {p.doc_id for p in mixed} <= set(CORPUS) and len({p.doc_id for p in mixed}) == len(mixed)
    # deterministic
    assert pretraining_pairs(CORPUS, "ict", seed=1) == pretraining_pairs(CORPUS, "ict", seed=1)
    assert len(pretraining_pairs(CORPUS, "wlp", limit=1)) == 1
    with pytest.raises(ConfigError, match="unknown pre-training task"):
        pretraining_pairs(CORPUS, "mlm")
    with pytest.raises(ConfigError, match="no bfs pairs"):
        pretraining_pairs(Corpus([CORPUS["d2"]]), "bfs")


def test_labelled_pairs_and_jsonl_round_trip(tmp_path):
    from sparsa.retrieval.dense_pretrain import write_pairs

    qrels = Qrels({"q1": {"d1": 1, "d2": 0, "missing": 1}})
    pairs = labelled_pairs([Query("q1", "does vitamin D help bone?")], qrels, CORPUS)
    assert [(p.query, p.doc_id, p.task) for p in pairs] == [("does vitamin D help bone?", "d1", "labelled")]
    path = tmp_path / "pairs.jsonl.gz"
    write_pairs(pairs + pretraining_pairs(CORPUS, "ict"), path)
    assert read_pairs(path)[0] == pairs[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x", "passage": "y", "doc_id": "d"}\n{"query": "x"}\n')
    with pytest.raises(DataFormatError, match=":2"):
        read_pairs(bad)


def test_contrastive_loss_masks_same_document_passages():
    torch = pytest.importorskip("torch")
    from sparsa.retrieval.dense_train import contrastive_loss

    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # all different documents: plain softmax cross-entropy over rows
    expected = torch.nn.functional.cross_entropy(2.0 * q @ p.T, torch.arange(3))
    assert contrastive_loss(q, p, ["a", "b", "c"], 2.0).item() == pytest.approx(expected.item())
    # rows 0 and 2 share a document: each one's other passage is masked out
    scores = 2.0 * q @ p.T
    scores[0, 2] = scores[2, 0] = float("-inf")
    masked = torch.nn.functional.cross_entropy(scores, torch.arange(3))
    assert contrastive_loss(q, p, ["a", "b", "a"], 2.0).item() == pytest.approx(masked.item())
