"""Agreement of a judge with human qrels (bench/bench_judge.py's report stage).

One model's judge checkpoints -> calibration fitted on the fit queries, label agreement on the held-out
ones (Cohen's kappa with a query-bootstrap interval, Krippendorff's alpha, confusion matrix) and the system
ranking under generated qrels.

Choosing a setting by its held-out figures would select on the test queries, so every setting is also
scored on the fit queries alone (``fit_criteria``: 3-fold cross-validation over them), and
``choose_on_fit`` picks from those scores; its choices' held-out figures are the headline."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from sparsa.eval import evaluate_run
from sparsa.judge.calibration import CALIBRATOR_MODELS
from sparsa.types import Qrels, Run

log = logging.getLogger(__name__)


def read_all_checkpoints(folder: Path, scorer: str) -> dict:
    from sparsa.judge.job import read_checkpoint

    records = {}
    for path in sorted(folder.glob(f"checkpoint-{scorer}*.jsonl")):
        records.update(read_checkpoint(path))
    return records


def complete_depth(runs: dict[str, Run], judged: set, depth: int) -> int:
    """The largest d <= depth such that every run's top d of every query is judged."""
    for d in range(1, depth + 1):
        if any((q, h.doc_id) not in judged for run in runs.values() for q, hits in run.items()
               for h in hits[d - 1 : d]):
            return d - 1
    return depth


def ndcg_matrix(runs: dict[str, Run], qrels: Qrels, qids: list[str], cutoff: int) -> np.ndarray:
    """``float64[runs (sorted by name), queries]``: per-query nDCG@cutoff, 0 where the qrels hold no gain."""
    names = sorted(runs)
    out = np.zeros((len(names), len(qids)))
    for row, name in enumerate(names):
        per_query = evaluate_run(runs[name], qrels, [f"nDCG@{cutoff}"]).per_query
        out[row] = [per_query.get(q, {}).get(f"nDCG@{cutoff}", 0.0) for q in qids]
    return out


def system_ranking(runs: dict[str, Run], human: Qrels, generated: Qrels, qids: list[str], cutoff: int,
                   resamples: int = 0) -> dict:
    """The runs' mean nDCG@cutoff over ``qids`` under both qrels, Kendall's tau and Spearman's rho; with
    ``resamples``, a 95% interval of tau from resampling the queries with replacement."""
    from sparsa.eval.agreement import kendall_tau, spearman_rho

    names = sorted(runs)
    by_human, by_judge = ndcg_matrix(runs, human, qids, cutoff), ndcg_matrix(runs, generated, qids, cutoff)
    means_h, means_g = by_human.mean(1), by_judge.mean(1)
    out = {"queries": len(qids), "measure": f"nDCG@{cutoff}",
           "runs": {n: {"human": round(h, 4), "generated": round(g, 4)}
                    for n, h, g in zip(names, means_h.tolist(), means_g.tolist(), strict=True)},
           "kendall_tau": round(kendall_tau(means_h, means_g), 4),
           "spearman_rho": round(spearman_rho(means_h, means_g), 4)}
    if resamples:
        rng = np.random.default_rng(0)
        draws = [rng.integers(0, len(qids), len(qids)) for _ in range(resamples)]
        with np.errstate(invalid="ignore", divide="ignore"):  # a draw where one side ties every run: nan
            taus = [kendall_tau(by_human[:, d].mean(1), by_judge[:, d].mean(1)) for d in draws]
        out["kendall_tau_95ci_query_bootstrap"] = np.round(np.nanquantile(taus, [0.025, 0.975]), 4).tolist()
    return out


def kappa_interval(qids: list[str], human: np.ndarray, grades: np.ndarray,
                   resamples: int = 1000) -> list[float]:
    """95% interval of the 4-grade kappa, resampling held-out queries with replacement."""
    from sparsa.eval.agreement import cohen_kappa

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


CV_FOLDS = 3
# Each feature setting is calibrated by every GradeCalibrator model; the least-squares one keeps the
# setting's plain name (the first reports' entries), the others are "<setting>/<model>".
QRELS_KINDS = ("discrete", "expected-gain")  # generated qrels: the 0-3 grades, or round(100 * expected grade)
SELECTION_RULE = (
    f"decided on the fit queries only: their ids (sorted) are dealt into {CV_FOLDS} folds by position (i mod "
    f"{CV_FOLDS}); each fold is graded by a calibrator fitted on the other two, giving out-of-fold grades "
    "(and expected grades) for every fit pair. Candidates: every feature setting with every calibrator model "
    "(least-squares, ordinal-logit). kappa: the candidate with the highest 4-grade kappa of those grades "
    "against NIST; system ranking: the candidate and qrels kind (discrete 0-3 grades, or expected-gain: "
    "round(100 * expected grade)) with the highest Kendall tau between the runs' nDCG@10 over the fit "
    "queries under NIST qrels and under those qrels, ties to the higher fit kappa. Remaining ties: the first "
    "in report order (SETTINGS order, least-squares first, discrete first). The held-out figures of the "
    "chosen candidates are reported as they are, whatever the other candidates got.")


def entry_name(setting: str, model: str) -> str:
    return setting if model == "least-squares" else f"{setting}/{model}"


def generated_qrels(judged: list, grades: np.ndarray) -> Qrels:
    generated = Qrels({})
    for (q, d), g in zip(judged, np.asarray(grades).tolist(), strict=True):
        generated.judgements.setdefault(q, {})[d] = g
    return generated


def fit_criteria(features, judged, records, human, fit, fit_qids: list[str], runs, qrels, depth,
                 model: str = "least-squares") -> dict:
    """Out-of-fold grades of the fit pairs (``CV_FOLDS``-fold over the fit queries): their 4-grade kappa
    and, where the runs' top ``depth`` is judged, the system ranking over the fit queries under discrete
    and (``expected_gain``) expected-gain qrels."""
    from sparsa.eval.agreement import cohen_kappa
    from sparsa.judge.calibration import GradeCalibrator, expected_gains

    fold_of = {q: i % CV_FOLDS for i, q in enumerate(sorted(fit_qids))}
    folds = np.array([fold_of[judged[i][0]] for i in fit])
    fit = np.asarray(fit)
    grades = np.zeros(len(fit), dtype=np.int64)
    expected = np.zeros(len(fit))
    for fold in range(CV_FOLDS):
        train, held = fit[folds != fold], folds == fold
        calibrator = GradeCalibrator.fit([records[i] for i in train], human[train], features, model=model)
        grades[held] = calibrator.predict([records[i] for i in fit[held]])
        expected[held] = calibrator.expected_grades([records[i] for i in fit[held]])
    entry = {"folds": CV_FOLDS, "pairs": len(fit),
             "cohen_kappa_4grade": round(float(cohen_kappa(human[fit], grades)), 4)}
    if depth >= 1:
        fit_pairs = [judged[i] for i in fit]
        ranking = system_ranking(runs, qrels, generated_qrels(fit_pairs, grades), fit_qids, depth)
        entry |= {k: ranking[k] for k in ("queries", "measure", "kendall_tau", "spearman_rho")}
        ranking = system_ranking(runs, qrels, generated_qrels(fit_pairs, expected_gains(expected)),
                                 fit_qids, depth)
        entry["expected_gain"] = {k: ranking[k] for k in ("kendall_tau", "spearman_rho")}
    return entry


def ranking_figures(entry: dict, kind: str) -> tuple[dict, dict]:
    """An entry's (fit-CV, held-out) system-ranking figures under qrels of ``kind`` (``QRELS_KINDS``)."""
    if kind == "discrete":
        return entry["fit_queries_cv"], entry.get("system_ranking_held_out", {})
    return (entry["fit_queries_cv"].get("expected_gain", {}),
            entry.get("system_ranking_held_out_expected_gain", {}))


def choose_on_fit(settings: dict, models: tuple[str, ...] | None = None,
                  kinds: tuple[str, ...] = QRELS_KINDS) -> dict:
    """The kappa and system-ranking choices of ``SELECTION_RULE`` with their held-out figures; ``models``
    and ``kinds`` narrow the candidates (e.g. to the first reports' least-squares, discrete ones)."""
    scored = [(name, e) for name, e in settings.items() if "fit_queries_cv" in e and "held_out" in e
              and (models is None or e.get("calibrator", "least-squares") in models)]
    if not scored:
        return {}
    order = {name: i for i, name in enumerate(settings)}

    def kappa_key(item):
        return item[1]["fit_queries_cv"]["cohen_kappa_4grade"], -order[item[0]]

    def tau_key(candidate):
        item, kind = candidate
        tau = ranking_figures(item[1], kind)[0].get("kendall_tau")
        return (tau if tau is not None else float("-inf"),) + kappa_key(item) + (-kinds.index(kind),)

    def figures(item, kind: str = "discrete") -> dict:
        name, entry = item
        held = entry["held_out"]
        fit_ranking, held_ranking = ranking_figures(entry, kind)
        return {"setting": name, "calibrator": entry.get("calibrator", "least-squares"), "qrels": kind,
                "fit_cv_kappa_4grade": entry["fit_queries_cv"]["cohen_kappa_4grade"],
                "fit_cv_kendall_tau": fit_ranking.get("kendall_tau"),
                "held_out_kappa_4grade": held["cohen_kappa_4grade"],
                "held_out_kappa_4grade_95ci": held["cohen_kappa_4grade_95ci_query_bootstrap"],
                "held_out_kappa_binary": held["cohen_kappa_binary"],
                "held_out_alpha_ordinal": held["krippendorff_alpha_ordinal"],
                "held_out_kendall_tau": held_ranking.get("kendall_tau"),
                "held_out_kendall_tau_95ci": held_ranking.get("kendall_tau_95ci_query_bootstrap"),
                "held_out_spearman_rho": held_ranking.get("spearman_rho")}

    return {"for_kappa": figures(max(scored, key=kappa_key)),
            "for_system_ranking": figures(*max(((item, kind) for item in scored for kind in kinds),
                                               key=tau_key))}


def targets(chosen: dict, default_model: str, kappa_target: float = 0.25, tau_target: float = 0.85) -> dict:
    """Issue 8's targets, judged on the chosen-on-fit settings' held-out figures only."""
    out = {}
    for tag, choice in chosen.items():
        if not choice:
            continue
        kappa, tau = choice["for_kappa"], choice["for_system_ranking"]
        out[tag] = {"default_model": tag == default_model,
                    "kappa_4grade_held_out": kappa["held_out_kappa_4grade"],
                    "kappa_setting": kappa["setting"],
                    "kappa_target_met": kappa["held_out_kappa_4grade"] >= kappa_target,
                    "kendall_tau_held_out": tau["held_out_kendall_tau"], "tau_setting": tau["setting"],
                    "tau_qrels": tau["qrels"],
                    "tau_target_met": (tau["held_out_kendall_tau"] or float("-inf")) >= tau_target}
    return {"kappa_4grade_at_least": kappa_target, "kendall_tau_at_least": tau_target,
            "kappa_target_is_about": default_model, "by_model": out}


def headline(models: dict, default_model: str) -> dict:
    """``chosen_on_fit`` (the rule, then each model's choices) and ``targets``."""
    chosen = {tag: choose_on_fit(entry["settings"]) for tag, entry in models.items()}
    # The same rule over narrower candidate pools: what each new option adds on its own.
    pools = {"least-squares, discrete qrels (the earlier reports' pool)": (("least-squares",), ("discrete",)),
             "least-squares, discrete or expected-gain qrels": (("least-squares",), QRELS_KINDS),
             "ordinal-logit, discrete or expected-gain qrels": (("ordinal-logit",), QRELS_KINDS)}
    by_pool = {pool: {tag: choose_on_fit(entry["settings"], *narrowed) for tag, entry in models.items()}
               for pool, narrowed in pools.items()}
    return {"chosen_on_fit": {"rule": SELECTION_RULE} | chosen, "targets": targets(chosen, default_model),
            "chosen_on_fit_by_candidate_pool": by_pool}


def evaluate_setting(features, judged, records, human, fit, test, runs, qrels, test_qids, depth,
                     model: str = "least-squares") -> dict:
    """Calibrate on the fit pairs, then agreement on the held-out pairs and the system ranking under
    discrete and expected-gain qrels (``*_expected_gain``)."""
    from sparsa.eval.agreement import label_agreement
    from sparsa.judge.calibration import GradeCalibrator, argmax_grades, expected_gains

    calibrator = GradeCalibrator.fit([records[i] for i in fit], human[fit], features, model=model)
    grades = calibrator.predict(records)
    entry = {"calibrator": model,
             "calibration": {"weights": dict(zip(features, np.round(calibrator.weights, 4).tolist(),
                                                 strict=True)),
                             "thresholds": np.round(calibrator.thresholds, 4).tolist(),
                             "kappa_on_fit_pairs": calibrator.fitted_on["kappa_on_fit_pairs"]},
             "held_out": label_agreement(human[test], grades[test])}
    entry["held_out"]["cohen_kappa_4grade_95ci_query_bootstrap"] = kappa_interval(
        [judged[i][0] for i in test], human[test], grades[test])
    if "label_probs" in records[0]:
        entry["held_out_uncalibrated_argmax"] = label_agreement(human[test], argmax_grades(records)[test])
    if depth >= 1:
        gains = expected_gains(calibrator.expected_grades(records))
        for suffix, generated in (("", generated_qrels(judged, grades)), ("_expected_gain",
                                                                          generated_qrels(judged, gains))):
            entry[f"system_ranking_held_out{suffix}"] = system_ranking(runs, qrels, generated,
                                                                       test_qids, depth, resamples=1000)
            entry[f"system_ranking_all_queries{suffix}"] = system_ranking(runs, qrels, generated,
                                                                          sorted(qrels), depth)
    return entry


def report_model(folder: Path, data, runs: dict[str, Run], pairs: list, split: tuple[list[str], list[str]],
                 depth: int) -> dict:
    """One model's judging timings and, for each feature setting, calibration and agreement."""
    fit_qids, test_qids = set(split[0]), split[1]
    checkpoints = {s: read_all_checkpoints(folder, s) for s in ("ql", "pl", "umbrela")}
    settings = {}
    for (setting, (needed, features)), model in ((s, m) for s in SETTINGS.items() for m in CALIBRATOR_MODELS):
        name = entry_name(setting, model)
        judged = [p for p in pairs if all(p in checkpoints[s] for s in needed)]
        records = [{k: v for s in needed for k, v in checkpoints[s][p].items() if k != "prompts"}
                   for p in judged]
        human = np.array([data.qrels[q][d] for q, d in judged])
        fit = [i for i, (q, _) in enumerate(judged) if q in fit_qids]
        test = [i for i, (q, _) in enumerate(judged) if q in set(test_qids)]
        complete = complete_depth(runs, set(judged), depth)
        entry = {"pairs_judged": len(judged), "complete_depth": complete, "features": list(features)}
        if len(fit) < 8 or not test:
            settings[name] = {**entry, "note": "too few judged pairs yet"}
            continue
        entry.update(evaluate_setting(features, judged, records, human, fit, test, runs,
                                      data.qrels, test_qids, complete, model))
        entry["fit_queries_cv"] = fit_criteria(features, judged, records, human, fit, split[0],
                                               runs, data.qrels, complete, model)
        settings[name] = entry
        log.info("%s %s: %s", folder.name, name,
                 json.dumps({k: v for k, v in entry.items() if k != "calibration"})[:600])
    return {"judging": judging_timings(folder), "settings": settings}


def summary(settings: dict) -> dict:
    """Per setting: held-out 4-grade kappa (95% CI), binary kappa, ordinal alpha, Kendall's tau, and the
    fit-query cross-validated kappa and tau that ``choose_on_fit`` decides by."""
    rows = {}
    for name, entry in settings.items():
        if "held_out" not in entry:
            continue
        held = entry["held_out"]
        rows[name] = {"pairs": entry["pairs_judged"], "kappa_4grade": held["cohen_kappa_4grade"],
                      "kappa_4grade_95ci": held["cohen_kappa_4grade_95ci_query_bootstrap"],
                      "kappa_binary": held["cohen_kappa_binary"],
                      "alpha_ordinal": held["krippendorff_alpha_ordinal"],
                      "tau_held_out": entry.get("system_ranking_held_out", {}).get("kendall_tau"),
                      "tau_all_queries": entry.get("system_ranking_all_queries", {}).get("kendall_tau"),
                      "tau_held_out_expected_gain": (entry.get("system_ranking_held_out_expected_gain", {})
                                                     .get("kendall_tau"))}
        if "fit_queries_cv" in entry:  # the selection criteria (fit queries only)
            rows[name] |= {"fit_cv_kappa_4grade": entry["fit_queries_cv"]["cohen_kappa_4grade"],
                           "fit_cv_tau": entry["fit_queries_cv"].get("kendall_tau"),
                           "fit_cv_tau_expected_gain": entry["fit_queries_cv"].get("expected_gain", {}).get(
                               "kendall_tau")}
        if "held_out_uncalibrated_argmax" in entry:
            rows[name]["kappa_4grade_uncalibrated_argmax"] = (
                entry["held_out_uncalibrated_argmax"]["cohen_kappa_4grade"])
    return rows


def judging_timings(folder: Path) -> dict:
    """What the score stage recorded per scorer (``timings-*.json``)."""
    return {p.stem.removeprefix("timings-"): json.loads(p.read_text())
            for p in sorted(folder.glob("timings-*.json"))}
