"""``/qa`` runs the configured chain (issue 24): a PipelineConfig's reranker and router, not just a reader."""

from __future__ import annotations

from collections import Counter

import pytest

pytestmark = [pytest.mark.java, pytest.mark.slow]


@pytest.fixture(scope="module")
def chain_client(index_root, shared_data, tmp_path_factory):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app
    from sparsa.rag.config import PipelineConfig
    from sparsa.rag.routing import Router, RouterModel, TermStats
    from tests.api.conftest import service_config

    # A real router file: a logistic model on corpus statistics whose bias routes every question to retrieval.
    router = tmp_path_factory.mktemp("router") / "router.json"

    Router(RouterModel(("subject_logdf",), (0.0,), (1.0,), (0.0,), 4.0, 0.5),
           TermStats(Counter(), 1)).save(router)
    chain = PipelineConfig.from_dict({
        "retrieval": {"indexes": [str(index_root / "bm25")], "dataset": str(shared_data / "cranfield"),
                      "k": 2},
        "rerank": {"name": "query-likelihood", "depth": 4},
        "router": {"path": str(router)},
        "reader": {"max_new_tokens": 8, "device": "cpu"}})
    config = service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"},
                            reranker="query-likelihood", qa_pipeline=chain)
    state = ServiceState(config).load(strict=True)
    with TestClient(create_app(config, state), raise_server_exceptions=False) as client:
        yield client, state


def test_qa_runs_the_configured_reranker_and_router(chain_client):
    client, state = chain_client
    assert state.pipeline.reranker is state.reranker and state.pipeline.router is not None
    response = client.post("/qa",
                           json={"question": "what is the effect of heat transfer on the boundary layer?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["route"] == "retrieve" and len(body["passages"]) == 2
    assert body["timings"]["route"] > 0 and body["timings"]["rerank"] > 0  # both stages ran
    assert set(body["citations"]) <= {p["doc_id"] for p in body["passages"]}


def test_qa_as_of_keeps_undated_passages_and_rejects_bad_dates(chain_client):
    client, _ = chain_client
    ok = client.post("/qa", json={"question": "boundary layer heat transfer", "mode": "retrieve",
                                  "as_of": "2020-01-01"})
    assert ok.status_code == 200 and ok.json()["passages"]  # Cranfield has no dates: nothing is filtered
    assert client.post("/qa", json={"question": "why?", "as_of": "last week"}).status_code == 422
