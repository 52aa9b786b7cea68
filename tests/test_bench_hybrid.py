"""bench/bench_hybrid.py's choice on a tiny fixture: the hybrid is chosen by dev scores alone (a system
that is perfect on test but useless on dev stays out), and the record's test figures are what
``sparsa fuse`` + ``sparsa eval`` give for that one choice. The script runs as a subprocess, as the lead
runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sparsa.cli.main import main

REPO = Path(__file__).resolve().parents[1]


def write_run(path: Path, lists: dict[str, list[str]]) -> None:
    path.write_text("".join(f"{q} Q0 {d} {rank} {10 - rank} x\n"
                            for q, docs in lists.items() for rank, d in enumerate(docs, start=1)))


def test_choice_uses_dev_only(tmp_path):
    data, runs = tmp_path / "toy", tmp_path / "work" / "runs"
    (data / "qrels").mkdir(parents=True)
    runs.mkdir(parents=True)
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tr1\t1\nq2\tr2\t1\n")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nt1\ts1\t1\nt2\ts2\t1\n")
    # dev: a and b each find one query's document first and the other's third, so a + b finds both first;
    # c finds nothing. test: the reverse, c is perfect and a, b find nothing
    write_run(runs / "a.train.trec", {"q1": ["r1", "a1", "a2"], "q2": ["a3", "a4", "r2"]})
    write_run(runs / "b.train.trec", {"q1": ["b1", "b2", "r1"], "q2": ["r2", "b3", "b4"]})
    write_run(runs / "c.train.trec", {"q1": ["c1", "c2", "c3"], "q2": ["c4", "c5", "c6"]})
    write_run(runs / "a.test.trec", {"t1": ["a1", "a2"], "t2": ["a3", "s1"]})
    write_run(runs / "b.test.trec", {"t1": ["b1", "b2"], "t2": ["b3", "b4"]})
    write_run(runs / "c.test.trec", {"t1": ["s1", "c1"], "t2": ["s2", "c2"]})
    out = tmp_path / "hybrid.json"
    done = subprocess.run([sys.executable, "bench/bench_hybrid.py", "choose", "--work", str(runs.parent),
                           "--dataset", str(data), "--out", str(out), "--note", "toy",
                           "--trained-on-dev", "b"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    chosen = record["chosen"]
    assert chosen["runs"] == ["a", "b"]  # the best dev hybrid, though every hybrid with c wins on test
    assert chosen["dev"]["nDCG@10"] == 1.0 == record["dev_top10"]["chosen"][0]["dev_nDCG@10"]
    assert chosen["candidates"] == 3 * 3 * 5 + 1 * 3 * 9
    low, high = chosen["test_nDCG@10_ci95"]
    assert low <= chosen["test"]["nDCG@10"] <= high
    # the second choice leaves out the system trained on dev (b): only a + c remain, a pair
    assert record["chosen_unseen_dev"]["runs"] == ["a", "c"]
    assert record["chosen_unseen_dev"]["candidates"] == 3 * 5 and record["systems"]["b"]["trained_on_dev"]
    assert record["systems"]["c"]["dev"]["nDCG@10"] == 0.0 and record["best_single_on_test"] == "c"
    assert record["target"]["reached"] is False and record["notes"] == ["toy"]
    # the record's test figure is what the CLI gives for the chosen setting
    fused = tmp_path / "chosen.test.trec"
    flags = [f for w in chosen["weights"] for f in ("--weight", str(w))]
    norm = ["--normalisation", chosen["normalisation"]] if chosen["normalisation"] else []
    assert main(["-q", "fuse", "--run", str(runs / "a.test.trec"), "--run", str(runs / "b.test.trec"),
                 "--method", chosen["method"], *norm, *flags, "--depth", "100", "--out", str(fused)]) == 0
    scores = tmp_path / "scores.json"
    assert main(["-q", "eval", "--run", str(fused), "--qrels", str(data / "qrels" / "test.tsv"),
                 "--measure", "nDCG@10", "--measure", "R@100", "--out", str(scores)]) == 0
    aggregate = json.loads(scores.read_text())["aggregate"]
    assert chosen["test"] == {m: round(v, 4) for m, v in aggregate.items()}
    paired = record["paired"]["chosen-vs-c"]["nDCG@10"]
    assert paired["diff"] == round(chosen["test"]["nDCG@10"] - 1.0, 4) < 0
