"""Learned-sparse engines on the same vectors: build time, size, latency, throughput, recall@10.

    python bench/bench_lsr_engines.py --collection scifact            # real splade-tiny vectors
    python bench/bench_lsr_engines.py --collection synthetic --docs 1000000
    bash bench/gpu_lsr_engines.sh                                       # on the GPU machine

Engines: exact (sparsa's exact backend on CPU: scipy CSC postings), seismic, lucene-impact, and
exact-gpu (the same backend on CUDA: torch sparse CSR x dense query block, topk, batches of 256;
exact-torch runs that code on the CPU, to dry-run the GPU job).
Seismic builds use every core (sparsa >= this commit); searches use one thread (the GPU engine: one GPU).
Latency is per single query on one thread; throughput is one batch of all queries (one thread on CPU; the
median of up to 5 repeats while they take under 1 s in all). Recall@10
is against exact scoring. Encoded SciFact vectors are cached in .stage/lsr_seed/ (git-ignored; carry it to
the GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import RESULTS, run_metadata, write_results
from common.sparse_collection import SEED_FILE, fingerprint, scifact_vectors, synthesize

from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import Hit, SparseVector

K = 10
GENERATOR = ("real-derived (bench/common/sparse_collection.py since this commit): each document blends a "
             "real SciFact splade-tiny document with a topical neighbour, with term dropout, weight noise "
             "and a few terms resampled from the marginal")


def open_engine(name: str, matrix: SparseMatrix, folder: Path, build: dict | None = None):
    from sparsa.indexes.exact_sparse import ExactSparseSearcher
    from sparsa.registry import SPARSE_BACKENDS

    if name == "exact":
        return ExactSparseSearcher(matrix, "cpu")
    if name in ("exact-gpu", "exact-torch"):  # exact-torch: the GPU engine's code on the CPU (dry runs)
        return ExactSparseSearcher(matrix, "cuda" if name == "exact-gpu" else "cpu", batch_size=256,
                                   backend="torch")
    return SPARSE_BACKENDS.get(name).build(matrix, folder, {"threads": 1, **(build or {})})


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed_search(engine, queries: list[SparseVector], truth: list[list[Hit]], latency_queries: int) -> dict:
    engine.search_vectors(queries[:5], K)  # warm-up
    latencies = []
    for q in queries[:latency_queries]:
        t = time.perf_counter()
        engine.search_vectors([q], K)
        latencies.append((time.perf_counter() - t) * 1000)
    times = []  # the whole query set as one batch, repeated (median) while that stays cheap
    while not times or (len(times) < 5 and sum(times) < 1.0):
        t = time.perf_counter()
        found = engine.search_vectors(queries, K)
        times.append(time.perf_counter() - t)
    batch_s = float(np.median(times))
    recall = np.mean([len({h.doc_id for h in f} & {h.doc_id for h in t}) / max(1, min(K, len(t)))
                      for f, t in zip(found, truth)])
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "batch_qps": round(len(queries) / batch_s, 1), "recall@10": round(float(recall), 4)}


# Seismic's search-time knobs (no rebuild): how many query terms to use, how hard to prune blocks.
# lower heap_factor: fewer blocks skipped
SEISMIC_SWEEP = [(10, 0.9), (20, 0.9), (20, 0.8), (30, 0.7), (64, 0.5)]


def measure(name: str, matrix: SparseMatrix, queries: list[SparseVector], truth: list[list[Hit]],
            args: argparse.Namespace) -> dict[str, dict]:
    """Rows for one engine: one per search setting (Seismic sweeps its search-time knobs)."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        started = time.perf_counter()
        engine = open_engine(name, matrix, folder, args.seismic_build if name == "seismic" else None)
        built = {"build_s": round(time.perf_counter() - started, 2),
                 "index_mb": round((folder_bytes(folder) or int(matrix.indptr.nbytes + matrix.indices.nbytes
                                                               + matrix.values.nbytes)) / 2**20, 1)}
        if name != "seismic":
            return {name: built | timed_search(engine, queries, truth, args.latency_queries)}
        rows = {}
        for query_cut, heap_factor in args.seismic_sweep:
            engine.config = replace(engine.config, query_cut=query_cut, heap_factor=heap_factor)
            rows[f"seismic qc={query_cut} hf={heap_factor}"] = built | timed_search(engine, queries, truth,
                                                                                     args.latency_queries)
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save(args: argparse.Namespace, matrix: SparseMatrix, queries: list[SparseVector], rows: dict) -> Path:
    derived = "-derived" if args.collection == "synthetic" else ""  # the older independent-terms set had none
    key = f"{args.collection}{derived}-{len(matrix)}"
    out = args.results
    previous = json.loads(out.read_text()) if out.is_file() else {}
    runs = previous.get("runs", {})
    packages = ("torch", "scipy", "numpy", "pyseismic-lsr", "pyserini")
    runs.setdefault(key, {})[args.tag] = {
        "meta": run_metadata(packages), "documents": len(matrix),
        "mean_doc_terms": round(matrix.nnz / len(matrix), 1),
        "queries": len(queries), "mean_query_terms": round(float(np.mean([q.nnz for q in queries])), 1),
        **args.generated, "engines": rows,
    }
    extra = {k: v for k, v in previous.items() if k not in ("meta", "runs", "k")}
    return write_results("lsr_engines", {"k": K, "runs": runs, **extra}, packages=packages, path=out)


def merge(source: Path, target: Path) -> None:
    """Copy every run (collection x tag, each with its own meta) of ``source`` into ``target``."""
    found, merged = json.loads(source.read_text()), json.loads(target.read_text())
    for key, tags in found["runs"].items():
        merged["runs"].setdefault(key, {}).update(tags)
        print(f"merged {key}: {', '.join(tags)}")
    target.write_text(json.dumps(merged, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", choices=["scifact", "synthetic"], default="scifact")
    parser.add_argument("--docs", type=int, default=1_000_000, help="synthetic collection size")
    parser.add_argument("--engines", nargs="+",
                        default=["exact", "seismic", "lucene-impact"])
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--queries", type=int, default=None,
                        help="use the first N queries (all 300 by default); the batch is all of them")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--tag", default="cpu", help="results key, e.g. cpu or h200")
    parser.add_argument("--seed", type=int, default=0, help="synthetic collection seed")
    parser.add_argument("--seed-file", type=Path, default=SEED_FILE,
                        help="real vectors (.npz), written if missing")
    parser.add_argument("--results", type=Path, default=RESULTS / "lsr_engines.json",
                        help="JSON to update (the GPU run writes a copy under $OUT)")
    parser.add_argument("--seismic-build", type=json.loads, default={},
                        help='Seismic build settings as JSON, e.g. \'{"n_postings": 3000}\' '
                             '(SeismicConfig defaults)')
    parser.add_argument("--seismic-sweep", nargs="+", default=SEISMIC_SWEEP,
                        type=lambda s: (int(s.split(":")[0]), float(s.split(":")[1])),
                        help="query_cut:heap_factor pairs to search with")
    parser.add_argument("--merge", type=Path, default=None,
                        help="only copy the runs of this JSON (e.g. the GPU machine's) into --results")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.results)
        return

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from sparsa.config import load_settings

    matrix, queries = scifact_vectors(args.data_dir or load_settings().data_dir, args.seed_file)
    queries = queries[: args.queries]
    args.generated = {}
    if args.collection == "synthetic":
        started = time.perf_counter()
        matrix = synthesize(matrix, args.docs, args.seed)
        args.generated = {"generation_s": round(time.perf_counter() - started, 1),
                          "fingerprint": fingerprint(matrix), "generator": GENERATOR, "seed": args.seed}
        print(f"synthesized {len(matrix)} documents in {args.generated['generation_s']} s, "
              f"fingerprint {args.generated['fingerprint']}", flush=True)
    from sparsa.indexes.exact_sparse import ExactSparseSearcher

    truth = ExactSparseSearcher(matrix, "cpu").search_vectors(queries, K)
    rows: dict[str, dict] = {}
    for name in args.engines:
        for label, row in measure(name, matrix, queries, truth, args).items():
            rows[label] = row
            print(f"{label:<24} build {row['build_s']:>8.2f} s  size {row['index_mb']:>8.1f} MB  p50 "
                  f"{row['p50_ms']:>8.3f} ms  p99 {row['p99_ms']:>8.3f} ms  batch {row['batch_qps']:>9.1f} "
                  f"q/s  recall@10 {row['recall@10']}", flush=True)
        path = save(args, matrix, queries, rows)  # after each engine: a long run keeps what it measured
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
