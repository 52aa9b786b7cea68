"""Name-based registries, only where users choose between implementations.

Each entry maps a name to a ``"module:attribute"`` string, so listing names imports nothing and
``get(name)`` imports on demand.
"""

from __future__ import annotations

import importlib
from typing import Any

from sparsa.errors import UnknownNameError


class Registry:
    def __init__(self, kind: str, entries: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, str] = dict(entries or {})

    def register(self, name: str, target: str) -> None:
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attribute', got {target!r}")
        self._entries[name] = target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def target(self, name: str) -> str:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self._entries)
        return self._entries[name]

    def get(self, name: str) -> Any:
        module, _, attribute = self.target(name).partition(":")
        return getattr(importlib.import_module(module), attribute)


# Index backends, by the ``kind`` stored in each index's sparsa.json (the CLI's ``--kind`` and the service's
# retriever names too). Manifests written before "splade" was the one name say "sparse":
# read_manifest maps it.
INDEX_BACKENDS = Registry("index kind", {
    "bm25": "sparsa.indexes.lucene:LuceneBM25Index",
    "splade": "sparsa.indexes.learned_sparse:LearnedSparseIndex",
    "dense": "sparsa.indexes.dense_index:DenseIndex",
})

# Search structures over a dense index's stored vectors (faiss; flat also runs without faiss).
DENSE_BACKENDS = Registry("dense structure", {
    "flat": "sparsa.indexes.vector_search:FlatStructure",
    "hnsw": "sparsa.indexes.vector_search:HNSWStructure",
    "ivfpq": "sparsa.indexes.vector_search:IVFPQStructure",
})

# Search structures over a learned-sparse index's stored vectors: build(matrix, folder, config),
# open(folder, matrix, config), search_vectors(vectors, k).
SPARSE_BACKENDS = Registry("sparse backend", {
    "exact": "sparsa.indexes.exact_sparse:ExactSparseSearcher",
    "seismic": "sparsa.indexes.seismic_index:SeismicSearcher",
    "lucene-impact": "sparsa.indexes.lucene_impact:LuceneImpactSearcher",
})

# Query/document encoders, rebuilt from the spec an index's manifest records.
ENCODERS = Registry("encoder", {
    "splade": "sparsa.retrieval.splade:SpladeEncoder",
    "dense": "sparsa.retrieval.dense:DenseEncoder",
})

# Rerankers: each class has ``load(path)`` (a TILDEv2 store folder, or an LM name/folder).
RERANKERS = Registry("reranker", {
    "tildev2": "sparsa.rerank.tilde:TildeV2Reranker",
    "query-likelihood": "sparsa.rerank.query_likelihood:QueryLikelihoodReranker",
})


def build_encoder(spec: dict[str, Any], **overrides: Any) -> Any:
    """An encoder rebuilt from its ``spec()`` (as an index manifest records it); ``overrides``
    change run-time fields such as the device."""
    cls = ENCODERS.get(spec["name"])
    return cls(cls.config_class(**{**spec["config"], **overrides}))
