"""Fine-tuning the judge (``sparsa train judge``) on a few real TREC DL 2019 pairs with the real
SmolLM2-135M-Instruct: the loss goes down, the saved folder judges through ``RelevanceJudge``, and
bad inputs fail with clear errors before any model is loaded."""

from __future__ import annotations

import json

import pytest

from sparsa.cli.main import main

DL19 = "trec-dl-2019-passage"


def write_beir(folder, data, qids: list[str], per_query: int) -> None:
    """A BEIR-layout slice of DL 2019: ``per_query`` judged passages (mixed grades) of each query."""
    pairs = []
    for qid in qids:
        by_grade = sorted(data.qrels[qid].items(), key=lambda item: (-item[1], item[0]))
        pairs += [(qid, d, g) for d, g in by_grade[: per_query // 2] + by_grade[-(per_query - per_query // 2):]]
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, d, g in pairs))
    queries = {q.id: q for q in data.queries}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": queries[q].text}) + "\n"
                                                  for q in qids))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": data.corpus[d].text}) + "\n"
                                                 for d in sorted({d for _, d, _ in pairs})))


@pytest.fixture(scope="module")
def dl19_slice(tmp_path_factory):
    """Three real DL 2019 queries with four judged passages each (two of the highest grades, two of the lowest)."""
    from sparsa.config import load_settings
    from sparsa.data import load_dataset

    data = load_dataset(load_settings().data_dir / DL19)
    folder = tmp_path_factory.mktemp("dl19_train")
    write_beir(folder, data, sorted(data.qrels)[:3], per_query=4)
    return folder


def test_cli_errors_come_before_loading_a_model(capsys, dl19_slice, tmp_path):
    out = tmp_path / "judge"
    assert main(["train", "judge", "--dataset", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "dataset not found" in capsys.readouterr().err
    assert main(["train", "judge", "--dataset", str(dl19_slice), "--fit-queries", "1", "--out", str(out)]) == 2
    assert "4 labelled pairs in the first 1 queries; fine-tuning needs at least 8" in capsys.readouterr().err
    assert main(["train", "judge", "--dataset", str(dl19_slice), "--fit-queries", "3", "--out", str(out)]) == 2
    assert "--fit-queries must be between 1 and 2" in capsys.readouterr().err
    assert not out.exists()


def test_config_rejects_bad_values():
    from sparsa.rag.judge_train import JudgeTrainConfig, JudgeTrainer

    from sparsa.errors import ConfigError

    with pytest.raises(ConfigError, match="lr must be > 0"):
        JudgeTrainConfig(lr=0)
    with pytest.raises(ConfigError, match="never downloads from the hub"):
        JudgeTrainer(JudgeTrainConfig(model="someone/some-model"), device="cpu")


@pytest.mark.slow
def test_fine_tuned_judge_learns_and_loads_as_a_plain_model(dl19_slice, tmp_path):
    import math

    from sparsa.rag.calibration import argmax_grades
    from sparsa.rag.judge import JudgeConfig, RelevanceJudge
    from sparsa.rag.judge_train import JudgeTrainConfig, labelled_pairs, train_judge

    pairs, fit = labelled_pairs(dl19_slice, 2)
    assert len(pairs) == 8 and sorted({p.grade for p in pairs}) != [0]
    out = tmp_path / "judge"
    # one step on one batch of all 8 pairs: the epoch's loss is the loss before the update
    config = JudgeTrainConfig(epochs=1, lr=1e-5, batch_size=8, warmup_steps=0, max_passage_tokens=8)
    assert train_judge(pairs, out, config, device="cpu", data_description={"fit_queries": fit}) == out
    manifest = json.loads((out / "sparsa.json").read_text())
    assert manifest["kind"] == "judge-model" and manifest["base_model"] == "smollm2-135m-instruct"
    assert manifest["config"]["lr"] == 1e-5 and manifest["data"]["fit_queries"] == fit
    judge = RelevanceJudge(JudgeConfig(model=str(out), scorers=("umbrela",), max_passage_tokens=8))
    records = judge.score_pairs([(p.query, p.passage) for p in pairs])
    after = sum(-math.log(r["label_probs"][p.grade]) for r, p in zip(records, pairs, strict=True)) / len(pairs)
    assert after < manifest["epochs"][0]["loss"] - 0.05
    assert set(argmax_grades(records).tolist()) <= {0, 1, 2, 3}
    assert all(sum(r["label_probs"]) == pytest.approx(1.0, abs=1e-4) for r in records)
    assert judge.prompt(pairs[0].query, pairs[0].passage).endswith("##final score: ")
