"""faiss HNSW and IVF-PQ against exact (Flat) search on a >= 1M-vector 384-d set.

Vectors come from ``bench/synthetic_dense.py`` (a mixture seeded from real minilm-l6 embeddings).
Structures are built through sparsa's own ``DENSE_BACKENDS`` classes (``indexes/vector_search.py``).
Reported per structure: build seconds (all cores), index bytes (serialised faiss index = its RAM
footprint), single-thread per-query latency p50/p99, and recall@10 against exact top-10, over a
sweep of the search knob (efSearch / nprobe). Results are rewritten after each structure.

    python bench/synthetic_dense.py --source SEEDS.npy --n 1000000 --queries 500 --out .stage/dense/synth-1m
    python bench/bench_faiss.py --data .stage/dense/synth-1m
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from common import write_results

from sparsa.indexes.vector_search import ExactSearch, FlatStructure, HNSWStructure, IVFPQStructure


def latencies(search, queries: np.ndarray, k: int = 10) -> tuple[dict, np.ndarray]:
    """One query at a time (batch of 1), one thread; returns percentiles in ms and the found rows."""
    times, rows = [], []
    for q in queries:
        started = time.perf_counter()
        _, found = search(q[None, :], k)
        times.append((time.perf_counter() - started) * 1000)
        rows.append(found[0])
    t = np.array(times)
    return {"p50_ms": round(float(np.percentile(t, 50)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3),
            "mean_ms": round(float(t.mean()), 3)}, np.array(rows)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def index_bytes(structure) -> int:
    import faiss

    return int(faiss.serialize_index(structure.index).size)


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--hnsw", default='{"m": 16, "ef_construction": 64}')
    parser.add_argument("--ivfpq", default='{"nlist": 1024, "m": 48, "nbits": 8, "train_size": 50000}')
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64, 128])
    args = parser.parse_args()
    vectors = np.load(args.data / "vectors.npy", mmap_mode="r")
    queries = np.load(args.data / "queries.npy")
    source = json.loads((args.data / "source.json").read_text())
    build_threads = faiss.omp_get_max_threads()
    payload = {"data": {**source, "file": str(args.data)}, "k": 10, "build_threads": build_threads,
               "search_threads": 1, "latency_queries": args.latency_queries,
               "notes": [("Timings on a shared 2-core machine running several other jobs (load average "
                          "~12-16): absolute numbers are pessimistic and noisy; ratios between "
                          "structures are the point."),
                         ("Memory = serialised faiss index bytes (what the index holds in RAM); the stored "
                         "float32 vectors a sparsa dense index keeps beside it are n * d * 4 bytes.")],
               "results": {}}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    started = time.perf_counter()
    truth_file = args.data / "truth_top10.npy"
    if truth_file.is_file():
        truth = np.load(truth_file)
    else:
        _, truth = ExactSearch(vectors, "cpu").search_vectors(queries, 10)
        np.save(truth_file, truth)
        payload["exact_ground_truth_seconds"] = round(time.perf_counter() - started, 1)
    lat_q = queries[: args.latency_queries]
    faiss.omp_set_num_threads(1)
    flat = FlatStructure.load(Path("."), {}, vectors)
    stats, found = latencies(flat.search, lat_q)
    payload["results"]["flat"] = {"build_seconds": 0.0, "index_bytes": vectors.nbytes, **stats,
                                  "recall@10": recall_at(found, truth[: len(found)])}
    print("flat", payload["results"]["flat"], flush=True)
    del flat
    write_results("faiss", payload, packages=("faiss-cpu", "numpy"))

    for structure_cls, config, knob, values in ((IVFPQStructure, json.loads(args.ivfpq),
                                                 "nprobe", args.nprobe),
                                                (HNSWStructure, json.loads(args.hnsw), "ef_search",
                                                 args.ef_search)):
        faiss.omp_set_num_threads(build_threads)
        started = time.perf_counter()
        structure = structure_cls.build(vectors, config)
        built_s = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        row = {"settings": structure.config, "build_seconds": round(built_s, 1),
               "index_bytes": index_bytes(structure), "sweep": []}
        for value in values:
            structure.config = {**structure.config, knob: value}
            structure.apply_search_settings()
            stats, found = latencies(structure.search_vectors, lat_q)
            _, all_found = structure.search_vectors(queries, 10)
            row["sweep"].append({knob: value, **stats, "recall@10": round(recall_at(all_found, truth), 4)})
            print(structure.name, row["sweep"][-1], flush=True)
        payload["results"][structure.name] = row
        write_results("faiss", payload, packages=("faiss-cpu", "numpy"))
        del structure
    payload["machine_load_average"] = os.getloadavg()
    path = write_results("faiss", payload, packages=("faiss-cpu", "numpy"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
