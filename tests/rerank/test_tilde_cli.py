"""TILDEv2 from the CLI alone, on a small real SciFact dataset (BEIR layout: 16 train and 5 test queries,
their relevant abstracts and 40 others): 'sparsa train tilde', 'sparsa train tildev2' (BM25 negatives
from 'sparsa index'), 'sparsa rerank-store' (resumable, atomic) and 'sparsa rerank --rerank-model'."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sparsa.cli.main import main
from tests.conftest import needs_java


@pytest.fixture(scope="module")
def mini_scifact(shared_data, tmp_path_factory):
    from sparsa.data import load_dataset

    train = load_dataset(shared_data / "scifact", "train")
    test = load_dataset(shared_data / "scifact", "test")
    chosen = {"train": sorted(train.queries, key=lambda q: int(q.id))[:16],
              "test": sorted(test.queries, key=lambda q: int(q.id))[:5]}
    qrels = {"train": train.qrels, "test": test.qrels}
    wanted = sorted({d for split, qs in chosen.items() for q in qs for d in qrels[split][q.id]})
    docs = [test.corpus[d] for d in wanted]
    docs += [d for d in test.corpus.documents[:80] if d.id not in wanted][:40]
    folder = tmp_path_factory.mktemp("mini") / "scifact-mini"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q.id, "text": q.text}) + "\n" for qs in chosen.values() for q in qs))
    for split, qs in chosen.items():
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"{q.id}\t{d}\t{g}\n" for q in qs for d, g in sorted(qrels[split][q.id].items())))
    return folder


@pytest.fixture(scope="module")
def trained(mini_scifact, tmp_path_factory):
    """(TILDE folder, TILDEv2 folder, BM25 index), each made by the CLI."""
    needs_java()
    work = tmp_path_factory.mktemp("tilde")
    bm25, tilde, tildev2 = work / "bm25", work / "tilde", work / "tildev2"
    assert main(["-q", "index", "--dataset", str(mini_scifact), "--out", str(bm25), "--threads", "1"]) == 0
    assert main(["-q", "train", "tilde", "--dataset", str(mini_scifact), "--out", str(tilde), "--steps", "3",
                 "--batch-size", "4", "--max-passage-tokens", "64", "--expansion-terms", "8",
                 "--device", "cpu"]) == 0
    assert main(["-q", "train", "tildev2", "--dataset", str(mini_scifact), "--first-stage", str(bm25),
                 "--expander", str(tilde), "--out", str(tildev2), "--steps", "3", "--batch-size", "2",
                 "--negatives", "3", "--max-passage-tokens", "64", "--device", "cpu"]) == 0
    return tilde, tildev2, bm25


def test_train_tilde_and_tildev2_from_the_cli(trained):
    tilde, tildev2, _ = trained
    tilde_record = json.loads((tilde / "sparsa.json").read_text())
    record = json.loads((tildev2 / "sparsa.json").read_text())
    assert tilde_record["kind"] == "tilde-expansion-model" and tilde_record["training"]["steps"] == 3
    assert tilde_record["training"]["data"]["title_body_pairs"] > 0
    assert record["kind"] == "tildev2-model" and record["training"]["expander"] == str(tilde)
    assert record["training"]["examples"] >= 16 and record["training"]["data"]["split"] == "train"



def test_train_tildev2_is_the_same_model_whatever_ran_before(trained, mini_scifact, tmp_path):
    """The fresh head is seeded (--seed, default 13): a run after other work has drawn from torch's global
    generator (as the bench's does, after training TILDE) writes the same weights; another seed does not."""
    import torch

    tilde, tildev2, bm25 = trained
    argv = ["-q", "train", "tildev2", "--dataset", str(mini_scifact), "--first-stage", str(bm25),
            "--expander", str(tilde), "--steps", "3", "--batch-size", "2", "--negatives", "3",
            "--max-passage-tokens", "64", "--device", "cpu"]
    torch.rand(1000)
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert main([*argv, "--out", str(tmp_path / "other"), "--seed", "14"]) == 0

    def weights(folder):
        files = json.loads((folder / "sparsa.json").read_text())["files"]
        return files["model.safetensors"]["sha256"], files["tildev2_head.pt"]["sha256"]

    assert weights(tmp_path / "again") == weights(tildev2)
    assert weights(tmp_path / "other")[1] != weights(tildev2)[1]

def test_store_from_the_cli_reranks_like_the_library(trained, mini_scifact, tmp_path, capsys):
    from sparsa.data import load_dataset
    from sparsa.rerank import TildeV2Reranker
    from sparsa.types import Run

    tilde, tildev2, bm25 = trained
    store = tmp_path / "store"
    assert main(["-q", "rerank-store", "--dataset", str(mini_scifact), "--model", str(tildev2), "--out",
                 str(store), "--device", "cpu"]) == 0
    manifest = json.loads((store / "sparsa.json").read_text())
    assert manifest["expander"]["path"] == str(tilde)  # the expander TILDEv2 was trained with
    passages = len((mini_scifact / "corpus.jsonl").read_text().splitlines())
    assert manifest["num_passages"] == passages and manifest["corpus"]["name"] == "scifact-mini"
    assert main(["-q", "rerank-store", "--dataset", str(mini_scifact), "--model", str(tildev2), "--out",
                 str(store)]) == 2
    assert "a store already exists" in capsys.readouterr().err
    run, reranked = tmp_path / "bm25.trec", tmp_path / "tildev2.trec"
    assert main(["-q", "search", "--index", str(bm25), "--dataset", str(mini_scifact), "--k", "20", "--out",
                 str(run)]) == 0
    assert main(["-q", "rerank", "--run", str(run), "--dataset", str(mini_scifact), "--reranker", "tildev2",
                 "--rerank-model", str(store), "--top-k", "10", "--out", str(reranked)]) == 0
    data = load_dataset(mini_scifact, "test")
    first, written, reranker = Run.read_trec(run), Run.read_trec(reranked), TildeV2Reranker.open(store)
    for q in data.queries:
        expected = reranker.rerank(q, [data.corpus[h.doc_id] for h in first[q.id][:10]])
        assert [h.doc_id for h in written[q.id]] == [h.doc_id for h in expected]


def test_the_service_reranks_with_the_store(trained, mini_scifact, tmp_path):
    """'sparsa serve --reranker tildev2 --reranker-model STORE' (its ServiceConfig): /rerank by document ids
    and /search with rerank order the passages as the library reranker does."""
    pytest.importorskip("fastapi", reason="needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from sparsa.api import ServiceConfig, ServiceState, create_app
    from sparsa.data import load_dataset
    from sparsa.rerank import TildeV2Reranker

    _, tildev2, bm25 = trained
    store = tmp_path / "store"
    assert main(["-q", "rerank-store", "--dataset", str(mini_scifact), "--model", str(tildev2), "--out",
                 str(store), "--device", "cpu"]) == 0
    config = ServiceConfig(indexes={"bm25": bm25}, dataset=mini_scifact, reranker="tildev2",
                           reranker_model=str(store), index_root=tmp_path, data_dir=mini_scifact.parent)
    state = ServiceState(config).load(strict=True)
    data, library = load_dataset(mini_scifact, "test"), TildeV2Reranker.open(store)
    query = data.queries[0]
    with TestClient(create_app(config, state), raise_server_exceptions=False) as client:
        assert client.get("/health").json()["reranker"] == "tildev2"
        candidates = [d.id for d in data.corpus.documents[:12]]
        answered = client.post("/rerank", json={"query": query.text, "doc_ids": candidates})
        assert answered.status_code == 200, answered.text
        expected = library.rerank(query, [data.corpus[d] for d in candidates])
        assert [h["doc_id"] for h in answered.json()["hits"]] == [h.doc_id for h in expected]
        plain = client.post("/search", json={"query": query.text, "retriever": "bm25", "k": 10}).json()
        reranked = client.post("/search", json={"query": query.text, "retriever": "bm25", "k": 10,
                                                "rerank": True, "rerank_depth": 10})
        assert reranked.status_code == 200 and reranked.json()["reranked"] is True, reranked.text
        expected = library.rerank(query, [data.corpus[h["doc_id"]] for h in plain["hits"]])
        assert [h["doc_id"] for h in reranked.json()["hits"]] == [h.doc_id for h in expected]
        # a passage the store does not hold: a one-line 400, not a 500
        free = client.post("/rerank", json={"query": query.text, "passages": [{"text": "any new text"}]})
        assert free.status_code == 400 and "not in the TILDEv2 store" in free.json()["detail"], free.text


@contextlib.contextmanager
def _records(name: str):
    """The messages one logger writes inside the block (at INFO, even under -q), and only to this list."""
    said: list[str] = []
    logger = logging.getLogger(name)
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield said
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def test_a_killed_store_build_resumes_from_its_shards(trained, mini_scifact, tmp_path):
    """A store job killed (SIGKILL) after two of its 8-passage shards leaves the old store alone and its
    shards behind; the rerun reuses them and writes the same store as an uninterrupted build."""
    _, tildev2, _ = trained
    argv = ["rerank-store", "--dataset", str(mini_scifact), "--model", str(tildev2), "--device", "cpu",
            "--batch-size", "1", "--shard-size", "8"]
    whole, store = tmp_path / "whole", tmp_path / "store"
    assert main(["-q", *argv, "--out", str(whole)]) == 0
    shards = tmp_path / ".store.building" / "shards"
    job = subprocess.Popen([sys.executable, "-m", "sparsa", "-q", *argv, "--out", str(store)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not (shards / "000001").is_dir() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not store.exists(), "the job finished before it could be killed"
    done = sorted(p.name for p in shards.iterdir() if not p.name.startswith("."))
    passages = len((mini_scifact / "corpus.jsonl").read_text().splitlines())
    assert 2 <= len(done) < -(-passages // 8)
    with _records("sparsa.artifacts") as said:
        assert main(["-q", *argv, "--out", str(store)]) == 0
    assert any("resuming the interrupted build" in line for line in said)
    assert not (tmp_path / ".store.building").exists()
    for name in ("token_ids", "weights", "offsets"):
        assert np.array_equal(np.load(store / f"{name}.npy"), np.load(whole / f"{name}.npy")), name
    assert (store / "doc_ids.json").read_text() == (whole / "doc_ids.json").read_text()


def test_tilde_cli_errors(mini_scifact, tmp_path, capsys):
    cases = [(["train", "tilde", "--dataset", str(mini_scifact), "--out", str(tmp_path / "t"), "--split",
               "test"], "refusing to train on the test split"),
             (["train", "tildev2", "--out", str(tmp_path / "t2")], "--first-stage"),
             (["rerank-store", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "s")],
              "exactly one of --dataset or --corpus"),
             (["rerank-store", "--dataset", str(mini_scifact), "--model", str(tmp_path / "none"), "--out",
               str(tmp_path / "s")], "not a sparsa index or artifact")]
    for argv, message in cases:
        assert main(["-q", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
