"""LLM relevance judging (LLMJudge / UMBRELA, TREC DL 0-3 grades) with a local causal LM.

- :class:`RelevanceJudge` / :class:`JudgeConfig` (``judge.py``): UMBRELA-style prompt, query- and
  passage-likelihood scorers sharing one LM.
- ``job.py``: resumable judging jobs (:func:`run_judge_job`, what ``sparsa judge`` calls): pairs,
  an append-only checkpoint, grades, TREC qrels.
- :class:`GradeCalibrator` (``calibration.py``): raw scores -> 0-3 grades or expected grades, least squares or
  the proportional-odds model of ``ordinal.py``.
- :class:`JudgeTrainer` / :func:`train_judge` (``train.py``): fine-tuning the judge LM on labelled pairs.

Agreement with human labels (kappa, alpha, tau, rho) lives in :mod:`sparsa.eval.agreement`;
``human_agreement.py`` applies it to a judging job's qrels (``sparsa judge --report``).
Names are imported lazily, so ``import sparsa.judge`` loads neither torch nor transformers.
"""

from __future__ import annotations

if __name__ != "sparsa.judge":  # a bare `import judge` run from the repo root: see sparsa/toplevel.py
    from sparsa.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)

from sparsa.lazy import lazy_exports

_EXPORTS = {
    "JudgeConfig": "sparsa.judge.judge",
    "RelevanceJudge": "sparsa.judge.judge",
    "GAINS": "sparsa.judge.job",
    "grade_records": "sparsa.judge.job",
    "judge_with_checkpoint": "sparsa.judge.job",
    "read_checkpoint": "sparsa.judge.job",
    "read_pairs": "sparsa.judge.job",
    "run_judge_job": "sparsa.judge.job",
    "CALIBRATOR_MODELS": "sparsa.judge.calibration",
    "GradeCalibrator": "sparsa.judge.calibration",
    "argmax_grades": "sparsa.judge.calibration",
    "expected_gains": "sparsa.judge.calibration",
    "JudgeTrainConfig": "sparsa.judge.train",
    "JudgeTrainer": "sparsa.judge.train",
    "LabelledPair": "sparsa.judge.train",
    "read_labelled_pairs": "sparsa.judge.train",
    "train_judge": "sparsa.judge.train",
    "write_labelled_pairs": "sparsa.judge.train",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - the lazy exports are the public names

__getattr__ = lazy_exports("sparsa.judge", _EXPORTS)
