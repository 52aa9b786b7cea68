"""Probe (issue 8): is relevance linearly readable from SmolLM2-135M's hidden states, where its label
tokens and likelihoods read little? The judge reads the UMBRELA prompt's next-token probabilities of
"0".."3" (no signal at 135M, judge.json) and the query/passage likelihood PMI (held-out kappa ~0.20).
Here the model's hidden state at the end of a judging prompt -- the UMBRELA prompt, and a plain
"Does the passage answer the question? yes/no" prompt -- is kept at three depths, and a ridge
regression from it to the NIST grade (a linear probe) is learned on the fit queries. Its score is then
calibrated like the judge's features (least-squares GradeCalibrator with per-query z-scores), alone and
next to the judge's ql_pmi_4prompts.

No label of a scored pair is ever seen by the probe that scores it: fit-query pairs get out-of-fold
probe scores (the judge report's 3 folds), and inside each fit-CV fold the calibrator's training pairs
are themselves cross-fitted (nested), so fit-CV figures are clean as well as held-out ones. The ridge
strength is chosen on the fit-CV kappa, like every other candidate in these reports.

Stages:
  hidden  (GPU; bash bench/gpu_judge.sh hidden) last-position hidden states of every NIST-judged DL19
          pair under both prompts, float16, one .npy per (prompt, layer), and hidden_pairs.npz (ids)
  report  (here) -> bench/results/judge_hidden.json; needs .stage/judge_tokens/judge_tokens.npz
          (probe_judge_tokens.py) for ql_pmi_4prompts and .stage/judge/runs for Kendall's tau

    .venv/bin/python bench/probe_judge_hidden.py --stages report --dir .stage/judge_hidden
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after an installed sparsa (the GPU wheel)

from bench.probe_judge_tokens import ANSWER_PROMPTS, FIT_QUERIES, figures, judged_pairs, token_features

PROMPTS = ("umbrela", "yesno")
LAYERS = (12, 20, 30)  # hidden_states indices: 0 is the embeddings, 30 the last layer after the final norm
ALPHAS = (10.0, 100.0, 1000.0, 10000.0)
# what the probe reads: each (prompt, layer) alone, and states side by side
STATE_SOURCES = {f"{prompt} layer {layer}": [(prompt, layer)] for prompt in PROMPTS for layer in LAYERS} | {
    "yesno layers 12+20+30": [("yesno", layer) for layer in LAYERS],
    "yesno + umbrela layer 20": [("yesno", 20), ("umbrela", 20)],
    "all six": [(prompt, layer) for prompt in PROMPTS for layer in LAYERS]}


def stage_hidden(args: argparse.Namespace) -> None:
    import torch

    from sparsa.batching import length_sorted_batches, pad_left
    from sparsa.judge.judge import JudgeConfig, RelevanceJudge

    pairs, queries, corpus = judged_pairs(args.limit)
    judge = RelevanceJudge(JudgeConfig(scorers=("umbrela",), device=args.device, dtype=args.dtype,
                                       max_passage_tokens=192))
    tok, model, device = judge.tokenizer, judge.model, judge.ql.device
    passages = {d: tok.decode(tok(corpus[d].full_text, add_special_tokens=False, truncation=True,
                                  max_length=192)["input_ids"]) for d in {d for _, d in pairs}}
    sequences = {
        "umbrela": [judge._prefix_ids + judge.umbrela_suffix_ids(queries[q], corpus[d]) for q, d in pairs],
        "yesno": [tok(ANSWER_PROMPTS["yesno"].format(passage=passages[d], query=queries[q].text),
                      add_special_tokens=False)["input_ids"] for q, d in pairs],
    }
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for prompt, rows in sequences.items():
        states = {layer: np.zeros((len(rows), model.config.hidden_size), dtype=np.float16) for layer in LAYERS}
        for batch in length_sorted_batches([len(r) for r in rows], max_tokens=args.max_tokens):
            ids, mask, positions = (torch.from_numpy(a).to(device) for a in pad_left([rows[i] for i in batch],
                                                                                         judge.ql.pad_id))
            with torch.inference_mode():
                hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                                     output_hidden_states=True).hidden_states
            for layer in LAYERS:  # left-padded: every row ends at the last position
                states[layer][batch] = hidden[layer][:, -1].float().cpu().numpy().astype(np.float16)
        for layer, values in states.items():
            np.save(out / f"hidden_{prompt}_{layer}.npy", values)
        print(f"{prompt}: {time.perf_counter() - started:.1f} s, {len(rows)} pairs", flush=True)
    np.savez_compressed(out / "hidden_pairs.npz", qid=np.array([q for q, _ in pairs]),
                        docid=np.array([d for _, d in pairs]))


def ridge(x: np.ndarray, y: np.ndarray, alpha: float):
    """A ridge regression fitted on (x, y); returns the function scoring new rows."""
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return lambda rows: ((rows - mean) / scale) @ w


def cross_fitted(x: np.ndarray, y: np.ndarray, folds: np.ndarray, alpha: float) -> np.ndarray:
    """Each row scored by a probe fitted on the rows of the other folds."""
    scores = np.zeros(len(x))
    for fold in np.unique(folds):
        scores[folds == fold] = ridge(x[folds != fold], y[folds != fold], alpha)(x[folds == fold])
    return scores


def evaluate(x: np.ndarray, extra: list[np.ndarray], qid: np.ndarray, human: np.ndarray, fit_qids: list[str],
             alpha: float, tau_inputs: dict | None) -> dict:
    """Fit-CV (nested) and held-out kappa, and Kendall's tau with ``tau_inputs``, of the probe score plus
    ``extra`` columns (each with its per-query z-score), least-squares GradeCalibrator."""
    from bench.judge_report import CV_FOLDS
    from sparsa.judge.calibration import GradeCalibrator, cut, per_query_z

    fold_of = {q: i % CV_FOLDS for i, q in enumerate(sorted(fit_qids))}
    folds = np.array([fold_of.get(q, -1) for q in qid.tolist()])
    fit, held = folds >= 0, folds < 0

    def grades(train: np.ndarray, apply: np.ndarray) -> np.ndarray:
        """Probe and calibrator fitted on ``train`` rows only; grades of the ``apply`` rows."""
        probe = np.zeros(len(x))
        probe[train] = cross_fitted(x[train], human[train], folds[train], alpha)
        probe[apply] = ridge(x[train], human[train], alpha)(x[apply])
        columns = [probe, *extra]
        matrix = np.column_stack([c for col in columns for c in (col, per_query_z(col, qid))])
        names = [str(i) for i in range(matrix.shape[1])]
        calibrator = GradeCalibrator.fit_matrix(matrix[train], human[train], names)
        return cut(calibrator.matrix_scores(matrix[apply]), calibrator.thresholds)

    out_of_fold = np.zeros(len(qid), dtype=np.int64)
    for fold in range(CV_FOLDS):
        out_of_fold[folds == fold] = grades(fit & (folds != fold), folds == fold)
    return figures(qid, human, fit_qids, out_of_fold, grades(fit, held), **(tau_inputs or {}))


def tau_spread(rows: dict) -> dict:
    """How the probe-alone rows rank the runs: their held-out and fit-CV Kendall tau side by side."""
    alone = {name: r for name, r in rows.items() if name.endswith("/ alone")}
    held = [r["held_out_kendall_tau"] for r in alone.values()]
    return {"rows": len(alone), "held_out_tau_at_least_0.85": sum(t >= 0.85 for t in held),
            "held_out_tau_range": [min(held), max(held)],
            "fit_cv_tau_range": [min(r["fit_cv_kendall_tau"] for r in alone.values()),
                                 max(r["fit_cv_kendall_tau"] for r in alone.values())]}


def stage_report(args: argparse.Namespace) -> None:
    from bench.bench_judge import RUNS, dataset, load_runs
    from bench.common import write_results

    folder = Path(args.dir)
    ids = np.load(folder / "hidden_pairs.npz")
    qid, docid = ids["qid"], ids["docid"]
    features, token_qid, token_docid = token_features(Path(args.tokens_npz))
    if not (np.array_equal(qid, token_qid) and np.array_equal(docid, token_docid)):
        raise SystemExit(f"{args.tokens_npz} holds other pairs than {folder}")
    ql_pmi = features["ql_pmi_4prompts (sum; the judge's)"]
    qrels = dataset().qrels
    human = np.array([qrels[q][d] for q, d in zip(qid.tolist(), docid.tolist(), strict=True)])
    fit_qids = sorted(set(qid.tolist()))[:FIT_QUERIES]
    tau_inputs = ({"runs": load_runs(), "qrels": qrels, "pairs": list(zip(qid.tolist(), docid.tolist(), strict=True))}
                  if RUNS.exists() else None)
    passage = [features["pl_pmi (sum; the judge's)"], features["pl_pmi_mean (the judge's)"]]
    rows = {}
    for source, parts in STATE_SOURCES.items():
        x = np.hstack([np.load(folder / f"hidden_{prompt}_{layer}.npy") for prompt, layer in parts]).astype(np.float64)
        settings = [("alone", []), ("with ql_pmi_4prompts", [ql_pmi])]
        if len(parts) > 1:
            settings.append(("with ql_pmi_4prompts + pl_pmi", [ql_pmi, *passage]))
        for alpha in ALPHAS:
            for setting, extra in settings:
                name = f"{source} alpha {alpha:g} / {setting}"
                rows[name] = r = evaluate(x, extra, qid, human, fit_qids, alpha, tau_inputs)
                print(f"{name:62s} kappa fit-CV {r['fit_cv_kappa_4grade']:.4f} held out "
                      f"{r['held_out_kappa_4grade']:.4f}  tau fit-CV {r.get('fit_cv_kendall_tau', float('nan')):.4f}"
                      f" held out {r.get('held_out_kendall_tau', float('nan')):.4f}", flush=True)
    chosen = max(rows, key=lambda name: rows[name]["fit_cv_kappa_4grade"])
    by_tau = max(rows, key=lambda name: (rows[name].get("fit_cv_kendall_tau", 0), rows[name]["fit_cv_kappa_4grade"]))
    write_results("judge_hidden", {
        "what": __doc__.split("Stages:")[0].strip(),
        "model": "smollm2-135m-instruct, bfloat16 on the H200, passages cut to 192 tokens; states kept in float16",
        "pairs": len(qid), "fit_queries": fit_qids, "held_out_queries": sorted(set(qid.tolist()) - set(fit_qids)),
        "probe": f"ridge regression on standardised states to the NIST grade, alpha in {list(ALPHAS)}",
        "chosen_on_fit": {"rule": "the row with the highest fit-CV kappa", "row": chosen, **rows[chosen]},
        "chosen_on_fit_for_tau": {"rule": "the row with the highest fit-CV Kendall tau, ties to the higher fit-CV "
                                          "kappa", "row": by_tau, **rows[by_tau]} if tau_inputs else None,
        "probe_alone_tau": tau_spread(rows) if tau_inputs else None,
        "rows": rows})
    print(f"chosen on fit: {chosen}: {rows[chosen]}")
    print(f"chosen on fit for tau: {by_tau}: {rows[by_tau]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["report"], choices=["hidden", "report"])
    parser.add_argument("--dir", default=".stage/judge_hidden")
    parser.add_argument("--tokens-npz", default=".stage/judge_tokens/judge_tokens.npz")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs (smoke runs)")
    args = parser.parse_args()
    if "hidden" in args.stages:
        stage_hidden(args)
    if "report" in args.stages:
        stage_report(args)


if __name__ == "__main__":
    main()
