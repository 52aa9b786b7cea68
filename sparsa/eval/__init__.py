"""Evaluation: ranking metrics through ir_measures (QA and agreement metrics join here later)."""

from __future__ import annotations

from sparsa.eval.ranking import DEFAULT_MEASURES, RankingEval, evaluate_run

__all__ = ["DEFAULT_MEASURES", "RankingEval", "evaluate_run"]
