"""A synthetic learned-sparse collection with the term statistics of real SPLADE output.

Given real encoded documents (e.g. splade-tiny over SciFact), draws N documents whose lengths
(nnz) follow the real length distribution, whose terms follow the real document frequencies, and
whose weights follow the pooled real weight distribution (sorted so a
document's rarer terms get its larger weights, as SPLADE does). Deterministic for a seed.

    python bench/synthetic_splade.py --source .stage/scifact-splade-tiny --docs 1000000 --out .stage/synth-1m
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from sparsa.indexes.sparse_matrix import SparseMatrix  # noqa: E402


def synthesize(source: SparseMatrix, n_docs: int, seed: int = 0, chunk: int = 20_000) -> SparseMatrix:
    rng = np.random.default_rng(seed)
    lengths = np.diff(source.indptr)
    df = np.bincount(source.indices, minlength=source.dim).astype(np.float64)
    term_p = df / df.sum()
    weights = np.sort(source.values)
    idf_rank = np.argsort(np.argsort(-df))  # 0 = most frequent term
    indptr, indices, values = [np.zeros(1, np.int64)], [], []
    total = 0
    for start in range(0, n_docs, chunk):
        n = min(chunk, n_docs - start)
        doc_lengths = rng.choice(lengths, size=n)
        # Oversample terms, then keep each document's first `length` distinct ones.
        draws = rng.choice(source.dim, size=(n, int(lengths.max() * 1.5)), p=term_p)
        for row, length in zip(draws, doc_lengths):
            terms = np.unique(row)[: int(length)]
            w = np.sort(rng.choice(weights, size=terms.size))
            order = np.argsort(idf_rank[terms])  # frequent terms first -> smaller weights
            doc_w = np.empty_like(w)
            doc_w[order] = w
            indices.append(terms.astype(np.int32))
            values.append(doc_w.astype(np.float32))
            total += terms.size
            indptr.append(np.array([total], np.int64))
    return SparseMatrix([f"s{i}" for i in range(n_docs)], np.concatenate(indptr), np.concatenate(indices),
                        np.concatenate(values), source.dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="folder of a saved SparseMatrix")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    matrix = synthesize(SparseMatrix.load(args.source), args.docs, args.seed)
    matrix.save(args.out)
    print(f"{len(matrix)} documents, {matrix.nnz / len(matrix):.1f} terms each, "
          f"{time.perf_counter() - started:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
