"""Rerankers callable as a library: ``reranker.rerank(query, candidates, top_k) -> list[Hit]``.

- :class:`TildeV2Reranker` (``tilde.py``): contextualised exact term matching from a precomputed
  passage store (TILDEv2), with TILDE passage expansion (``tilde_expansion.py``) and the encoder
  and its training (``tilde_model.py``).
- :class:`QueryLikelihoodReranker` (``query_likelihood.py``): log P(query | passage) under a causal LM.

Names are imported lazily, so ``import sparsa.rerank`` loads neither torch nor transformers.
"""

from __future__ import annotations

if __name__ != "sparsa.rerank":  # a bare `import rerank` run from the repo root: see sparsa/toplevel.py
    from sparsa.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)

from sparsa.lazy import lazy_exports

_EXPORTS = {
    "TildeV2Reranker": "sparsa.rerank.tilde",
    "TildeV2Store": "sparsa.rerank.tilde",
    "build_tildev2_store": "sparsa.rerank.tilde",
    "TildeExpander": "sparsa.rerank.tilde_expansion",
    "TildeConfig": "sparsa.rerank.tilde_expansion",
    "train_tilde": "sparsa.rerank.tilde_expansion",
    "TildeV2Encoder": "sparsa.rerank.tilde_model",
    "TildeV2Config": "sparsa.rerank.tilde_model",
    "train_tildev2": "sparsa.rerank.tilde_model",
    "QueryLikelihoodReranker": "sparsa.rerank.query_likelihood",
    "QueryLikelihoodConfig": "sparsa.rerank.query_likelihood",
    "rerank_run": "sparsa.rerank.runs",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - the lazy exports are the public names

__getattr__ = lazy_exports("sparsa.rerank", _EXPORTS)
