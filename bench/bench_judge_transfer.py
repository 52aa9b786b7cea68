"""Transfer fine-tuning of the UMBRELA judge (issue 8): SmolLM2-135M trained on many-topic pairs that are not
TREC DL 2019 (bench/judge_transfer_data.py), then calibrated on DL 2019's 21 fit queries and evaluated on the
other 22.

Stages (files under --stage-dir, default .stage/judge_tr):
  train   (GPU) fine-tune on the --pairs file (judge/train.py, what `sparsa train judge --pairs FILE --epochs
          E --lr LR --batch-size B` does) and, after each epoch in --epochs, judge every NIST-judged DL 2019 pair
          with the UMBRELA scorer and the current weights (what `sparsa judge --model <that model> --scorers
          umbrela` gives) -> ep<e>.jsonl, timings.json
  report  (CPU) every candidate (epochs x calibration features x calibrator) calibrated on the fit queries,
          scored by 3-fold CV over them and on the held-out queries; the candidate chosen on the fit queries
          (SELECTION_RULE) is the headline -> bench/results/judge.json "transfer_finetune"

The transfer model never saw a DL 2019 pair, so its fit-query records are as unseen as its held-out ones and
the calibrator is fitted on them directly (unlike bench_judge_finetune.py, which needs out-of-fold models).
Combined features need the zero-shot SmolLM2's query- and passage-likelihood checkpoints in .stage/judge
(bench/gpu_judge.sh transfer makes them in the same call).

On the H200: bench/gpu_judge.sh transfer (its header has the calls). Then here:
    tar xzf <files_at>/judge_tr.tar.gz -C .stage && .venv/bin/python bench/bench_judge_transfer.py --stages report
CPU smoke test of the GPU stage:
    .venv/bin/python bench/bench_judge_transfer.py --stages train --pairs .stage/judge_transfer.jsonl.gz \\
        --max-steps 2 --batch-size 4 --pairs-per-query 2 --device cpu --stage-dir /tmp/tr_smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after an installed sparsa (the GPU wheel)
from bench.bench_judge_finetune import BASE_STAGE, DEPTH, all_pairs, dataset, read_jsonl, split, write_jsonl
from bench.common import RESULTS, run_metadata, run_stages
from bench.judge_report import (
    PL_PMI,
    QL_PMI,
    UMBRELA,
    choose_on_fit,
    complete_depth,
    evaluate_setting,
    fit_criteria,
    read_all_checkpoints,
)

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".stage" / "judge_tr"
PAIRS = ROOT / ".stage" / "judge_transfer.jsonl.gz"
log = logging.getLogger("bench_judge_transfer")
# Candidate calibration features by pool: (a) the fine-tuned judge alone, (b) with the zero-shot SmolLM2's
# likelihood features, and the zero-shot reference (the earlier headline's setting, no fine-tuned features).
POOLS = {
    "a_finetuned_alone": {"ft-expected-grade": ("expected_grade",), "ft-umbrela": UMBRELA},
    "b_finetuned_plus_zero_shot": {"ft-umbrela+base-ql-pmi": UMBRELA + QL_PMI,
                                   "ft-umbrela+base-ql-pl-pmi": UMBRELA + QL_PMI + PL_PMI},
    "zero_shot_reference": {"base-ql-pmi-4prompts": QL_PMI},
}
COMMANDS = [  # how judge.json "transfer_finetune" was made (.stage/jt1, jt2: this run's staging folders)
    ".venv/bin/python bench/judge_transfer_data.py --out .stage/judge_transfer.jsonl.gz  # here",
    "JG1=.stage/jt1 JG2=.stage/jt2 bash bench/gpu_judge.sh stage  # here; copies the transfer set into jt2",
    'run(command="JG1=.stage/jt1 bash bench/gpu_judge.sh part1", carry=[".stage/jt1"], timeout_s=60)',
    'run(command="JG2=.stage/jt2 bash bench/gpu_judge.sh transfer", carry=[".stage/jt2"], timeout_s=480)',
    ".venv/bin/python bench/bench_judge.py --stages runs  # here (Java): the ten runs for Kendall tau",
    "tar xzf <files_at>/judge_tr.tar.gz -C .stage && .venv/bin/python bench/bench_judge_transfer.py --stages report",
]
NOTES = {  # what the recorded run showed; update with a new run
    "run": "not run on the H200: when the code was ready the session's device budget had 180 s left, under the "
           "4 minutes needed to start a machine. The GPU stage was smoke-tested on the CPU (--max-steps 2 "
           "--batch-size 4 --pairs-per-query 2 --device cpu); the report stage then writes this status.",
    "plan": "one call: pull SmolLM2 (~50 s), 2 epochs over the 14,184 pairs at batch 64 (~220 steps each; ~3 "
            "steps/s if the step stays launch-bound), UMBRELA judging of the 9,260 pairs after each (~25 s, "
            "float32 + TF32), the zero-shot ql (4 prompts) and pl scorers (~70 s): about 6-7 minutes of device "
            "time with the start.",
}
SELECTION_RULE = (
    "decided on the fit queries only (judge_report.SELECTION_RULE, 3-fold CV over the 21 fit queries): the "
    "candidates are every scored epoch count x calibration features (POOLS) x calibrator (least-squares, "
    "ordinal-logit); the headline is the candidate with the highest out-of-fold 4-grade kappa among pools (a) and "
    "(b) and the zero-shot reference together; each pool's own choice is reported too. Fixed a priori, not tuned: "
    "the transfer set, lr 3e-5, batch 64, epochs scored 1 and 2 (what one H200 call affords). Held-out figures of "
    "every candidate are listed; only the chosen ones are the result.")


def stage_train(args) -> None:
    """Fine-tune on the pairs file; after each epoch in ``--epochs``, UMBRELA records of every DL 2019 pair."""
    import torch

    from sparsa.judge.train import JudgeTrainConfig, JudgeTrainer, describe_pairs, read_labelled_pairs

    data = dataset()
    pairs = read_labelled_pairs(args.pairs)
    judged = all_pairs(data, args.pairs_per_query)
    queries = {q.id: q for q in data.queries}
    config = JudgeTrainConfig(epochs=max(args.epochs), lr=args.lr, batch_size=args.batch_size,
                              max_passage_tokens=args.max_passage_tokens, max_steps=args.max_steps)
    timings = {"config": {k: getattr(config, k) for k in ("model", "lr", "batch_size", "warmup_steps",
                                                            "max_passage_tokens", "seed")},
               "pairs_file": args.pairs.name, "training_set": describe_pairs(pairs), "epochs": []}
    trainer = JudgeTrainer(config, args.device)
    started = time.perf_counter()
    for record in trainer.fit(pairs):
        trained = time.perf_counter()
        if record["epoch"] in args.epochs:
            scores = trainer.score([(queries[q], data.corpus[d]) for q, d in judged])
            write_jsonl(args.stage_dir / f"ep{record['epoch']}.jsonl",
                        [{"qid": q, "docid": d, **s} for (q, d), s in zip(judged, scores, strict=True)])
        timings["epochs"].append(record | {"train_s": round(trained - started, 1),
                                           "judge_s": round(time.perf_counter() - trained, 1)})
        (args.stage_dir / "timings.json").write_text(json.dumps(timings, indent=2))  # kept if a later epoch dies
        log.info("epoch %s", timings["epochs"][-1])
        started = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def with_base(records: dict, base: list[dict]) -> dict:
    """Each fine-tuned record joined with the zero-shot judge's fields of the same pair (its ``prompts``
    dropped); pairs missing from any base checkpoint are dropped."""
    return {p: {k: v for b in base for k, v in b[p].items() if k != "prompts"} | r for p, r in records.items()
            if all(p in b for b in base)}


def candidates(stage: Path, epochs: list[int]) -> dict[str, tuple[str, tuple[str, ...], dict]]:
    """name -> (pool, features, records by pair) of every candidate whose records exist."""
    base = [read_all_checkpoints(BASE_STAGE, s) for s in ("ql", "pl")]
    out = {}
    for e in epochs:
        path = stage / f"ep{e}.jsonl"
        if not path.is_file():
            continue
        records = {(r["qid"], r["docid"]): r for r in read_jsonl(path)}
        for setting, features in POOLS["a_finetuned_alone"].items():
            out[f"ep{e}/{setting}"] = ("a_finetuned_alone", features, records)
        if all(base):
            for setting, features in POOLS["b_finetuned_plus_zero_shot"].items():
                out[f"ep{e}/{setting}"] = ("b_finetuned_plus_zero_shot", features, with_base(records, base))
    if base[0]:
        out["base-ql-pmi-4prompts"] = ("zero_shot_reference", QL_PMI, base[0])
    return out


def score_candidates(stage: Path, epochs: list[int], data, runs) -> dict[str, dict]:
    """Every candidate with each calibrator: held-out figures (evaluate_setting) and the fit-query
    cross-validated criteria (fit_criteria), as judge_report scores the zero-shot settings."""
    from sparsa.judge.calibration import CALIBRATOR_MODELS

    fit_qids, test_qids = split(data)
    settings = {}
    for name, (pool, features, records) in candidates(stage, epochs).items():
        judged = sorted(records)
        rows = [records[p] for p in judged]
        human = np.array([data.qrels[q][d] for q, d in judged])
        fit = [i for i, (q, _) in enumerate(judged) if q in set(fit_qids)]
        test = [i for i, (q, _) in enumerate(judged) if q in set(test_qids)]
        depth = complete_depth(runs, set(judged), DEPTH)
        for model in CALIBRATOR_MODELS:
            entry = {"pool": pool, "pairs_judged": len(judged), "complete_depth": depth, "features": list(features)}
            entry |= evaluate_setting(features, judged, rows, human, fit, test, runs, data.qrels, test_qids, depth,
                                      model)
            entry["fit_queries_cv"] = fit_criteria(features, judged, rows, human, fit, fit_qids, runs, data.qrels,
                                                   depth, model)
            settings[name if model == "least-squares" else f"{name}/{model}"] = entry
            log.info("%s/%s: fit-CV kappa %.4f, held-out kappa %.4f", name, model,
                     entry["fit_queries_cv"]["cohen_kappa_4grade"], entry["held_out"]["cohen_kappa_4grade"])
    return settings


def table(settings: dict) -> dict:
    """Per candidate: the fit-CV criteria and the held-out figures, one line each."""
    rows = {}
    for name, e in settings.items():
        held, ranking = e["held_out"], e.get("system_ranking_held_out", {})
        rows[name] = {"fit_cv_kappa_4grade": e["fit_queries_cv"]["cohen_kappa_4grade"],
                      "fit_cv_tau": e["fit_queries_cv"].get("kendall_tau"),
                      "kappa_4grade": held["cohen_kappa_4grade"],
                      "kappa_4grade_95ci": held["cohen_kappa_4grade_95ci_query_bootstrap"],
                      "kappa_binary": held["cohen_kappa_binary"], "alpha_ordinal": held["krippendorff_alpha_ordinal"],
                      "tau": ranking.get("kendall_tau"),
                      "tau_expected_gain": e.get("system_ranking_held_out_expected_gain", {}).get("kendall_tau")}
    return rows


def stage_report(args) -> None:
    """judge.json "transfer_finetune" (other keys kept): the transfer set, and once the GPU stage has run,
    every candidate's figures and the choices made on the fit queries; before that, ``status`` says so."""
    from bench.bench_judge import load_runs
    from sparsa.judge.train import describe_pairs, read_labelled_pairs

    data = dataset()
    fit_qids, test_qids = split(data)
    entry = {
        "meta": run_metadata(("torch", "transformers", "ir_measures")),
        "what": "SmolLM2-135M-Instruct fully fine-tuned (judge/train.py) on many-topic labelled pairs that are "
                "not TREC DL 2019 (bench/judge_transfer_data.py), so that the unchanged UMBRELA scorer reads "
                "relevance; then calibrated on DL 2019's fit queries, alone or with the zero-shot SmolLM2's "
                "query/passage-likelihood PMI features",
        "commands": COMMANDS, "rule": SELECTION_RULE,
        "split": {"fit_queries": fit_qids, "held_out_queries": test_qids},
        "transfer_set": {"file": args.pairs.name, "built_by": "bench/judge_transfer_data.py --seed 0",
                         "label_mapping": "bench/judge_transfer_data.py docstring",
                         **describe_pairs(read_labelled_pairs(args.pairs))},
    }
    settings = score_candidates(args.stage_dir, args.epochs, data, load_runs())
    if not any(e["pool"] != "zero_shot_reference" for e in settings.values()):
        entry["status"] = (f"not run: no fine-tuned records in {args.stage_dir.name} (the GPU stage, "
                           "bench/gpu_judge.sh transfer); no held-out figures")
    else:
        headline = choose_on_fit(settings)
        kappa = headline["for_kappa"]
        entry |= {
            "status": "complete",
            "training": json.loads((args.stage_dir / "timings.json").read_text()),
            "zero_shot_judging": {p.stem: json.loads(p.read_text()) for p in sorted(BASE_STAGE.glob("timings-*.json"))},
            "chosen_on_fit": {"headline": headline} | {pool: choose_on_fit({n: e for n, e in settings.items()
                                                                            if e["pool"] == pool}) for pool in POOLS},
            "targets": {"kappa_4grade_at_least": 0.25, "kappa_4grade_held_out": kappa["held_out_kappa_4grade"],
                        "kappa_setting": kappa["setting"],
                        "kappa_target_met": kappa["held_out_kappa_4grade"] >= 0.25},
            "candidates": table(settings),
            "calibrations": {n: e["calibration"] for n, e in settings.items()},
        }
    results = json.loads(args.results.read_text())
    results["transfer_finetune"] = entry | {"notes": NOTES}
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    log.info("transfer_finetune: %s", json.dumps({k: entry.get(k) for k in ("status", "targets")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["train"])
    parser.add_argument("--stage-dir", type=Path, default=STAGE)
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="the transfer set (labelled-pairs JSONL[.gz])")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2], help="epoch counts to judge DL 2019 after")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-passage-tokens", type=int, default=192)
    parser.add_argument("--max-steps", type=int, help="smoke runs: stop training after this many steps")
    parser.add_argument("--pairs-per-query", type=int, help="smoke runs: judge the first N pairs of each query")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--results", type=Path, default=RESULTS / "judge.json",
                        help="report: the judge results file to add 'transfer_finetune' to (other keys kept)")
    args = parser.parse_args()
    run_stages(args, globals(), log)


if __name__ == "__main__":
    main()
