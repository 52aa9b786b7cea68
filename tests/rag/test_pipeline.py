"""QAPipeline modes with the real reader; retrieval through a real BM25 index (java) in test_cli."""

from __future__ import annotations

import pytest

from sparsa.errors import ConfigError
from sparsa.rag.pipeline import Answer, QAPipeline


def test_recall_mode_reads_closed_book(reader):
    answer = QAPipeline(reader).answer("What is the capital of France?", mode="recall")
    assert isinstance(answer, Answer)
    assert answer.route == "recall" and answer.passages == [] and answer.citations == []
    assert set(answer.timings) == {"route", "retrieve", "rerank", "read", "total"}
    assert answer.timings["total"] >= answer.timings["read"] > 0
    assert answer.to_dict()["question"] == "What is the capital of France?"


def test_auto_without_an_index_recalls(reader):
    assert QAPipeline(reader).answer("Who wrote Hamlet?", mode="auto").route == "recall"


def test_pipeline_input_errors(reader, passages):
    pipeline = QAPipeline(reader)
    with pytest.raises(ConfigError, match="mode"):
        pipeline.answer("q?", mode="sometimes")
    with pytest.raises(ConfigError, match="needs an index"):
        pipeline.answer("q?", mode="retrieve")
    with pytest.raises(ConfigError, match="empty"):
        pipeline.answer("  ")
    with pytest.raises(ConfigError, match="corpus"):
        QAPipeline(reader, retriever=object())
    with pytest.raises(ConfigError, match="k must be"):
        QAPipeline(reader, k=0)


@pytest.mark.java
def test_retrieve_mode_cites_only_retrieved_passages(reader, passages, tiny_bm25):
    from sparsa.search import open_retriever

    pipeline = QAPipeline(reader, open_retriever(tiny_bm25[0]), passages, k=2)
    for question, top in (("How tall is Mount Fuji?", "fuji"), ("Which river flows through Peru?", "amazon")):
        answer = pipeline.answer(question, mode="retrieve")
        retrieved = [hit.doc_id for hit in answer.passages]
        assert answer.route == "retrieve" and 1 <= len(retrieved) <= 2 and retrieved[0] == top
        assert set(answer.citations) <= set(retrieved)
        assert answer.timings["retrieve"] > 0


@pytest.mark.java
def test_auto_mode_follows_the_router(reader, passages, tiny_bm25):
    from sparsa.rag.routing import Router, RouterModel, TermStats
    from sparsa.search import open_retriever

    retriever = open_retriever(tiny_bm25[0])
    # Retrieve exactly when the subject occurs in the corpus: log((df + 1) / 4) > -1 iff df >= 1.
    covered = RouterModel(("subject_logdf",), (0.0,), (1.0,), (50.0,), 50.0 * 1.0, 0.5)
    pipeline = QAPipeline(reader, retriever, passages,
                          router=Router(covered, TermStats.from_corpus(passages)), k=2)
    assert pipeline.answer("How tall is Mount Fuji?").route == "retrieve"
    recalled = pipeline.answer("Who painted the Mona Lisa?")
    assert recalled.route == "recall" and recalled.passages == [] and recalled.citations == []
    with_lm = RouterModel(("lm_logprob",), (0.0,), (1.0,), (0.0,), 0.0, 0.9)  # score 0.5 < 0.9: recall
    pipeline.router = Router(with_lm, TermStats.from_corpus(passages))
    answer = pipeline.answer("Who painted the Mona Lisa?")
    assert answer.route == "recall" and answer.timings["route"] > 0 and answer.timings["read"] == 0.0
