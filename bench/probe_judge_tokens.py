"""Probe (issue 8): do token-level aggregates of the judge's likelihoods carry more relevance signal
than their sums? The judge's features (``sparsa.judge.calibration``) use whole-sequence log-likelihoods:
log P(q | p) - log P(q | no passage) summed over the query, and the same PMI from the passage's side.
A passage that answers the query in one sentence and a passage that is loosely on topic throughout
can have the same sums; here each token's PMI is kept, and per-pair aggregates (minimum / maximum over
the query's tokens, the best window of passage tokens, the share of tokens that gain) are calibrated
exactly like the judge's features (least squares, three kappa-maximising thresholds) on the 21 fit
queries, scored by 3-fold cross-validation over them, and reported on the 22 held-out ones.

Stages:
  score   (GPU; bench/gpu_judge.sh tokens) every NIST-judged DL19 pair: per-token log-probabilities of
          the query under the four QL prompts and of the passage after the query, and both priors;
          writes judge_tokens.npz
  answer  (GPU, with score: PROBE_ARGS="--stages score answer" bash bench/gpu_judge.sh tokens) the
          next-token distribution after "Passage / Question / Answer:" and after a yes/no question, with
          and without the passage: entropy, top-1 probability, mass on the passage's tokens, P(yes) - P(no);
          writes judge_answer.npz beside --npz
  report  (here) every feature's fit-CV and held-out 4-grade kappa, alone and next to the judge's
          ql-pmi-4prompts -> bench/results/judge_tokens.json

    .venv/bin/python bench/probe_judge_tokens.py --stages report --npz .stage/judge_tokens/judge_tokens.npz \
        --npz-fp32 .stage/judge_tokens/fp32/judge_tokens.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after an installed sparsa (the GPU wheel)

QL_PROMPT_NAMES = ("question", "query", "plain", "chat")
FIT_QUERIES = 21


def flat(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated values, offsets[n + 1])."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    return (np.concatenate(arrays) if arrays else np.zeros(0)).astype(np.float32), offsets


def unflat(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def judged_pairs(limit: int | None) -> tuple[list[tuple[str, str]], dict, dict]:
    """Every NIST-judged DL19 pair (sorted, the first ``limit``), the queries by id, the corpus."""
    from bench.bench_judge import dataset

    data = dataset()
    pairs = sorted((q, d) for q, judged in data.qrels.items() for d in judged)[:limit]
    return pairs, {q.id: q for q in data.queries}, data.corpus


def stage_score(args: argparse.Namespace) -> None:
    from sparsa.judge.judge import JudgeConfig, RelevanceJudge
    from sparsa.types import Document

    pairs, queries, corpus = judged_pairs(args.limit)
    judge = RelevanceJudge(JudgeConfig(scorers=("ql", "pl"), ql_prompts=QL_PROMPT_NAMES, device=args.device,
                                       dtype=args.dtype, max_passage_tokens=192, max_tokens_per_batch=65536))
    started = time.perf_counter()
    empty = Document(id="", text="")
    qids, docids = sorted({q for q, _ in pairs}), sorted({d for _, d in pairs})
    out = {"qid": np.array([q for q, _ in pairs]), "docid": np.array([d for _, d in pairs]),
           "prior_qids": np.array(qids), "prior_docids": np.array(docids)}
    for p, name in enumerate(QL_PROMPT_NAMES):
        sequences = [judge._ql_sequence(queries[q], corpus[d], p) for q, d in pairs]
        out[f"ql_{name}"], out[f"ql_{name}_offsets"] = flat(judge.ql.token_logprobs(sequences))
        priors = [judge._ql_sequence(queries[q], empty, p) for q in qids]
        out[f"ql_{name}_prior"], out[f"ql_{name}_prior_offsets"] = flat(judge.ql.token_logprobs(priors))
        if p == 0:
            out["ql_ids"], out["ql_ids_offsets"] = flat([np.array(t, dtype=np.float32) for _, t in priors])
        print(f"ql {name}: {time.perf_counter() - started:.1f} s", flush=True)
    sequences = [judge._pl_sequence(queries[q], corpus[d]) for q, d in pairs]
    out["pl"], out["pl_offsets"] = flat(judge.ql.token_logprobs(sequences))
    priors = [judge._pl_sequence(None, corpus[d]) for d in docids]
    out["pl_prior"], out["pl_prior_offsets"] = flat(judge.ql.token_logprobs(priors))
    out["pl_ids"], out["pl_ids_offsets"] = flat([np.array(t, dtype=np.float32) for _, t in priors])
    print(f"pl: {time.perf_counter() - started:.1f} s for {len(pairs)} pairs", flush=True)
    Path(args.npz).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.npz, **out)


ANSWER_PROMPTS = {  # the pair's text, then the next-token distribution is read at the end
    "answer": "Passage: {passage}\nQuestion: {query}\nAnswer:",
    "yesno": "Passage: {passage}\nQuestion: {query}\nDoes the passage answer the question? Answer yes or no.\nAnswer:",
}


def stage_answer(args: argparse.Namespace) -> None:
    """Next-token read-outs after each ``ANSWER_PROMPTS`` text, with the passage and with an empty one:
    entropy, top-1 probability, the probability mass on tokens of the passage (copying an answer from
    it), and P(" yes") / P(" no")."""
    import torch

    from sparsa.batching import length_sorted_batches, pad_left
    from sparsa.judge.judge import JudgeConfig, RelevanceJudge

    pairs, queries, corpus = judged_pairs(args.limit)
    judge = RelevanceJudge(JudgeConfig(scorers=("ql",), device=args.device, dtype=args.dtype, max_passage_tokens=192))
    tok, model, device = judge.tokenizer, judge.model, judge.ql.device
    yes, no = (tok(" yes", add_special_tokens=False)["input_ids"][0], tok(" no", add_special_tokens=False)["input_ids"][0])
    passages, answer_tokens = [], []  # each pair's cut passage text, and its token ids that are not the query's
    for q, d in pairs:
        ids = tok(corpus[d].full_text, add_special_tokens=False, truncation=True, max_length=192)["input_ids"]
        passages.append(tok.decode(ids))
        spelled = set(tok(" " + passages[-1], add_special_tokens=False)["input_ids"]) | set(ids)
        query_ids = set(tok(" " + queries[q].text, add_special_tokens=False)["input_ids"])
        answer_tokens.append(torch.tensor(sorted(spelled - query_ids), device=device))
    started = time.perf_counter()
    out = {}
    for name, template in ANSWER_PROMPTS.items():
        for with_passage in (True, False):
            rows = [tok(template.format(passage=passage if with_passage else "", query=queries[q].text),
                        add_special_tokens=False)["input_ids"] for (q, _), passage in zip(pairs, passages, strict=True)]
            feats = np.zeros((len(rows), 5), dtype=np.float32)
            for batch in length_sorted_batches([len(r) for r in rows], max_tokens=65536):
                ids, mask, positions = (torch.from_numpy(a).to(device)
                                        for a in pad_left([rows[i] for i in batch], judge.ql.pad_id))
                with torch.inference_mode():
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1,
                                   use_cache=False).logits[:, -1]
                    logp = logits.float().log_softmax(-1)
                    probs = logp.exp()
                    entropy = -(probs * logp).sum(-1)
                    top1 = probs.max(-1).values
                    copy = torch.stack([probs[row, answer_tokens[i]].sum() for row, i in enumerate(batch)])
                feats[batch] = torch.stack([entropy, top1, copy, logp[:, yes], logp[:, no]], -1).cpu().numpy()
            out[f"{name}_{'passage' if with_passage else 'empty'}"] = feats
            print(f"{name} {with_passage}: {time.perf_counter() - started:.1f} s", flush=True)
    out["feature_names"] = np.array(["entropy", "top1", "copy_mass", "logp_yes", "logp_no"])
    out["qid"], out["docid"] = np.array([q for q, _ in pairs]), np.array([d for _, d in pairs])
    Path(args.npz).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(Path(args.npz).with_name("judge_answer.npz"), **out)


def best_window(pmi: np.ndarray, width: int) -> float:
    """The best mean PMI over ``width`` consecutive passage tokens (the whole passage when shorter)."""
    if len(pmi) <= width:
        return float(pmi.mean())
    return float(np.convolve(pmi, np.ones(width) / width, "valid").max())


def token_features(npz: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per-pair aggregates of the per-token PMIs, keyed by name; and the pairs' (qid, docid) columns."""
    z = np.load(npz)
    qid, docid = z["qid"], z["docid"]
    ql_pmi = {}
    for name in QL_PROMPT_NAMES:
        prior = dict(zip(z["prior_qids"].tolist(), unflat(z[f"ql_{name}_prior"], z[f"ql_{name}_prior_offsets"])))
        ql_pmi[name] = [lp - prior[q] for lp, q in zip(unflat(z[f"ql_{name}"], z[f"ql_{name}_offsets"]), qid.tolist())]
    prior = dict(zip(z["prior_docids"].tolist(), unflat(z["pl_prior"], z["pl_prior_offsets"])))
    pl_pmi = [lp - prior[d] for lp, d in zip(unflat(z["pl"], z["pl_offsets"]), docid.tolist())]

    def over_prompts(fn) -> np.ndarray:  # the mean over the four QL prompts, like the judge's ql_pmi_ens
        return np.mean([[fn(a) for a in ql_pmi[name]] for name in QL_PROMPT_NAMES], axis=0)

    def over_passage(fn) -> np.ndarray:
        return np.array([fn(a) for a in pl_pmi])

    features = {
        "ql_pmi_4prompts (sum; the judge's)": over_prompts(np.sum),
        "pl_pmi (sum; the judge's)": over_passage(np.sum),
        "pl_pmi_mean (the judge's)": over_passage(np.mean),
        "ql: mean over query tokens": over_prompts(np.mean),
        "ql: min over query tokens": over_prompts(np.min),
        "ql: max over query tokens": over_prompts(np.max),
        "ql: sum of gains (PMI > 0)": over_prompts(lambda a: np.clip(a, 0, None).sum()),
        "ql: share of tokens with PMI > 0.5": over_prompts(lambda a: (a > 0.5).mean()),
        "pl: sum of gains (PMI > 0)": over_passage(lambda a: np.clip(a, 0, None).sum()),
        "pl: top 10 tokens": over_passage(lambda a: np.sort(a)[-10:].sum()),
        "pl: max token": over_passage(np.max),
    }
    for width in (8, 16, 32):
        features[f"pl: best window of {width} tokens"] = over_passage(lambda a, w=width: best_window(a, w))
    return features, qid, docid


def answer_features(npz: Path) -> dict[str, np.ndarray]:
    z = np.load(npz)
    column = {n: i for i, n in enumerate(z["feature_names"].tolist())}
    out = {}
    for prompt in ANSWER_PROMPTS:
        with_p, empty = z[f"{prompt}_passage"].astype(np.float64), z[f"{prompt}_empty"].astype(np.float64)
        yes_no = with_p[:, column["logp_yes"]] - with_p[:, column["logp_no"]]
        out |= {f"{prompt}: entropy": with_p[:, column["entropy"]],
                f"{prompt}: top-1 probability": with_p[:, column["top1"]],
                f"{prompt}: log passage-token mass, minus with no passage":
                    np.log(with_p[:, column["copy_mass"]]) - np.log(empty[:, column["copy_mass"]]),
                f"{prompt}: log P(yes) - log P(no), minus with no passage":
                    yes_no - (empty[:, column["logp_yes"]] - empty[:, column["logp_no"]])}
    return out


def agreement(columns: list[np.ndarray], qid: np.ndarray, human: np.ndarray, fit_qids: list[str], runs=None,
           pairs=None, qrels=None) -> dict:
    """Least-squares GradeCalibrator on the columns (each with its per-query z-score): 4-grade kappa of
    out-of-fold grades over the fit queries (judge_report's folds) and on the held-out queries; with
    ``runs``, also Kendall's tau of the runs' nDCG@10 under NIST and under the generated 0-3 grades."""
    from bench.judge_report import CV_FOLDS
    from sparsa.judge.calibration import GradeCalibrator, cut, per_query_z

    x = np.column_stack([c for col in columns for c in (col, per_query_z(col, qid))])
    names = [str(i) for i in range(x.shape[1])]
    fold_of = {q: i % CV_FOLDS for i, q in enumerate(sorted(fit_qids))}
    fit, held = np.isin(qid, fit_qids), ~np.isin(qid, fit_qids)
    folds = np.array([fold_of.get(q, -1) for q in qid.tolist()])
    out_of_fold = np.zeros(len(qid), dtype=np.int64)
    for fold in range(CV_FOLDS):
        train = fit & (folds != fold)
        calibrator = GradeCalibrator.fit_matrix(x[train], human[train], names)
        out_of_fold[folds == fold] = cut(calibrator.matrix_scores(x[folds == fold]), calibrator.thresholds)
    calibrator = GradeCalibrator.fit_matrix(x[fit], human[fit], names)
    held_grades = cut(calibrator.matrix_scores(x[held]), calibrator.thresholds)
    return figures(qid, human, fit_qids, out_of_fold, held_grades, runs, pairs, qrels)


def figures(qid: np.ndarray, human: np.ndarray, fit_qids: list[str], out_of_fold: np.ndarray, held_grades: np.ndarray,
            runs=None, pairs=None, qrels=None) -> dict:
    """4-grade kappa of the fit pairs' out-of-fold grades and of the held-out pairs' grades; with ``runs``,
    Kendall's tau of the runs' nDCG@10 under NIST and under those grades, on each query set."""
    from sparsa.eval.agreement import cohen_kappa

    fit = np.isin(qid, fit_qids)
    held = ~fit
    out = {"fit_cv_kappa_4grade": round(float(cohen_kappa(human[fit], out_of_fold[fit])), 4),
           "held_out_kappa_4grade": round(float(cohen_kappa(human[held], held_grades)), 4)}
    if runs:
        from bench.judge_report import generated_qrels, system_ranking

        held_qids = sorted(set(qid.tolist()) - set(fit_qids))
        for key, rows, grades, queries in (("fit_cv_kendall_tau", fit, out_of_fold[fit], fit_qids),
                                           ("held_out_kendall_tau", held, held_grades, held_qids)):
            generated = generated_qrels([pairs[i] for i in np.flatnonzero(rows)], grades)
            out[key] = system_ranking(runs, qrels, generated, sorted(queries), 10)["kendall_tau"]
    return out


def stage_report(args: argparse.Namespace) -> None:
    from bench.bench_judge import dataset
    from bench.common import write_results

    features, qid, docid = token_features(Path(args.npz))
    from bench.bench_judge import RUNS, load_runs

    qrels = dataset().qrels
    human = np.array([qrels[q][d] for q, d in zip(qid.tolist(), docid.tolist(), strict=True)])
    fit_qids = sorted(set(qid.tolist()))[:FIT_QUERIES]
    runs = load_runs() if RUNS.exists() else {}  # bench_judge.py --stages runs
    agree = partial(agreement, qid=qid, human=human, fit_qids=fit_qids, runs=runs,
                    pairs=list(zip(qid.tolist(), docid.tolist(), strict=True)), qrels=qrels)
    reference = [features["ql_pmi_4prompts (sum; the judge's)"]]
    passage = [features["pl_pmi (sum; the judge's)"], features["pl_pmi_mean (the judge's)"]]
    rows = {}
    for name, values in features.items():
        rows[name] = {"alone": agree([values]),
                      "with ql_pmi_4prompts": agree(reference + [values])}
    answers = Path(args.npz).with_name("judge_answer.npz")
    if answers.exists():
        for name, values in answer_features(answers).items():
            rows[name] = {"alone": agree([values]),
                          "with ql_pmi_4prompts": agree(reference + [values]),
                          "with ql_pmi_4prompts + pl_pmi": agree(reference + passage + [values])}
    rows["ql_pmi_4prompts + pl_pmi (the judge's ql+pl)"] = {"alone": agree(reference + passage)}
    if args.npz_fp32 and Path(args.npz_fp32).exists():
        fp32, _, _ = token_features(Path(args.npz_fp32))
        rows["float32 LM: ql_pmi_4prompts"] = {"alone": agree([fp32["ql_pmi_4prompts (sum; the judge's)"]])}
        judge_features = ("ql_pmi_4prompts (sum; the judge's)", "pl_pmi (sum; the judge's)", "pl_pmi_mean (the judge's)")
        rows["float32 LM: ql_pmi_4prompts + pl_pmi"] = {"alone": agree([fp32[k] for k in judge_features])}
    flat_rows = [(f"{name} / {setting}", k) for name, settings in rows.items() for setting, k in settings.items()]
    chosen, chosen_k = max(flat_rows, key=lambda row: row[1]["fit_cv_kappa_4grade"])
    by_tau = max(flat_rows, key=lambda row: (row[1].get("fit_cv_kendall_tau", 0), row[1]["fit_cv_kappa_4grade"]))
    width = max(map(len, rows))
    print(f"{'feature':{width}s}  {'setting':30s}  kappa: fit-CV  held out   tau: fit-CV  held out")
    for name, settings in rows.items():
        for setting, k in settings.items():
            print(f"{name:{width}s}  {setting:30s}  {k['fit_cv_kappa_4grade']:13.4f}  {k['held_out_kappa_4grade']:8.4f}"
                  f"  {k.get('fit_cv_kendall_tau', float('nan')):11.4f}  {k.get('held_out_kendall_tau', float('nan')):8.4f}")
    write_results("judge_tokens", {
        "what": __doc__.split("Stages:")[0].strip(),
        "model": "smollm2-135m-instruct, bfloat16 on the H200 (the judge checkpoints' setting), passages cut to "
                 "192 tokens; the answer-prompt rows and 'float32 LM' rows: float32",
        "pairs": len(qid), "fit_queries": fit_qids, "held_out_queries": sorted(set(qid.tolist()) - set(fit_qids)),
        "runs": {"names": sorted(runs), "from": "bench/bench_judge.py --stages runs, rebuilt on this session's "
                 "AVX2 CPU (MiniLM in float32; the runs in judge.json came from a bf16-capable CPU, so the dense "
                 "and fused runs' human nDCG@10 differ by <= 0.002)"},
        "calibration": "each feature and its per-query z-score, least-squares GradeCalibrator (judge/calibration.py), "
                       "3-fold CV over the fit queries as in bench/judge_report.py",
        "chosen_on_fit": {"rule": "the row with the highest fit-CV kappa", "row": chosen, **chosen_k},
        "chosen_on_fit_for_tau": ({"rule": "the row with the highest fit-CV Kendall tau, ties to the higher fit-CV kappa",
                                   "row": by_tau[0], **by_tau[1]} if runs else None),
        "rows": rows})
    print(f"chosen on fit for tau: {by_tau[0]}: {by_tau[1]}")
    print(f"chosen on fit: {chosen}: fit-CV {chosen_k['fit_cv_kappa_4grade']}, held out {chosen_k['held_out_kappa_4grade']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["report"], choices=["score", "answer", "report"])
    parser.add_argument("--npz", default=".stage/judge_tokens/judge_tokens.npz")
    parser.add_argument("--npz-fp32", default=".stage/judge_tokens/fp32/judge_tokens.npz")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N pairs (smoke runs)")
    args = parser.parse_args()
    if "score" in args.stages:
        stage_score(args)
    if "answer" in args.stages:
        stage_answer(args)
    if "report" in args.stages:
        stage_report(args)


if __name__ == "__main__":
    main()
