"""Batched queries per second of the exact learned-sparse engine on 1 vs N GPUs at one index size (issue 27).

    python bench/bench_sparse_shards.py --docs 4000000 --gpus 1 2      # on nvidia-h100-x2
    bash bench/gpu_sparse_shards.sh                                     # the same, packaged for that machine
    python bench/bench_sparse_shards.py --cpu --docs 20000 --gpus 1 2 --results /tmp/shards.json  # dry run

The index: the real-derived synthetic SPLADE collection of ``bench/common/sparse_collection.py`` (every
document blends real splade-tiny SciFact documents, perturbed; ``--collection synthetic``), or SciFact's
own vectors repeated with unique ids (``--collection repeated``: real documents, every one many times, so
scores tie; the tie rule makes the shards' hits still exact). Synthetic, not a real corpus of that size;
the seed vectors are real (``.stage/lsr_seed/``, encoded once from SciFact on the CPU, carried to the GPU
machine). Queries: SciFact's test queries (splade-tiny), cycled to ``--queries``, searched as one batch.

Per GPU count N the index is opened with ``exact_searcher(matrix, "cuda:0,...,cuda:N-1")`` (N = 1: the
single-device ``ExactSparseSearcher``; more: ``ShardedExactSearcher``, one shard per GPU, cut by entries);
the figure is the median of ``--repeats`` timed batches after one warm-up. Every N > 1 row says whether its
hits equal the 1-GPU hits (ids, scores, order). Plain per-device torch: no NCCL, NVLink multicast unused.
Writes ``bench/results/sparse_shards.json``; each row names the card and GPU count.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import RESULTS, write_results
from common.sparse_collection import SEED_FILE, fingerprint, scifact_vectors, sub_collection, synthesize

from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import SparseVector

GENERATOR = ("real-derived synthetic (bench/common/sparse_collection.py): each document blends a real "
             "SciFact splade-tiny document with a topical neighbour, with term dropout, weight noise and a "
             "few terms resampled from the marginal")
REPEATED = "SciFact's splade-tiny document vectors repeated, each copy with a unique id"


def collection(seed: SparseMatrix, kind: str, n_docs: int) -> SparseMatrix:
    if kind == "synthetic":
        return synthesize(seed, n_docs, seed=0)
    rows = np.resize(np.arange(len(seed)), n_docs)
    matrix = sub_collection(seed, rows)
    return SparseMatrix([f"r{i}" for i in range(n_docs)], matrix.indptr, matrix.indices, matrix.values,
                        matrix.dim)


def visible_devices(args) -> tuple[list[str], str]:
    """The devices the largest count needs, and the card's name; exits with a message when too few."""
    most = max(args.gpus)
    if args.cpu:
        return ["cpu"] * most, "cpu (dry run)"
    import torch

    count = torch.cuda.device_count()
    if count < most:
        sys.exit(f"error: --gpus asks for {most} GPUs but torch sees {count} (CUDA_VISIBLE_DEVICES: "
                 "check it names them all); run on a machine with that many GPUs, e.g. nvidia-h100-x2")
    names = {torch.cuda.get_device_name(i) for i in range(most)}
    return [f"cuda:{i}" for i in range(most)], " + ".join(sorted(names))


def time_batches(searcher, queries: list[SparseVector], k: int, repeats: int, devices: list[str]):
    """(median seconds of one batch, the hits of the first timed batch)."""
    import torch

    def sync():
        for device in set(devices):
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)

    searcher.search_vectors(queries[: min(len(queries), 64)], k)  # warm-up: kernels, cuSPARSE handles
    seconds, hits = [], None
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        found = searcher.search_vectors(queries, k)
        sync()
        seconds.append(time.perf_counter() - started)
        hits = hits or found
    return statistics.median(seconds), hits


def measure(matrix: SparseMatrix, queries: list[SparseVector], devices: list[str], args, card: str,
            baseline: list | None) -> tuple[dict, list]:
    import torch

    from sparsa.indexes.exact_sparse import exact_searcher, index_bytes, search_batch

    started = time.perf_counter()
    searcher = exact_searcher(matrix, devices, backend="torch", index_name=f"{args.docs:,}-document index")
    open_s = time.perf_counter() - started
    seconds, hits = time_batches(searcher, queries, args.k, args.repeats, devices)
    shards = getattr(searcher, "shards", [searcher])
    row = {
        "gpus": len(devices), "card": card, "devices": devices,
        "documents": len(matrix), "nnz": matrix.nnz, "queries": len(queries), "k": args.k,
        "batch": search_batch(len(matrix)), "seconds": round(seconds, 4),
        "qps": round(len(queries) / seconds, 1), "open_seconds": round(open_s, 2),
        "shard_documents": [len(s.matrix) for s in shards],
        "index_gib_per_device": [round(index_bytes(len(s.matrix), s.matrix.nnz) / 2**30, 3) for s in shards],
        "peak_gib_per_device": ([round(torch.cuda.max_memory_allocated(d) / 2**30, 3) for d in devices]
                                if not args.cpu else None),
        "identical_to_1_gpu": None if baseline is None else _key(hits) == _key(baseline),
    }
    del searcher, shards
    gc.collect()
    if not args.cpu:
        for device in devices:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    return row, hits


def _key(hits: list) -> list:
    return [[(h.doc_id, h.score) for h in q] for q in hits]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=4_000_000, help="documents in the index")
    parser.add_argument("--collection", choices=("synthetic", "repeated"), default="synthetic")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU counts to time, e.g. 1 2")
    parser.add_argument("--queries", type=int, default=1024, help="queries per batch (SciFact's, cycled)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per GPU count (median)")
    parser.add_argument("--cpu", action="store_true",
                        help="dry run: CPU 'devices' on torch (needs --results)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where scifact is [default: settings]")
    parser.add_argument("--seed-file", type=Path, default=SEED_FILE)
    parser.add_argument("--results", type=Path, default=None,
                        help=f"write here [default: {RESULTS / 'sparse_shards.json'}; required with --cpu]")
    args = parser.parse_args()
    if args.cpu and args.results is None:
        parser.error("--cpu is a dry run: give --results outside bench/results")
    if min(args.gpus) < 1:
        parser.error("--gpus: counts must be >= 1")
    args.gpus = sorted(set(args.gpus) | {1})  # 1 GPU is the baseline every row is compared with
    all_devices, card = visible_devices(args)
    from sparsa.config import load_settings

    seed, seed_queries = scifact_vectors(args.data_dir or load_settings().data_dir, args.seed_file)
    started = time.perf_counter()
    matrix = collection(seed, args.collection, args.docs)
    print(f"{args.collection} collection: {len(matrix):,} documents, {matrix.nnz:,} entries, "
          f"made in {time.perf_counter() - started:.0f} s", flush=True)
    queries = [seed_queries[i % len(seed_queries)] for i in range(args.queries)]
    rows, baseline = [], None
    for n in args.gpus:
        row, hits = measure(matrix, queries, all_devices[:n], args, card, baseline)
        baseline = baseline or hits
        rows.append(row)
        print(f"{n} GPU: {row['qps']:,.1f} q/s", flush=True)
    for row in rows:
        row["speedup_vs_1_gpu"] = round(row["qps"] / rows[0]["qps"], 2)
    print(f"\n{'GPUs':>4} {'card':<28} {'q/s':>10} {'speedup':>8} {'index GiB/device':>18} {'identical':>9}")
    for row in rows:
        print(f"{row['gpus']:>4} {row['card'][:28]:<28} {row['qps']:>10,.1f} {row['speedup_vs_1_gpu']:>8.2f} "
              f"{max(row['index_gib_per_device']):>18.3f} {row['identical_to_1_gpu']!s:>9}")
    payload = {
        "collection": GENERATOR if args.collection == "synthetic" else REPEATED,
        "fingerprint": fingerprint(matrix), "documents": len(matrix), "nnz": matrix.nnz,
        "query_set": f"SciFact test queries (splade-tiny), cycled to {len(queries)}", "k": args.k,
        "method": "one batch of all queries through search_vectors, median of repeats after a warm-up; "
                  "per-device torch (no NCCL)",
        "rows": rows,
    }
    path = write_results("sparse_shards", payload, packages=("torch", "numpy", "scipy"), path=args.results,
                         gpu=None if args.cpu else card)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
