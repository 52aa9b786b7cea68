"""Index identity (issue 26, items 2, 3 and 7): manifests record their corpus; the service refuses an
index of another corpus at load, on swap and on /qa (409 with the reason) and serves an index built
before identities with a warning; builds never overwrite a served index and refuse an existing name
unless asked to replace; a manifest may only name files inside its folder."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from sparsa.types import Corpus
from tests.api.conftest import API_KEY, DOCS, service_config
from tests.conftest import data_dir

pytestmark = pytest.mark.java
KEY = {"X-API-Key": API_KEY}
QUERY = "flow past a flat plate"


@pytest.fixture(scope="module")
def other_index(tmp_path_factory) -> Path:
    """A BM25 index of other documents (the next 50 of the full Cranfield), also named 'cranfield'."""
    from sparsa.data import load_corpus
    from sparsa.indexes import build_index

    corpus = Corpus(load_corpus(data_dir() / "cranfield").documents[DOCS : DOCS + 50])
    root = tmp_path_factory.mktemp("other")
    return build_index("bm25", corpus, root / "other", show_progress=False, corpus_name="cranfield")


def strip_corpus(index: Path) -> None:
    """Make ``index`` look built before manifests recorded their corpus."""
    manifest = json.loads((index / "sparsa.json").read_text())
    del manifest["corpus"]
    (index / "sparsa.json").write_text(json.dumps(manifest))


def app_client(root: Path, shared_data: Path, **changes):
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceState, create_app

    config = service_config(root, shared_data, **{"indexes": {"bm25": root / "bm25"}, **changes})
    state = ServiceState(config).load(strict=True)
    return TestClient(create_app(state.config, state), raise_server_exceptions=False), state


def test_the_manifest_records_its_corpus(index_root, cranfield):
    from sparsa.artifacts import read_manifest

    ids = sorted(d.id for d in cranfield.corpus.documents)
    expected = {"name": "cranfield", "documents": DOCS,
                "doc_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    for kind in ("bm25", "splade", "dense"):
        assert read_manifest(index_root / kind)["corpus"] == expected


def test_an_index_of_another_corpus_is_refused_at_load(spare_index, shared_data, other_index, capsys):
    from sparsa.api import ServiceState
    from sparsa.api.identity import IndexMismatchError
    from sparsa.cli.main import main

    shutil.copytree(other_index, spare_index / "other")
    config = service_config(spare_index, shared_data, indexes={"bm25": spare_index / "other"})
    digest = json.loads((other_index / "sparsa.json").read_text())["corpus"]["doc_ids_sha256"]
    reason = ("index other refused for bm25: the index was built from 'cranfield' (50 documents, ids sha256 "
              f"{digest[:12]}), but this server serves the corpus 'cranfield' (120 documents")
    with pytest.raises(IndexMismatchError) as refused:
        ServiceState(config).load(strict=True)
    assert str(refused.value).startswith(reason)
    lenient = ServiceState(config).load()
    assert not lenient.ready and "bm25" not in lenient.indexes
    assert lenient.health()["problems"][0].startswith(f"index identity: {reason}")
    code = main(["serve", "--bm25", str(spare_index / "other"), "--splade", "none", "--dataset",
                 str(shared_data / "cranfield"), "--qa-model", "none", "--port", "8998"])
    assert code == 2 and reason in capsys.readouterr().err.replace("\n", "")


def test_a_swap_to_another_corpus_is_409_and_the_old_index_keeps_serving(spare_index, shared_data,
                                                                          other_index):
    shutil.copytree(other_index, spare_index / "other")
    client, _ = app_client(spare_index, shared_data)
    with client:
        before = client.post("/search", json={"query": QUERY, "k": 3}).json()["hits"]
        refused = client.post("/indexes/swap", headers=KEY, json={"retriever": "bm25", "name": "other"})
        assert refused.status_code == 409
        assert refused.json()["detail"].startswith("index other refused for bm25: the index was built from "
                                                   "'cranfield' (50 documents")
        assert client.post("/search", json={"query": QUERY, "k": 3}).json()["hits"] == before
        listed = client.get("/indexes", headers=KEY).json()
        assert listed["loaded"][0]["corpus"]["documents"] == DOCS
        assert {s["name"]: s["corpus"]["documents"] for s in listed["stored"]} == {"bm25": DOCS, "other": 50}


def test_an_old_manifest_is_served_with_a_warning_and_foreign_hits_are_409(spare_index, shared_data,
                                                                           other_index):
    strip_corpus(spare_index / "bm25")
    shutil.copytree(other_index, spare_index / "old-other")
    strip_corpus(spare_index / "old-other")
    client, _ = app_client(spare_index, shared_data)
    with client:
        health = client.get("/health").json()
        assert health["ready"] is True
        assert health["warnings"] == [("index bm25 (bm25) records no corpus (built before sparsa recorded "
                                       "one): served unchecked; rebuild it")]
        assert client.post("/search", json={"query": QUERY, "k": 3}).status_code == 200  # its hits are ours
        swapped = client.post("/indexes/swap", headers=KEY, json={"retriever": "bm25", "name": "old-other"})
        assert swapped.status_code == 200 and swapped.json()["corpus"] is None
        foreign = client.post("/search", json={"query": QUERY, "k": 3})
        assert foreign.status_code == 409
        assert foreign.json()["detail"].startswith(
            "the bm25 index returned 3 document id(s) the served corpus lacks (e.g. '")


@pytest.mark.slow
def test_qa_refuses_an_index_of_another_corpus(spare_index, shared_data, other_index):
    """/qa over an old-manifest index of another collection: 409 with the reason, not 400."""
    pytest.importorskip("sparsa.rag.pipeline", reason="the QA pipeline is not in this checkout")
    shutil.copytree(other_index, spare_index / "old-other")
    strip_corpus(spare_index / "old-other")
    client, _ = app_client(spare_index, shared_data, indexes={"bm25": spare_index / "old-other"},
                           qa_model="smollm2-135m-instruct")
    with client:
        response = client.post("/qa", json={"question": "what is a boundary layer?", "mode": "retrieve"})
    assert response.status_code == 409
    assert response.json()["detail"].startswith("/qa refused: the index returned")


def test_library_and_cli_builds_refuse_an_existing_or_served_index(spare_index, shared_data, cranfield,
                                                                   capsys):
    from sparsa.api import ServiceState
    from sparsa.artifacts import read_manifest
    from sparsa.cli.main import main
    from sparsa.errors import ConfigError
    from sparsa.indexes import build_index_job

    copy = spare_index / "bm25-copy"
    shutil.copytree(spare_index / "bm25", copy)
    with pytest.raises(ConfigError, match="an index already exists at .*; pass replace=True"):
        build_index_job("bm25", cranfield.corpus, copy, threads=1)
    assert main(["index", "--dataset", str(shared_data / "cranfield"), "--out", str(copy)]) == 2
    assert "sparsa index --replace" in capsys.readouterr().err
    assert main(["-q", "index", "--dataset", str(shared_data / "cranfield"), "--out", str(copy), "--replace",
                 "--threads", "1"]) == 0
    assert read_manifest(copy)["corpus"]["name"] == "cranfield"
    ServiceState(service_config(spare_index, shared_data, indexes={"bm25": copy})).load(strict=True)
    with pytest.raises(ConfigError, match="bm25-copy is being served .*build under a new name and swap"):
        build_index_job("bm25", cranfield.corpus, copy, threads=1, replace=True)
    assert read_manifest(copy, verify="sha256")["corpus"]["documents"] == DOCS  # untouched


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_api_builds_never_overwrite_the_served_index_and_replace_only_when_asked(spare_index, shared_data):
    shutil.copytree(spare_index / "bm25", spare_index / "bm25-copy")
    client, _ = app_client(spare_index, shared_data)
    with client:
        served = client.post("/indexes/build", headers=KEY,
                             json={"name": "bm25", "dataset": "cranfield", "replace": True})
        assert served.status_code == 409
        assert served.json()["detail"].startswith("index 'bm25' is being served; it is never rebuilt in "
                                                  "place")
        exists = client.post("/indexes/build", headers=KEY,
                             json={"name": "bm25-copy", "dataset": "cranfield"})
        assert exists.status_code == 409
        assert exists.json()["detail"] == ("an index named 'bm25-copy' exists; send \"replace\": true to "
                                           "replace it")
        job = client.post("/indexes/build", headers=KEY,
                          json={"name": "bm25-copy", "dataset": "cranfield", "replace": True})
        assert job.status_code == 202 and job.json()["replace"] is True
        status = lambda: client.get(f"/indexes/jobs/{job.json()['id']}", headers=KEY).json()
        assert _wait(lambda: status()["state"] != "running", 240), status()
        assert status()["state"] == "succeeded", status()
        swapped = client.post("/indexes/swap", headers=KEY, json={"retriever": "bm25", "name": "bm25-copy"})
        assert swapped.status_code == 200 and swapped.json()["corpus"]["name"] == "cranfield"


def test_a_manifest_names_only_files_inside_its_folder(spare_index, shared_data, tmp_path):
    """A crafted manifest cannot make the server look at other paths (or tell whether they exist)."""
    from sparsa.artifacts import read_manifest
    from sparsa.errors import IndexCorruptError

    outside = tmp_path / "secret"
    outside.write_text("x")
    details = {}
    client, _ = app_client(spare_index, shared_data)
    with client:
        cases = [("up", "../../secret"), ("absolute", str(outside)), ("missing", "../../no-such-file"),
                 ("link", "lucene-link")]
        for name, rel in cases:
            crafted = spare_index / f"crafted-{name}"
            shutil.copytree(spare_index / "bm25", crafted)
            if name == "link":
                (crafted / "lucene-link").symlink_to(outside)
            manifest = json.loads((crafted / "sparsa.json").read_text())
            manifest["files"][rel] = {"bytes": 1, "sha256": "0" * 64}
            (crafted / "sparsa.json").write_text(json.dumps(manifest))
            with pytest.raises(IndexCorruptError, match="the manifest names a file outside its folder"):
                read_manifest(crafted, verify="none")
            swap = client.post("/indexes/swap", headers=KEY, json={"retriever": "bm25", "name": crafted.name})
            assert swap.status_code == 409
            details[name] = swap.json()["detail"].replace(crafted.name, "X").replace(repr(rel), "R")
    assert len(set(details.values())) == 1, details  # same answer whether the outside file exists or not
    assert "outside its folder" in details["up"]
