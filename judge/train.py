"""Supervised fine-tuning of the relevance judge's UMBRELA scorer on labelled (query, passage, grade) pairs.

The UMBRELA scorer (:mod:`sparsa.judge.judge`) reads the next-token distribution after the assistant
prefix ``##final score: `` over the label tokens "0".."3". Fine-tuning trains exactly that read-out:
the judge itself builds every prompt (shared prefix + per-pair suffix, ``umbrela_suffix_ids``) and the
logits come from the same code path as scoring (``RelevanceJudge.label_logits``: the prefix's key/value
states, here computed with autograd once per batch, expanded over right-padded suffixes); the loss is
the cross-entropy of the human grade over the four label logits at that position. The result is a plain
Hugging Face causal-LM folder (plus ``sparsa.json``), so ``sparsa judge --model FOLDER`` scores with it
unchanged.

Full fine-tuning by default: SmolLM2-135M with AdamW state is ~2 GB, so there is no memory reason for
adapters, and a 135M model has little spare capacity for a new task in a rank-16 update of its attention
projections alone. ``lora_rank > 0`` (peft through :func:`sparsa.training.add_lora`, merged before saving)
is there for larger judges.

Training data: the graded pairs of a data set's first N queries (``labelled_pairs``, the in-domain
setting), or any labelled pairs in a JSONL file (``read_labelled_pairs``: one object per line with
``query``, ``passage``, ``grade`` 0-3), e.g. many-topic pairs from other collections for transfer
(a finished experiment: docs/results.md).

Schedule (:mod:`sparsa.training`: AdamW, clipping at 1, bf16 autocast on CUDA): linear warm-up, then a
constant learning rate, and a shuffle fixed by (seed, epoch): the model
after epoch e of a longer run is the e-epoch model, so choosing the number of epochs by
cross-validation needs one run per (fold, learning rate) (docs/results.md has what that found).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sparsa.errors import ConfigError, DataFormatError
from sparsa.progress import progress_bar
from sparsa.training import Stepper, add_lora, autocast, make_optimizer, merge_lora, seed_everything
from sparsa.types import Document, Query

logger = logging.getLogger(__name__)

MIN_PAIRS = 8  # as the grade calibrator: fewer labelled pairs cannot teach four grades
BUCKET_BATCHES = 8  # batches whose pairs are sorted by length together (less padding, order still random)


@dataclass(frozen=True, slots=True)
class JudgeTrainConfig:
    """``model``: registry name or local folder (never a hub download); ``lora_rank`` 0: full fine-tune;
    ``max_steps``: stop early (smoke runs and tests); ``max_passage_tokens``: as the judge cuts passages."""

    model: str = "smollm2-135m-instruct"
    epochs: int = 1  # epochs and lr: the one setting of the CV grid on DL 2019 that finished (judge.json)
    lr: float = 2e-5
    batch_size: int = 32
    warmup_steps: int = 10
    weight_decay: float = 0.0
    lora_rank: int = 0
    max_passage_tokens: int = 192
    seed: int = 0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_passage_tokens < 1:
            raise ConfigError("epochs, batch_size and max_passage_tokens must be >= 1")
        if not self.lr > 0 or self.warmup_steps < 0 or self.lora_rank < 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0; warmup_steps, lora_rank and weight_decay >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("max_steps must be >= 1 (or None)")


@dataclass(frozen=True, slots=True)
class LabelledPair:
    query: Query
    passage: Document
    grade: int  # 0..3, the TREC DL scale


# a labelled-pairs JSONL line's fields: the first three required, the rest optional
PAIR_FIELDS = ("query", "passage", "grade", "query_id", "doc_id", "title", "source")


def read_labelled_pairs(path: str | Path) -> list[LabelledPair]:
    """Labelled pairs from a JSONL file (``.gz`` by suffix): one object per line with ``query``,
    ``passage``, ``grade`` (an integer 0-3) and optionally ``query_id``, ``doc_id``, ``title``,
    ``source`` (kept in the passage's ``meta``). A missing ``query_id`` is shared by the lines with the
    same query text (``line<N>``, N the first such line); a missing ``doc_id`` is ``line<N>``. Any bad
    line raises :class:`DataFormatError` naming the file and line."""
    from sparsa.data.beir import json_records

    pairs: list[LabelledPair] = []
    query_ids: dict[str, str] = {}
    for number, record in json_records(path):
        pairs.append(_labelled_pair(record, query_ids, path, number))
    if not pairs:
        raise DataFormatError(path, "no labelled pairs in file")
    return pairs


def _labelled_pair(record: dict, query_ids: dict[str, str], path: str | Path, number: int) -> LabelledPair:
    def fail(message: str) -> DataFormatError:
        return DataFormatError(path, message, number)

    unknown = sorted(set(record) - set(PAIR_FIELDS))
    if unknown:
        raise fail(f"unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(PAIR_FIELDS)}")
    for field in ("query", "passage"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise fail(f"{field!r} must be a non-empty string")
    grade = record.get("grade")
    if isinstance(grade, bool) or not isinstance(grade, int) or not 0 <= grade <= 3:
        raise fail(f"'grade' must be an integer 0-3 (the judge's scale), got {grade!r}")
    for field in ("query_id", "doc_id", "title", "source"):
        value = record.get(field, "")
        allowed = (str, int) if field.endswith("_id") else (str,)  # JSON ids are often numbers
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise fail(f"{field!r} must be a string, got {value!r}")
    if "query_id" in record:
        query_id = str(record["query_id"])
    else:
        query_id = query_ids.setdefault(record["query"], f"line{number}")
    meta = {"source": record["source"]} if "source" in record else None
    passage = Document(str(record.get("doc_id", f"line{number}")), record["passage"],
                       record.get("title", ""), meta)
    return LabelledPair(Query(query_id, record["query"]), passage, grade)


def write_labelled_pairs(pairs: Sequence[LabelledPair], path: str | Path) -> None:
    """The JSONL format :func:`read_labelled_pairs` reads (gzip by a ``.gz`` suffix), written atomically."""
    from sparsa.data.trec import write_jsonl

    def row(p: LabelledPair) -> dict:
        source = (p.passage.meta or {}).get("source")
        return ({"query_id": p.query.id, "query": p.query.text, "doc_id": p.passage.id,
                 "title": p.passage.title, "passage": p.passage.text, "grade": p.grade}
                | ({"source": source} if source is not None else {}))

    write_jsonl(map(row, pairs), path)


def describe_pairs(pairs: Sequence[LabelledPair]) -> dict:
    """Counts of pairs, queries, grades and (where recorded) sources by grade: a training set's summary."""
    by_source: dict[str, Counter] = {}
    for p in pairs:
        by_source.setdefault((p.passage.meta or {}).get("source", "-"), Counter())[p.grade] += 1
    return {"pairs": len(pairs), "queries": len({p.query.id for p in pairs}),
            "grades": {g: n for g, n in sorted(Counter(p.grade for p in pairs).items())},
            "sources": {s: {"pairs": sum(c.values()), "grades": dict(sorted(c.items()))}
                        for s, c in sorted(by_source.items())}}


def labelled_pairs(dataset: str | Path, fit_queries: int,
                   split: str = "test") -> tuple[list[LabelledPair], list[str]]:
    """The graded pairs of the first ``fit_queries`` query ids (sorted, as ``judge_job.fit_split``; the
    other queries stay held out for evaluation), and those query ids."""
    from sparsa.data import load_dataset
    from sparsa.judge.job import fit_split

    data = load_dataset(dataset, split)
    if data.qrels is None:
        raise DataFormatError(Path(dataset), f"no qrels for split {split!r}: fine-tuning needs graded pairs")
    fit = fit_split(list(data.qrels), fit_queries)[0]
    queries = {q.id: q for q in data.queries}
    pairs = [LabelledPair(queries[q], data.corpus[d], int(g)) for q in fit
             for d, g in sorted(data.qrels[q].items())]
    outside = sorted({p.grade for p in pairs} - {0, 1, 2, 3})
    if outside:
        raise DataFormatError(Path(dataset), f"grades {outside} are outside the judge's 0-3 scale")
    if len(pairs) < MIN_PAIRS:
        raise ConfigError(f"{len(pairs)} labelled pairs in the first {fit_queries} queries; fine-tuning "
                          f"needs at least {MIN_PAIRS}")
    return pairs, fit


class JudgeTrainer:
    """A :class:`RelevanceJudge` (UMBRELA scorer only) whose LM is being fine-tuned.

    ``fit`` trains epoch by epoch; between epochs ``score`` judges pairs with the current weights
    (exactly as ``RelevanceJudge.score_pairs``); ``save`` writes the model folder."""

    def __init__(self, config: JudgeTrainConfig = JudgeTrainConfig(), device: str = "auto"):
        from sparsa.config import resolve_device
        from sparsa.judge.judge import JudgeConfig, RelevanceJudge
        from sparsa.models import resolve_model

        self.config, self.device = config, resolve_device(device)
        self.source = resolve_model(config.model)
        if not Path(self.source).is_dir():
            raise ConfigError(f"{config.model!r} is neither a registry model nor a local model folder; "
                              "fine-tuning never downloads from the hub")
        seed_everything(config.seed)
        self.judge = RelevanceJudge(JudgeConfig(
            model=self.source, scorers=("umbrela",), max_passage_tokens=config.max_passage_tokens,
            max_tokens_per_batch=65_536 if self.device.startswith("cuda") else 4_096, device=self.device))
        if config.lora_rank:
            add_lora(self.judge.model, config.lora_rank)
        self.params = [p for p in self.judge.model.parameters() if p.requires_grad]
        # Warm-up factor (step + 1) / (warmup_steps + 1): the full rate from step warmup_steps on, no decay.
        # fused: one kernel for the whole update; the step is launch-bound on a GPU (~3 steps/s at batch 32)
        self.stepper = Stepper(*make_optimizer(self.params, config.lr, weight_decay=config.weight_decay,
                                               warmup_steps=config.warmup_steps + 1,
                                               fused=self.device.startswith("cuda")))
        self.history, self.started = [], time.perf_counter()

    @property
    def steps(self) -> int:
        """Optimiser steps taken so far."""
        return self.stepper.steps

    def _batches(self, lengths: Sequence[int], epoch: int) -> list[list[int]]:
        """Random batches, each of similar-length pairs: shuffle, sort runs of ``BUCKET_BATCHES`` batches
        by length, cut, shuffle the batches. Fixed by (seed, epoch)."""
        rng = random.Random(self.config.seed * 1_000_003 + epoch)
        order = rng.sample(range(len(lengths)), len(lengths))
        size = self.config.batch_size
        span = size * BUCKET_BATCHES
        batches = []
        for start in range(0, len(order), span):
            bucket = sorted(order[start : start + span], key=lengths.__getitem__)
            batches += [bucket[i : i + size] for i in range(0, len(bucket), size)]
        rng.shuffle(batches)
        return batches

    def fit(self, pairs: Sequence[LabelledPair], epochs: int | None = None,
            show_progress: bool | None = None) -> Iterator[dict]:
        """Train ``epochs`` (default ``config.epochs``) passes over ``pairs``, yielding after each one
        ``{"epoch", "steps", "loss"}`` (mean cross-entropy of the epoch's batches)."""
        import torch

        if len(pairs) < MIN_PAIRS:
            raise ConfigError(f"{len(pairs)} labelled pairs; fine-tuning needs at least {MIN_PAIRS}")
        judge, model = self.judge, self.judge.model
        suffixes = [judge.umbrela_suffix_ids(p.query, p.passage) for p in pairs]
        targets = torch.tensor([p.grade for p in pairs], device=self.device)
        for _ in range(epochs or self.config.epochs):
            epoch = len(self.history)
            batches = self._batches([len(s) for s in suffixes], epoch)
            model.train()
            judge.forget_prefix()  # the cached prefix belongs to the old weights
            total, count = torch.zeros((), device=self.device), 0
            with progress_bar(len(batches), f"fine-tuning judge, epoch {epoch + 1}", unit="batch",
                              show=show_progress) as bar:
                for batch in batches:
                    if self.config.max_steps is not None and self.steps >= self.config.max_steps:
                        break
                    with autocast(self.device):
                        # the prefix is recomputed with autograd for every batch: it depends on the weights
                        logits = judge.label_logits([suffixes[i] for i in batch], judge.prefix_states())
                    loss = torch.nn.functional.cross_entropy(logits.float(), targets[batch])
                    self.stepper.step(loss)
                    total, count = total + loss.detach(), count + 1
                    bar.update(1)
            model.eval()
            record = {"epoch": epoch + 1, "steps": self.steps,
                      "loss": round(float(total) / max(count, 1), 5), "pairs": len(pairs)}
            self.history.append(record)
            logger.info("judge fine-tuning: %s", record)
            yield record

    def score(self, pairs: Sequence[tuple[Query, Document]]) -> list[dict]:
        """``RelevanceJudge.score_pairs`` with the current weights (label_probs, expected_grade, ...)."""
        self.judge.model.eval()
        self.judge.forget_prefix()
        return self.judge.score_pairs(pairs)

    def save(self, out: str | Path, data_description: dict | None = None) -> Path:
        """Write a plain HF model folder (LoRA merged first, so training cannot continue) with
        ``sparsa.json``: base model, data, hyper-parameters, per-epoch losses; built atomically."""
        from sparsa.artifacts import atomic_dir, write_manifest

        if self.config.lora_rank:
            merge_lora(self.judge.model)
        with atomic_dir(out) as work:
            self.judge.model.save_pretrained(work, safe_serialization=True)
            self.judge.tokenizer.save_pretrained(work)  # with the chat template the prompt is built from
            write_manifest(work, "judge-model", asdict(self.config), trained_with="sparsa.judge.train",
                           base_model=self.config.model, base_model_path=self.source,
                           data=data_description or {}, epochs=self.history, device=self.device,
                           wall_seconds=round(time.perf_counter() - self.started, 1),
                           loss="cross-entropy over the label tokens 0-3 after the UMBRELA prompt's "
                                "'##final score: ' (judge/judge.py)")
        logger.info("fine-tuned judge saved in %s", out)
        return Path(out)


def train_judge(pairs: Sequence[LabelledPair], out: str | Path, config: JudgeTrainConfig = JudgeTrainConfig(),
                device: str = "auto", data_description: dict | None = None,
                show_progress: bool | None = None) -> Path:
    """Fine-tune ``config.model`` on ``pairs`` for ``config.epochs`` and save it at ``out`` (what
    ``sparsa train judge`` does); the folder loads with ``JudgeConfig(model=str(out))``."""
    if len(pairs) < MIN_PAIRS:
        raise ConfigError(f"{len(pairs)} labelled pairs; fine-tuning needs at least {MIN_PAIRS}")
    trainer = JudgeTrainer(config, device)
    for _ in trainer.fit(pairs, show_progress=show_progress):
        pass
    return trainer.save(out, data_description)
