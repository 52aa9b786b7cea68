"""Amar on MetaQA test: Hits@1 of the LM alone, retrieved KG knowledge as plain text, and Amar gating.

Four steps; the first two run on the CPU, ``run`` on a GPU (bench/gpu_amar.sh stages it on the H200):

    python bench/bench_amar.py stage --out .stage/amar/data          # KG retrievals (minilm-l6), pickled
    python bench/bench_amar.py gates --cache .stage/amar/data --out .stage/amar/head1   # stage 1 training
    # stage 2, selection, test:
    python bench/bench_amar.py run --cache DATA --head HEAD1 --out OUT --device cuda
    python bench/bench_amar.py merge --from-file OUT/amar.json         # -> bench/results/rag.json["amar"]

``stage`` draws, per hop, ``--train`` + ``--val`` MetaQA dev questions (disjoint, fixed seed) and
``--test`` test questions, and caches their retrievals (the GPU machine has no minilm-l6). ``gates``
trains the relevance gates and the alignment InfoNCE (stage 1, no LM pass) on the dev-train questions.
``run`` (all on the GPU, within ``--budget-s``): the stage-1 head under a small grid of inference
settings (gate mode, threshold, paths kept open) on the dev-val questions; stage 2 (answer loss
through the frozen LM) from the stage-1 head and, time allowing, the same with LoRA adapters; every
candidate scored on dev-val; the best dev-val candidate (mean Hits@1 over hops) is the one reported
on test, beside ``lm`` and ``text``. Test sees no choice: settings are picked on dev-val only.
Differences to ``text`` come with a paired bootstrap 95% interval and an exact McNemar p-value.

The draw, the grid and the choice are :mod:`sparsa.kg.amar_tune`'s, which the CLI shares: ``sparsa train
amar --val-questions`` / ``--init-head`` / ``--settings``, ``sparsa kg tune`` and ``sparsa kg eval
--settings`` run the same recipe (docs/results.md, "From the CLI alone").
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import pickle
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
from common import RESULTS, run_metadata

from sparsa.eval.bootstrap import paired_bootstrap
from sparsa.kg.amar import AmarModel, aspect_items, first_answer, hits_at_1
from sparsa.kg.amar_tune import (
    GRID,
    best_candidate,
    candidate_name,
    record_precision,
    score_settings,
    split_dev,
)
from sparsa.kg.kg import KGQuestion, KGRetrieval, PathItem
from sparsa.rag.answer_text import normalize_answer

MODES = {"lm": "question only (no knowledge)",
         "text": "retrieved entity, relations and paths as plain text (every item, retrieval order)",
         "amar": "gated, self-aligned item embeddings as soft prompts (inputs_embeds); the head (LoRA or "
                 "frozen LM) and its inference settings chosen on MetaQA dev-val",
         "text-lora": "control: the plain-text prompt through LoRA adapters trained like amar's on the same "
                      "dev questions and seconds (tells the gates' share of a gain from the adapters')",
         "amar[...]": "an amar candidate reported on test before a better dev-val candidate replaced it"}


# -- staging (CPU)
def stage(args: argparse.Namespace) -> None:
    from sparsa.kg.kg import KGRetriever, KnowledgeGraph, load_metaqa

    args.out.mkdir(parents=True, exist_ok=True)
    retriever = KGRetriever(KnowledgeGraph.load(args.data / "kb_reconstructed.txt.gz"))
    for hop in args.hops:
        # the draw 'sparsa train amar --val-questions' and 'sparsa kg tune' make (sparsa.kg.amar_tune)
        train, val = split_dev(load_metaqa(args.data, hop, "dev"), args.train, args.val, args.seed)
        splits = {"val": val, "train": train,
                  "test": load_metaqa(args.data, hop, "test", limit=args.test, seed=args.seed)}
        for name, questions in splits.items():
            started = time.perf_counter()
            retrievals = list(retriever.retrieve_many([q.text for q in questions]))
            with (args.out / f"{name}_{hop}hop.pkl").open("wb") as f:
                pickle.dump({"questions": [asdict(q) for q in questions],
                             "retrievals": _plain(retrievals)}, f)
            print(f"{hop}-hop {name}: {len(questions)} questions, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)


def _plain(retrievals: list[KGRetrieval]) -> dict:
    """Retrievals as built-in types only (vectors as float32 bytes, each path vector stored once), so
    the cache loads under any numpy version."""
    vectors: dict[bytes, int] = {}
    rows = []
    for r in retrievals:
        paths = [(p.steps, p.tails, p.score, p.text,
                  vectors.setdefault(p.vector.astype(np.float32).tobytes(), len(vectors)))
                 for p in r.paths]
        rows.append((r.question, r.topic, r.entities, r.relations, paths,
                     r.question_vector.astype(np.float32).tobytes()))
    return {"vectors": list(vectors), "rows": rows}


def load_split(cache: Path, name: str, hop: int) -> tuple[list[KGQuestion], list[KGRetrieval]]:
    with (cache / f"{name}_{hop}hop.pkl").open("rb") as f:
        data = pickle.load(f)
    table = [np.frombuffer(v, dtype=np.float32).copy() for v in data["retrievals"]["vectors"]]
    retrievals = [KGRetrieval(question, topic, entities, relations,
                              tuple(PathItem(steps, tails, score, text, table[v])
                                    for steps, tails, score, text, v in paths),
                              np.frombuffer(q, dtype=np.float32).copy())
                  for question, topic, entities, relations, paths, q in data["retrievals"]["rows"]]
    return [KGQuestion(**{**q, "answers": tuple(q["answers"])}) for q in data["questions"]], retrievals


def gates(args: argparse.Namespace) -> None:
    import torch

    from sparsa.kg.amar import AmarConfig
    from sparsa.kg.amar_train import AmarTrainConfig, train_amar
    from sparsa.training import seed_everything

    torch.set_num_threads(args.threads)
    pairs = [load_split(args.cache, "train", hop) for hop in args.hops]
    questions = [q for qs, _ in pairs for q in qs]
    retrievals = [r for _, rs in pairs for r in rs]
    config = AmarTrainConfig(gate_epochs=args.epochs, gate_batch=args.batch, lm_steps=0, seed=args.seed)
    seed_everything(args.seed)  # the head starts as 'sparsa train amar' starts it
    record = train_amar(AmarModel(AmarConfig()), retrievals, questions, args.out, config)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}), record["history"])


# -- scoring
def evaluate(model: AmarModel, split: tuple[list, list], mode: str, batch: int) -> dict:
    questions, retrievals = split
    out = model.generate(retrievals, mode, batch_size=batch)
    row = {"hits": [hits_at_1(o["answer"], q.answers) for o, q in zip(out, questions)],
           "answers": [o["answer"] for o in out]}
    if mode == "amar":
        row["open"] = [len(o["open"]) for o in out]
        row["gold_open"] = [_gold_open(o, r, q) for o, r, q in zip(out, retrievals, questions)]
    return row


def _gold_open(out: dict, retrieval, question) -> bool:
    gold = {normalize_answer(a) for a in question.answers}
    items = aspect_items(retrieval)
    return any(gold & {normalize_answer(t) for t in items[i].tails} for i in out["open"])


def paired(a: list[float], b: list[float]) -> dict:
    """Mean difference a - b with a paired bootstrap 95% interval and the exact McNemar p-value."""
    a, b = np.asarray(a), np.asarray(b)
    wins, losses = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n, k = wins + losses, min(wins, losses)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {**paired_bootstrap(a, b), "wins": wins, "losses": losses, "mcnemar_p": float(f"{p:.3g}")}


def bootstrap_ci(hits: list[float], resamples: int = 10_000, seed: int = 0) -> list[float]:
    x = np.asarray(hits)
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))].mean(1)
    return [round(float(np.quantile(means, q)), 4) for q in (0.025, 0.975)]


# -- the GPU run
class Run:
    """Candidates scored on dev-val, the best one on test; ``amar.json`` rewritten after each step."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.started = args, time.perf_counter()
        self.val = {h: load_split(args.cache, "val", h) for h in args.hops}
        self.test = {h: load_split(args.cache, "test", h) for h in args.hops}
        self.train = [load_split(args.cache, "train", h) for h in args.hops]
        self.candidates: dict[str, dict] = {}  # name -> {"head", "settings", "val"}
        self.test_rows: dict[str, dict] = {}
        self.training: dict[str, dict] = {}
        self.args.out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f} s] {message}", flush=True)

    def model(self, head: Path | None, **settings) -> AmarModel:
        model = (AmarModel.load(head, self.args.device, **settings)
                 if head else AmarModel(device=self.args.device))
        model.lm.generation_config.max_length = None
        return model

    def score_val(self, name: str, head: Path, grid: list[dict]) -> None:
        """As 'sparsa kg tune' scores (sparsa.kg.amar_tune): Hits@1 per hop under each setting."""
        model = self.model(head)
        sets = {f"{h}-hop": self.val[h] for h in self.args.hops}
        for settings in grid:
            key = candidate_name(name, settings)
            self.candidates[key] = {"head": str(head), "settings": dict(settings),
                                    "val": score_settings(model, sets, settings, self.args.batch)}
            self.log(f"val {key}: {self.candidates[key]['val']}")
        del model

    def best(self) -> str:
        return best_candidate(self.candidates)

    def stage2(self, name: str, head: Path, lora_rank: int, seconds: float,
               train_mode: str = "amar") -> Path | None:
        from sparsa.kg.amar_train import AmarTrainConfig, train_amar
        from sparsa.training import seed_everything

        if self.left() < seconds + 40:
            self.log(f"skipping {name}: {self.left():.0f} s left")
            return None
        seed_everything(self.args.seed)  # fresh adapters start as 'sparsa train amar --init-head' starts them
        model = self.model(head, lora_rank=lora_rank, **self.candidates[self.best()]["settings"])
        config = AmarTrainConfig(gate_epochs=0, lm_steps=self.args.lm_steps, lm_batch=self.args.lm_batch,
                                 lm_lr=self.args.lm_lr, lora_lr=self.args.lora_lr, checkpoint_every=10_000,
                                 train_mode=train_mode, seed=self.args.seed)
        out = self.args.work / name
        record = train_amar(model, [r for _, rs in self.train for r in rs],
                            [q for qs, _ in self.train for q in qs],
                            out, config, time_limit_s=seconds, show_progress=False)
        self.training[name] = {k: v for k, v in record.items() if k != "history"}
        self.training[name]["last_losses"] = record["history"][-3:]
        self.log(f"trained {name}: {self.training[name]}")
        return out

    def score_test(self, mode: str, head: Path | None = None, settings: dict | None = None) -> None:
        # a better dev-val candidate: keep the old row beside it
        if mode == "amar" and "amar" in self.test_rows:
            old = self.test_rows.pop("amar")
            self.test_rows[f"amar[{old['candidate']}]"] = old
        model = self.model(head, **(settings or {}))
        self.test_rows[mode] = {h: evaluate(model, self.test[h], mode.split("-")[0], self.args.batch)
                                for h in self.args.hops}
        self.log(f"test {mode}: " + ", ".join(f"{h}-hop {np.mean(r['hits']):.3f}"
                                              for h, r in self.test_rows[mode].items()))
        if mode == "amar":
            self.test_rows[mode]["candidate"] = self.best()
        self.write()

    def write(self) -> None:
        table = {}
        for h in self.args.hops:
            questions, retrievals = self.test[h]
            row: dict = {"questions": len(questions), **coverage(retrievals, questions)}
            for mode, rows in self.test_rows.items():
                r = rows[h]
                row[mode] = {"hits@1": round(float(np.mean(r["hits"])), 4), "ci95": bootstrap_ci(r["hits"])}
                if "candidate" in rows:
                    row[mode]["candidate"] = rows["candidate"]
                if "open" in r:
                    row[mode]["items_open"] = round(float(np.mean(r["open"])), 2)
                    row[mode]["answer_in_open_items"] = round(float(np.mean(r["gold_open"])), 4)
                for base in ("text", "text-lora"):  # paired differences on the same questions
                    if (mode != base and base in self.test_rows
                            and (mode.startswith("amar") or base == "text")):
                        row[mode][f"vs_{base.replace('-', '_')}"] = paired(r["hits"],
                                                                           self.test_rows[base][h]["hits"])
                row[mode]["examples"] = [{"q": q.text, "gold": list(q.answers[:3]), "generated": a,
                                          "first_answer": first_answer(a)}
                                         for q, a in zip(questions[:3], r["answers"])]
            row["items_retrieved"] = round(float(np.mean([len(aspect_items(r)) for r in retrievals])), 2)
            table[f"{h}-hop"] = row
        payload = {"meta": {**run_metadata(("torch", "transformers")),
                            "device": _device_name(self.args.device),
                            "git_commit": os.environ.get("SPARSA_COMMIT", "")},
                   "metric": "Hits@1: the first answer of the greedy generation (or the whole short answer) "
                             "equals a gold answer after SQuAD normalisation",
                   "lm": "smollm2-135m-instruct (frozen unless a LoRA candidate is chosen)", "modes": MODES,
                   "splits": {"train": {f"{h}-hop": len(qs)
                                        for h, (qs, _) in zip(self.args.hops, self.train)},
                              "val": {f"{h}-hop": len(self.val[h][0]) for h in self.args.hops},
                              "test": {f"{h}-hop": len(self.test[h][0]) for h in self.args.hops},
                              "how": "random subsets (numpy default_rng seeds 0/1) of MetaQA vanilla dev "
                                     "(train, val disjoint) and test"},
                   "selection": {"chosen": self.best() if self.candidates else None,
                                 "candidates": self.candidates},
                   "training": self.training, "table": table,
                   "seconds": round(time.perf_counter() - self.started, 1)}
        (self.args.out / "amar.json").write_text(json.dumps(payload, indent=2) + "\n")
        with gzip.open(self.args.out / "amar_outputs.jsonl.gz", "wt") as f:
            for mode, rows in self.test_rows.items():
                for h in self.args.hops:
                    r = rows[h]
                    f.write(json.dumps({"mode": mode, "hop": h, "hits": r["hits"], "answers": r["answers"]})
                            + "\n")


def coverage(retrievals, questions) -> dict:
    top = any_ = 0
    for r, q in zip(retrievals, questions):
        gold = {normalize_answer(a) for a in q.answers}
        hits = [bool(gold & {normalize_answer(t) for t in p.tails}) for p in r.paths]
        top += bool(hits and hits[0])
        any_ += any(hits)
    return {"answer_in_top_path": round(top / len(questions), 4),
            "answer_in_any_path": round(any_ / len(questions), 4)}


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"


def run(args: argparse.Namespace) -> None:
    record_precision(args.device)  # TF32 matmuls on CUDA, as the CLI's Amar commands
    args.work.mkdir(parents=True, exist_ok=True)
    job = Run(args)
    job.score_val("stage1", args.head, GRID)
    job.score_test("text")
    best = job.candidates[job.best()]
    job.score_test("amar", Path(best["head"]), best["settings"])
    job.score_test("lm")
    # Optional, while the budget lasts: stage 2 with LoRA, the same adapters trained on the plain-text
    # prompt (the control: "text-lora"), stage 2 with the LM frozen.
    steps = [("stage2-lora", args.lora_rank, "amar"), ("text-lora", args.lora_rank, "text"),
             ("stage2", 0, "amar")]
    for name, rank, train_mode in steps:
        if rank < 0:
            continue
        try:  # a failure leaves the table written so far
            head = job.stage2(name, args.head, rank, args.stage2_s, train_mode)
            if head is None:
                continue
            if train_mode == "text":
                job.score_test(name, head)
                continue
            before = job.best()
            job.score_val(name, head, [job.candidates[before]["settings"]])
            if job.best() != before:
                chosen = job.candidates[job.best()]
                job.score_test("amar", Path(chosen["head"]), chosen["settings"])
            job.write()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    job.log(f"done; chosen {job.best()}")


def merge(args: argparse.Namespace) -> None:
    """Read-modify-write ``rag.json``: only the ``amar`` key changes (other helpers own the rest)."""
    payload = json.loads(args.from_file.read_text())
    payload["meta"]["merged_at_commit"] = run_metadata()["git_commit"]
    path = RESULTS / "rag.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current["amar"] = payload
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(current, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("stage", help="KG retrievals of dev-train, dev-val and test questions (CPU)")
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/metaqa"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=int, default=2000, help="dev questions per hop to train on")
    p.add_argument("--val", type=int, default=250, help="dev questions per hop to choose settings on")
    p.add_argument("--test", type=int, default=1000, help="test questions per hop")
    p.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("gates", help="stage 1: gate BCE + alignment InfoNCE on dev-train (no LM pass)")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("run", help="stage 2 + selection on dev-val + test (GPU)")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--head", type=Path, required=True, help="the stage-1 head (gates)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/amar/run"))
    p.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128, help="generation batch")
    p.add_argument("--budget-s", type=float, default=240, help="optional steps are skipped past this")
    p.add_argument("--stage2-s", type=float, default=45, help="seconds of each stage-2 training")
    p.add_argument("--lm-steps", type=int, default=400)
    p.add_argument("--lm-batch", type=int, default=16)
    p.add_argument("--lm-lr", type=float, default=3e-4)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=8, help="-1: no LoRA candidate")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("merge", help="amar.json from a run -> bench/results/rag.json['amar']")
    p.add_argument("--from-file", type=Path, required=True)
    args = parser.parse_args()
    {"stage": stage, "gates": gates, "run": run, "merge": merge}[args.what](args)


if __name__ == "__main__":
    main()
