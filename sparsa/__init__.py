"""sparsa: learned sparse retrieval and retrieval-augmented QA in one toolkit.

``import sparsa`` loads only the standard library and numpy; models, Lucene and GPU code load
inside the subpackages that need them.
"""

from __future__ import annotations

from sparsa.errors import (
    ConfigError,
    DataFormatError,
    IndexCorruptError,
    MissingDependencyError,
    ModelNotFoundError,
    SparsaError,
    UnknownNameError,
)
from sparsa.types import Corpus, Document, Hit, Qrels, Query, Run, SparseVector

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Corpus",
    "DataFormatError",
    "Document",
    "Hit",
    "IndexCorruptError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "Qrels",
    "Query",
    "Run",
    "SparsaError",
    "SparseVector",
    "UnknownNameError",
    "__version__",
]
