"""Query likelihood under SmolLM2-135M: batched scores (and per-token log-probabilities) equal a
one-pair-at-a-time reference."""

from __future__ import annotations

import pytest
import torch

from sparsa.errors import ConfigError
from sparsa.rerank.query_likelihood import QueryLikelihoodConfig, QueryLikelihoodReranker
from sparsa.types import Document, Query

pytestmark = pytest.mark.slow

DOCS = [
    Document("heart", "Statins lower LDL cholesterol and reduce the risk of heart attacks.", title="Statins"),
    Document("malaria", "Malaria is transmitted by the bite of infected Anopheles mosquitoes."),
    Document("bones", "Vitamin D and calcium supplements increase bone mineral density in older women."),
]


@pytest.fixture(scope="module")
def ql():
    return QueryLikelihoodReranker(QueryLikelihoodConfig(max_passage_tokens=64))


def test_batched_scores_equal_the_full_logits_reference(ql):
    pairs = [(ql._ids("Passage: cats sit on mats.\nQuestion:"), ql._ids(" where do cats sit?")),
             (ql._ids("Passage: no\nQuestion:"), ql._ids(" why")),
             (ql._ids("Passage: a longer passage about the weather in spring.\nQuestion:"),
              ql._ids(" is it warm"))]
    got = ql.score_ids(pairs, show_progress=False)  # one left-padded batch of unequal lengths
    per_token = ql.token_logprobs(pairs, show_progress=False)
    for (context, target), score, tokens in zip(pairs, got, per_token, strict=True):
        with torch.inference_mode():
            logprobs = ql.model(input_ids=torch.tensor([context + target])).logits[0].log_softmax(-1)
        expected = [float(logprobs[len(context) + j - 1, t]) for j, t in enumerate(target)]
        assert tokens.tolist() == pytest.approx(expected, abs=1e-3)
        assert score == pytest.approx(sum(expected), abs=1e-3)


def test_log_softmax_in_row_chunks_gives_the_same_scores(ql, monkeypatch):
    import sparsa.rerank.query_likelihood as module

    pairs = [(ql._ids("Passage: cats sit on mats.\nQuestion:"), ql._ids(" where do cats sit?")),
             (ql._ids("Passage: no\nQuestion:"), ql._ids(" why"))]
    whole = ql.score_ids(pairs, show_progress=False)
    monkeypatch.setattr(module, "LOGPROB_CHUNK_ELEMENTS", 1)  # one row per chunk
    assert ql.score_ids(pairs, show_progress=False).tolist() == whole.tolist()


def test_rerank_orders_by_likelihood_and_matches_batch(ql):
    queries = [Query("1", "how are malaria parasites transmitted?"),
               Query("2", "do statins lower cholesterol?")]
    batched = ql.rerank_batch(queries, [DOCS, DOCS[:2]], show_progress=False)  # pairs of both queries mixed
    assert batched[0][0].doc_id == "malaria" and batched[1][0].doc_id == "heart"
    single = ql.rerank(queries[1], DOCS[:2])
    assert [h.doc_id for h in single] == [h.doc_id for h in batched[1]]
    assert [h.score for h in single] == pytest.approx([h.score for h in batched[1]], abs=1e-3)
    assert ql.rerank(queries[0], []) == []


def test_bad_config_and_input():
    with pytest.raises(ConfigError, match="passage"):
        QueryLikelihoodConfig(prompt="no placeholder")
    with pytest.raises(ConfigError, match="dtype"):
        QueryLikelihoodConfig(dtype="int8")
