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

The earlier generator (before commit 1f1559a) drew each document's terms independently from the
marginal distribution: no topical co-occurrence, so a query's top-10 were separated by noise-sized
score gaps and no approximate engine could find them (Seismic recall@10 0.21-0.63 at 1M).

Vectorised numpy, deterministic for a seed on any machine (no device RNG), so the GPU machine
regenerates the same set from the same seed file; ``fingerprint`` checks that.

Used by ``bench_lsr_engines.py --collection synthetic``, ``bench_sparse_shards.py`` and
``synthetic_splade.py`` (its statistics); :func:`scifact_vectors` makes the seed file they read.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import SparseVector

SEED_FILE = Path(__file__).resolve().parents[2] / ".stage" / "lsr_seed" / "scifact-splade-tiny.npz"


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


def scifact_vectors(data_dir: Path, seed_file: Path = SEED_FILE) -> tuple[SparseMatrix, list[SparseVector]]:
    """splade-tiny vectors of SciFact's corpus and test queries: encoded once into ``seed_file``
    (a small .npz, also what the synthetic generator and the GPU machine read)."""
    if not seed_file.is_file():
        from sparsa.data import load_dataset
        from sparsa.retrieval.splade import SpladeEncoder

        data = load_dataset(data_dir / "scifact")
        encoder = SpladeEncoder()
        vectors = encoder.encode_documents([d.full_text for d in data.corpus.documents])
        docs = SparseMatrix.from_vectors(list(data.corpus), vectors, encoder.vocab_size)
        save_seed(seed_file, docs, encoder.encode_queries([q.text for q in data.queries]))
    return load_seed(seed_file)


def cosine_similarities(docs: SparseMatrix) -> np.ndarray:
    """float[n, n]: cosine between every two documents, -1 on the diagonal (a document is not its own
    neighbour)."""
    x = sp.csr_matrix((docs.values, docs.indices, docs.indptr), shape=(len(docs), docs.dim))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()) + 1e-9
    x = sp.diags(1 / norms) @ x
    sims = (x @ x.T).toarray()
    np.fill_diagonal(sims, -1)
    return sims


def neighbours(docs: SparseMatrix, m: int) -> np.ndarray:
    """int64[n, m]: each document's m nearest other documents by cosine."""
    top = np.argpartition(-cosine_similarities(docs), m, axis=1)[:, :m]
    return top.astype(np.int64)


def gather_rows(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
        pos_a, own_a = gather_rows(docs.indptr, base)
        pos_b, own_b = gather_rows(docs.indptr, other)
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


def sub_collection(matrix: SparseMatrix, rows: np.ndarray) -> SparseMatrix:
    """The documents ``rows`` of ``matrix``, in that order."""
    pos, owner = gather_rows(matrix.indptr, rows)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=len(rows)))]).astype(np.int64)
    return SparseMatrix([matrix.doc_ids[r] for r in rows], indptr, matrix.indices[pos], matrix.values[pos],
                        matrix.dim)


def fingerprint(matrix: SparseMatrix) -> str:
    """sha256 (first 16 hex) of the CSR arrays: equal on every machine that made the same set."""
    h = hashlib.sha256()
    for a in (matrix.indptr, matrix.indices, matrix.values):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
