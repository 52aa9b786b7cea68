"""A synthetic learned-sparse collection that keeps the structure of real SPLADE output.

Every synthetic document is derived from real encoded documents (splade-tiny over SciFact, read from
a small seed ``.npz``): a base document is blended with one of its topical neighbours (cosine
nearest neighbours among the seed documents), then perturbed. So term frequencies, lengths, weight
distribution and term co-occurrence (topics) follow real output. Per synthetic document:

1. base ``a`` uniform over the seed documents, partner ``b`` one of ``a``'s ``neighbours`` nearest;
   mixing weight ``lam ~ U(0.5, 1)``;
2. each term of ``a`` is dropped with probability ``drop``; each term of ``b`` is taken with
   probability ``min(1, partner * (1 - lam))``;
3. a term present in both gets ``lam * w_a + (1 - lam) * w_b``;
4. about ``resample`` x length extra terms are drawn from the marginal term distribution (document
   frequency), with weights from the lower half of the real weight pool (weak expansion terms);
5. every weight is multiplied by ``exp(noise * N(0, 1))``.

The earlier generator (before this commit) drew each document's terms independently from the
marginal distribution: no topical co-occurrence, so a query's top-10 were separated by noise-sized
score gaps and no approximate engine could find them (Seismic recall@10 0.21-0.63 at 1M).

Vectorised numpy, deterministic for a seed on any machine (no device RNG), so the GPU machine
regenerates the same set from the same seed file; ``fingerprint`` checks that.

    python bench/synthetic_splade.py --seed-file .stage/lsr_seed/scifact-splade-tiny.npz --docs 1000000 --stats
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from pathlib import Path

import numpy as np

from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import SparseVector

SEED_FILE = Path(__file__).resolve().parent.parent / ".stage" / "lsr_seed" / "scifact-splade-tiny.npz"


def save_seed(path: Path, docs: SparseMatrix, queries: list[SparseVector]) -> None:
    """Real document and query vectors in one small file (what the GPU machine is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    q_indptr = np.concatenate([[0], np.cumsum([q.nnz for q in queries])]).astype(np.int64)
    np.savez_compressed(
        path, dim=docs.dim, doc_ids=np.array(docs.doc_ids), doc_indptr=docs.indptr, doc_indices=docs.indices,
        doc_values=docs.values, query_indptr=q_indptr,
        query_indices=np.concatenate([q.indices for q in queries]).astype(np.int32),
        query_values=np.concatenate([q.values for q in queries]).astype(np.float32))


def load_seed(path: Path) -> tuple[SparseMatrix, list[SparseVector]]:
    saved = np.load(path)
    docs = SparseMatrix([str(d) for d in saved["doc_ids"]], saved["doc_indptr"], saved["doc_indices"],
                        saved["doc_values"], int(saved["dim"]))
    qi, qx, qv = saved["query_indptr"], saved["query_indices"], saved["query_values"]
    return docs, [SparseVector(qx[a:b], qv[a:b]) for a, b in itertools.pairwise(qi)]


def neighbours(docs: SparseMatrix, m: int) -> np.ndarray:
    """int64[n, m]: each document's m nearest other documents by cosine."""
    import scipy.sparse as sp

    x = sp.csr_matrix((docs.values, docs.indices, docs.indptr), shape=(len(docs), docs.dim))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()) + 1e-9
    x = sp.diags(1 / norms) @ x
    sims = (x @ x.T).toarray()
    np.fill_diagonal(sims, -1)
    top = np.argpartition(-sims, m, axis=1)[:, :m]
    return top.astype(np.int64)


def _gather(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the entries of ``rows`` in the CSR arrays, and the local row number of each."""
    lengths = indptr[rows + 1] - indptr[rows]
    owner = np.repeat(np.arange(len(rows)), lengths)
    starts = np.cumsum(lengths) - lengths
    return np.repeat(indptr[rows] - starts, lengths) + np.arange(int(lengths.sum())), owner


def synthesize(docs: SparseMatrix, n_docs: int, seed: int = 0, *, chunk: int = 25_000, n_neighbours: int = 16,
               drop: float = 0.3, partner: float = 1.4, resample: float = 0.03, noise: float = 0.2,
               ) -> SparseMatrix:
    """``n_docs`` documents derived from ``docs`` (see the module docstring); deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    near = neighbours(docs, n_neighbours)
    lengths = np.diff(docs.indptr)
    df = np.bincount(docs.indices, minlength=docs.dim).astype(np.float64)
    weak = np.sort(docs.values)[: len(docs.values) // 2]
    dim = docs.dim
    indptr, indices, values = [np.zeros(1, np.int64)], [], []
    for start in range(0, n_docs, chunk):
        n = min(chunk, n_docs - start)
        base = rng.integers(len(docs), size=n)
        other = near[base, rng.integers(n_neighbours, size=n)]
        lam = rng.uniform(0.5, 1.0, size=n)
        pos_a, own_a = _gather(docs.indptr, base)
        pos_b, own_b = _gather(docs.indptr, other)
        keep_a = rng.random(len(pos_a)) >= drop
        keep_b = rng.random(len(pos_b)) < np.minimum(1.0, partner * (1 - lam))[own_b]
        n_new = rng.poisson(resample * lengths[base])
        own_r = np.repeat(np.arange(n), n_new)
        terms_r = np.searchsorted(np.cumsum(df), rng.random(len(own_r)) * df.sum(), side="right")
        owner = np.concatenate([own_a[keep_a], own_b[keep_b], own_r])
        term = np.concatenate([docs.indices[pos_a[keep_a]], docs.indices[pos_b[keep_b]], terms_r])
        weight = np.concatenate([docs.values[pos_a[keep_a]], docs.values[pos_b[keep_b]],
                                 weak[rng.integers(len(weak), size=len(own_r))]]).astype(np.float64)
        share = np.concatenate([lam[own_a[keep_a]], 1 - lam[own_b[keep_b]], np.full(len(own_r), 1e-3)])
        keys = owner.astype(np.int64) * dim + term
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        merged = (np.add.reduceat((weight * share)[order], first) / np.add.reduceat(share[order], first))
        merged *= np.exp(noise * rng.standard_normal(len(first)))
        indices.append((keys[first] % dim).astype(np.int32))
        values.append(merged.astype(np.float32))
        indptr.append(indptr[-1][-1] + np.cumsum(np.bincount(keys[first] // dim, minlength=n)))
    return SparseMatrix([f"s{i}" for i in range(n_docs)], np.concatenate(indptr), np.concatenate(indices),
                        np.concatenate(values), dim)


def fingerprint(matrix: SparseMatrix) -> str:
    """sha256 (first 16 hex) of the CSR arrays: equal on every machine that made the same set."""
    h = hashlib.sha256()
    for a in (matrix.indptr, matrix.indices, matrix.values):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def collection_stats(matrix: SparseMatrix, queries: list[SparseVector], sample: int = 3000, seed: int = 0) -> dict:
    """Length, weight and df statistics; co-occurrence (nearest-neighbour cosine within a random sample
    of ``sample`` documents); top-10 score margins of the queries under exact search."""
    import scipy.sparse as sp

    from sparsa.indexes.exact_sparse import ExactSparseSearcher

    lengths = np.diff(matrix.indptr)
    df = np.bincount(matrix.indices, minlength=matrix.dim)
    used = np.sort(df[df > 0])[::-1]
    rows = np.random.default_rng(seed).choice(len(matrix), size=min(sample, len(matrix)), replace=False)
    sub = SparseMatrix([matrix.doc_ids[r] for r in rows], *_sub_csr(matrix, rows), matrix.dim)
    x = sp.csr_matrix((sub.values, sub.indices, sub.indptr), shape=(len(sub), sub.dim))
    x = sp.diags(1 / (np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()) + 1e-9)) @ x
    sims = (x @ x.T).toarray()
    np.fill_diagonal(sims, -1)
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


def _sub_csr(matrix: SparseMatrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos, owner = _gather(matrix.indptr, rows)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(rows)))]).astype(np.int64)
    return indptr, matrix.indices[pos], matrix.values[pos]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-file", type=Path, default=SEED_FILE, help="real vectors (bench_lsr_engines.py writes it)")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", action="store_true", help="write real vs synthetic statistics to bench/results")
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
        from common import write_results

        small = synthesize(docs, len(docs), args.seed)
        path = write_results("synthetic_splade", {
            "generation_s": round(took, 1), "fingerprint": fingerprint(matrix), "real": collection_stats(docs, queries),
            f"derived-{len(small)}": collection_stats(small, queries),
            f"derived-{len(matrix)}": collection_stats(matrix, queries)})
        print(path.read_text())

if __name__ == "__main__":
    main()
