"""Query and document encoders: SPLADE (MLM and decoder backbones), dense bi-encoders, training.

Names load on first use, so ``import sparsa.retrieval`` stays free of torch.
"""

from __future__ import annotations

from sparsa.lazy import lazy_exports

_EXPORTS = {
    "SpladeConfig": "sparsa.retrieval.splade",
    "SpladeEncoder": "sparsa.retrieval.splade",
    "DenseConfig": "sparsa.retrieval.dense",
    "DenseEncoder": "sparsa.retrieval.dense",
    "EncodedRetriever": "sparsa.retrieval.searcher",
    "as_retriever": "sparsa.retrieval.searcher",
    "SpladeTrainConfig": "sparsa.retrieval.splade_train",
    "train_splade": "sparsa.retrieval.splade_train",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - the lazy exports are the public names

__getattr__ = lazy_exports("sparsa.retrieval", _EXPORTS)
