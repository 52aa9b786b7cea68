"""Retrieval-augmented QA: reader, generation, retrieve-or-recall routing, the QA pipeline.

- :class:`Reader` (``reader.py``): a causal LM answers from packed passages and cites them by id;
  greedy generation with streaming in ``generate.py``; answer extraction and EM/F1 in ``answer_text.py``.
- :class:`Router` (``routing.py``): WiTQA-style retrieve-or-recall decisions from corpus popularity
  and the LM's confidence, with a threshold fitted on dev questions.
- :class:`QAPipeline` / :func:`load_pipeline` (``pipeline.py``): route -> retrieve -> rerank -> read.

Knowledge-graph QA (Amar) is :mod:`sparsa.kg`; LLM relevance judging is :mod:`sparsa.judge`.

Names are imported lazily, so ``import sparsa.rag`` loads neither torch nor transformers.
"""

from __future__ import annotations

if __name__ != "sparsa.rag":  # a bare `import rag` run from the repo root: see sparsa/toplevel.py
    from sparsa.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)

from sparsa.lazy import lazy_exports

_EXPORTS = {
    "Reader": "sparsa.rag.reader",
    "ReaderConfig": "sparsa.rag.reader",
    "ReaderOutput": "sparsa.rag.reader",
    "Router": "sparsa.rag.routing",
    "RouterModel": "sparsa.rag.routing",
    "fit_router": "sparsa.rag.routing",
    "Answer": "sparsa.rag.pipeline",
    "QAPipeline": "sparsa.rag.pipeline",
    "load_pipeline": "sparsa.rag.pipeline",
    "exact_match": "sparsa.rag.answer_text",
    "token_f1": "sparsa.rag.answer_text",
}

__all__ = ["Answer", "QAPipeline", "Reader", "ReaderConfig", "ReaderOutput", "Router", "RouterModel",
           "exact_match", "fit_router", "load_pipeline", "token_f1"]

__getattr__ = lazy_exports("sparsa.rag", _EXPORTS)
