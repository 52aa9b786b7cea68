"""Rerank a whole first-stage run: what ``sparsa rerank`` and the benchmarks call."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from sparsa.errors import ConfigError
from sparsa.types import Corpus, Query, Run

logger = logging.getLogger(__name__)


def rerank_run(reranker: object, run: Run, queries: Sequence[Query] | Mapping[str, Query], corpus: Corpus,
               depth: int | None = 100, top_k: int | None = None, show_progress: bool | None = None) -> Run:
    """Rerank each query's top ``depth`` hits of ``run`` (None: all) and keep the best ``top_k``.

    Queries of the run missing from ``queries`` are an error, as are hits naming documents that
    ``corpus`` lacks. Uses the reranker's ``rerank_batch`` when it has one.
    """
    by_id = queries if isinstance(queries, Mapping) else {q.id: q for q in queries}
    missing = [qid for qid in run if qid not in by_id]
    if missing:
        raise ConfigError(f"{len(missing)} run queries have no text (e.g. {missing[0]!r})")
    qids = list(run)
    try:
        candidates = [[corpus[h.doc_id] for h in run[qid][:depth]] for qid in qids]
    except KeyError as exc:
        raise ConfigError(f"the run names document {exc.args[0]!r}, which the corpus lacks") from None
    topics = [by_id[qid] for qid in qids]
    if hasattr(reranker, "rerank_batch"):
        ranked = reranker.rerank_batch(topics, candidates, top_k, show_progress=show_progress)
    else:
        ranked = [reranker.rerank(q, docs, top_k) for q, docs in zip(topics, candidates, strict=True)]
    logger.info("reranked %d queries (depth %s)", len(qids), depth)
    return Run(dict(zip(qids, ranked, strict=True)), name=f"{run.name}-reranked")
