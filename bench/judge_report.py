"""The report stage's figures for bench_judge.py: one model's judge checkpoints -> calibration fitted
on the fit queries, label agreement on the held-out ones (Cohen's kappa with a query-bootstrap
interval, Krippendorff's alpha, confusion matrix) and the system ranking under generated qrels."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from sparsa.eval import evaluate_run
from sparsa.types import Qrels, Run

log = logging.getLogger("bench_judge")


def read_all_checkpoints(folder: Path, scorer: str) -> dict:
    from sparsa.rag.judge_job import read_checkpoint

    records = {}
    for path in sorted(folder.glob(f"checkpoint-{scorer}*.jsonl")):
        records.update(read_checkpoint(path))
    return records


def complete_depth(runs: dict[str, Run], judged: set, depth: int) -> int:
    """The largest d <= depth such that every run's top d of every query is judged."""
    for d in range(1, depth + 1):
        if any((q, h.doc_id) not in judged for run in runs.values() for q, hits in run.items() for h in hits[d - 1 : d]):
            return d - 1
    return depth


def mean_ndcg(run: Run, qrels: Qrels, qids: list[str], cutoff: int) -> float:
    per_query = evaluate_run(run, qrels, [f"nDCG@{cutoff}"]).per_query
    return sum(per_query.get(q, {}).get(f"nDCG@{cutoff}", 0.0) for q in qids) / len(qids)


def system_ranking(runs: dict[str, Run], human: Qrels, generated: Qrels, qids: list[str], cutoff: int) -> dict:
    from sparsa.rag.agreement import kendall_tau, spearman_rho

    names = sorted(runs)
    by_human = [mean_ndcg(runs[n], human, qids, cutoff) for n in names]
    by_judge = [mean_ndcg(runs[n], generated, qids, cutoff) for n in names]
    return {"queries": len(qids), "measure": f"nDCG@{cutoff}",
            "runs": {n: {"human": round(h, 4), "generated": round(g, 4)} for n, h, g in zip(names, by_human, by_judge,
                                                                                           strict=True)},
            "kendall_tau": round(kendall_tau(by_human, by_judge), 4),
            "spearman_rho": round(spearman_rho(by_human, by_judge), 4)}


def kappa_interval(qids: list[str], human: np.ndarray, grades: np.ndarray, resamples: int = 1000) -> list[float]:
    """95% interval of the 4-grade kappa, resampling held-out queries with replacement."""
    from sparsa.rag.agreement import cohen_kappa

    rng = np.random.default_rng(0)
    by_query = {q: np.flatnonzero(np.asarray(qids) == q) for q in dict.fromkeys(qids)}
    names = list(by_query)
    values = []
    for _ in range(resamples):
        rows = np.concatenate([by_query[names[i]] for i in rng.integers(0, len(names), len(names))])
        values.append(cohen_kappa(human[rows], grades[rows]))
    return np.round(np.quantile(values, [0.025, 0.975]), 4).tolist()


QL_PMI, PL_PMI = ("ql_pmi_ens", "ql_pmi_ens_z"), ("pl_pmi", "pl_pmi_z", "pl_pmi_mean", "pl_pmi_mean_z")
UMBRELA = ("expected_grade", "p3", "expected_grade_z")
SETTINGS = {  # name: (scorers needed, features); "ql+pl" is the calibrator's default where UMBRELA is absent
    "ql": (("ql",), ("ql_mean", "ql_mean_z")),
    "ql-pmi": (("ql",), ("ql_pmi", "ql_pmi_z")),
    "ql-pmi-4prompts": (("ql",), QL_PMI),
    "pl-pmi": (("pl",), PL_PMI),
    "ql+pl": (("ql", "pl"), QL_PMI + PL_PMI),
    "umbrela": (("umbrela",), UMBRELA),
    "umbrela+ql": (("umbrela", "ql"), UMBRELA + QL_PMI),
    "umbrela+ql+pl": (("umbrela", "ql", "pl"), UMBRELA + QL_PMI + PL_PMI),
}


def evaluate_setting(features, judged, records, human, fit, test, runs, qrels, test_qids, depth) -> dict:
    """Calibrate on the fit pairs, then agreement on the held-out pairs and the system ranking."""
    from sparsa.rag.agreement import label_agreement
    from sparsa.rag.calibration import GradeCalibrator, argmax_grades

    calibrator = GradeCalibrator.fit([records[i] for i in fit], human[fit], features)
    grades = calibrator.predict(records)
    entry = {"calibration": {"weights": dict(zip(features, np.round(calibrator.weights, 4).tolist(), strict=True)),
                             "thresholds": np.round(calibrator.thresholds, 4).tolist(),
                             "kappa_on_fit_pairs": calibrator.fitted_on["kappa_on_fit_pairs"]},
             "held_out": label_agreement(human[test], grades[test])}
    entry["held_out"]["cohen_kappa_4grade_95ci_query_bootstrap"] = kappa_interval(
        [judged[i][0] for i in test], human[test], grades[test])
    if "label_probs" in records[0]:
        entry["held_out_uncalibrated_argmax"] = label_agreement(human[test], argmax_grades(records)[test])
    if depth >= 1:
        generated = Qrels({})
        for (q, d), g in zip(judged, grades.tolist(), strict=True):
            generated.judgements.setdefault(q, {})[d] = g
        entry["system_ranking_held_out"] = system_ranking(runs, qrels, generated, test_qids, depth)
        entry["system_ranking_all_queries"] = system_ranking(runs, qrels, generated, sorted(qrels), depth)
    return entry


def report_model(folder: Path, data, runs: dict[str, Run], pairs: list, split: tuple[list[str], list[str]],
                 depth: int) -> dict:
    """One model's judging timings and, for each feature setting, calibration and agreement."""
    fit_qids, test_qids = set(split[0]), split[1]
    checkpoints = {s: read_all_checkpoints(folder, s) for s in ("ql", "pl", "umbrela")}
    settings = {}
    for setting, (needed, features) in SETTINGS.items():
        judged = [p for p in pairs if all(p in checkpoints[s] for s in needed)]
        records = [{k: v for s in needed for k, v in checkpoints[s][p].items() if k != "prompts"} for p in judged]
        human = np.array([data.qrels[q][d] for q, d in judged])
        fit = [i for i, (q, _) in enumerate(judged) if q in fit_qids]
        test = [i for i, (q, _) in enumerate(judged) if q in set(test_qids)]
        complete = complete_depth(runs, set(judged), depth)
        entry = {"pairs_judged": len(judged), "complete_depth": complete, "features": list(features)}
        if len(fit) < 8 or not test:
            settings[setting] = {**entry, "note": "too few judged pairs yet"}
            continue
        entry.update(evaluate_setting(features, judged, records, human, fit, test, runs, data.qrels, test_qids,
                                      complete))
        settings[setting] = entry
        log.info("%s %s: %s", folder.name, setting,
                 json.dumps({k: v for k, v in entry.items() if k != "calibration"})[:600])
    return {"judging": judging_timings(folder), "settings": settings}


def summary(settings: dict) -> dict:
    """Per setting: held-out 4-grade kappa (95% CI), binary kappa, ordinal alpha, Kendall's tau."""
    rows = {}
    for name, entry in settings.items():
        if "held_out" not in entry:
            continue
        held = entry["held_out"]
        rows[name] = {"pairs": entry["pairs_judged"], "kappa_4grade": held["cohen_kappa_4grade"],
                      "kappa_4grade_95ci": held["cohen_kappa_4grade_95ci_query_bootstrap"],
                      "kappa_binary": held["cohen_kappa_binary"], "alpha_ordinal": held["krippendorff_alpha_ordinal"],
                      "tau_held_out": entry.get("system_ranking_held_out", {}).get("kendall_tau"),
                      "tau_all_queries": entry.get("system_ranking_all_queries", {}).get("kendall_tau")}
        if "held_out_uncalibrated_argmax" in entry:
            rows[name]["kappa_4grade_uncalibrated_argmax"] = entry["held_out_uncalibrated_argmax"]["cohen_kappa_4grade"]
    return rows


def judging_timings(folder: Path) -> dict:
    """What the score stage recorded per scorer (``timings-*.json``)."""
    return {p.stem.removeprefix("timings-"): json.loads(p.read_text()) for p in sorted(folder.glob("timings-*.json"))}
