"""Knowledge-graph QA: KG retrieval over MetaQA and the Amar head (Xu et al. 2025).

- :class:`KnowledgeGraph` / :class:`KGRetriever` (``kg.py``): triples, MetaQA questions
  (:func:`load_metaqa`), and Amar's three aspects per question (entities, relations, paths).
- :class:`AmarModel` (``amar.py``): gates and self-alignment soft prompts over those aspects for a causal
  LM reader; :func:`train_amar` (``amar_train.py``) trains it in two stages.

Names are imported lazily, so ``import sparsa.kg`` loads neither torch nor transformers.
"""

from __future__ import annotations

if __name__ != "sparsa.kg":  # a bare `import kg` run from the repo root: see sparsa/toplevel.py
    from sparsa.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)

from sparsa.lazy import lazy_exports

_EXPORTS = {
    "KGQuestion": "sparsa.kg.kg",
    "KGRetrieval": "sparsa.kg.kg",
    "KGRetriever": "sparsa.kg.kg",
    "KnowledgeGraph": "sparsa.kg.kg",
    "PathItem": "sparsa.kg.kg",
    "load_metaqa": "sparsa.kg.kg",
    "retrieve_cached": "sparsa.kg.kg",
    "ChatPieces": "sparsa.kg.amar_prompt",
    "chat_pieces": "sparsa.kg.amar_prompt",
    "AmarConfig": "sparsa.kg.amar",
    "AmarModel": "sparsa.kg.amar",
    "AspectItem": "sparsa.kg.amar",
    "aspect_items": "sparsa.kg.amar",
    "first_answer": "sparsa.kg.amar",
    "hits_at_1": "sparsa.kg.amar",
    "AmarTrainConfig": "sparsa.kg.amar_train",
    "train_amar": "sparsa.kg.amar_train",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - the lazy exports are the public names

__getattr__ = lazy_exports("sparsa.kg", _EXPORTS)
