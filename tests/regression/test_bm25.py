"""Published and recorded BM25 numbers, rerun end to end (Pyserini-2CR style).

SciFact must reproduce Pyserini's BEIR BM25 flat nDCG@10 of 0.679 (k1=0.9, b=0.4, title+text).
Cranfield and CISI pin the values recorded in bench/results/bm25.json.
"""

from __future__ import annotations

import pytest

from sparsa.eval import evaluate_run
from sparsa.indexes import build_index, open_index
from tests.conftest import needs_java

pytestmark = [pytest.mark.slow, pytest.mark.java]

EXPECTED = [  # dataset, measure, expected, tolerance, source
    ("scifact", "nDCG@10", 0.679, 0.005, "Pyserini BEIR regressions (published)"),
    ("scifact", "R@100", 0.925, 0.005, "Pyserini 1.6.0 measured here (shared/docs/reference-numbers.md)"),
    ("cranfield", "nDCG@10", 0.3510, 0.002, "bench/results/bm25.json"),
    ("cisi", "nDCG@10", 0.3585, 0.002, "bench/results/bm25.json"),
]


@pytest.fixture(scope="module")
def bm25_results(tmp_path_factory, shared_data):
    from sparsa.data import load_dataset

    needs_java()
    results = {}
    for name in sorted({row[0] for row in EXPECTED}):
        data = load_dataset(shared_data / name)
        out = tmp_path_factory.mktemp("bm25") / name
        build_index("bm25", data.corpus, out, show_progress=False)
        run = open_index(out).search(data.queries, k=1000, show_progress=False)
        results[name] = evaluate_run(run, data.qrels).aggregate
    return results


@pytest.mark.parametrize(("dataset", "measure", "expected", "tolerance", "source"), EXPECTED)
def test_bm25_matches_reference(bm25_results, dataset, measure, expected, tolerance, source):
    assert bm25_results[dataset][measure] == pytest.approx(expected, abs=tolerance), source
