"""Fine-tuning the judge (``sparsa train judge``) on a few real TREC DL 2019 pairs with the real
SmolLM2-135M-Instruct: the loss goes down, the saved folder judges through ``RelevanceJudge``, and
bad inputs fail with clear errors before any model is loaded."""

from __future__ import annotations

import json

import pytest

from sparsa.cli.main import main

DL19 = "trec-dl-2019-passage"
# Two topics of four hand-written passages each, for the --pairs runs.
TEXTS = {"how tall is mount fuji": ["Mount Fuji is 3,776 metres tall.", "Fuji is a volcano in Japan.",
                                    "Tokyo has many trains.", "Bread needs yeast."],
         "when was the eiffel tower built": ["The Eiffel Tower was completed in 1889.", "Paris is in France.",
                                             "The Louvre is a museum.", "Cats sleep a lot."]}


def judged_loss(model, pairs, max_passage_tokens: int):
    """The saved judge, its records for ``pairs`` and their mean -log p(gold grade) (the training loss,
    after training)."""
    import math

    from sparsa.judge.judge import JudgeConfig, RelevanceJudge

    judge = RelevanceJudge(JudgeConfig(model=str(model), scorers=("umbrela",),
                                       max_passage_tokens=max_passage_tokens))
    records = judge.score_pairs([(p.query, p.passage) for p in pairs])
    loss = sum(-math.log(r["label_probs"][p.grade]) for r, p in zip(records, pairs, strict=True)) / len(pairs)
    return judge, records, loss


def write_beir(folder, data, qids: list[str], per_query: int) -> None:
    """A BEIR-layout slice of DL 2019: ``per_query`` judged passages (mixed grades) of each query."""
    pairs = []
    for qid in qids:
        by_grade = sorted(data.qrels[qid].items(), key=lambda item: (-item[1], item[0]))
        pairs += [(qid, d, g) for d, g in by_grade[: per_query // 2]
                  + by_grade[-(per_query - per_query // 2):]]
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
    """Three real DL 2019 queries with four judged passages each (two of the highest grades,
    two of the lowest)."""
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
    assert (main(["train", "judge", "--dataset", str(dl19_slice), "--fit-queries", "1", "--out", str(out)])
            == 2)
    assert "4 labelled pairs in the first 1 queries; fine-tuning needs at least 8" in capsys.readouterr().err
    assert (main(["train", "judge", "--dataset", str(dl19_slice), "--fit-queries", "3", "--out", str(out)])
            == 2)
    assert "--fit-queries must be between 1 and 2" in capsys.readouterr().err
    assert not out.exists()


def test_config_rejects_bad_values():
    from sparsa.errors import ConfigError
    from sparsa.judge.train import JudgeTrainConfig, JudgeTrainer

    with pytest.raises(ConfigError, match="lr must be > 0"):
        JudgeTrainConfig(lr=0)
    with pytest.raises(ConfigError, match="never downloads from the hub"):
        JudgeTrainer(JudgeTrainConfig(model="someone/some-model"), device="cpu")


@pytest.mark.slow
def test_fine_tuned_judge_learns_and_loads_as_a_plain_model(dl19_slice, tmp_path):
    from sparsa.judge.calibration import argmax_grades
    from sparsa.judge.train import JudgeTrainConfig, labelled_pairs, train_judge

    pairs, fit = labelled_pairs(dl19_slice, 2)
    assert len(pairs) == 8 and sorted({p.grade for p in pairs}) != [0]
    out = tmp_path / "judge"
    # one step on one batch of all 8 pairs: the epoch's loss is the loss before the update
    config = JudgeTrainConfig(epochs=1, lr=1e-5, batch_size=8, warmup_steps=0, max_passage_tokens=8)
    assert train_judge(pairs, out, config, device="cpu", data_description={"fit_queries": fit}) == out
    manifest = json.loads((out / "sparsa.json").read_text())
    assert manifest["kind"] == "judge-model" and manifest["base_model"] == "smollm2-135m-instruct"
    assert manifest["config"]["lr"] == 1e-5 and manifest["data"]["fit_queries"] == fit
    judge, records, after = judged_loss(out, pairs, 8)
    assert after < manifest["epochs"][0]["loss"] - 0.05
    assert set(argmax_grades(records).tolist()) <= {0, 1, 2, 3}
    assert all(sum(r["label_probs"]) == pytest.approx(1.0, abs=1e-4) for r in records)
    assert judge.prompt(pairs[0].query, pairs[0].passage).endswith("##final score: ")


def pairs_file(tmp_path, lines: list[str], name: str = "pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"query": "how tall is mount fuji", "passage": "Mount Fuji is 3,776 metres tall.",
                   "grade": 3})


def test_pairs_file_round_trip_and_default_ids(tmp_path):
    from sparsa.judge.train import describe_pairs, read_labelled_pairs, write_labelled_pairs

    path = pairs_file(tmp_path, [
        GOOD,
        json.dumps({"query": "how tall is mount fuji", "passage": "Fuji is in Japan.",
                    "grade": 1, "doc_id": 7}),
        "",  # blank lines are skipped, not errors
        json.dumps({"query": "eiffel tower year", "passage": "Completed in 1889.", "grade": 2,
                    "query_id": "q9", "title": "Eiffel Tower", "source": "hand"}),
    ])
    pairs = read_labelled_pairs(path)
    assert [(p.query.id, p.passage.id, p.grade) for p in pairs] == [("line1", "line1", 3), ("line1", "7", 1),
                                                                   ("q9", "line4", 2)]
    assert (pairs[2].passage.full_text == "Eiffel Tower Completed in 1889."
            and pairs[2].passage.meta == {"source": "hand"})
    write_labelled_pairs(pairs, tmp_path / "copy.jsonl.gz")
    assert read_labelled_pairs(tmp_path / "copy.jsonl.gz") == pairs
    assert describe_pairs(pairs) == {"pairs": 3, "queries": 2, "grades": {1: 1, 2: 1, 3: 1},
                                     "sources": {"-": {"pairs": 2, "grades": {1: 1, 3: 1}},
                                                 "hand": {"pairs": 1, "grades": {2: 1}}}}


@pytest.mark.parametrize(("line", "message"), [
    ('{"query": "q", "passage": "p", "grade": 1', "invalid JSON"),
    ('["q", "p", 1]', "expected a JSON object"),
    ('{"query": "q", "passage": "p"}', "'grade' must be an integer 0-3"),
    ('{"query": "q", "passage": "p", "grade": 4}',
     "'grade' must be an integer 0-3 (the judge's scale), got 4"),
    ('{"query": "q", "passage": "p", "grade": "2"}', "got '2'"),
    ('{"query": "q", "passage": "p", "grade": true}', "got True"),
    ('{"query": "q", "passage": " ", "grade": 1}', "'passage' must be a non-empty string"),
    ('{"query": "q", "passage": "p", "grade": 1, "label": 1}', "unknown field(s) 'label'"),
    ('{"query": "q", "passage": "p", "grade": 1, "title": 5}', "'title' must be a string"),
])
def test_bad_pairs_lines_name_file_and_line(tmp_path, line, message):
    from sparsa.errors import DataFormatError
    from sparsa.judge.train import read_labelled_pairs

    path = pairs_file(tmp_path, [GOOD, line])
    with pytest.raises(DataFormatError) as caught:
        read_labelled_pairs(path)
    assert str(caught.value).startswith(f"{path}:2: ") and message in str(caught.value)


def test_cli_pairs_errors_come_before_loading_a_model(capsys, dl19_slice, tmp_path):
    out = tmp_path / "judge"
    bad = pairs_file(tmp_path, [GOOD, GOOD, '{"query": "q", "passage": "p", "grade": 5}'])
    cases = [
        (["--pairs", str(bad)], f"{bad}:3: 'grade' must be an integer 0-3"),
        (["--pairs", str(tmp_path / "none.jsonl")], "none.jsonl: file not found"),
        (["--pairs", str(pairs_file(tmp_path, [""], "empty.jsonl"))], "no labelled pairs in file"),
        (["--pairs", str(pairs_file(tmp_path, [GOOD] * 3, "few.jsonl"))],
         "3 labelled pairs; fine-tuning needs"),
        (["--pairs", str(bad), "--dataset", str(dl19_slice)], "--dataset (graded qrels"),
        ([], "or --pairs FILE, not both"),
    ]
    for argv, message in cases:
        assert main(["train", "judge", "--out", str(out), *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not out.exists()


@pytest.mark.slow
def test_cli_trains_on_a_pairs_file(capsys, tmp_path):
    """``sparsa train judge --pairs``: eight hand-written pairs of two topics, one step on CPU; the saved
    folder records where its data came from and judges through RelevanceJudge with a lower loss."""
    from sparsa.judge.train import read_labelled_pairs

    grades = (3, 1, 0, 0)  # skewed, as real pools: one step can learn the prior (uniform grades would not)
    path = pairs_file(tmp_path, [json.dumps({"query": q, "passage": p, "grade": g, "source": "hand"})
                                 for q, passages in TEXTS.items()
                                 for p, g in zip(passages, grades, strict=True)])
    out = tmp_path / "judge"
    # one step after warm-up of 10: the rate is lr / 11
    argv = ["train", "judge", "--pairs", str(path), "--out", str(out), "--batch-size", "8", "--lr", "1e-4",
            "--max-passage-tokens", "16", "--device", "cpu"]
    assert main(argv) == 0
    assert f"8 labelled pairs (2 queries) from {path}" in capsys.readouterr().err
    manifest = json.loads((out / "sparsa.json").read_text())
    assert manifest["data"]["pairs_file"] == str(path) and manifest["data"]["sources"]["hand"]["pairs"] == 8
    *_, after = judged_loss(out, read_labelled_pairs(path), 16)
    assert after < manifest["epochs"][0]["loss"] - 0.05


@pytest.mark.slow
def test_cli_lora_judge_saves_a_plain_model(tmp_path):
    """``--lora-rank``: peft adapters on the attention projections, merged before saving, so the folder is a
    plain causal LM (no adapter weights) that judges through RelevanceJudge with a lower loss."""
    from safetensors import safe_open

    from sparsa.judge.train import read_labelled_pairs

    path = pairs_file(tmp_path, [json.dumps({"query": q, "passage": p, "grade": g})
                                 for q, passages in TEXTS.items()
                                 for p, g in zip(passages, (3, 1, 0, 0), strict=True)])
    out = tmp_path / "judge"
    # one step after the warm-up of 10 (rate lr / 11), on the adapters only
    argv = ["train", "judge", "--pairs", str(path), "--out", str(out), "--batch-size", "8", "--lr", "1e-3",
            "--lora-rank", "4", "--max-passage-tokens", "16", "--device", "cpu"]
    assert main(argv) == 0
    manifest = json.loads((out / "sparsa.json").read_text())
    assert manifest["config"]["lora_rank"] == 4
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        names = weights.keys()
    assert names and not [k for k in names if "lora" in k or "base_layer" in k]
    *_, after = judged_loss(out, read_labelled_pairs(path), 16)
    assert after < manifest["epochs"][0]["loss"] - 0.05
