"""Statistics of the real-derived synthetic SPLADE collection against the real vectors it comes from.

The generator is ``bench/common/sparse_collection.py`` (its docstring says how a document is derived);
``bench_lsr_engines.py --collection synthetic`` searches the same collection. This script generates it
from the seed file, prints its size and fingerprint, and with ``--stats`` writes
bench/results/synthetic_splade.json: lengths, weights, document frequencies, nearest-neighbour cosine
and the queries' top-10 score margins, real vs derived.

    python bench/synthetic_splade.py --docs 1000000 --stats \
        [--seed-file .stage/lsr_seed/scifact-splade-tiny.npz]   # bench_lsr_engines.py writes the seed file
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import write_results
from common.sparse_collection import (
    SEED_FILE,
    cosine_similarities,
    fingerprint,
    load_seed,
    sub_collection,
    synthesize,
)

from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import SparseVector


def collection_stats(matrix: SparseMatrix, queries: list[SparseVector], sample: int = 3000,
                     seed: int = 0) -> dict:
    """Length, weight and df statistics; co-occurrence (nearest-neighbour cosine within a random sample
    of ``sample`` documents); top-10 score margins of the queries under exact search."""
    from sparsa.indexes.exact_sparse import ExactSparseSearcher

    lengths = np.diff(matrix.indptr)
    df = np.bincount(matrix.indices, minlength=matrix.dim)
    used = np.sort(df[df > 0])[::-1]
    rows = np.random.default_rng(seed).choice(len(matrix), size=min(sample, len(matrix)), replace=False)
    sub = sub_collection(matrix, rows)
    sims = cosine_similarities(sub)
    hits = ExactSparseSearcher(matrix, "cpu").search_vectors(queries, 11)
    s = np.array([[h.score for h in q] for q in hits if len(q) == 11])
    q = [0.1, 0.5, 0.9, 0.99]
    return {
        "documents": len(matrix),
        "terms_per_doc": {"mean": round(float(lengths.mean()), 1),
                          **{f"p{int(p * 100)}": int(np.quantile(lengths, p)) for p in q}},
        "weight_quantiles": {f"p{int(p * 100)}": round(float(np.quantile(matrix.values, p)), 3) for p in q},
        "weight_mean": round(float(matrix.values.mean()), 3),
        "terms_used": int((df > 0).sum()),
        "df_fraction_quantiles": {f"p{int(p * 100)}": round(float(np.quantile(used / len(matrix), p)), 5)
                                  for p in q},
        "postings_in_top100_terms": round(float(used[:100].sum() / used.sum()), 3),
        f"nn_cosine_in_{len(sub)}_sample": round(float(sims.max(axis=1).mean()), 3),
        "top10_margin_(s1-s10)/s1": round(float(np.mean((s[:, 0] - s[:, 9]) / s[:, 0])), 4),
        "gap_(s10-s11)/s10": round(float(np.mean((s[:, 9] - s[:, 10]) / s[:, 9])), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-file", type=Path, default=SEED_FILE,
                        help="real vectors (bench_lsr_engines.py writes it)")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", action="store_true",
                        help="write real vs synthetic statistics to bench/results")
    parser.add_argument("--out", type=Path, default=None, help="save the SparseMatrix here")
    args = parser.parse_args()
    docs, queries = load_seed(args.seed_file)
    started = time.perf_counter()
    matrix = synthesize(docs, args.docs, args.seed)
    took = time.perf_counter() - started
    print(f"{len(matrix)} documents, {matrix.nnz / len(matrix):.1f} terms each, {took:.0f} s, "
          f"fingerprint {fingerprint(matrix)}", flush=True)
    if args.out:
        matrix.save(args.out)
    if args.stats:  # real vs synthetic: at the real collection's size (margins depend on size) and at --docs
        small = synthesize(docs, len(docs), args.seed)
        path = write_results("synthetic_splade", {
            "generation_s": round(took, 1), "fingerprint": fingerprint(matrix),
            "real": collection_stats(docs, queries),
            f"derived-{len(small)}": collection_stats(small, queries),
            f"derived-{len(matrix)}": collection_stats(matrix, queries)})
        print(path.read_text())


if __name__ == "__main__":
    main()
