"""BM25 flat (Lucene through Pyserini) on SciFact, Cranfield and CISI: effectiveness and timing.

    python bench/bench_bm25.py [--datasets scifact cranfield cisi] [--k 1000]

Prints a table and writes bench/results/bm25.json. Reference: Pyserini's BEIR SciFact BM25 flat
nDCG@10 = 0.679 (k1=0.9, b=0.4, title+text).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import write_results

from sparsa.config import load_settings
from sparsa.data import load_dataset
from sparsa.eval import evaluate_run
from sparsa.indexes import build_index
from sparsa.search import open_retriever

REFERENCE = {"scifact": {"nDCG@10": 0.679, "source": "Pyserini BEIR regressions, BM25 flat"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["scifact", "cranfield", "cisi"])
    parser.add_argument("--k", type=int, default=1000)
    args = parser.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            data = load_dataset(load_settings().data_dir / name)
            started = time.perf_counter()
            build_index("bm25", data.corpus, Path(tmp) / name, show_progress=False)
            index_s = time.perf_counter() - started
            index = open_retriever(Path(tmp) / name)
            started = time.perf_counter()
            run = index.search(data.queries, k=args.k, show_progress=False)
            search_s = time.perf_counter() - started
            result = evaluate_run(run, data.qrels)
            rows[name] = {
                **{m: round(v, 4) for m, v in result.aggregate.items()},
                "queries": result.num_queries, "documents": len(data.corpus),
                "index_seconds": round(index_s, 2), "search_seconds": round(search_s, 2),
                "reference": REFERENCE.get(name),
            }

    print(f"{'dataset':<12}{'docs':>7}{'queries':>9}{'nDCG@10':>9}{'MRR@10':>8}{'R@100':>8}{'MAP':>8}"
          f"{'index s':>9}{'search s':>10}")
    for name, row in rows.items():
        print(f"{name:<12}{row['documents']:>7}{row['queries']:>9}{row['nDCG@10']:>9.4f}{row['MRR@10']:>8.4f}"
              f"{row['R@100']:>8.4f}{row['MAP']:>8.4f}{row['index_seconds']:>9.2f}"
              f"{row['search_seconds']:>10.2f}")
    settings = {"retriever": "Lucene BM25 flat (title + text)", "k1": 0.9, "b": 0.4, "k": args.k}
    path = write_results("bm25", {"settings": settings, "results": rows},
                         packages=("pyserini", "ir_measures"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
