"""A synthetic learned-sparse collection with the term statistics of real SPLADE output.

Given real encoded documents (e.g. splade-tiny over SciFact), draws N documents whose lengths
(nnz) follow the real length distribution, whose terms follow the real document frequencies, and
whose weights follow the pooled real weight distribution (a document's rarer terms get its larger
weights, as SPLADE does). Deterministic for a seed.

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


def synthesize(source: SparseMatrix, n_docs: int, seed: int = 0, chunk: int = 20_000,
               device: str = "cpu") -> SparseMatrix:
    """Per chunk, on ``device``: draw terms by document frequency, keep a random ``length`` distinct ones."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    lengths = torch.from_numpy(np.diff(source.indptr)).to(device)
    df = torch.bincount(torch.from_numpy(source.indices).long(), minlength=source.dim).double().to(device)
    freq_rank = torch.argsort(torch.argsort(-df))  # 0 = the most frequent term
    pool = torch.from_numpy(source.values).to(device)
    width = int(lengths.max()) * 3 // 2
    never = source.dim + 1
    indptr, indices, values = [np.zeros(1, np.int64)], [], []
    for start in range(0, n_docs, chunk):
        n = min(chunk, n_docs - start)
        cols = torch.arange(width, device=device)[None, :]
        draws = torch.multinomial(df, n * width, replacement=True, generator=gen).view(n, width).sort(dim=1).values
        first = torch.ones_like(draws, dtype=torch.bool)
        first[:, 1:] = draws[:, 1:] != draws[:, :-1]
        keys = torch.where(first, torch.rand(n, width, generator=gen, device=device), 2.0)
        shuffled = draws.gather(1, keys.argsort(dim=1))  # distinct terms in random order first
        picked = lengths[torch.randint(len(lengths), (n,), generator=gen, device=device)]
        keep = torch.minimum(picked, first.sum(dim=1))  # [n]
        kept = cols < keep[:, None]
        # Frequent terms get a document's smaller weights, rare ones its larger (as SPLADE does).
        terms = shuffled.gather(1, torch.where(kept, freq_rank[shuffled], never).argsort(dim=1))
        drawn = pool[torch.randint(len(pool), (n, width), generator=gen, device=device)]
        weights = torch.where(kept, drawn, torch.inf).sort(dim=1).values
        by_term = torch.where(kept, terms, never).argsort(dim=1)
        indices.append(terms.gather(1, by_term)[kept].int().cpu().numpy())
        values.append(weights.gather(1, by_term)[kept].float().cpu().numpy())
        indptr.append(indptr[-1][-1] + np.cumsum(keep.cpu().numpy()))
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
