"""Search structures over stored dense vectors: faiss Flat / HNSW / IVF-PQ and exact torch/numpy search.

Every searcher answers
``search_vectors(queries float32[q, d], k) -> (scores float32[q, k], rows int64[q, k])`` by inner product
(row -1: fewer than k found). A structure is chosen by name (``DENSE_BACKENDS`` in
``sparsa/registry.py``) and saved as ``<name>.faiss`` beside the vectors, so it can be rebuilt any
time from them. Where it runs:

- faiss with GPU support and a CUDA device: the faiss index is copied to the GPU (HNSW stays on CPU,
  faiss has no GPU HNSW);
- a CUDA device without faiss-gpu: exact search with torch on the GPU, whatever structure was built
  (an exact scan of a few million vectors on a GPU is faster than a CPU graph, and never misses);
- CPU: the faiss structure; without faiss installed only ``flat`` works, as a numpy scan.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sparsa.config import resolve_device
from sparsa.errors import ConfigError, require

logger = logging.getLogger(__name__)

_SCORE_BLOCK = 1 << 26  # elements of the [queries, documents] score block computed at once


def _faiss() -> Any:
    return require("faiss", "faiss")


def _faiss_optional() -> Any | None:
    try:
        return _faiss()
    except ImportError:
        return None


def _topk_numpy(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else \
        np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    picked = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    return np.take_along_axis(picked, order, axis=1), np.take_along_axis(top, order, axis=1).astype(np.int64)


class ExactSearch:
    """Exact inner-product top-k: blocks of queries against all vectors, on CPU (numpy) or CUDA (torch)."""

    def __init__(self, vectors: np.ndarray, device: str = "cpu"):
        self.device = device
        if device == "cpu":
            self.vectors = vectors
        else:
            import torch

            self.vectors = torch.from_numpy(np.ascontiguousarray(vectors)).to(device)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        block = max(1, _SCORE_BLOCK // max(1, len(self)))
        scores, rows = [], []
        for start in range(0, len(queries), block):
            chunk = queries[start : start + block]
            if self.device == "cpu":
                s, r = _topk_numpy(chunk @ self.vectors.T, k)
            else:
                import torch

                with torch.inference_mode():
                    top = torch.topk(torch.from_numpy(chunk).to(self.device) @ self.vectors.T, k, dim=1)
                    s, r = top.values.cpu().numpy(), top.indices.cpu().numpy().astype(np.int64)
            scores.append(s)
            rows.append(r)
        if not scores:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(scores), np.concatenate(rows)


class FaissStructure:
    """One named faiss structure; subclasses say how to make it and which knobs it takes."""

    name = "flat"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, index: Any, config: dict[str, Any]):
        self.index, self.config = index, config

    @classmethod
    def settings_for(cls, n: int, dim: int, config: dict[str, Any]) -> dict[str, Any]:
        unknown = set(config) - set(cls.defaults)
        if unknown:
            raise ConfigError(f"{cls.name}: unknown setting(s) {sorted(unknown)}; known: "
                              f"{sorted(cls.defaults)}")
        return {**cls.defaults, **config}

    @classmethod
    def make(cls, dim: int, settings: dict[str, Any]) -> Any:
        faiss = _faiss()
        return faiss.IndexFlatIP(dim)

    @classmethod
    def build(cls, vectors: np.ndarray, config: dict[str, Any] | None = None) -> FaissStructure:
        settings = cls.settings_for(len(vectors), vectors.shape[1], dict(config or {}))
        index = cls.make(vectors.shape[1], settings)
        if not index.is_trained:
            index.train(_training_sample(vectors, settings.get("train_size", 0)))
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        structure = cls(index, settings)
        structure.apply_search_settings()
        return structure

    def apply_search_settings(self) -> None:
        """Query-time knobs (efSearch, nprobe) live in the manifest, not in the faiss file."""

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def save(self, folder: Path) -> None:
        _faiss().write_index(self.index, str(folder / f"{self.name}.faiss"))

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any], vectors: np.ndarray) -> FaissStructure:
        structure = cls(_faiss().read_index(str(folder / f"{cls.name}.faiss")), settings)
        structure.apply_search_settings()
        return structure

    def to_gpu(self) -> bool:
        """Move the faiss index to the GPU if this faiss build can; False if it stays on CPU."""
        faiss = _faiss()
        if not hasattr(faiss, "StandardGpuResources"):
            return False
        self._gpu_resources = faiss.StandardGpuResources()
        self.index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
        return True

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows.astype(np.int64)


class FlatStructure(FaissStructure):
    """Exact search. The stored vectors are the whole index: nothing extra is written to disk."""

    name = "flat"

    @classmethod
    def build(cls, vectors: np.ndarray, config: dict[str, Any] | None = None) -> FaissStructure:
        return cls(None, cls.settings_for(len(vectors), vectors.shape[1], dict(config or {})))

    def add(self, vectors: np.ndarray) -> None:
        pass

    def save(self, folder: Path) -> None:
        pass

    @classmethod
    def load(cls, folder: Path, settings: dict[str, Any], vectors: np.ndarray) -> FaissStructure:
        index = _faiss().IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index, settings)


class HNSWStructure(FaissStructure):
    """Graph search (Malkov & Yashunin): ``m`` links per node, ``ef_construction`` / ``ef_search`` beams."""

    name = "hnsw"
    defaults: ClassVar[dict[str, Any]] = {"m": 32, "ef_construction": 200, "ef_search": 128}

    @classmethod
    def make(cls, dim: int, settings: dict[str, Any]) -> Any:
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(dim, int(settings["m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(settings["ef_construction"])
        return index

    def apply_search_settings(self) -> None:
        self.index.hnsw.efSearch = int(self.config["ef_search"])

    def to_gpu(self) -> bool:
        return False  # faiss has no GPU HNSW


class IVFPQStructure(FaissStructure):
    """Inverted lists over ``nlist`` k-means cells, vectors PQ-coded in ``m`` sub-quantizers of ``nbits``."""

    name = "ivfpq"
    defaults: ClassVar[dict[str, Any]] = {"nlist": None, "m": None, "nbits": 8, "nprobe": 16,
                                          "train_size": 100_000}

    @classmethod
    def settings_for(cls, n: int, dim: int, config: dict[str, Any]) -> dict[str, Any]:
        settings = super().settings_for(n, dim, config)
        # k-means wants ~39+ points per centroid: cap the cell count and code size on small sets.
        if settings["nlist"] is None:
            settings["nlist"] = max(1, min(int(4 * math.sqrt(n)), n // 39))
        if settings["m"] is None:
            settings["m"] = next(m for m in (48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dim % m == 0)
        settings["nbits"] = max(1, min(int(settings["nbits"]), int(math.log2(max(2, n // 39)))))
        if dim % int(settings["m"]):
            raise ConfigError(f"ivfpq: m={settings['m']} must divide the dimension {dim}")
        return settings

    @classmethod
    def make(cls, dim: int, settings: dict[str, Any]) -> Any:
        faiss = _faiss()
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, int(settings["nlist"]), int(settings["m"]),
                                 int(settings["nbits"]), faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
        return index

    def apply_search_settings(self) -> None:
        self.index.nprobe = int(self.config["nprobe"])


def _training_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    if not size or len(vectors) <= size:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def open_searcher(structure_cls: type[FaissStructure], folder: Path, settings: dict, vectors: np.ndarray,
                  device: str = "auto") -> Any:
    """The searcher to use here: see the module docstring for the device rules."""
    device = resolve_device(device)
    faiss = _faiss_optional()
    if device != "cpu":
        if faiss is not None:
            structure = structure_cls.load(folder, settings, vectors)
            if structure.to_gpu():
                logger.info("dense search: faiss %s on %s", structure.name, device)
                return structure
        logger.info("dense search: exact torch scan on %s (no faiss-gpu)", device)
        return ExactSearch(vectors, device)
    if faiss is None and structure_cls is FlatStructure:
        return ExactSearch(vectors, "cpu")
    return structure_cls.load(folder, settings, vectors)  # needs faiss: says which extra to install
