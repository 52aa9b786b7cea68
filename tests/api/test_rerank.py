"""Reranking through the service with a real reranker (UPR-style query likelihood under SmolLM2)."""

from __future__ import annotations

import pytest

from tests.api.conftest import service_config

pytestmark = [pytest.mark.java, pytest.mark.slow]

QUERY = "heat transfer in laminar boundary layers"


@pytest.fixture(scope="module")
def rerank_client(index_root, shared_data):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    state = ServiceState(service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"},
                                        reranker="query-likelihood")).load(strict=True)
    with TestClient(create_app(state.config, state), raise_server_exceptions=False) as client:
        yield client, state


def test_rerank_endpoint_matches_the_library_reranker(rerank_client, cranfield):
    from sparsa.types import Query

    client, state = rerank_client
    ids = ["1", "2", "3", "12", "51"]
    response = client.post("/rerank", json={"query": QUERY, "doc_ids": ids})
    assert response.status_code == 200, response.text
    direct = state.reranker.rerank(Query("q", QUERY), [cranfield.corpus[i] for i in ids])
    assert ([h["doc_id"] for h in response.json()["hits"]]
            == [h.doc_id for h in sorted(direct, key=lambda h: -h.score)])
    passages = client.post("/rerank", json={"query": QUERY, "passages": [
        {"id": "a", "text": "The weather in spring is mild."},
        {"id": "b", "text": "Heat transfer through a laminar boundary layer on a flat plate is computed."}]})
    assert passages.status_code == 200 and passages.json()["hits"][0]["doc_id"] == "b"
    unknown = client.post("/rerank", json={"query": QUERY, "doc_ids": ["no-such-doc"]})
    assert unknown.status_code == 400 and unknown.json()["detail"] == "unknown document id(s): no-such-doc"


def test_search_with_rerank_reorders_the_top_hits(rerank_client):
    client, _ = rerank_client
    plain = client.post("/search", json={"query": QUERY, "k": 8}).json()
    reranked = client.post("/search", json={"query": QUERY, "k": 8, "rerank": True, "rerank_depth": 5}).json()
    assert reranked["reranked"] is True and len(reranked["hits"]) == 8
    plain_ids = [h["doc_id"] for h in plain["hits"]]
    reranked_ids = [h["doc_id"] for h in reranked["hits"]]
    assert sorted(reranked_ids[:5]) == sorted(plain_ids[:5]) and reranked_ids[5:] == plain_ids[5:]


def test_passages_with_and_without_ids_keep_their_own_text(rerank_client):
    """An id-less passage comes back as '#<position>', never under another passage's id (issue 26, item 5)."""
    client, _ = rerank_client
    passages = [{"id": "1", "text": "The weather in spring is mild."},
                {"text": "Heat transfer through a laminar boundary layer on a flat plate is computed."},
                {"text": "Stock prices fell on Monday."}]
    response = client.post("/rerank", json={"query": QUERY, "passages": passages})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits[0]["doc_id"] == "#1" and hits[0]["text"] == passages[1]["text"]
    by_id = {h["doc_id"]: h["text"] for h in hits}
    assert by_id == {"1": passages[0]["text"], "#1": passages[1]["text"], "#2": passages[2]["text"]}
