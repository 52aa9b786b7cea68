"""Hybrid first stages on SciFact, chosen on dev only: issue 28's "best hybrid chosen on dev" target.

Two steps, both on a CPU:

    # 1. through the CLI: an index per system (sparsa index), its runs on the dev and test queries
    #    (sparsa search --split train / test, k=1000); with --tildev2 STORE also TILDEv2 over BM25's top 100
    python bench/bench_hybrid.py runs --work .stage/hybrid [--system NAME=KIND:MODEL ...] [--tildev2 STORE]
    # 2. score every single system on dev and test; fuse every pair and triple of systems on dev with
    #    each method and weight of the grid (sparsa fuse's code, retrieval/fusion.py); choose the one with
    #    the highest dev nDCG@10; only then fuse and score that one choice on test, with a paired
    #    bootstrap against the best single system on test. A second choice, made the same way before any
    #    test run is read, fuses only the systems not trained on the dev queries (--trained-on-dev)
    python bench/bench_hybrid.py choose --work .stage/hybrid

``choose --dev-only`` scores the dev grid and stops before any test run is read (dev scores are kept in
``WORK/dev_scores.json``, so a later ``choose`` with one more system fuses only the new candidates).
Runs are ``<system>.<split>.trec`` in ``WORK/runs``. Dev is the dataset's ``train`` qrels split (SciFact:
809 queries), test its ``test`` split; test runs are read only after the choice is made. ``choose``
writes bench/results/hybrid_scifact.json (``--out``: elsewhere) and prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from common import sparsa_cli as cli
from common import write_results

# name -> (index kind, model) of the systems `runs` builds; the fine-tunes are bench/results/lsr.json's
# arms (a) and (b), trained on SciFact's train queries (this bench's dev: see NOTES)
SYSTEMS = {
    "bm25": ("bm25", ""),
    "splade-tiny": ("splade", "splade-tiny"),
    "splade-tiny-ft-a": ("splade", ".stage/slsr_cpu/ft-a"),
    "splade-tiny-ft-b": ("splade", ".stage/slsr_cpu/ft-b"),
    "minilm-l6": ("dense", "minilm-l6"),
}
TILDEV2 = "tildev2-bm25"  # TILDEv2 scores of BM25's top 100 (a run of its own, fused like the others)
DEV, TEST = "train", "test"
# the grid, fixed before any run was scored: the first system's weight is 1; a pair's second weight and a
# triple's other two come from these lists (scale does not change a fused ranking, so these cover both sides)
METHODS = (("rrf", None), ("interp", "minmax"), ("interp", "zscore"))
PAIR_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
TRIPLE_WEIGHTS = (0.5, 1.0, 2.0)
DEPTH, RRF_K, FUSED_K = 100, 60.0, 1000
TARGET = 0.78
# systems trained on the dev queries (SciFact train): lsr.json's fine-tunes, TILDEv2 (rerank.json) and the
# MiniLM fine-tune of this record's notes
TRAINED_ON_DEV = ("splade-tiny-ft-a", "splade-tiny-ft-b", TILDEV2, "minilm-l6-ft")


def make_runs(args: argparse.Namespace) -> None:
    """An index and a run per split for each system, through the CLI; existing ones are kept (resume)."""
    systems = dict(SYSTEMS)
    for spec in args.system or []:
        name, _, rest = spec.partition("=")
        kind, _, model = rest.partition(":")
        systems[name] = (kind, model)
    runs = args.work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for name, (kind, model) in systems.items():
        index = args.work / "indexes" / name
        if not (index / "sparsa.json").is_file():
            started = time.perf_counter()
            cli("index", "--dataset", args.dataset, "--kind", kind, *(["--model", model] if model else []),
                "--out", index)
            print(f"{name}: index built in {time.perf_counter() - started:.0f} s", flush=True)
        for split in (DEV, TEST):
            out = runs / f"{name}.{split}.trec"
            if not out.is_file():
                cli("-q", "search", "--index", index, "--dataset", args.dataset, "--split", split,
                    "--k", args.k, "--out", out)
    if args.tildev2:
        for split in (DEV, TEST):
            out = runs / f"{TILDEV2}.{split}.trec"
            if not out.is_file():
                cli("rerank", "--run", runs / f"bm25.{split}.trec", "--dataset", args.dataset,
                    "--split", split, "--reranker", "tildev2", "--model", args.tildev2, "--top-k", DEPTH,
                    "--out", out)


def grid(systems: list[str]) -> list[dict]:
    """Every candidate hybrid: each pair and triple of ``systems`` x method x weights, in a fixed order."""
    out = []
    for size, choices in ((2, PAIR_WEIGHTS), (3, TRIPLE_WEIGHTS)):
        for combo in itertools.combinations(systems, size):
            for method, normalisation in METHODS:
                for rest in itertools.product(choices, repeat=size - 1):
                    out.append({"runs": list(combo), "method": method, "normalisation": normalisation,
                                "weights": [1.0, *rest]})
    return out


def label(candidate: dict) -> str:
    method = candidate["method"] + (f"-{candidate['normalisation']}" if candidate["normalisation"] else "")
    weights = ":".join(f"{w:g}" for w in candidate["weights"])
    return f"{'+'.join(candidate['runs'])} {method} {weights}"


def fused(candidate: dict, runs: dict):
    from sparsa.retrieval.fusion import fuse

    return fuse([runs[name] for name in candidate["runs"]], candidate["method"], candidate["weights"],
                k=FUSED_K, depth=DEPTH, normalisation=candidate["normalisation"] or "minmax", rrf_k=RRF_K)


def choose(candidates: list[dict], dev_scores: list[float]) -> int:
    """Index of the candidate with the highest dev nDCG@10; ties go to fewer systems, then grid order."""
    return max(range(len(candidates)), key=lambda i: (dev_scores[i], -len(candidates[i]["runs"]), -i))


def score(run, qrels, measures=("nDCG@10", "R@100")):
    from sparsa.eval import evaluate_run

    return evaluate_run(run, qrels, measures)


def rounded(result) -> dict:
    return {m: round(v, 4) for m, v in result.aggregate.items()}


def dev_grid(names: list[str], dev_runs: dict, qrels, work: Path, sizes: dict) -> tuple[list[dict], list]:
    """Every candidate over ``names`` and its dev nDCG@10. Scores are kept in ``WORK/dev_scores.json``
    (keyed by setting and the runs' sizes): a rerun with one more system fuses only the new candidates;
    fusion is deterministic, so a kept score is the score."""
    candidates = grid(names)
    print(f"{len(names)} systems, {len(candidates)} candidates on {len(qrels)} dev queries", flush=True)
    cache_path = work / "dev_scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    started = time.perf_counter()
    scores = []
    for i, candidate in enumerate(candidates):
        key = label(candidate) + "|" + ",".join(str(sizes[n]) for n in candidate["runs"])
        if key not in cache:
            cache[key] = score(fused(candidate, dev_runs), qrels, ("nDCG@10",)).aggregate["nDCG@10"]
        scores.append(cache[key])
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(candidates)} scored, {time.perf_counter() - started:.0f} s", flush=True)
            cache_path.write_text(json.dumps(cache))
    cache_path.write_text(json.dumps(cache))
    return candidates, scores


def top(candidates: list[dict], scores: list[float], n: int) -> list[dict]:
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])[:n]
    return [{"setting": label(candidates[i]), "dev_nDCG@10": round(scores[i], 4)} for i in order]


def choose_step(args: argparse.Namespace) -> None:
    from sparsa.config import dataset_path
    from sparsa.data import read_qrels
    from sparsa.eval.bootstrap import paired_bootstrap
    from sparsa.types import Run

    folder = dataset_path(args.dataset)
    qrels = {split: read_qrels(folder / "qrels" / f"{split}.tsv") for split in (DEV, TEST)}
    run_dir = args.work / "runs"
    names = sorted(p.name.removesuffix(f".{DEV}.trec") for p in run_dir.glob(f"*.{DEV}.trec"))
    names = [n for n in names if not args.systems or n in args.systems]
    if len(names) < 2:
        raise SystemExit(f"need runs of two or more systems in {run_dir} (<system>.{DEV}.trec)")
    trained = set(args.trained_on_dev)
    dev_runs = {n: Run.read_trec(run_dir / f"{n}.{DEV}.trec") for n in names}
    sizes = {n: (run_dir / f"{n}.{DEV}.trec").stat().st_size for n in names}
    singles = {n: {"dev": rounded(score(dev_runs[n], qrels[DEV])), "trained_on_dev": n in trained}
               for n in names}
    # two choices, both made here before any test run is read: over every system (the record's choice),
    # and over the systems that never saw the dev queries in training (a check: a system trained on
    # them scores higher on dev than it will on unseen queries, so dev over-weights it)
    unseen = [n for n in names if n not in trained]
    pools = {"chosen": names, **({"chosen_unseen_dev": unseen} if len(unseen) >= 2 and trained else {})}
    choices, tops = {}, {}
    for key, pool in pools.items():
        candidates, scores = dev_grid(pool, dev_runs, qrels[DEV], args.work, sizes)
        choices[key] = dict(candidates[choose(candidates, scores)]) | {"candidates": len(candidates)}
        choices[key]["dev"] = rounded(score(fused(choices[key], dev_runs), qrels[DEV]))
        tops[key] = top(candidates, scores, 10)
        for row in tops[key]:
            print(f"  {key}: dev nDCG@10 {row['dev_nDCG@10']:.4f}  {row['setting']}")
    if args.dev_only:  # fill the dev-score cache and show dev; no test run is read
        return

    # the choices are fixed: only now are the test runs read, and each chosen hybrid scored on them once
    test_runs = {n: Run.read_trec(run_dir / f"{n}.{TEST}.trec") for n in names}
    per_query = {}
    for n in names:
        result = score(test_runs[n], qrels[TEST])
        singles[n]["test"], per_query[n] = rounded(result), result.per_query
    best_single = max(names, key=lambda n: (singles[n]["test"]["nDCG@10"], n))
    paired = {}
    for key, chosen in choices.items():
        result = score(fused(chosen, test_runs), qrels[TEST])
        chosen["test"], chosen["label"] = rounded(result), label(chosen)
        ids, base = sorted(result.per_query), per_query[best_single]
        # the figure's own sampling interval over the test queries (bootstrap of the mean, as paired)
        chosen["test_nDCG@10_ci95"] = paired_bootstrap([result.per_query[q]["nDCG@10"] for q in ids],
                                                       [0.0] * len(ids))["ci95"]
        paired[f"{key}-vs-{best_single}"] = {
            m: paired_bootstrap([result.per_query[q][m] for q in ids], [base[q][m] for q in ids])
            for m in ("nDCG@10", "R@100")}
    reached = choices["chosen"]["test"]["nDCG@10"] >= TARGET
    print_table(singles, choices, paired)
    print(f"target nDCG@10 >= {TARGET} on test (the record's choice): {'met' if reached else 'not met'}")
    payload = {
        "dataset": f"{folder.name}: dev = qrels split {DEV!r} ({len(qrels[DEV])} queries), "
                   f"test = {TEST!r} ({len(qrels[TEST])} queries)",
        "grid": {"methods": [m + (f"-{n}" if n else "") for m, n in METHODS], "pair_weights": PAIR_WEIGHTS,
                 "triple_weights": TRIPLE_WEIGHTS, "depth": DEPTH, "rrf_k": RRF_K, "fused_k": FUSED_K,
                 "chosen_by": "highest dev nDCG@10; ties: fewer systems, then grid order"},
        "systems": singles,
        **choices,
        "best_single_on_test": best_single,
        "paired": paired,
        "target": {"nDCG@10": TARGET, "reached": reached, "judged_on": "chosen"},
        "dev_top10": tops,
        "notes": list(args.note or []),
    }
    path = write_results("hybrid_scifact", payload, path=args.out)
    print(f"wrote {path}")


def print_table(singles: dict, choices: dict, paired: dict) -> None:
    print(f"{'system':<58} {'dev nDCG@10':>11} {'dev R@100':>9} {'test nDCG@10':>12} {'test R@100':>10}")
    rows = [(n + (" *" if s["trained_on_dev"] else ""), s) for n, s in singles.items()]
    rows += [(f"{key}: {c['label']}", c) for key, c in choices.items()]
    for name, row in rows:
        print(f"{name:<58} {row['dev']['nDCG@10']:>11.4f} {row['dev']['R@100']:>9.4f} "
              f"{row['test']['nDCG@10']:>12.4f} {row['test']['R@100']:>10.4f}")
    print("* trained on the dev queries")
    for key, by_measure in paired.items():
        for m, p in by_measure.items():
            low, high = p["ci95"]
            print(f"{key} (test, {m}): {p['diff']:+.4f} [{low:+.4f}, {high:+.4f}]")
    for key, c in choices.items():
        low, high = c["test_nDCG@10_ci95"]
        print(f"{key}: test nDCG@10 {c['test']['nDCG@10']:.4f}, 95% interval [{low:.4f}, {high:.4f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    mk = sub.add_parser("runs", help="indexes and dev/test runs through the CLI")
    mk.add_argument("--work", type=Path, required=True)
    mk.add_argument("--dataset", default="scifact")
    mk.add_argument("--system", action="append", help="NAME=KIND:MODEL, added to (or replacing) the defaults")
    mk.add_argument("--tildev2", help="TILDEv2 store (sparsa rerank-store): also rerank BM25's top 100")
    mk.add_argument("--k", type=int, default=1000)
    ch = sub.add_parser("choose", help="choose on dev, score that one hybrid on test, write the record")
    ch.add_argument("--work", type=Path, required=True)
    ch.add_argument("--dataset", default="scifact", help="folder or name under the data dir (its qrels/)")
    ch.add_argument("--systems", nargs="*", help="only these systems' runs (default: every one in WORK/runs)")
    ch.add_argument("--trained-on-dev", nargs="*", default=list(TRAINED_ON_DEV),
                    help="systems trained on the dev queries: left out of the second, unseen-dev choice")
    ch.add_argument("--note", action="append", help="a note for the record (repeatable)")
    ch.add_argument("--out", type=Path, help="write the record here instead of bench/results/")
    ch.add_argument("--dev-only", action="store_true", help="score the dev grid only (no test run is read)")
    args = parser.parse_args()
    make_runs(args) if args.step == "runs" else choose_step(args)


if __name__ == "__main__":
    main()
