"""Query and document encoders: SPLADE (MLM and decoder backbones), dense bi-encoders, training.

Names load on first use, so ``import sparsa.retrieval`` stays free of torch.
"""

from __future__ import annotations

if __name__ != "sparsa.retrieval":  # a bare `import retrieval` run from the repo root: see sparsa/toplevel.py
    from sparsa.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)

from sparsa.lazy import lazy_exports

_EXPORTS = {
    "SpladeConfig": "sparsa.retrieval.splade",
    "SpladeEncoder": "sparsa.retrieval.splade",
    "DenseConfig": "sparsa.retrieval.dense",
    "DenseEncoder": "sparsa.retrieval.dense",
    "SpladeTrainConfig": "sparsa.retrieval.splade_train",
    "train_splade": "sparsa.retrieval.splade_train",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - the lazy exports are the public names

__getattr__ = lazy_exports("sparsa.retrieval", _EXPORTS)
