"""The service reading passages from an on-disk document store (``--dataset STORE``): /search titles and
texts, /rerank by doc_ids, /qa passages; a store of another corpus than the served indexes is refused."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.java, pytest.mark.slow]


@pytest.fixture(scope="module")
def store_client(index_root, shared_data, tmp_path_factory):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app
    from sparsa.docstore import DocStore, build_docstore
    from tests.api.conftest import service_config

    store = build_docstore(shared_data / "cranfield" / "corpus.jsonl", tmp_path_factory.mktemp("s") / "docs",
                           name="cranfield", show_progress=False)
    config = service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"},
                            dataset=store.folder, qa_model="smollm2-135m-instruct")
    state = ServiceState(config).load(strict=True)
    assert isinstance(state.corpus, DocStore) and isinstance(state.pipeline.corpus, DocStore)
    with TestClient(create_app(config, state), raise_server_exceptions=False) as client:
        yield client, state


def test_search_and_qa_read_the_store(store_client, cranfield):
    client, state = store_client
    body = client.post("/search", json={"query": "boundary layer heat transfer", "retriever": "bm25",
                                        "k": 5}).json()
    assert len(body["hits"]) == 5
    for hit in body["hits"]:
        doc = cranfield.corpus[hit["doc_id"]]
        assert (hit["title"], hit["text"]) == (doc.title, doc.text)
    ids = [hit["doc_id"] for hit in body["hits"]]
    # /rerank's look-up of doc_ids
    assert [d.text for d in state.documents(ids)] == [cranfield.corpus[i].text for i in ids]
    question = "what is the effect of heat transfer on the boundary layer?"
    answer = client.post("/qa", json={"question": question, "mode": "retrieve"})
    assert answer.status_code == 200, answer.text
    passages = answer.json()["passages"]
    assert passages and all(p["text"] == cranfield.corpus[p["doc_id"]].text for p in passages)


def test_a_served_store_is_not_rebuilt_in_place(store_client, shared_data):
    from sparsa.docstore import build_docstore
    from sparsa.errors import ConfigError

    _, state = store_client
    with pytest.raises(ConfigError, match="is being served"):
        build_docstore(shared_data / "cranfield" / "corpus.jsonl", state.corpus.folder, show_progress=False)
    assert len(state.corpus) == 120 and state.corpus.fetch(["1"])[0] is not None


def test_a_store_of_another_corpus_is_refused(index_root, shared_data, tmp_path):
    from sparsa.api import ServiceState
    from sparsa.api.identity import IndexMismatchError
    from sparsa.docstore import build_docstore
    from tests.api.conftest import service_config
    from tests.conftest import data_dir

    full = build_docstore(data_dir() / "cranfield" / "corpus.jsonl", tmp_path / "full", name="cranfield",
                          show_progress=False)  # all 1,400 documents; the indexes hold 120
    config = service_config(index_root, shared_data, indexes={"bm25": index_root / "bm25"},
                            dataset=full.folder)
    with pytest.raises(IndexMismatchError, match="1400 documents"):
        ServiceState(config).load(strict=True)
