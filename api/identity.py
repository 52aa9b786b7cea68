"""Is a served index of the served corpus? (409 when not.)

Index manifests record their corpus (``sparsa.artifacts.corpus_identity``: name, document count and a
hash of the sorted document ids). The service reads the same from the documents it serves (a document
store records it: ``sparsa.docstore``) and refuses,
at start-up, on swap and on ``/qa``, an index built from another collection. An index whose manifest
predates identities is served with a warning; if its hits then name documents the corpus lacks,
the request is refused with 409 too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sparsa.artifacts import corpus_mismatch
from sparsa.errors import SparsaError

logger = logging.getLogger(__name__)


class IndexMismatchError(SparsaError):
    """An index does not belong to the served corpus (answered with 409)."""


def check_index(retriever: str, path: Path, manifest: dict[str, Any],
                served: dict[str, Any] | None) -> str | None:
    """Raise ``IndexMismatchError`` for an index of another corpus; return a warning for one whose
    manifest records no corpus (or when no corpus is served to compare with); None when it matches."""
    if served is None:
        return None
    reason = corpus_mismatch(manifest, served)
    if reason is not None:
        raise IndexMismatchError(f"index {Path(path).name} refused for {retriever}: {reason}")
    if not isinstance(manifest.get("corpus"), dict):
        warning = (f"index {Path(path).name} ({retriever}) records no corpus (built before sparsa recorded "
                   "one): it is served unchecked; rebuild it to have it checked")
        logger.warning(warning)
        return warning
    return None


def check_hits(retriever: str, doc_ids: Iterable[str], corpus: Any) -> None:
    """For an index without a recorded corpus: hits the served corpus lacks mean another collection."""
    missing = [d for d in doc_ids if d not in corpus]
    if missing:
        raise IndexMismatchError(f"the {retriever} index returned {len(missing)} document id(s) the served "
                                 f"corpus lacks (e.g. {missing[0]!r}): it was built from another collection "
                                 "(its manifest records no corpus); rebuild it from this server's dataset")
