"""Synthetic training queries per corpus (issue 28): ``sparsa generate-queries`` over each corpus we hold,
without any test query: the pairs written, the consistency filter's keep rate and the generation rate.

Corpora (``--data`` holds one folder each, corpus files only: ``bench/gpu_synthetic_queries.sh stage``):
SciFact, Cranfield, CISI, RealTime QA's article passages, TimeQA's page passages and TREC DL 2019's judged
passages (their qrels stay for evaluation). Few-shot examples: four SciFact *train* claims (the default),
TimeQA train questions with their paragraphs for TimeQA (``fewshot-timeqa``; train pages that are also
test pages are left out). Filter: BM25 over the whole corpus, built on the fly; a pair is kept when its
document ranks within ``--keep-top``; ``found_within`` gives the keep rate at other depths.

Steps:
  fewshot-timeqa  (CPU) the TimeQA train examples file -> ``--out``
  generate        (GPU) each corpus's generation log in ``--work`` (a rerun resumes), timed per corpus
  filter          (here: BM25 needs Java, which the GPU machine lacks) the same commands with the same flags:
                  every document is in its log, so no LM loads; the pairs ``--work/<corpus>.jsonl.gz``, the
                  table and ``--out`` (default bench/results/synthetic_queries.json)
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import time
from pathlib import Path

CORPORA = ("scifact", "cranfield", "cisi", "realtimeqa", "timeqa", "trec-dl-2019-passage")


def fewshot_timeqa(data: Path, out: Path, n: int = 4, seed: int = 0) -> None:
    """(paragraph, question) pairs from TimeQA's human-annotated *train* pages: the paragraph holding the
    first answer span."""
    def pages(name: str) -> list[dict]:
        with gzip.open(data / "timeqa" / name, "rt", encoding="utf-8") as f:
            return json.load(f)

    def listed(value):
        return ast.literal_eval(value) if isinstance(value, str) else value

    test_links = {p["link"] for p in pages("human_annotated_test.json.gz")}
    candidates = []
    for page in pages("human_annotated_train.json.gz"):
        if page["link"] in test_links:
            continue
        paras = listed(page["paras"])
        for question, spans in listed(page["questions"]):
            para = spans[0].get("para") if spans else None
            if isinstance(para, int) and 0 < para < len(paras) and 30 <= len(paras[para].split()) <= 120:
                candidates.append({"document": f"{paras[0]} {paras[para]}", "query": question.strip(),
                                   "source": f"timeqa train {page['link']}"})
    random.Random(seed).shuffle(candidates)
    chosen, seen = [], set()
    for c in candidates:  # one example per page
        if c["source"] not in seen:
            chosen.append(c)
            seen.add(c["source"])
        if len(chosen) == n:
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chosen))
    print(f"wrote {len(chosen)} TimeQA train examples to {out}")


def _argv(args, corpus: str, examples: dict[str, str]) -> list[str]:
    """The same settings in both steps: the generation log refuses to resume under others."""
    argv = ["generate-queries", str(args.data / corpus), "--out", str(args.work / f"{corpus}.jsonl.gz"),
            "--model", args.model, "--batch-size", str(args.batch_size), "--keep-top", str(args.keep_top),
            "--device", args.device, "--report", str(args.work / f"{corpus}.report.json")]
    argv += ["--max-docs", str(args.max_docs)] if args.max_docs else []
    return argv + (["--examples", examples[corpus]] if corpus in examples else [])


def generate(args) -> None:
    """Each corpus's generation log (no filter: the GPU machine has no Java), timed per corpus."""
    import torch

    from sparsa.cli.main import main

    examples = dict(item.split("=", 1) for item in args.examples)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    args.work.mkdir(parents=True, exist_ok=True)
    for corpus in args.corpora:
        log, timing_file = args.work / f"{corpus}.generated.jsonl", args.work / f"{corpus}.timing.json"
        # A call cut by its time limit and resumed adds its own seconds and documents to the earlier ones.
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() \
            else {"seconds": 0.0, "written": 0}
        before = _lines(log)
        started = time.perf_counter()
        if main([*_argv(args, corpus, examples), "--generate-only"]) != 0:
            raise SystemExit(f"generate-queries failed on {corpus}")
        timing = {"seconds": round(timing["seconds"] + time.perf_counter() - started, 1),
                  "written": timing["written"] + _lines(log) - before - (before == 0),  # not the header
                  "gpu": gpu, "device": args.device}
        timing_file.write_text(json.dumps(timing) + "\n")


def _lines(path: Path) -> int:
    return sum(1 for _ in open(path, "rb")) if path.is_file() else 0


def filter_and_report(args) -> None:
    """The same commands again: every document is in its log, so no LM loads; BM25 filters the pairs."""
    from common import write_results

    from sparsa.cli.main import main

    examples = dict(item.split("=", 1) for item in args.examples)
    rows, cards = [], set()
    for corpus in args.corpora:
        if main(_argv(args, corpus, examples)) != 0:
            raise SystemExit(f"generate-queries failed on {corpus}")
        counts = json.loads((args.work / f"{corpus}.report.json").read_text())
        timing = json.loads((args.work / f"{corpus}.timing.json").read_text())
        cards.add(timing["gpu"] or timing["device"])
        rows.append({"corpus": corpus, **{k: v for k, v in counts.items() if k != "corpus"},
                     "generation_seconds": timing["seconds"],
                     # documents written per second, the model's load included
                     "docs_per_s": round(timing["written"] / timing["seconds"], 2) if timing["written"]
                     else None})
    print(f"{'corpus':<22}{'docs':>7}{'queries':>9}{'valid':>7}{'kept':>7}{'keep rate':>11}{'docs/s':>8}")
    for r in rows:
        print(f"{r['corpus']:<22}{r['documents']:>7}{r['generated']:>9}{r['valid']:>7}{r['kept']:>7}"
              f"{r['keep_rate']:>11.3f}{r['docs_per_s'] or 0:>8.1f}")
    settings = {"model": args.model, "max_docs": args.max_docs, "batch_size": args.batch_size,
                "keep_top": args.keep_top, "filter": "BM25 over the whole corpus, built on the fly",
                "examples": {c: examples.get(c, "default: four SciFact train claims") for c in args.corpora},
                "generated_on": sorted(cards)}
    path = write_results("synthetic_queries", {"settings": settings, "corpora": rows}, path=args.out,
                         gpu=", ".join(sorted(c for c in cards if c not in ("cpu", "auto"))) or None)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["fewshot-timeqa", "generate", "filter"])
    parser.add_argument("--data", type=Path, default=Path(".stage/syn/data"),
                        help="run: a folder per corpus; fewshot-timeqa: the shared data folder")
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA))
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--examples", nargs="*", default=[], help="CORPUS=FILE few-shot examples per corpus")
    parser.add_argument("--max-docs", type=int, default=0, help="a seeded sample per corpus (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--keep-top", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path("runs/synthetic"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.step == "fewshot-timeqa":
        fewshot_timeqa(args.data, args.out or Path(".stage/syn/fewshot_timeqa_train.jsonl"))
    elif args.step == "generate":
        generate(args)
    else:
        args.out = args.out or Path(__file__).parent / "results" / "synthetic_queries.json"
        filter_and_report(args)


if __name__ == "__main__":
    main()
