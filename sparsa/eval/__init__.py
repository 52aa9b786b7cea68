"""Evaluation: ranking metrics through ir_measures; agreement between judges (kappa, alpha, tau, rho)."""

from __future__ import annotations

from sparsa.eval.agreement import (
    cohen_kappa,
    kendall_tau,
    krippendorff_alpha,
    label_agreement,
    spearman_rho,
)
from sparsa.eval.ranking import DEFAULT_MEASURES, RankingEval, evaluate_run

__all__ = ["DEFAULT_MEASURES", "RankingEval", "cohen_kappa", "evaluate_run", "kendall_tau",
           "krippendorff_alpha", "label_agreement", "spearman_rho"]
