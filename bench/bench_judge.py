"""LLM relevance judgements on TREC DL 2019 (issue 8): agreement with NIST labels, system ranking.

Stages (cached under .stage/judge, so a rerun skips what exists):
  runs    rankings of each query's judged pool (~215 passages, all NIST-judged), made by sparsa:
          BM25 with five (k1, b) settings (two of them poor), SPLADE-tiny (exact dot product) and
          MiniLM dense (exact cosine) over the whole pool, RRF fusions, and TILDEv2 reranking of BM25
          where its stores exist (bench_rerank.py)
  score   resumable judge jobs (``sparsa.rag.judge_job``), one checkpoint per scorer: --all-pairs
          judges every NIST-judged pair (on the H200: bench/gpu_judge.sh), else the runs' top --depth
  report  calibration fitted on the first 21 query ids (sorted as strings), Cohen's kappa,
          Krippendorff's alpha, confusion matrix on the other 22; nDCG@10 of every run under NIST vs
          generated qrels and Kendall's tau / Spearman's rho between the two system orders

    SPARSA_HOME=/tmp/sparsa_home .venv/bin/python bench/bench_judge.py --stages runs
    bash bench/gpu_judge.sh stage; then its two run() calls (see its header); unpack judge.tar.gz into .stage
    .venv/bin/python bench/bench_judge.py --stages report --all-pairs

Writes bench/results/judge.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after an installed sparsa (the GPU wheel)
from bench.common import write_results
from sparsa.config import load_settings
from sparsa.data import load_dataset, read_run, write_run
from sparsa.eval import evaluate_run
from sparsa.types import Hit, Qrels, Run, sort_hits

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / ".stage" / "judge"
RUNS = STAGE / "runs"
BM25_INDEX = ROOT / ".stage" / "rerank" / "indexes" / "dl19-bm25"  # built by bench_rerank.py (or here)
TILDE_STORE = ROOT / ".stage" / "rerank" / "stores" / "dl19"  # built by bench_rerank.py --stages stores
BM25_SETTINGS = {"bm25-k1_0.9-b_0.4": (0.9, 0.4), "bm25-k1_1.2-b_0.75": (1.2, 0.75), "bm25-k1_3.0-b_1.0": (3.0, 1.0),
                 "bm25-k1_0.1-b_0.0": (0.1, 0.0), "bm25-k1_8.0-b_1.0": (8.0, 1.0)}  # the last two: poor settings
FUSIONS = {"rrf-bm25-tildev2": ("bm25-k1_0.9-b_0.4", "tildev2-bm25"),
           "rrf-bm25-dense": ("bm25-k1_0.9-b_0.4", "minilm-dense"),
           "rrf-bm25-splade": ("bm25-k1_0.9-b_0.4", "splade-tiny"),
           "rrf-splade-dense": ("splade-tiny", "minilm-dense")}
log = logging.getLogger("bench_judge")
NOTES = {
    "judging": "all 9,260 NIST-judged pairs on one H200 (bench/gpu_judge.sh), SmolLM2-135M-Instruct in bfloat16, "
               "passages cut to 192 tokens, 65,536 tokens per batch; timings under 'judging' (wall time of each "
               "scorer's job after the model load, checkpoint writes included). QL ran twice: first with one "
               "prompt (725 pairs/s), then with the four QL prompts (the checkpoint kept; 220 pairs/s for four "
               "prompts and their priors). Device time for both calls pairs (model staging, load, judging): "
               "~350 s. The earlier CPU run (2 shared cores) managed 0.25-0.4 pairs/s and judged 1,036 pairs.",
    "pairs": "every NIST-judged pair (pool) of the 43 queries; the z-score features are per query over its pool, "
             "on fit and held-out queries alike.",
    "runs": "each query's judged pool ranked by BM25 with five (k1, b) settings, SPLADE-tiny and MiniLM over the "
            "whole pool, and RRF fusions of BM25, SPLADE-tiny and MiniLM (10 runs, human nDCG@10 0.35-0.73). "
            "The TILDEv2 runs of the previous report were not rebuilt (their stores are made by bench_rerank.py).",
    "features": "ql_mean: log P(q|p) per query token; ql_pmi: log P(q|p) - log P(q|empty passage) (QL prompt "
                "'question'); ql_pmi_ens: its mean over the four QL prompts; pl_pmi(_mean): log P(p|q) - log P(p|no "
                "query) (per passage token); expected_grade, p3: the UMBRELA prompt's label distribution; *_z: "
                "z-scored within each query's pool.",
    "calibration": "GradeCalibrator: standardised features -> least-squares score -> three thresholds maximising "
                   "unweighted 4-grade kappa on the fit queries' pairs (4,634 pairs), applied to the held-out "
                   "queries' 4,626. Tried in a throwaway script on the same split and not kept, since none beat "
                   "the linear model on held-out 4-grade kappa (0.19-0.23): multinomial logistic regression, "
                   "gradient-boosted trees, degree-2 polynomial features, per-query rank features, per-query pool "
                   "statistics, thresholds at the fit grade proportions, a kappa-maximising weight grid.",
    "kappa_ci": "95% interval from 1,000 bootstrap resamples of the held-out queries.",
}


def dataset():
    return load_dataset(load_settings().data_dir / "trec-dl-2019-passage", "test")


def pool_run(scores: dict[str, dict[str, float]], qrels, name: str) -> Run:
    """Each query's judged passages ranked by ``scores`` (missing ones last, in doc-id order)."""
    ranked = {}
    for qid, judged in qrels.items():
        got = scores.get(qid, {})
        hits = sort_hits([Hit(d, got[d]) for d in judged if d in got])
        floor = min((h.score for h in hits), default=0.0)
        hits += [Hit(d, floor - 1.0 - i * 1e-6) for i, d in enumerate(sorted(set(judged) - set(got)))]
        ranked[qid] = hits
    return Run(ranked, name=name)


def rrf(runs: list[Run], name: str, k: int = 60) -> Run:
    scores: dict[str, dict[str, float]] = {}
    for run in runs:
        for qid, hits in run.items():
            for rank, hit in enumerate(hits, start=1):
                scores.setdefault(qid, {})[hit.doc_id] = scores.get(qid, {}).get(hit.doc_id, 0.0) + 1 / (k + rank)
    return Run({q: sort_hits([Hit(d, s) for d, s in docs.items()]) for q, docs in scores.items()}, name=name)


def stage_runs(args: argparse.Namespace) -> None:
    from sparsa.indexes import build_index
    from sparsa.indexes.lucene import LuceneBM25Index

    data = dataset()
    RUNS.mkdir(parents=True, exist_ok=True)
    if not (BM25_INDEX / "sparsa.json").is_file():
        build_index("bm25", data.corpus, BM25_INDEX)
    for name, (k1, b) in BM25_SETTINGS.items():
        if not (RUNS / f"{name}.trec").is_file():
            run = LuceneBM25Index.open(BM25_INDEX, k1=k1, b=b).retrieve(data.queries, k=len(data.corpus))
            scores = {q: {h.doc_id: h.score for h in hits} for q, hits in run.items()}
            write_run(pool_run(scores, data.qrels, name), RUNS / f"{name}.trec")
    bm25 = read_run(RUNS / "bm25-k1_0.9-b_0.4.trec")
    for name, store in (("tildev2-bm25", TILDE_STORE), ("tildev2-unexpanded-bm25", TILDE_STORE.with_name("dl19-unexpanded"))):
        if not (RUNS / f"{name}.trec").is_file() and (store / "sparsa.json").is_file():
            from sparsa.rerank import TildeV2Reranker, rerank_run

            reranked = rerank_run(TildeV2Reranker.open(store), bm25, data.queries, data.corpus, depth=None)
            write_run(Run(dict(reranked), name=name), RUNS / f"{name}.trec")
    if args.encoders:
        encoder_runs(data)
    write_fusions()
    for path in sorted(RUNS.glob("*.trec")):
        log.info("%-22s nDCG@10 %.4f", path.stem, evaluate_run(read_run(path), data.qrels).aggregate["nDCG@10"])


def encoder_runs(data) -> None:
    """SPLADE-tiny (exact dot product) and MiniLM (cosine) ranking every query's whole judged pool."""
    pool = sorted({d for judged in data.qrels.values() for d in judged})
    ids = {d: i for i, d in enumerate(pool)}
    texts = [data.corpus[d].full_text for d in pool]
    qtexts = {q.id: q.text for q in data.queries if q.id in data.qrels}
    if not (RUNS / "splade-tiny.trec").is_file():
        from sparsa.retrieval.splade import SpladeEncoder

        encoder = SpladeEncoder()
        docs = encoder.encode_documents(texts)
        queries = dict(zip(qtexts, encoder.encode_queries(list(qtexts.values())), strict=True))
        scores = {q: {d: queries[q].dot(docs[ids[d]]) for d in data.qrels[q]} for q in qtexts}
        write_run(pool_run(scores, data.qrels, "splade-tiny"), RUNS / "splade-tiny.trec")
    if not (RUNS / "minilm-dense.trec").is_file():
        from sparsa.retrieval.dense import DenseConfig, DenseEncoder

        encoder = DenseEncoder(DenseConfig(model="minilm-l6", device="cpu"))
        docs = encoder.encode_documents(texts)
        queries = dict(zip(qtexts, encoder.encode_queries(list(qtexts.values())), strict=True))
        scores = {q: {d: float(queries[q] @ docs[ids[d]]) for d in data.qrels[q]} for q in qtexts}
        write_run(pool_run(scores, data.qrels, "minilm-dense"), RUNS / "minilm-dense.trec")


def write_fusions() -> None:
    for name, parts in FUSIONS.items():
        if not (RUNS / f"{name}.trec").is_file() and all((RUNS / f"{p}.trec").is_file() for p in parts):
            write_run(rrf([read_run(RUNS / f"{p}.trec") for p in parts], name), RUNS / f"{name}.trec")


def load_runs() -> dict[str, Run]:
    return {p.stem: read_run(p) for p in sorted(RUNS.glob("*.trec"))}


def depth_ordered_pairs(runs: dict[str, Run], depth: int) -> list[tuple[str, str]]:
    """The union of the runs' top ``depth``, rank 1 of every run and query first, then rank 2, ...

    A job stopped early has then judged every run's top d for every query, for some d."""
    from sparsa.rag.judge_job import top_k_union

    pairs: dict[tuple[str, str], None] = {}
    for rank in range(depth):
        for pair in top_k_union([Run({q: hits[rank : rank + 1] for q, hits in run.items()}) for run in runs.values()],
                                1):
            pairs.setdefault(pair, None)
    return list(pairs)


def checkpoint_path(scorer: str, shard: int = 0) -> Path:
    """Shard 0 of a scorer is ``checkpoint-<scorer>.jsonl``; others add ``-<shard>``."""
    return STAGE / (f"checkpoint-{scorer}.jsonl" if shard == 0 else f"checkpoint-{scorer}-{shard}.jsonl")


def read_all_checkpoints(scorer: str) -> dict:
    from sparsa.rag.judge_job import read_checkpoint

    records = {}
    for path in sorted(STAGE.glob(f"checkpoint-{scorer}*.jsonl")):
        records.update(read_checkpoint(path))
    return records


def pairs_to_judge(args: argparse.Namespace, data) -> list[tuple[str, str]]:
    """Every NIST-judged pair (--all-pairs, in sorted order), else the runs' top --depth, rank-major."""
    if args.all_pairs:
        return sorted((q, d) for q, judged in data.qrels.items() for d in judged)
    return depth_ordered_pairs(load_runs(), args.depth)


def stage_score(args: argparse.Namespace) -> None:
    """Resumable judge jobs over the pairs, one scorer after the other (one checkpoint each).

    ``--shard i/n`` gives this process every n-th open pair (CPU jobs in parallel processes); the
    wall time of each scorer goes to ``timings-<scorer>.json`` beside the checkpoints."""
    import time

    import torch
    from sparsa.rag.judge import JudgeConfig, RelevanceJudge
    from sparsa.rag.judge_job import judge_with_checkpoint

    torch.set_num_threads(args.threads)
    data = dataset()
    all_pairs = pairs_to_judge(args, data)
    queries = {q.id: q for q in data.queries}
    shard, shards = (int(x) for x in args.shard.split("/"))
    on_gpu = args.device.startswith("cuda")
    for scorer in args.scorers:
        done = set(read_all_checkpoints(scorer))
        pairs = [p for p in all_pairs if p not in done][shard::shards]  # each process takes every n-th open pair
        log.info("%s: %d pairs, %d open for this shard", scorer, len(all_pairs), len(pairs))
        started = time.perf_counter()
        judge = RelevanceJudge(JudgeConfig(scorers=(scorer,), max_passage_tokens=args.max_passage_tokens,
                                           max_tokens_per_batch=args.max_tokens_per_batch, device=args.device,
                                           dtype=args.dtype, ql_prompts=tuple(args.ql_prompts)))
        loaded = time.perf_counter()
        judge_with_checkpoint(judge, pairs, queries, data.corpus, checkpoint_path(scorer, shard),
                              batch_pairs=args.batch_pairs)
        if on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - loaded
        timing = {"scorer": scorer, "pairs": len(pairs), "load_s": round(loaded - started, 2),
                  "judge_s": round(seconds, 2), "pairs_per_s": round(len(pairs) / seconds, 1) if pairs else None,
                  "device": torch.cuda.get_device_name() if on_gpu else args.device, "dtype": args.dtype,
                  "max_tokens_per_batch": args.max_tokens_per_batch, "torch": torch.__version__}
        (STAGE / f"timings-{scorer}.json").write_text(json.dumps(timing, indent=2))
        log.info("%s", timing)


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


def stage_report(args: argparse.Namespace) -> None:
    from sparsa.rag.judge_job import fit_split

    data = dataset()
    runs = load_runs()
    pairs = pairs_to_judge(args, data)
    fit_qids, test_qids = fit_split(list(data.qrels), args.fit_queries)
    checkpoints = {s: read_all_checkpoints(s) for s in ("ql", "pl", "umbrela")}
    results = {"split": {"fit_queries": fit_qids, "held_out_queries": test_qids,
                         "rule": f"query ids sorted as strings; the first {args.fit_queries} fit the calibration"},
               "runs_human_ndcg10_all_queries": {n: round(evaluate_run(r, data.qrels).aggregate["nDCG@10"], 4)
                                                 for n, r in runs.items()},
               "pairs_to_judge": len(pairs), "judging": judging_timings(), "settings": {}}
    for setting, (needed, features) in SETTINGS.items():
        judged = [p for p in pairs if all(p in checkpoints[s] for s in needed)]
        records = [{k: v for s in needed for k, v in checkpoints[s][p].items() if k != "prompts"} for p in judged]
        human = np.array([data.qrels[q][d] for q, d in judged])
        fit = [i for i, (q, _) in enumerate(judged) if q in set(fit_qids)]
        test = [i for i, (q, _) in enumerate(judged) if q in set(test_qids)]
        depth = complete_depth(runs, set(judged), args.depth)
        entry = {"pairs_judged": len(judged), "complete_depth": depth, "features": list(features)}
        if len(fit) < 8 or not test:
            results["settings"][setting] = {**entry, "note": "too few judged pairs yet"}
            continue
        entry.update(evaluate_setting(features, judged, records, human, fit, test, runs, data.qrels, test_qids,
                                      depth))
        results["settings"][setting] = entry
        log.info("%s: %s", setting, json.dumps({k: v for k, v in entry.items() if k != "calibration"})[:600])
    results["notes"] = NOTES
    write_results("judge", results, packages=("torch", "transformers", "ir_measures"))


def judging_timings() -> dict:
    """What the score stage recorded per scorer (``timings-*.json``)."""
    return {p.stem.removeprefix("timings-"): json.loads(p.read_text()) for p in sorted(STAGE.glob("timings-*.json"))}


def main() -> None:
    global STAGE, RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=["runs", "pairs", "score", "report"])
    parser.add_argument("--depth", type=int, default=10, help="judge each run's top DEPTH")
    parser.add_argument("--scorers", nargs="+", default=["ql"], help="score stage: any of umbrela, ql, pl")
    parser.add_argument("--ql-prompts", nargs="+", default=["question"], help="score: QL prompts (judge.QL_PROMPTS)")
    parser.add_argument("--all-pairs", action="store_true", help="judge every NIST-judged pair, not the runs' top DEPTH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-tokens-per-batch", type=int, default=4096)
    parser.add_argument("--batch-pairs", type=int, default=16, help="score: pairs per checkpoint append")
    parser.add_argument("--stage-dir", type=Path, default=STAGE, help="where runs, checkpoints and timings live")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shard", default="0/1", help="score: this process's share i/n of the open pairs")
    parser.add_argument("--no-encoders", dest="encoders", action="store_false",
                        help="runs: only BM25, TILDEv2 and their fusion (no SPLADE / MiniLM encoding)")
    parser.add_argument("--fit-queries", type=int, default=21, help="report: calibrate on the first N query ids")
    parser.add_argument("--max-passage-tokens", type=int, default=192)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("sparsa").setLevel(logging.INFO)
    STAGE, RUNS = args.stage_dir, args.stage_dir / "runs"
    for stage in args.stages:
        globals()[f"stage_{stage}"](args)


if __name__ == "__main__":
    main()
