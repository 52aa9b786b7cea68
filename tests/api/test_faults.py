"""Faults: a damaged index is refused with a clear message; a killed build leaves the served index
serving; swaps check the new index before serving it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.api.conftest import API_KEY, DOCS, service_config, wait_until

pytestmark = pytest.mark.java
KEY = {"X-API-Key": API_KEY}


def corrupt_one_file(index: Path) -> str:
    """Flip bytes in the largest file, keeping its size (only the checksum can tell)."""
    victim = max((p for p in index.rglob("*") if p.is_file() and p.name != "sparsa.json"),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)
    victim.write_bytes(bytes(data))
    return str(victim.relative_to(index))


def test_corrupt_index_is_refused_at_load(spare_index, shared_data):
    from sparsa.api import ServiceState
    from sparsa.errors import IndexCorruptError

    name = corrupt_one_file(spare_index / "bm25")
    config = service_config(spare_index, shared_data, indexes={"bm25": spare_index / "bm25"})
    with pytest.raises(IndexCorruptError, match=f"file {name} fails its checksum; rebuild it"):
        ServiceState(config).load(strict=True)
    lenient = ServiceState(config).load()
    assert not lenient.ready and "bm25" not in lenient.indexes
    assert lenient.health()["problems"] == [(f"index bm25: {spare_index / 'bm25'}: file {name} fails its "
                                             "checksum; rebuild it")]


def test_serve_command_stops_on_a_corrupt_index(spare_index, capsys):
    from sparsa.cli.main import main

    name = corrupt_one_file(spare_index / "bm25")
    code = main(["serve", "--bm25", str(spare_index / "bm25"), "--splade", "none", "--dataset", "cranfield",
                 "--qa-model", "none", "--port", "8999"])
    assert code == 2
    assert f"file {name} fails its checksum; rebuild it" in capsys.readouterr().err.replace("\n", "")


def test_health_is_not_ready_while_loading_or_broken(spare_index, shared_data):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    corrupt_one_file(spare_index / "bm25")
    state = ServiceState(service_config(spare_index, shared_data, indexes={"bm25": spare_index / "bm25"}))
    with TestClient(create_app(state.config, state)) as client:
        state.loaded.wait(60)
        health = client.get("/health")
        assert health.status_code == 503 and "fails its checksum" in health.json()["problems"][0]
        search = client.post("/search", json={"query": "flow"})
        assert search.status_code == 400 and "served: none" in search.json()["detail"]


def test_swap_refuses_a_corrupt_index_and_keeps_serving(spare_index, index_root, shared_data):
    import shutil

    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    shutil.copytree(spare_index / "bm25", spare_index / "bm25-broken")
    name = corrupt_one_file(spare_index / "bm25-broken")
    shutil.copytree(index_root / "splade", spare_index / "splade-copy")
    state = ServiceState(service_config(spare_index, shared_data, indexes={"bm25": spare_index / "bm25"}))
    with TestClient(create_app(state.config, state.load(strict=True))) as client:
        before = client.post("/search", json={"query": "flow", "k": 3}).json()["hits"]
        refused = client.post("/indexes/swap", headers=KEY, json={"retriever": "bm25", "name": "bm25-broken"})
        assert refused.status_code == 409
        assert refused.json()["detail"] == (f"index refused: {spare_index / 'bm25-broken'}: file {name} "
                                            "fails its checksum; rebuild it")
        assert client.post("/search", json={"query": "flow", "k": 3}).json()["hits"] == before
        wrong_kind = client.post("/indexes/swap", headers=KEY,
                                 json={"retriever": "bm25", "name": "splade-copy"})
        assert wrong_kind.status_code == 400 and "is a 'splade' index" in wrong_kind.json()["detail"]
        missing = client.post("/indexes/swap", headers=KEY, json={"retriever": "bm25", "name": "nope"})
        assert missing.status_code == 404
        swapped = client.post("/indexes/swap", headers=KEY,
                              json={"retriever": "splade", "name": "splade-copy"})
        assert swapped.status_code == 200 and swapped.json()["path"] == str(spare_index / "splade-copy")
        assert client.post("/search", json={"query": "flow", "retriever": "splade"}).status_code == 200


def test_swap_also_moves_qa_to_the_new_index(spare_index, shared_data):
    import shutil

    pytest.importorskip("sparsa.rag.pipeline", reason="the QA pipeline is not in this checkout")
    from sparsa.api import ServiceState

    shutil.copytree(spare_index / "bm25", spare_index / "bm25-new")
    state = ServiceState(service_config(spare_index, shared_data, indexes={"bm25": spare_index / "bm25"},
                                        qa_model="smollm2-135m-instruct")).load(strict=True)
    old = state.pipeline.retriever
    assert state.qa_retrievers == ("bm25",) and old is state.indexes["bm25"].searcher
    state.swap("bm25", spare_index / "bm25-new")
    assert state.pipeline.retriever is state.indexes["bm25"].searcher and state.pipeline.retriever is not old
    answer = state.answer("what is the effect of heat transfer on the boundary layer?", mode="retrieve")
    assert answer.route == "retrieve" and answer.passages



@pytest.mark.slow
def test_killed_build_leaves_the_served_index_and_a_rerun_publishes(spare_index, shared_data):
    """Build through the API, kill -9 the build process midway, keep serving, rebuild; the new index is of
    another corpus (SciFact), so swapping it in is refused."""
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    state = ServiceState(service_config(spare_index, shared_data, indexes={"bm25": spare_index / "bm25"}))
    published = (spare_index / "bm25" / "sparsa.json").read_text()
    with TestClient(create_app(state.config, state.load(strict=True))) as client:
        request = {"name": "scifact-bm25", "kind": "bm25", "dataset": "scifact"}
        job = client.post("/indexes/build", headers=KEY, json=request)
        assert job.status_code == 202 and job.json()["state"] == "running"
        building = spare_index / ".scifact-bm25.building"
        assert wait_until(building.exists, 120), "the build never started writing"
        os.kill(job.json()["pid"], signal.SIGKILL)
        status = lambda j: client.get(f"/indexes/jobs/{j['id']}", headers=KEY).json()
        assert wait_until(lambda: status(job.json())["state"] == "failed", 30)
        assert (spare_index / "bm25" / "sparsa.json").read_text() == published  # the old index is untouched
        served = client.post("/search", json={"query": "flow", "k": 3})
        assert served.status_code == 200 and len(served.json()["hits"]) == 3
        rerun = client.post("/indexes/build", headers=KEY, json=request).json()
        assert wait_until(lambda: status(rerun)["state"] != "running", 240), status(rerun)
        assert status(rerun)["state"] == "succeeded", status(rerun)["log_tail"]
        assert "the build process ended without a result" in status(job.json())["detail"]
        swapped = client.post("/indexes/swap", headers=KEY,
                              json={"retriever": "bm25", "name": "scifact-bm25"})
        assert swapped.status_code == 409
        assert "built from 'scifact' (5183 documents" in swapped.json()["detail"]


@pytest.mark.slow
def test_dense_index_built_through_the_api_and_swapped_in(spare_index, shared_data):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    state = ServiceState(service_config(spare_index, shared_data, indexes={"bm25": spare_index / "bm25"}))
    with TestClient(create_app(state.config, state.load(strict=True))) as client:
        job = client.post("/indexes/build", headers=KEY, json={"name": "cran-dense", "kind": "dense",
                                                                "dataset": "cranfield"}).json()
        status = lambda: client.get(f"/indexes/jobs/{job['id']}", headers=KEY).json()
        assert wait_until(lambda: status()["state"] != "running", 600), status()
        assert status()["state"] == "succeeded", status()["log_tail"]
        swapped = client.post("/indexes/swap", headers=KEY, json={"retriever": "dense", "name": "cran-dense"})
        assert swapped.status_code == 200 and swapped.json()["num_documents"] == DOCS
        hits = client.post("/search", json={"query": "boundary layer heat transfer",
                                            "retriever": "dense", "k": 5})
        assert hits.status_code == 200 and len(hits.json()["hits"]) == 5
