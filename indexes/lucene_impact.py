"""Learned-sparse search with a Lucene impact index (Anserini ``JsonVectorCollection``).

Document and query weights are quantized with the same scale (``indexes/quantize.py``); scores are
divided by scale^2 so they stay comparable to exact float dot products.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sparsa.errors import ConfigError, IndexCorruptError
from sparsa.indexes.lucene import start_java
from sparsa.indexes.quantize import DEFAULT_SCALE, impact_dict
from sparsa.indexes.sparse_matrix import SparseMatrix
from sparsa.types import Hit, SparseVector

FOLDER = "lucene-impact"


@dataclass(frozen=True, slots=True)
class ImpactConfig:
    scale: float = DEFAULT_SCALE
    threads: int = 2

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.threads < 1:
            raise ConfigError(f"invalid impact index settings: {self}")


class LuceneImpactSearcher:
    name = "lucene-impact"

    def __init__(self, folder: Path, config: ImpactConfig):
        start_java()
        from jnius import JavaException, autoclass

        self.config = config
        try:
            self._searcher = autoclass("io.anserini.search.SimpleImpactSearcher")(str(folder / FOLDER))
        except JavaException as exc:
            raise IndexCorruptError(f"{folder}: Lucene could not open the impact "
                                    f"index ({exc}); rebuild it") from None

    @classmethod
    def build(cls, matrix: SparseMatrix, folder: Path, config: dict) -> LuceneImpactSearcher:
        config = ImpactConfig(**config)
        start_java()
        from jnius import autoclass

        source = folder / "impact-input"
        source.mkdir()
        with open(source / "docs.jsonl", "w", encoding="utf-8") as f:
            for i, doc_id in enumerate(matrix.doc_ids):
                vector = impact_dict(matrix.row(i), config.scale)
                f.write(json.dumps({"id": doc_id, "contents": "", "vector": vector}) + "\n")
        autoclass("io.anserini.index.IndexCollection").main([
            "-collection", "JsonVectorCollection", "-input", str(source), "-index", str(folder / FOLDER),
            "-generator", "DefaultLuceneDocumentGenerator", "-impact", "-pretokenized",
            "-threads", str(config.threads), "-quiet",
        ])
        (source / "docs.jsonl").unlink()
        source.rmdir()
        return cls(folder, config)

    @classmethod
    def open(cls, folder: Path, matrix: SparseMatrix, config: dict) -> LuceneImpactSearcher:
        return cls(folder, ImpactConfig(**config))

    def settings(self) -> dict:
        return asdict(self.config)

    def search_vectors(self, queries: Sequence[SparseVector], k: int) -> list[list[Hit]]:
        from jnius import autoclass

        HashMap, ArrayList = autoclass("java.util.HashMap"), autoclass("java.util.ArrayList")
        Integer = autoclass("java.lang.Integer")
        jqueries, qids = ArrayList(), ArrayList()
        for i, q in enumerate(queries):
            jquery = HashMap()
            for term, weight in impact_dict(q, self.config.scale).items():
                jquery.put(term, Integer(weight))
            jqueries.add(jquery)
            qids.add(str(i))
        found = self._searcher.batch_search(jqueries, qids, int(k), int(self.config.threads))
        by_qid = {entry.getKey(): entry.getValue() for entry in found.entrySet().toArray()}
        norm = self.config.scale**2
        return [[Hit(h.docid, float(h.score) / norm) for h in by_qid.get(str(i), [])]
                for i in range(len(queries))]
