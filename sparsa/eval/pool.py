"""The judged pool: each query's judged documents ranked by a run (TREC-style pool evaluation).

Used by ``sparsa search --pool`` and ``sparsa rerank --pool`` and by the benches that rank or rerank
only each query's judged documents (``bench/bench_judge.py``, ``bench/bench_rerank.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from sparsa.types import Hit, Qrels, Run, sort_hits


def judged_pool_run(run: Run | Mapping[str, list[Hit]], qrels: Qrels, name: str | None = None) -> Run:
    """Every query of ``qrels`` ranked over its judged documents only, in ``run``'s order (by score,
    ties by doc id); judged documents the run lacks come last, in doc-id order, so each query's list is
    its whole pool. Run hits that are not judged drop out; queries the run lacks get their pool in
    doc-id order."""
    ranked = {}
    for qid, judged in qrels.items():
        hits = sort_hits([h for h in run.get(qid, []) if h.doc_id in judged])
        seen = {h.doc_id for h in hits}
        floor = min((h.score for h in hits), default=0.0)
        # below every retrieved score, in doc-id order (the small steps keep the order under sorting)
        hits += [Hit(d, floor - 1.0 - i * 1e-6) for i, d in enumerate(sorted(set(judged) - seen))]
        ranked[qid] = hits
    return Run(ranked, name=name or getattr(run, "name", "pool"))
