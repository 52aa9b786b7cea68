"""bench/bench_lsr.py on a small real slice of TREC DL 2019: the GPU machine's staging (no qrels, a
grade-free pool.tsv), ``encode``'s whole-corpus and judged-pool runs, index size and query latency, and
``evaluate``'s graded measures. bench/ is not a package the tests import: the scripts run as subprocesses,
the way the lead runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsa.cli.main import main
from sparsa.data import load_dataset
from sparsa.eval import evaluate_run
from sparsa.types import Qrels, Run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DL19 = "trec-dl-2019-passage"


@pytest.fixture(scope="module")
def slice_dir(shared_data, tmp_path_factory) -> Path:
    """A DL 2019-shaped folder: 2 judged queries (12 judged passages each at most, every grade kept) and
    1 unjudged query, their passages + 6 passages nobody judged for them, TREC qrels and TSV topics."""
    full = load_dataset(shared_data / DL19)
    root = tmp_path_factory.mktemp("lsr") / "full"
    folder = root / DL19
    folder.mkdir(parents=True)
    judged = sorted(full.qrels)[:2]
    qrels = {q: dict(sorted(full.qrels[q].items(), key=lambda kv: (-kv[1], kv[0]))[:12]) for q in judged}
    in_pool = {d for docs in qrels.values() for d in docs}
    judged_anywhere = {d for docs in full.qrels.values() for d in docs}
    extra = [d for d in full.corpus if d not in judged_anywhere][:6]
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"docid": d, "doc": full.corpus[d].text}) + "\n" for d in sorted(in_pool) + extra))
    topics = [*(q for q in full.queries if q.id in judged)]
    (folder / "msmarco-test2019-queries.tsv").write_text(
        "".join(f"{q.id}\t{q.text}\n" for q in topics) + "999999\tan unjudged query\n")
    Qrels(qrels).write_trec(folder / "2019qrels-pass.txt")
    return root


@pytest.fixture(scope="module")
def encoded(slice_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(the staged folder, the runs folder): staged as for the GPU machine, then encoded from it."""
    work = tmp_path_factory.mktemp("lsr-work")
    staged, runs = work / "slsr", work / "runs"
    env = {**os.environ, "SLSR": str(staged), "SPARSA_DATA_DIR": str(slice_dir), "DATASETS": DL19,
           "PY": sys.executable}
    run(["bash", "bench/gpu_synthetic_lsr.sh", "stage-data"], env=env)
    run([sys.executable, "bench/bench_lsr.py", "encode", "--out", str(runs), "--model",
         "splade-tiny=splade-tiny", "--datasets", "dl19", "--data-dir", str(staged / "data"), "--k", "5",
         "--warmup-docs", "4", "--latency-queries", "1"])
    return staged / "data" / DL19, runs


def run(command: list[str], env: dict | None = None) -> None:
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, f"{command[:3]} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def test_staging_keeps_the_pool_and_drops_grades(slice_dir, encoded):
    staged, _ = encoded
    source = load_dataset(slice_dir / DL19)
    assert not list(staged.glob("*qrels*")) and not (staged / "qrels").exists()
    assert [json.loads(line)["_id"] for line in (staged / "queries.jsonl").read_text().splitlines()] \
        == [q.id for q in source.queries]  # the judged queries only
    pairs = {tuple(line.split("\t")) for line in (staged / "pool.tsv").read_text().splitlines()}
    assert pairs == {(q, d) for q, docs in source.qrels.items() for d in docs}


def test_encode_writes_whole_corpus_and_pool_runs(slice_dir, encoded, tmp_path):
    _, runs = encoded
    qrels = load_dataset(slice_dir / DL19).qrels
    whole = Run.read_trec(runs / "splade-tiny.dl19.trec")
    pool = Run.read_trec(runs / "splade-tiny.dl19-pool.trec")
    assert set(whole) == set(pool) == set(qrels)
    for qid, judged in qrels.items():
        assert len(whole[qid]) == 5  # --k over the whole corpus, judged or not
        assert {h.doc_id for h in pool[qid]} == set(judged)  # the whole pool, nothing else
    # the pool run is what `sparsa search --pool` gives on a user's index of the same corpus
    index = tmp_path / "idx"
    assert main(["-q", "index", "--dataset", str(slice_dir / DL19), "--kind", "splade", "--model",
                 "splade-tiny", "--device", "cpu", "--out", str(index)]) == 0
    cli = tmp_path / "cli.trec"
    assert main(["-q", "search", "--index", str(index), "--dataset", str(slice_dir / DL19), "--pool",
                 str(slice_dir / DL19 / "2019qrels-pass.txt"), "--device", "cpu", "--out", str(cli)]) == 0
    cli_run = Run.read_trec(cli)
    for qid in qrels:
        assert [h.doc_id for h in pool[qid]] == [h.doc_id for h in cli_run[qid]]
    timing = json.loads((runs / "timings.json").read_text())["splade-tiny.dl19"]
    assert timing["index_bytes"] == sum(p.stat().st_size for p in (index / "vectors").iterdir())
    assert timing["docs"] == len(load_dataset(slice_dir / DL19).corpus)
    assert timing["latency_queries"] == 1 and timing["query_ms_median"] > 0
    assert timing["device"] == "cpu" and timing["device_name"]


def test_evaluate_scores_dl19_with_graded_judgements(slice_dir, encoded, tmp_path):
    _, runs = encoded
    out = tmp_path / "lsr.json"
    run([sys.executable, "bench/bench_lsr.py", "evaluate", "--runs", str(runs), "--data-dir", str(slice_dir),
         "--out", str(out)])
    record = json.loads(out.read_text())
    qrels = load_dataset(slice_dir / DL19).qrels
    for key in ("dl19", "dl19-pool"):
        row = record["results"][f"splade-tiny.{key}"]
        expected = evaluate_run(Run.read_trec(runs / f"splade-tiny.{key}.trec"), qrels,
                                ("nDCG@10", "R(rel=2)@100", "RR(rel=2)@10")).aggregate
        assert row["nDCG@10"] == round(expected["nDCG@10"], 4)
        assert row["R@100"] == round(expected["R(rel=2)@100"], 4)  # relevant: grade >= 2 (TREC DL)
        assert row["MRR@10"] == round(expected["RR(rel=2)@10"], 4)
    assert record["results"]["splade-tiny.dl19"]["index_bytes"] > 0
    assert {"bm25.scifact", "bm25.cranfield", "bm25.cisi"} <= set(record["results"])  # from bm25.json
