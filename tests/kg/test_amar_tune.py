"""The Amar record's recipe from the CLI: ``sparsa train amar --val-questions / --init-head / --settings``,
``sparsa kg tune`` and ``sparsa kg eval --settings``, on a MetaQA-shaped folder cut from the real MetaQA
(every triple of nine movies, their 1-hop dev questions) with the real minilm-l6 and SmolLM2."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from sparsa.cli.main import main
from sparsa.kg.amar_tune import best_candidate, question_sets, split_dev
from sparsa.kg.kg import load_metaqa

torch = pytest.importorskip("torch")

MOVIES = ("Big", "Splash", "Cast Away", "Kismet", "Crime of Passion", "West of Zanzibar", "Sholay", "Darkman",
          "Bright Eyes")
DRAW = ["--hops", "1", "--questions", "8", "--val-questions", "6"]
CLOSED = {"gate_mode": "filter", "gate_threshold": 1.0, "min_open_paths": 0}  # no knowledge in the prompt
OPEN = {"gate_mode": "filter", "gate_threshold": 0.0, "min_open_paths": 1}  # every item, as text


@pytest.fixture(scope="module")
def metaqa(shared_data, tmp_path_factory) -> Path:
    """A MetaQA folder: kb_reconstructed.txt.gz and 1-hop/vanilla/qa_dev.txt.gz, cut to MOVIES."""
    folder = tmp_path_factory.mktemp("metaqa")
    with gzip.open(shared_data / "metaqa" / "kb_reconstructed.txt.gz", "rt") as f:
        triples = [line for line in f if line.split("|", 1)[0] in MOVIES]
    with gzip.open(folder / "kb_reconstructed.txt.gz", "wt") as f:
        f.write("".join(triples))
    with gzip.open(shared_data / "metaqa" / "1-hop" / "vanilla" / "qa_dev.txt.gz", "rt") as f:
        asked = [line for line in f if (m := re.search(r"\[(.+?)\]", line)) and m.group(1) in MOVIES]
    (folder / "1-hop" / "vanilla").mkdir(parents=True)
    with gzip.open(folder / "1-hop" / "vanilla" / "qa_dev.txt.gz", "wt") as f:
        f.write("".join(asked))
    assert len(asked) == 14
    return folder


@pytest.fixture(scope="module")
def stage1(metaqa, tmp_path_factory) -> Path:
    """Stage 1 (gates and alignment, no LM pass) on the 8 dev-train questions; 6 held out."""
    head = tmp_path_factory.mktemp("heads") / "stage1"
    _train(metaqa, head, "--gate-epochs", "2", "--gate-batch", "4", "--lm-steps", "0")
    return head


def _train(metaqa: Path, out: Path, *flags: str, draw: list[str] = DRAW) -> None:
    assert main(["-q", "train", "amar", "--data", str(metaqa), *draw, "--out", str(out), *flags]) == 0


def _run(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["-q", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def _head_state(head: Path) -> dict:
    return torch.load(head / "amar_head.pt", map_location="cpu")


def test_the_draw_is_the_records(shared_data):
    """split_dev draws what bench_amar.py's record trained and chose on: train + val questions with the seed,
    then a seed + 1 permutation whose first val are held out."""
    data = shared_data / "metaqa"
    sets = question_sets(data, None, None, [1, 2], "dev", 2000, 250, 0)
    for hop in (1, 2):
        dev = load_metaqa(data, hop, "dev", limit=2250, seed=0)
        order = np.random.default_rng(1).permutation(len(dev))
        assert [q.id for q in sets.val[f"{hop}-hop"]] == [dev[i].id for i in order[:250]]
        assert [q.id for q in sets.train[f"{hop}-hop"]] == [dev[i].id for i in order[250:]]
    assert sets.draw == {"hops": [1, 2], "split": "dev", "questions": 2000, "val_questions": 250, "seed": 0}
    # nothing held out: the subset in file order, as sparsa train amar always drew it
    drawn = load_metaqa(data, 1, "dev", limit=5, seed=0)
    assert split_dev(load_metaqa(data, 1, "dev"), 5, 0, 0) == (drawn, [])


def test_best_candidate_is_the_best_mean_first_on_ties():
    candidates = {"a": {"val": {"1-hop": 0.5, "2-hop": 0.25}}, "b": {"val": {"1-hop": 0.25, "2-hop": 0.75}},
                  "c": {"val": {"1-hop": 0.25, "2-hop": 0.5}}}
    assert best_candidate(candidates) == "b"  # mean 0.5 beats a's and c's, which tie
    del candidates["b"]
    assert best_candidate(candidates) == "a"


def test_init_head_starts_from_stage1_without_gate_epochs(metaqa, stage1, tmp_path):
    record = json.loads((stage1 / "training.json").read_text())
    assert record["gate_epochs"] == 2 and record["lm_steps"] == 0 and record["questions"] == 8
    assert record["draw"]["val_questions"] == 6 and record["init_head"] is None
    # --init-head with no answer steps: the stage-1 head as it was, no gate epoch run on it
    same = tmp_path / "same"
    _train(metaqa, same, "--init-head", str(stage1), "--lm-steps", "0")
    before, after = _head_state(stage1), _head_state(same)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((same / "training.json").read_text())["gate_epochs"] == 0
    # stage 2: LoRA adapters added to the stage-1 head, prompts built with the given settings
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(OPEN))
    stage2 = tmp_path / "stage2"
    _train(metaqa, stage2, "--init-head", str(stage1), "--settings", str(settings), "--lora-rank", "2",
           "--lm-steps", "1", "--lm-batch", "2")
    record = json.loads((stage2 / "training.json").read_text())
    assert record["gate_epochs"] == 0 and record["lm_steps"] == 1 and record["init_head"] == str(stage1)
    assert [h["stage"] for h in record["history"]] == ["answer"]  # no gate epoch in its history
    config = json.loads((stage2 / "amar_config.json").read_text())
    assert {k: config[k] for k in OPEN} == OPEN and config["lora_rank"] == 2
    trained = _head_state(stage2)
    assert any(k.startswith("lora.") for k in trained)
    assert all(k in trained for k in before) and not torch.equal(trained["gate.0.weight"],
                                                                 before["gate.0.weight"])


def test_tune_chooses_on_dev_val_and_eval_applies_the_choice(capsys, metaqa, stage1, tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps([CLOSED, OPEN]))
    tuned = tmp_path / "tuned.json"
    chosen = _run(capsys, "kg", "tune", "--data", str(metaqa), *DRAW, "--head", str(stage1), "--grid",
                  str(grid), "--out", str(tuned))
    record = json.loads(tuned.read_text())
    assert chosen == {k: record[k] for k in ("chosen", "head", "settings", "val")}
    assert len(record["candidates"]) == 2 and record["questions"] == {"1-hop": 6}
    scores = {c["settings"]["gate_threshold"]: c["val"]["1-hop"] for c in record["candidates"].values()}
    closed, open_ = scores[CLOSED["gate_threshold"]], scores[OPEN["gate_threshold"]]
    assert open_ > closed  # the graph's knowledge answers questions the LM alone cannot
    assert record["settings"] == OPEN and record["head"] == str(stage1) and record["val"] == {"1-hop": open_}

    # kg eval --settings: the chosen head under the chosen settings, on the same held-out questions
    val = tmp_path / "val.txt"
    val.write_text("".join(f"{q.text}\t{'|'.join(q.answers)}\n"
                           for q in question_sets(metaqa, None, None, [1], "dev", 8, 6, 0).val["1-hop"]))
    scored = _run(capsys, "kg", "eval", "--kg", str(metaqa / "kb_reconstructed.txt.gz"), "--qa", str(val),
                  "--settings", str(tuned))
    assert scored["head"] == str(stage1) and scored["settings"] == OPEN and scored["mode"] == "amar"
    assert scored["hits@1"] == open_

    # --from: another head, scored under the earlier choice only, joins the earlier candidates; a copy of
    # the chosen head ties with it, and the first candidate wins a tie
    copy = tmp_path / "copy"
    shutil.copytree(stage1, copy)
    again = tmp_path / "again.json"
    _run(capsys, "kg", "tune", "--data", str(metaqa), *DRAW, "--head", str(copy), "--from", str(tuned),
         "--out", str(again))
    record = json.loads(again.read_text())
    added = [c for c in record["candidates"].values() if c["head"] == str(copy)]
    assert len(record["candidates"]) == 3 and [c["settings"] for c in added] == [OPEN]
    assert added[0]["val"] == {"1-hop": open_} and record["head"] == str(stage1)


def test_tune_refuses_what_would_leak(capsys, metaqa, stage1, tmp_path):
    unheld = tmp_path / "unheld"
    _train(metaqa, unheld, "--gate-epochs", "0", "--lm-steps", "0", draw=["--hops", "1", "--questions", "8"])
    bad_grid = tmp_path / "grid.json"
    bad_grid.write_text('[{"gate_mode": "filter", "threshold": 0.5}]')
    cases = [
        (["kg", "tune", "--data", str(metaqa), *DRAW, "--head", str(unheld)], "dev-val is not held out"),
        (["kg", "tune", "--data", str(metaqa), "--hops", "1", "--questions", "7", "--val-questions", "6",
          "--head", str(stage1)], "questions 8 there, 7 here"),
        (["kg", "tune", "--data", str(metaqa), *DRAW, "--split", "test", "--head", str(stage1)],
         "refusing to train or choose settings on the test split"),
        (["kg", "tune", "--data", str(metaqa), *DRAW, "--head", str(stage1), "--grid", str(bad_grid)],
         f"{bad_grid}: settings must be an object with keys among"),
        (["kg", "tune", "--data", str(metaqa), *DRAW, "--head", str(tmp_path / "none")], "no amar_head.pt"),
        (["train", "amar", "--data", str(metaqa), "--hops", "1", "--questions", "1", "--val-questions", "20",
          "--out", str(tmp_path / "x")], "--val-questions 20 holds out all 14 questions drawn"),
        (["train", "amar", "--data", str(metaqa), *DRAW, "--init-head", str(stage1), "--model", "m",
          "--out", str(tmp_path / "x")], "--model and --init-head"),
    ]
    for argv, message in cases:
        assert main(["-q", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
