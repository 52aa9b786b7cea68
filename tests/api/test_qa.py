"""``POST /qa`` through the real pipeline (BM25 over Cranfield, SmolLM2 reader)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.java, pytest.mark.slow]


@pytest.fixture(scope="module")
def qa_client(qa_state):
    from fastapi.testclient import TestClient

    from sparsa.api import create_app

    with TestClient(create_app(qa_state.config, qa_state), raise_server_exceptions=False) as client:
        yield client


def test_retrieve_mode_answers_with_citations_from_the_passages(qa_client, cranfield):
    response = qa_client.post("/qa",
                              json={"question": "what is the effect of heat transfer on the boundary layer?",
                                    "mode": "retrieve"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["route"] == "retrieve" and body["answer"].strip()
    assert set(body["citations"]) <= {p["doc_id"] for p in body["passages"]}
    for passage in body["passages"]:
        assert passage["text"] == cranfield.corpus[passage["doc_id"]].text
    assert body["timings"]["total"] > 0


def test_recall_mode_reads_no_passages(qa_client):
    body = qa_client.post("/qa", json={"question": "What is the capital of France?", "mode": "recall"}).json()
    assert body["route"] == "recall" and body["passages"] == [] and body["citations"] == []


def test_qa_input_errors(qa_client):
    assert qa_client.post("/qa", json={"question": ""}).status_code == 422
    bad_mode = qa_client.post("/qa", json={"question": "why?", "mode": "guess"})
    assert bad_mode.status_code == 422
    assert bad_mode.json()["detail"] == "mode: Input should be 'auto', 'retrieve' or 'recall'"
