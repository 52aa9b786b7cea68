"""LM query-likelihood reranking at full depth on a GPU (issue 5): SciFact BM25 top-100 and top-1000.

The GPU machine has no Java, so the BM25 run is made on the CPU first and travels with the job:

    sparsa index --dataset scifact --kind bm25 --out scifact-bm25
    sparsa search --index scifact-bm25 --dataset scifact --k 1000 --out bm25-top1000.trec

``score`` (on the GPU) reranks that run and writes the reranked runs plus timings; ``evaluate`` (on
the CPU, where ir_measures is) scores them and merges the figures into bench/results/rerank.json
under ``query_likelihood_gpu``:

    python bench/bench_ql_gpu.py score --run bm25-top1000.trec --dataset DIR --out OUTDIR
    python bench/bench_ql_gpu.py evaluate --run bm25-top1000.trec --scored OUTDIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, run_metadata

from sparsa.data import load_dataset
from sparsa.types import Run


def score(args: argparse.Namespace) -> None:
    import torch

    from sparsa.rerank import QueryLikelihoodReranker, rerank_run
    from sparsa.rerank.query_likelihood import QueryLikelihoodConfig

    data = load_dataset(args.dataset, "test")
    first_stage = Run.read_trec(args.run)
    started = time.perf_counter()
    ql = QueryLikelihoodReranker(QueryLikelihoodConfig(model=args.model,
                                                       max_passage_tokens=args.passage_tokens))
    timings = {"load_s": round(time.perf_counter() - started, 2), "device": ql.device,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "max_passage_tokens": args.passage_tokens, "max_tokens_per_batch": ql.max_tokens_per_batch,
               "meta": run_metadata(("torch", "transformers"))}
    args.out.mkdir(parents=True, exist_ok=True)
    for depth, queries in ((100, args.queries), (1000, args.deep_queries)):
        qids = sorted(first_stage, key=int)[:queries]
        run = Run({q: first_stage[q] for q in qids})
        pairs = sum(min(depth, len(hits)) for hits in run.values())
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        reranked = rerank_run(ql, run, data.queries, data.corpus, depth=depth, top_k=depth,
                              show_progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        reranked.write_trec(args.out / f"ql-top{depth}.trec")
        timings[f"top{depth}"] = {"queries": len(qids), "pairs": pairs, "seconds": round(seconds, 2),
                                  "pairs_per_s": round(pairs / seconds, 1)}
        print(f"top-{depth}: {len(qids)} queries, {pairs} pairs in {seconds:.1f} s = "
              f"{pairs / seconds:.0f} pairs/s",
              flush=True)
    (args.out / "ql_timings.json").write_text(json.dumps(timings, indent=2))


def evaluate(args: argparse.Namespace) -> None:
    from sparsa.eval import evaluate_run

    data = load_dataset(args.dataset, "test")
    timings = json.loads((args.scored / "ql_timings.json").read_text())
    first_stage = Run.read_trec(args.run)
    out = {"model": "smollm2-135m-instruct", "device": timings["gpu"], "load_s": timings["load_s"],
           "max_passage_tokens": timings["max_passage_tokens"], "gpu_meta": timings["meta"]}
    for depth in (100, 1000):
        reranked = Run.read_trec(args.scored / f"ql-top{depth}.trec")
        qids = set(reranked)
        qrels = type(data.qrels)({q: data.qrels[q] for q in qids if q in data.qrels})
        bm25 = Run({q: first_stage[q][:depth] for q in qids})
        out[f"bm25_top{depth}"] = {
            **timings[f"top{depth}"],
            "bm25_ndcg10": round(evaluate_run(bm25, qrels).aggregate["nDCG@10"], 4),
            "query_likelihood_ndcg10": round(evaluate_run(reranked, qrels).aggregate["nDCG@10"], 4)}
        print(depth, out[f"bm25_top{depth}"])
    path = RESULTS / "rerank.json"
    results = json.loads(path.read_text())
    out["command"] = run_metadata()["command"]
    results["query_likelihood_gpu"] = out
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"merged into {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    s = sub.add_parser("score", help="rerank on this machine's GPU")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--dataset", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--model", default="smollm2-135m-instruct")
    s.add_argument("--passage-tokens", type=int, default=128)
    s.add_argument("--queries", type=int, default=None, help="queries reranked at depth 100 (default: all)")
    s.add_argument("--deep-queries", type=int, default=30, help="queries reranked at depth 1000")
    e = sub.add_parser("evaluate", help="score the reranked runs and merge into rerank.json")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--scored", type=Path, required=True)
    e.add_argument("--dataset", type=Path, default=Path("../shared/data/scifact"))
    args = parser.parse_args()
    score(args) if args.step == "score" else evaluate(args)


if __name__ == "__main__":
    main()
