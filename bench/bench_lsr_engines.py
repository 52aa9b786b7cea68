"""Learned-sparse engines on the same vectors: build time, size, latency, throughput, recall@10.

    python bench/bench_lsr_engines.py --collection scifact            # real splade-tiny vectors
    python bench/bench_lsr_engines.py --collection synthetic --docs 1000000
    python bench/bench_lsr_engines.py --collection synthetic --docs 1000000 --engines exact seismic exact-gpu --tag h200

Engines: exact (sparsa's exact backend on CPU: scipy CSC postings), seismic, lucene-impact, and
exact-gpu (the same backend on CUDA: torch sparse CSR x dense query block, topk, batches of 256).
Seismic builds use every core (sparsa >= this commit); searches use one thread (the GPU engine: one GPU). Latency is per
single query on one thread; throughput is one batch of all queries (one thread on CPU). Recall@10
is against exact scoring. Encoded SciFact vectors are cached in .stage/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS, write_results  # noqa: E402
from synthetic_splade import synthesize  # noqa: E402

from sparsa.indexes.sparse_matrix import SparseMatrix  # noqa: E402
from sparsa.types import Hit, SparseVector  # noqa: E402

STAGE = Path(__file__).resolve().parent.parent / ".stage"
K = 10


def scifact_vectors(data_dir: Path) -> tuple[SparseMatrix, list[SparseVector]]:
    """splade-tiny vectors of SciFact's corpus and test queries (encoded once, then cached)."""
    docs_dir, queries_file = STAGE / "scifact-splade-tiny", STAGE / "scifact-splade-tiny-queries.npz"
    if not (docs_dir / "doc_ids.json").is_file() or not queries_file.is_file():
        from sparsa.data import load_dataset
        from sparsa.retrieval.splade import SpladeEncoder

        data = load_dataset(data_dir / "scifact")
        encoder = SpladeEncoder()
        vectors = encoder.encode_documents([d.full_text for d in data.corpus.documents])
        SparseMatrix.from_vectors(list(data.corpus), vectors, encoder.vocab_size).save(docs_dir)
        queries = encoder.encode_queries([q.text for q in data.queries])
        query_matrix = SparseMatrix.from_vectors([q.id for q in data.queries], queries, encoder.vocab_size)
        np.savez(queries_file, indptr=query_matrix.indptr, indices=query_matrix.indices, values=query_matrix.values)
    saved = np.load(queries_file)
    queries = [SparseVector(saved["indices"][a:b], saved["values"][a:b])
               for a, b in zip(saved["indptr"][:-1], saved["indptr"][1:])]
    return SparseMatrix.load(docs_dir), queries


def open_engine(name: str, matrix: SparseMatrix, folder: Path):
    from sparsa.indexes.exact_sparse import ExactSparseSearcher
    from sparsa.registry import SPARSE_BACKENDS

    if name in ("exact", "exact-gpu"):
        return ExactSparseSearcher(matrix, "cuda" if name == "exact-gpu" else "cpu", batch_size=256)
    return SPARSE_BACKENDS.get(name).build(matrix, folder, {"threads": 1})


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed_search(engine, queries: list[SparseVector], truth: list[list[Hit]], latency_queries: int) -> dict:
    engine.search(queries[:5], K)  # warm-up
    latencies = []
    for q in queries[:latency_queries]:
        t = time.perf_counter()
        engine.search([q], K)
        latencies.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    found = engine.search(queries, K)
    batch_s = time.perf_counter() - t
    recall = np.mean([len({h.doc_id for h in f} & {h.doc_id for h in t}) / max(1, min(K, len(t)))
                      for f, t in zip(found, truth)])
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "batch_qps": round(len(queries) / batch_s, 1), "recall@10": round(float(recall), 4)}


# Seismic's search-time knobs (no rebuild): how many query terms to use, how hard to prune blocks.
SEISMIC_SWEEP = [(20, 0.8), (64, 0.7), (64, 0.5), (64, 0.3)]  # lower heap_factor: fewer blocks skipped


def measure(name: str, matrix: SparseMatrix, queries: list[SparseVector], truth: list[list[Hit]],
            latency_queries: int) -> dict[str, dict]:
    """Rows for one engine: one per search setting (Seismic sweeps its search-time knobs)."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        started = time.perf_counter()
        engine = open_engine(name, matrix, folder)
        built = {"build_s": round(time.perf_counter() - started, 2),
                 "index_mb": round((folder_bytes(folder) or int(matrix.indptr.nbytes + matrix.indices.nbytes
                                                               + matrix.values.nbytes)) / 2**20, 1)}
        if name != "seismic":
            return {name: built | timed_search(engine, queries, truth, latency_queries)}
        rows = {}
        for query_cut, heap_factor in SEISMIC_SWEEP:
            engine.config = replace(engine.config, query_cut=query_cut, heap_factor=heap_factor)
            rows[f"seismic qc={query_cut} hf={heap_factor}"] = built | timed_search(engine, queries, truth,
                                                                                     latency_queries)
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save(args: argparse.Namespace, matrix: SparseMatrix, queries: list[SparseVector], rows: dict) -> Path:
    key = f"{args.collection}-{len(matrix)}"
    out = RESULTS / "lsr_engines.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    runs = previous.get("runs", {})
    runs.setdefault(key, {})[args.tag] = {
        "documents": len(matrix), "mean_doc_terms": round(matrix.nnz / len(matrix), 1),
        "queries": len(queries), "mean_query_terms": round(float(np.mean([q.nnz for q in queries])), 1),
        "engines": rows,
    }
    extra = {k: v for k, v in previous.items() if k not in ("meta", "runs", "k")}
    return write_results("lsr_engines", {"k": K, "runs": runs, **extra},
                         packages=("torch", "scipy", "pyseismic-lsr", "pyserini"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", choices=["scifact", "synthetic"], default="scifact")
    parser.add_argument("--docs", type=int, default=1_000_000, help="synthetic collection size")
    parser.add_argument("--engines", nargs="+",
                        default=["exact", "seismic", "lucene-impact"])
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--tag", default="cpu", help="results key, e.g. cpu or h200")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from sparsa.config import load_settings

    matrix, queries = scifact_vectors(args.data_dir or load_settings().data_dir)
    if args.collection == "synthetic":
        started = time.perf_counter()
        matrix = synthesize(matrix, args.docs, device="cuda" if torch.cuda.is_available() else "cpu")
        print(f"synthesized {len(matrix)} documents in {time.perf_counter() - started:.0f} s")
    from sparsa.indexes.exact_sparse import ExactSparseSearcher

    truth = ExactSparseSearcher(matrix, "cpu").search(queries, K)
    rows: dict[str, dict] = {}
    for name in args.engines:
        for label, row in measure(name, matrix, queries, truth, args.latency_queries).items():
            rows[label] = row
            print(f"{label:<24} build {row['build_s']:>8.2f} s  size {row['index_mb']:>8.1f} MB  "
                  f"p50 {row['p50_ms']:>8.3f} ms  p99 {row['p99_ms']:>8.3f} ms  batch {row['batch_qps']:>9.1f} q/s  "
                  f"recall@10 {row['recall@10']}", flush=True)
        path = save(args, matrix, queries, rows)  # after each engine: a long run keeps what it measured
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
