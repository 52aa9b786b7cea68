"""The service reaches what the CLI does (issue 25): weighted hybrid fusion, index builds with a model,
``/qa`` over a knowledge graph, and ``/search`` as of a date with the event-aware query encoder."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.api.conftest import API_KEY, service_config, wait_until

QUERY = "boundary layer heat transfer at high speed"


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [h["doc_id"] for h in response.json()["hits"]]


@pytest.mark.java
def test_hybrid_takes_fusion_settings_and_weights(client):
    bm25 = _ids(client.post("/search", json={"query": QUERY, "retriever": "bm25", "k": 10}))
    dense = _ids(client.post("/search", json={"query": QUERY, "retriever": "dense", "k": 10}))
    weights = {"bm25": 1, "splade": 0, "dense": 0}
    only_bm25 = client.post("/search", json={"query": QUERY, "retriever": "hybrid", "k": 10,
                                             "fusion": "interp", "weights": weights})
    assert set(_ids(only_bm25)) == set(bm25) and _ids(only_bm25)[0] == bm25[0]
    leaning = client.post("/search", json={"query": QUERY, "retriever": "hybrid", "k": 10,
                                           "weights": {"dense": 10}})  # rrf: dense's first hit wins
    assert _ids(leaning)[0] == dense[0]
    wrong = client.post("/search", json={"query": QUERY, "retriever": "bm25", "weights": {"bm25": 2}})
    assert wrong.status_code == 422 and "apply to retriever 'hybrid' only" in wrong.json()["detail"]
    negative = client.post("/search", json={"query": QUERY, "retriever": "hybrid", "weights": {"bm25": -1}})
    unknown = client.post("/search", json={"query": QUERY, "retriever": "hybrid", "weights": {"colbert": 1}})
    assert negative.status_code == 422 and unknown.status_code == 422
    spec = client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]
    assert {"fusion", "weights", "normalisation", "rrf_k", "as_of"} <= set(spec)


@pytest.mark.java
@pytest.mark.slow
def test_index_builds_take_a_model(spare_index, shared_data):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    config = service_config(spare_index, shared_data, indexes={"bm25": spare_index / "bm25"})
    state = ServiceState(config).load(strict=True)
    key = {"X-API-Key": API_KEY}
    with TestClient(create_app(config, state), raise_server_exceptions=False) as client:
        for body, message in (({"kind": "bm25", "model": "minilm-l6"}, "a bm25 index takes no model"),
                              ({"kind": "dense", "model": "no-such-model"}, "unknown model 'no-such-model'"),
                              ({"kind": "dense", "model": "splade-tiny"}, "no sentence-transformers files")):
            refused = client.post("/indexes/build", headers=key,
                                  json={"name": "x", "dataset": "cranfield", **body})
            assert refused.status_code == 400 and message in refused.json()["detail"], refused.text
        path = client.post("/indexes/build", headers=key, json={"name": "x", "dataset": "cranfield",
                                                                  "model": "../m", "kind": "dense"})
        assert path.status_code == 422  # a model is a name, never a path on the server
        started = client.post("/indexes/build", headers=key, json={
            "name": "cran-minilm", "kind": "dense", "dataset": "cranfield", "model": "minilm-l6"})
        assert started.status_code == 202 and started.json()["model"] == "minilm-l6"
        job = started.json()["id"]
        state_of = lambda: client.get(f"/indexes/jobs/{job}", headers=key).json()["state"]
        assert wait_until(lambda: state_of() != "running", 300, 0.5)
        assert state_of() == "succeeded", client.get(f"/indexes/jobs/{job}", headers=key).json()["log_tail"]
    manifest = json.loads((spare_index / "cran-minilm" / "sparsa.json").read_text())
    assert manifest["kind"] == "dense" and manifest["encoder"]["config"]["model"] == "minilm-l6"


@pytest.mark.slow
def test_qa_answers_from_a_knowledge_graph(shared_data, tmp_path):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceConfig, ServiceState, create_app
    from sparsa.rag.config import PipelineConfig

    with gzip.open(shared_data / "metaqa" / "kb_reconstructed.txt.gz", "rt") as f:
        triples = [line.rstrip("\n").split("|") for line in f if line.split("|", 1)[0] in ("Big", "Splash")]
    kb = tmp_path / "kb.tsv"
    kb.write_text("".join("\t".join(t) + "\n" for t in triples))
    chain = PipelineConfig.from_dict({"kg": {"path": str(kb), "max_paths": 2}, "reader": {"device": "cpu"}})
    config = ServiceConfig(qa_pipeline=chain, index_root=tmp_path, data_dir=shared_data)
    state = ServiceState(config).load(strict=True)
    with TestClient(create_app(config, state), raise_server_exceptions=False) as client:
        assert client.get("/health").json()["qa"] is True
        answered = client.post("/qa", json={"question": "who directed [Big]"})
        assert answered.status_code == 200, answered.text
        body = answered.json()
        assert body["answer"] == "Penny Marshall" and body["route"] == "kg" and body["passages"] == []
        assert "Big directed by: Penny Marshall" in [k["text"] for k in body["knowledge"] if k["shown"]]
        dated = client.post("/qa", json={"question": "who directed [Big]", "as_of": "2022-01-01"})
        assert dated.status_code == 400 and "no dates" in dated.json()["detail"]


@pytest.mark.slow
def test_search_as_of_with_the_event_aware_encoder(shared_data, tmp_path):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceConfig, ServiceState, create_app
    from sparsa.cli.main import main
    from tests.retrieval.test_dated_cli import write_dated_dataset

    folder = write_dated_dataset(shared_data, tmp_path / "news", others=120)
    head, index = tmp_path / "head", tmp_path / "news-dense"
    assert main(["-q", "train", "event", "--dataset", str(folder), "--out", str(head), "--epochs", "2"]) == 0
    assert main(["-q", "index", "--dataset", str(folder), "--kind", "dense", "--out", str(index)]) == 0
    days = {r["_id"]: r["metadata"]["date"]
            for r in map(json.loads, (folder / "corpus.jsonl").read_text().splitlines())}
    config = ServiceConfig(indexes={"dense": index}, dataset=folder, event_encoder=head, index_root=tmp_path,
                           data_dir=shared_data, qa_model="smollm2-135m-instruct")
    state = ServiceState(config).load(strict=True)
    assert state.event_retriever is not None
    assert state.pipeline.retriever is state.event_retriever  # /qa as of a day reads the same encoder
    with TestClient(create_app(config, state), raise_server_exceptions=False) as client:
        body = {"query": "prime minister resigned", "retriever": "dense", "k": 20}
        plain = _ids(client.post("/search", json=body))
        assert any(days[d] > "2022-01-07" for d in plain)
        as_of = _ids(client.post("/search", json={**body, "as_of": "2022-01-07"}))
        assert len(as_of) == 20 and all(days[d] <= "2022-01-07" for d in as_of)
        bad = client.post("/search", json={**body, "as_of": "last week"})
        assert bad.status_code == 422
        asked = client.post("/qa", json={"question": "Which prime minister resigned?", "mode": "retrieve",
                                         "as_of": "2022-01-07"})
        assert asked.status_code == 200, asked.text
        found = {h["doc_id"]: h["score"] for h in client.post("/search", json={
            "query": "Which prime minister resigned?", "retriever": "dense", "k": 20, "as_of": "2022-01-07"}
        ).json()["hits"]}
        passages = asked.json()["passages"]
        assert passages and all(p["doc_id"] in found and abs(p["score"] - found[p["doc_id"]]) < 1e-4
                                for p in passages)
