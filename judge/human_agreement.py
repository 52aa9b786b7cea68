"""How a judging job's qrels agree with human qrels: the report of ``sparsa judge ... --report FILE``.

For the pairs both sides graded: Cohen's kappa on the 0-3 grades and on binary relevance (0-1 vs 2-3, as
LLMJudge reports it), quadratic-weighted kappa, Krippendorff's alpha (ordinal and interval), accuracy and
the confusion matrix (:func:`sparsa.eval.agreement.label_agreement`), with a 95% interval of the 4-grade
kappa from resampling queries. With two or more system runs: each run's mean nDCG@10 under the human
and under the generated qrels, and Kendall's tau (and Spearman's rho) between the two orderings
(:func:`sparsa.judge.report.system_ranking`). When a calibration was fitted on the first queries, the
same figures on the held-out queries come first: those are the ones that measure the judge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sparsa.errors import ConfigError
from sparsa.types import Qrels, Run

Pair = tuple[str, str]


def agreement(grades: Mapping[Pair, int], human: Qrels, queries: Sequence[str] | None = None,
              runs: Mapping[str, Run] | None = None, cutoff: int = 10, resamples: int = 1000,
              ranking_gains: Mapping[Pair, int] | None = None) -> dict:
    """Agreement of the judge's 0-3 ``grades`` with ``human`` on the pairs of ``queries`` (default all).
    ``ranking_gains``: the qrels values the systems are ranked under (e.g. expected gains), if not the
    grades."""
    from sparsa.eval.agreement import label_agreement
    from sparsa.judge.report import generated_qrels, kappa_interval, system_ranking

    wanted = set(queries) if queries is not None else {q for q, _ in grades}
    judged = [p for p in grades if p[0] in wanted]
    both = [p for p in judged if p[1] in human.get(p[0], {})]
    out: dict = {"queries": len({q for q, _ in judged}), "pairs_judged": len(judged),
                 "pairs_with_human_grade": len(both)}
    if not both:
        return {**out, "note": "no judged pair has a human grade"}
    truth = np.array([human[q][d] for q, d in both], dtype=np.int64)
    given = np.array([grades[p] for p in both], dtype=np.int64)
    out["labels"] = label_agreement(truth, given)
    if resamples and len({q for q, _ in both}) > 1:
        out["labels"]["cohen_kappa_4grade_95ci_query_bootstrap"] = kappa_interval(
            [q for q, _ in both], truth, given, resamples)
    if runs:
        if len(runs) < 2:
            raise ConfigError("ranking systems needs at least two --system-run files")
        qids = sorted({q for q, _ in judged})
        values = ranking_gains if ranking_gains is not None else grades
        generated = generated_qrels(judged, [values[p] for p in judged])
        out["system_ranking"] = system_ranking(dict(runs), human, generated, qids, cutoff, resamples)
    return out


def agreement_report(grades: Mapping[Pair, int], human: Qrels, held_out: Sequence[str] | None = None,
                     runs: Mapping[str, Run] | None = None, cutoff: int = 10,
                     ranking_gains: Mapping[Pair, int] | None = None) -> dict:
    """``held_out`` (queries the calibration never saw), when given, then ``all`` judged queries; systems
    are ranked under ``ranking_gains`` when given (the job's expected-gain qrels), else the grades."""
    report = {"grades": "0-3 (the calibration's, else the most probable UMBRELA label); binary: 2-3 "
                        "relevant",
              "systems_ranked_under": "expected gains" if ranking_gains is not None else "grades"}
    if held_out is not None:
        report["held_out"] = agreement(grades, human, held_out, runs, cutoff, ranking_gains=ranking_gains)
    report["all"] = agreement(grades, human, None, runs, cutoff, ranking_gains=ranking_gains)
    return report


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    return path


def summary_lines(report: dict) -> list[str]:
    """One line per part: the headline figures."""
    lines = []
    for part in ("held_out", "all"):
        entry = report.get(part)
        if not entry or "labels" not in entry:
            continue
        labels = entry["labels"]
        line = (f"{part}: {entry['pairs_with_human_grade']} pairs, kappa 4-grade "
                f"{labels['cohen_kappa_4grade']}, binary {labels['cohen_kappa_binary']}, alpha "
                f"{labels['krippendorff_alpha_ordinal']}")
        if "system_ranking" in entry:
            ranking = entry["system_ranking"]
            line += f", Kendall tau {ranking['kendall_tau']} over {len(ranking['runs'])} runs"
        lines.append(line)
    return lines
