"""The service on real Cranfield indexes: search, errors and limits, keys, metrics, OpenAPI."""

from __future__ import annotations

import itertools

import pytest

from tests.api.conftest import API_KEY, SPLADE_DOCS, service_config

pytestmark = pytest.mark.java

QUERY = ("what similarity laws must be obeyed when constructing aeroelastic models of "
         "heated high speed aircraft")


def test_health_is_ready_once_everything_is_loaded(client):
    body = client.get("/health").json()
    assert (body["ready"] is True and set(body["indexes"]) == {"bm25", "splade", "dense"}
            and body["problems"] == [])


@pytest.mark.parametrize("retriever", ["bm25", "splade", "dense", "hybrid"])
def test_search_returns_ranked_hits_with_text(client, cranfield, retriever):
    response = client.post("/search", json={"query": QUERY, "retriever": retriever, "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    hits = body["hits"]
    assert body["retriever"] == retriever and len(hits) == 5
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(hits))
    for hit in hits:
        assert hit["text"] == cranfield.corpus[hit["doc_id"]].text
    if retriever in ("splade", "dense"):
        assert {h["doc_id"] for h in hits} <= {d.id for d in cranfield.corpus.documents[:SPLADE_DOCS]}


def test_search_finds_what_the_library_finds(client, loaded_state):
    """The API adds nothing to the ranking: same ids and scores as the library retriever."""
    from sparsa.types import Query

    direct = loaded_state.indexes["bm25"].searcher.search([Query("q", QUERY)], k=10, show_progress=False)["q"]
    served = client.post("/search", json={"query": QUERY, "k": 10, "include_text": False}).json()["hits"]
    assert [h["doc_id"] for h in served] == [h.doc_id for h in direct]
    assert served[0]["text"] is None


BAD_INPUTS = [
    ("empty query", {"query": ""}, 422, "query: String should have at least 1 character"),
    ("blank query", {"query": "   "}, 422, "query: String should have at least 1 character"),
    ("long query", {"query": "x" * 2001}, 422, "query: String should have at most 2000 characters"),
    ("k=0", {"query": "flow", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("k=10^9", {"query": "flow", "k": 10**9}, 422, "k: Input should be less than or equal to 1000"),
    ("k not a number", {"query": "flow", "k": "ten"}, 422,
     "k: Input should be a valid integer, unable to parse string as an integer"),
    ("unknown retriever", {"query": "flow", "retriever": "tfidf"}, 422,
     "retriever: Input should be 'bm25', 'splade', 'dense' or 'hybrid'"),
    ("misspelt field", {"query": "flow", "kk": 3}, 422, "kk: Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("case", "body", "status", "detail"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_search_inputs_get_a_precise_4xx(client, case, body, status, detail):
    response = client.post("/search", json=body)
    assert response.status_code == status
    assert response.json() == {"detail": detail}


def test_one_megabyte_query_is_refused_before_it_is_read(client):
    response = client.post("/search", json={"query": "x" * 1_000_000})
    assert response.status_code == 413
    assert response.json()["detail"] == "request body too large: the limit is 65536 bytes"


def test_invalid_utf8_and_broken_json(client):
    bad = client.post("/search", content=b'{"query": "caf\xe9"}',
                      headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["detail"] == "the request body is not valid UTF-8 (byte 14)"
    broken = client.post("/search", content=b'{"query": ', headers={"Content-Type": "application/json"})
    assert (broken.status_code == 422
            and broken.json()["detail"].startswith("the request body is not valid JSON"))


def test_hybrid_is_rrf_over_the_served_retrievers(client, loaded_state):
    from sparsa.retrieval.fusion import reciprocal_rank_fusion
    from sparsa.types import Query

    runs = [loaded_state.indexes[n].searcher.search([Query("q", QUERY)], k=100, show_progress=False)
            for n in ("bm25", "splade", "dense")]
    expected = [h.doc_id for h in reciprocal_rank_fusion(runs, k=10)["q"]]
    served = client.post("/search", json={"query": QUERY, "retriever": "hybrid", "k": 10}).json()["hits"]
    assert [h["doc_id"] for h in served] == expected


def test_what_is_not_served_is_named(client, index_root, shared_data):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    qa = client.post("/qa", json={"question": "what is a boundary layer?"})
    assert qa.status_code == 503 and qa.json()["detail"].startswith("QA not configured")
    rerank = client.post("/rerank", json={"query": "flow", "doc_ids": ["1"]})
    assert rerank.status_code == 400 and "reranking is not configured" in rerank.json()["detail"]
    only_bm25 = ServiceState(service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"}))
    with TestClient(create_app(only_bm25.config, only_bm25.load(strict=True))) as bm25_client:
        dense = bm25_client.post("/search", json={"query": "flow", "retriever": "dense"})
        assert dense.status_code == 400
        assert dense.json()["detail"] == "retriever 'dense' is not configured on this server; served: bm25"
        hybrid = bm25_client.post("/search", json={"query": "flow", "retriever": "hybrid"})
        assert hybrid.status_code == 400 and hybrid.json()["detail"].startswith(
            "retriever 'hybrid' is not configured on this server: it fuses two or more served indexes")


def test_rerank_validates_its_candidates(client):
    both = client.post("/rerank", json={"query": "flow", "doc_ids": ["1"], "passages": [{"text": "a"}]})
    assert both.status_code == 422 and "exactly one of 'passages' or 'doc_ids'" in both.json()["detail"]
    many = client.post("/rerank", json={"query": "flow", "doc_ids": [str(i) for i in range(101)]})
    assert (many.status_code == 422
            and many.json()["detail"].startswith("doc_ids: List should have at most 100"))


def test_index_management_needs_the_key(client):
    assert client.get("/indexes").json() == {"detail": "missing API key: send it in the X-API-Key header"}
    assert client.get("/indexes").status_code == 401
    wrong = client.get("/indexes", headers={"X-API-Key": "nope"})
    assert wrong.status_code == 403 and wrong.json() == {"detail": "invalid API key"}
    listed = client.get("/indexes", headers={"X-API-Key": API_KEY})
    assert listed.status_code == 200
    assert {i["retriever"] for i in listed.json()["loaded"]} == {"bm25", "splade", "dense"}
    assert {(i["name"], i["valid"]) for i in listed.json()["stored"]} >= {("bm25", True), ("splade", True)}
    bad_name = client.post("/indexes/build", headers={"X-API-Key": API_KEY},
                           json={"name": "../etc", "kind": "bm25", "dataset": "cranfield"})
    assert bad_name.status_code == 422 and bad_name.json()["detail"].startswith("name: String should match")
    unknown = client.post("/indexes/build", headers={"X-API-Key": API_KEY},
                          json={"name": "x", "kind": "bm25", "dataset": "nosuch"})
    assert (unknown.status_code == 400
            and unknown.json()["detail"].startswith("unknown dataset 'nosuch'; known:"))
    assert client.get("/indexes/jobs/abc", headers={"X-API-Key": API_KEY}).status_code == 404


def test_keyed_search_and_disabled_management(index_root, shared_data):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    keyed = ServiceState(service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"},
                                        open_search=False)).load(strict=True)
    with TestClient(create_app(keyed.config, keyed)) as client:
        assert client.post("/search", json={"query": "flow"}).status_code == 401
        assert client.post("/search", json={"query": "flow"},
                           headers={"X-API-Key": API_KEY}).status_code == 200
    no_key = ServiceState(service_config(index_root, shared_data, indexes={}, api_key=None)).load()
    with TestClient(create_app(no_key.config, no_key)) as client:
        response = client.get("/indexes", headers={"X-API-Key": "anything"})
        assert response.status_code == 403 and "no API key configured" in response.json()["detail"]


def test_time_limit_gives_504(index_root, shared_data):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    state = ServiceState(service_config(index_root, shared_data, indexes={"splade": index_root / "splade"},
                                        timeout_s=1e-4)).load(strict=True)
    with TestClient(create_app(state.config, state)) as client:
        response = client.post("/search", json={"query": QUERY, "retriever": "splade"})
    assert response.status_code == 504
    assert response.json() == {"detail": "the request took longer than the server's limit of 0.0001 s"}


def test_metrics_count_requests_by_route_and_status(client):
    client.post("/search", json={"query": "flow", "k": 1})
    text = client.get("/metrics").text
    assert 'sparsa_requests_total{method="POST",route="/search",status="200"}' in text
    assert "sparsa_ready 1.0" in text and 'sparsa_index_documents{retriever="bm25"} 120.0' in text
    assert "sparsa_search_seconds_bucket" in text


def test_openapi_documents_every_endpoint_and_limit(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/rerank", "/qa", "/health", "/metrics", "/indexes", "/indexes/build",
            "/indexes/swap"} <= set(spec["paths"])
    k = spec["components"]["schemas"]["SearchRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 1000)
    assert client.get("/").status_code == 200 and "search-form" in client.get("/").text


def test_duplicate_passage_ids_are_refused(client):
    both = client.post("/rerank", json={"query": "flow", "passages": [{"id": "1", "text": "a"},
                                                                      {"id": "1", "text": "b"}]})
    assert both.status_code == 422
    assert both.json()["detail"] == "body: Value error, passage ids must be unique; repeated: '1'"
    clash = client.post("/rerank", json={"query": "flow",
                                         "passages": [{"id": "#1", "text": "a"}, {"text": "b"}]})
    assert clash.status_code == 422 and "repeated: '#1'" in clash.json()["detail"]


def _operations(spec):
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            yield path, method, op


def test_openapi_tells_the_truth_about_errors_one_of_and_keys(client, index_root, shared_data):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and schemas["ErrorBody"]["required"] == ["detail"]
    for path, method, op in _operations(spec):
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) and path != "/health":
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorBody", (path, method, code)
            if code in ("429", "503") and path != "/health":
                assert "Retry-After" in response["headers"], (path, code)
    rerank = schemas["RerankRequest"]
    assert rerank["oneOf"] == [{"required": ["passages"]}, {"required": ["doc_ids"]}]
    assert rerank["properties"]["passages"]["type"] == "array"
    assert "anyOf" not in rerank["properties"]["doc_ids"]  # not nullable: absent is the only "not given"
    security = {(path, method): op.get("security") for path, method, op in _operations(spec)}
    for path in ("/search", "/rerank", "/qa"):  # this server searches without a key
        assert security[(path, "post")] is None
        assert not {"401", "403"} & set(spec["paths"][path]["post"]["responses"])
    assert security[("/indexes", "get")] == [{"APIKeyHeader": []}]
    assert security[("/indexes/swap", "post")] == [{"APIKeyHeader": []}]
    assert security[("/health", "get")] == [{}, {"APIKeyHeader": []}]  # optional
    keyed = ServiceState(service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"},
                                        open_search=False)).load(strict=True)
    with TestClient(create_app(keyed.config, keyed)) as keyed_client:
        keyed_spec = keyed_client.get("/openapi.json").json()
    assert keyed_spec["paths"]["/search"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "401" in keyed_spec["paths"]["/search"]["post"]["responses"]


def test_docs_page_is_served_locally(client):
    from sparsa.api.app import STATIC

    page = client.get("/docs")
    assert page.status_code == 200 and 'href="/openapi.json"' in page.text
    assert client.get("/static/docs.js").status_code == 200
    assert client.get("/redoc").status_code == 404
    for name in ("docs.html", "docs.js"):
        text = (STATIC / name).read_text()
        assert "http://" not in text and "https://" not in text and "cdn" not in text.lower(), name


def test_health_shows_host_paths_only_with_the_key(client, index_root):
    anonymous = client.get("/health").json()
    assert anonymous["indexes"] == {"bm25": "bm25", "splade": "splade", "dense": "dense"}
    assert str(index_root) not in client.get("/health").text
    wrong = client.get("/health", headers={"X-API-Key": "nope"}).json()
    assert wrong["indexes"] == anonymous["indexes"]
    keyed = client.get("/health", headers={"X-API-Key": API_KEY}).json()
    assert keyed["indexes"] == {name: str(index_root / name) for name in ("bm25", "splade", "dense")}


def test_wrong_keys_are_rate_limited_per_client(loaded_state):
    import dataclasses

    from fastapi.testclient import TestClient

    from sparsa.api import create_app

    config = dataclasses.replace(loaded_state.config,
                                 limits=dataclasses.replace(loaded_state.config.limits, key_failures=3))
    with TestClient(create_app(config, loaded_state)) as client:
        for _ in range(3):
            assert client.get("/indexes", headers={"X-API-Key": "guess"}).status_code == 403
        locked = client.get("/indexes", headers={"X-API-Key": "guess"})
        assert locked.status_code == 429 and 55 <= int(locked.headers["Retry-After"]) <= 60
        assert locked.json()["detail"].startswith("too many wrong API keys from this address; retry in")
        assert client.get("/indexes", headers={"X-API-Key": API_KEY}).status_code == 429  # the right key too
        assert client.post("/search", json={"query": "flow", "k": 1}).status_code == 200  # search is open
        assert client.get("/health", headers={"X-API-Key": API_KEY}).json()["indexes"]["bm25"] == "bm25"
