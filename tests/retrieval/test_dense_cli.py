"""The dense CLI paths end to end on a tiny BEIR folder with the real minilm-l6: train,
index, search, fuse."""

from __future__ import annotations

import json

import pytest

from sparsa.cli.main import main
from sparsa.types import Run

ABSTRACTS = [
    ("Vitamin D and bone",
     "Vitamin D regulates calcium. Deficiency weakens bone. Trials showed gains in density."),
    ("Sleep and memory", "Sleep consolidates memory. Deprivation impairs recall. Naps help young adults."),
    ("Statins and the heart",
     "Statins lower cholesterol. They reduce infarction risk. Muscle pain is common."),
    ("Gut microbes", "Microbes digest fibre. They make short chain fatty acids. Diet shapes them quickly."),
    ("Malaria vaccines", "A vaccine targets the parasite. Efficacy was modest. Boosters raised protection."),
    ("Exercise and mood", "Exercise lifts mood. Running releases endorphins. Effects last for hours."),
]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": t, "text": x}) + "\n" for i, (t, x) in enumerate(ABSTRACTS)))
    queries = ["vitamin D deficiency and bone density", "does sleep help memory", "statins and heart attacks",
               "fibre and gut bacteria"]
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": q}) + "\n"
                                                  for i, q in enumerate(queries)))
    (folder / "qrels").mkdir()
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(4)))
    return folder


def test_dense_cli_errors_before_any_work(tmp_path, tiny_dataset, capsys):
    assert main(["fuse", "--run", str(tmp_path / "a.trec"), "--out", str(tmp_path / "f.trec")]) == 2
    assert main(["index", "--kind", "dense", "--faiss", "annoy", "--dataset", str(tiny_dataset),
                 "--out", str(tmp_path / "i")]) == 2
    assert "annoy" in capsys.readouterr().err
    assert main(["train", "dense", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "m"),
                 "--fine-tune-split", "test"]) == 2
    assert main(["train", "dense", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "m"), "--task",
                 "cloze"]) == 2


@pytest.mark.slow
def test_train_index_search_fuse(tmp_path, tiny_dataset, capsys):
    pytest.importorskip("faiss", reason="needs the 'faiss' extra")
    model = tmp_path / "model"
    assert main(["-q", "train", "dense", "--dataset", str(tiny_dataset), "--task", "ict", "--steps", "2",
                 "--batch-size", "4", "--max-passage-length", "32", "--fine-tune-split", "train",
                 "--fine-tune-steps", "1", "--device", "cpu", "--out", str(model)]) == 0
    record = json.loads((model / "sparsa.json").read_text())
    assert record["kind"] == "dense-model" and record["stages"][0]["stage"] == "fine-tune"
    assert (model / "modules.json").is_file() and (model / "1_Pooling" / "config.json").is_file()

    index = tmp_path / "index"
    assert main(["-q", "index", "--kind", "dense", "--model", str(model), "--faiss", "hnsw",
                 "--device", "cpu", "--dataset", str(tiny_dataset), "--out", str(index)]) == 0
    assert json.loads((index / "sparsa.json").read_text())["config"]["structure"] == "hnsw"
    dense_run, bm_run, fused = tmp_path / "dense.trec", tmp_path / "other.trec", tmp_path / "fused.trec"
    assert main(["-q", "search", "--index", str(index), "--dataset", str(tiny_dataset), "--split", "train",
                 "--k", "3", "--out", str(dense_run)]) == 0
    run = Run.read_trec(dense_run)
    assert len(run) == 4 and all(len(h) == 3 for h in run.values())
    assert sum(run[f"q{i}"][0].doc_id == f"d{i}" for i in range(4)) >= 3
    bm_run.write_text("q0 Q0 d5 1 9.0 other\nq0 Q0 d0 2 8.0 other\n")
    assert main(["fuse", "--run", str(dense_run), "--run", str(bm_run), "--method", "interp",
                 "--normalisation", "zscore", "--weight", "1", "--weight", "0.5", "--out", str(fused)]) == 0
    assert Run.read_trec(fused)["q0"][0].doc_id == "d0"
