"""Ranking effectiveness with ``ir_measures``: per query and aggregated.

Queries that have judgements but no hits in the run count as zero (like ``trec_eval -c``), so a
system cannot look better by returning nothing for hard queries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sparsa.errors import ConfigError
from sparsa.types import Qrels, Run

# Display name -> ir_measures name. MRR@10 is ir_measures' RR@10 and MAP its AP.
DEFAULT_MEASURES: dict[str, str] = {"nDCG@10": "nDCG@10", "MRR@10": "RR@10", "R@100": "R@100", "MAP": "AP"}


@dataclass(slots=True)
class RankingEval:
    run_name: str
    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    num_queries: int = 0

    def to_json(self) -> dict:
        return {"run": self.run_name, "num_queries": self.num_queries, "aggregate": self.aggregate,
                "per_query": self.per_query}

    def write_json(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_json(), indent=2))


def _parse(names: Sequence[str]) -> dict[str, object]:
    import ir_measures

    measures = {}
    for name in names:
        try:
            measures[name] = ir_measures.parse_measure(DEFAULT_MEASURES.get(name, name))
        except (ValueError, NameError, SyntaxError, TypeError) as exc:
            raise ConfigError(f"unknown measure {name!r} ({exc}); e.g. nDCG@10, "
                              "MRR@10, R@100, MAP, P@5") from None
    return measures


def evaluate_run(run: Run, qrels: Qrels, measures: Sequence[str] = tuple(DEFAULT_MEASURES)) -> RankingEval:
    """Score ``run`` against ``qrels``; only judged queries count, missing ones score zero."""
    import ir_measures

    parsed = _parse(measures)
    judged = [qid for qid in qrels if any(g > 0 for g in qrels[qid].values())]
    per_query: dict[str, dict[str, float]] = {qid: dict.fromkeys(parsed, 0.0) for qid in judged}
    by_measure = {m: name for name, m in parsed.items()}
    for metric in ir_measures.iter_calc(list(parsed.values()), qrels.to_ir_measures(), run.to_ir_measures()):
        if metric.query_id in per_query:
            per_query[metric.query_id][by_measure[metric.measure]] = float(metric.value)
    n = len(per_query)
    aggregate = {name: (sum(q[name] for q in per_query.values()) / n if n else 0.0) for name in parsed}
    return RankingEval(run.name, aggregate, per_query, n)
