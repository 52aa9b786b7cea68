"""Issue 25's reproductions: published figures re-measured through the `sparsa` commands alone.

bench/gpu_cli_reruns.sh runs the commands that docs/results.md lists under "From the CLI alone:" (one
step per part) and writes what they print and produce under $OUT. This script reads those folders, one per
step, scores them here (TREC runs with sparsa.eval, as `gpu_cli_reruns.sh check` does; `kg eval`'s JSON
lines as printed) and sets each figure beside the one in its record, read from bench/results/*.json by
path, so nothing is typed in twice:

    python bench/cli_reruns.py ql=FETCHED_DIR mistral-splade=DIR amar-base=DIR amar-stage1=DIR \\
        [--device amar-base="2-core CPU"] [--wheel 82b82f1]

A step's device is its folder's gpu.txt (nvidia-smi's name, written by the step) unless --device names it.
Steps not given keep their rows from the existing record (each row names its wheel, date and device), else
are listed as not run. Writes bench/results/cli_reruns.json (or --out) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from common import RESULTS, write_results

MEASURED = ("cli", "device", "wheel", "date", "scored_by")  # a row's re-measured value and its provenance
STAGE1 = "amar[stage1 gate_mode=filter,gate_threshold=0.9,min_open_paths=1]"


@dataclass(frozen=True)
class Figure:
    """One published figure: ``step`` of gpu_cli_reruns.sh reproduces it from ``source``: a TREC run scored
    on ``dataset``, a `kg eval` log's hits@1 at ``hops``, or the value at ``key`` in a JSON file the command
    wrote; ``record``/``path``: where it was published."""

    step: str
    label: str
    source: str
    record: str
    path: tuple[str, ...]
    dataset: str | None = None
    hops: str | None = None
    key: tuple[str, ...] = ()


QL = ("query_likelihood_gpu",)
JUDGE_KAPPA = ("labels", "cohen_kappa_4grade")
JUDGE_TAU = ("system_ranking", "kendall_tau")
FIGURES = [
    Figure("ql", "query likelihood (SmolLM2) over BM25's top 100, SciFact nDCG@10", "ql.100.trec",
           "rerank.json", (*QL, "bm25_top100", "query_likelihood_ndcg10"), dataset="scifact"),
    Figure("ql", "query likelihood over BM25's top 1,000, SciFact nDCG@10", "ql.1000.trec",
           "rerank.json", (*QL, "bm25_top1000", "query_likelihood_ndcg10"), dataset="scifact"),
    *(Figure("mistral-splade", f"Mistral-SPLADE (SmolLM2-135M), {name} nDCG@10",
             f"mistral-splade.{name}.trec", "lsr_scifact_finetunes.json",
             ("results", f"mistral-splade-smollm2.{name}", "nDCG@10"), dataset=name)
      for name in ("scifact", "cranfield", "cisi")),
    *(Figure(step, f"{what}, MetaQA test {hops} Hits@1", log, "rag.json",
             ("amar", "table", hops, mode, "hits@1"), hops=hops)
      for step, what, log, mode in (
          ("amar-base", "LM alone", "eval-lm.log", "lm"),
          ("amar-base", "KG as text", "eval-text.log", "text"),
          ("amar-stage1", "Amar stage 1, LM frozen", "eval-frozen.log", STAGE1),
          ("amar-stage2", "Amar, stage 2 LoRA", "eval-amar.log", "amar"),
          ("amar-stage2", "plain-text LoRA control", "eval-text-lora.log", "text-lora"))
      for hops in ("1-hop", "2-hop")),
    *(Figure(step, label, report, "judge.json", ("chosen_on_fit", model, *published_key),
             key=("held_out", *key))
      for step, model, label, report, published_key, key in (
          ("judge-smollm2", "smollm2-135m-instruct", "SmolLM2 judge, QL 4 prompts, held-out kappa (4 grades)",
           "agreement-ql.json", ("for_kappa", "held_out_kappa_4grade"), JUDGE_KAPPA),
          ("judge-smollm2", "smollm2-135m-instruct", "SmolLM2 judge, PL, held-out Kendall tau of 10 systems",
           "agreement-pl.json", ("for_system_ranking", "held_out_kendall_tau"), JUDGE_TAU),
          ("judge-qwen", "qwen2.5-coder-1.5b-instruct", "Qwen judge, QL 4 prompts, held-out kappa (4 grades)",
           "agreement-qwen-ql.json", ("for_kappa", "held_out_kappa_4grade"), JUDGE_KAPPA),
          ("judge-qwen", "qwen2.5-coder-1.5b-instruct", "Qwen judge, UMBRELA, held-out tau of 10 systems",
           "agreement-qwen-umbrela.json", ("for_system_ranking", "held_out_kendall_tau"), JUDGE_TAU))),
    *(Figure("router", f"Qwen router test, {policy}, {measure.upper()}", "router-rows.json", "rag.json",
             ("routing_qwen1.5b", "test", policy, measure), key=("report", "test", policy, measure))
      for policy in ("routed (popularity+coverage)", "always-retrieve") for measure in ("em", "f1")),
]


@cache
def read_json(path: Path) -> dict:
    """A record or a step's JSON output, read once however many figures it holds."""
    return json.loads(path.read_text())


@cache
def qrels(dataset: str):
    """A dataset's test qrels, loaded once for all the runs scored on it."""
    from sparsa.data import load_dataset

    return load_dataset(dataset).qrels


def value_at(document: dict, keys: tuple[str, ...]) -> float:
    for key in keys:
        document = document[key]
    return float(document)


def published(figure: Figure) -> float:
    return value_at(read_json(RESULTS / figure.record), figure.path)


def measured(figure: Figure, folder: Path) -> float:
    from sparsa.eval import evaluate_run
    from sparsa.types import Run

    source = folder / figure.source
    if figure.dataset is not None:
        run = Run.read_trec(source if source.exists() else source.with_suffix(".trec.gz"))
        return round(evaluate_run(run, qrels(figure.dataset), ["nDCG@10"]).aggregate["nDCG@10"], 4)
    if figure.hops is not None:
        printed = [json.loads(line) for line in source.read_text().splitlines() if line.startswith("{")]
        return float(printed[-1]["by_hops"][figure.hops])
    return value_at(read_json(source), figure.key)


def device_of(folder: Path, named: str | None) -> str:
    if named:
        return named
    gpu = folder / "gpu.txt"
    return gpu.read_text().split(",")[0].strip() if gpu.exists() else "not recorded"


def pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        step, sep, value = item.partition("=")
        if not sep or step not in {f.step for f in FIGURES}:
            raise SystemExit(f"{flag} {item!r}: expected STEP=VALUE with STEP one of "
                             f"{', '.join(sorted({f.step for f in FIGURES}))}")
        out[step] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fetched", nargs="+", help="STEP=FOLDER: what a step of gpu_cli_reruns.sh wrote "
                        "(steps not given keep their rows from bench/results/cli_reruns.json)")
    parser.add_argument("--device", nargs="*", default=[], help="STEP=TEXT where the folder has no gpu.txt")
    parser.add_argument("--wheel", default="", help="the commit the steps' sparsa came from")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "cli_reruns.json")
    args = parser.parse_args()
    folders, devices = pairs(args.fetched, "fetched"), pairs(args.device, "--device")

    # Steps re-run in earlier calls keep their rows (the fetched files do not outlive a session's machine);
    # each row names the wheel, date, device and scoring command it was measured with.
    path = args.out
    earlier = {row["figure"]: row for row in json.loads(path.read_text())["rows"]} if path.exists() else {}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    command = " ".join(["python", *sys.argv])
    rows = []
    for figure in FIGURES:
        row = {"step": figure.step, "figure": figure.label, "published": published(figure),
               "record": f"{figure.record}: {'/'.join(figure.path)}"}
        if figure.step in folders:
            folder = Path(folders[figure.step])
            row |= {"cli": measured(figure, folder), "device": device_of(folder, devices.get(figure.step)),
                    "wheel": args.wheel, "date": today, "scored_by": command}
        elif "cli" in earlier.get(figure.label, {}):
            row |= {key: earlier[figure.label][key] for key in MEASURED}
        if "cli" in row:
            row["difference"] = round(row["cli"] - row["published"], 4)
        rows.append(row)

    print(f"{'step':<15} {'figure':<62} {'published':>9} {'CLI':>7} {'diff':>8}  device")
    for row in rows:
        cli = f"{row['cli']:.4f}" if "cli" in row else "not run"
        diff = f"{row['difference']:+.4f}" if "cli" in row else ""
        print(f"{row['step']:<15} {row['figure']:<62} {row['published']:>9.4f} {cli:>7} {diff:>8}  "
              f"{row.get('device', '')}")
    print(f"wrote {write_results('cli_reruns', {'note': args.note, 'rows': rows}, path=path)}")


if __name__ == "__main__":
    main()
