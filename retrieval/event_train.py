"""Training the event-aware query encoder head on RealTime QA weeks, on frozen cached embeddings.

Each example is a question with its query time, its gold article(s) and hard negatives from the same
window: the articles of the days before the question that the plain encoder ranks highest but that are
not gold (the stories of the same week competing for the query). The loss is contrastive (softmax over
the batch's positives and all hard negatives, temperature ``temperature``); with ``plain_loss_weight``
the same head is also trained without events (multi-task, so the query path alone stays a good
retriever when a window holds nothing useful). Only the head learns; the backbone is frozen. AdamW at a
constant rate, no clipping, float32 (:mod:`sparsa.training`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsa.errors import ConfigError
from sparsa.progress import progress_bar
from sparsa.retrieval.event_data import EmbeddedRealtimeQA
from sparsa.retrieval.event_encoder import EventEncoderConfig, EventQueryEncoder
from sparsa.training import Stepper, make_optimizer, seed_everything
from sparsa.types import Hit, Qrels, Run

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EventTrainConfig:
    """How to train an :class:`EventQueryEncoder` head; ``encoder`` fixes its shape and event window."""

    encoder: EventEncoderConfig = field(default_factory=EventEncoderConfig)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    temperature: float = 0.05
    hard_negatives: int = 16
    negative_window_days: int = 7  # "the same week": where hard negatives come from
    plain_loss_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("epochs >= 1, batch_size >= 2, lr > 0 and temperature > 0 are required")


@dataclass(frozen=True, slots=True)
class EventExample:
    """One question: its row in the query vectors, its time, gold rows and hard-negative rows of the pool."""

    query: int
    when: dt.date
    positives: tuple[int, ...]
    negatives: tuple[int, ...]


def build_examples(data: EmbeddedRealtimeQA, positions: Sequence[int], hard_negatives: int,
                   window_days: int) -> list[EventExample]:
    """Examples for the questions at ``positions``; questions whose gold is not yet published are skipped."""
    rows = data.row_of()
    examples = []
    for i in positions:
        question = data.questions[i]
        when = np.datetime64(question.date, "D")
        positives = [rows[g] for g in sorted(data.gold.get(question.id, ())) if g in rows]
        positives = [r for r in positives if data.article_days[r] <= when]
        if not positives:
            continue
        recent = np.flatnonzero((data.article_days <= when)
                                & (data.article_days >= when - np.timedelta64(window_days, "D")))
        recent = np.setdiff1d(recent, positives)
        scores = data.documents[recent] @ data.query_vectors[i]
        negatives = recent[np.argsort(-scores, kind="stable")[:hard_negatives]]
        examples.append(EventExample(i, question.date, tuple(positives), tuple(int(n) for n in negatives)))
    return examples


def _contrastive_loss(out, doc_matrix, examples: Sequence[EventExample], temperature: float):
    """Softmax cross-entropy of each query's first gold against every candidate of the batch."""
    import torch

    candidates = sorted({r for e in examples for r in (*e.positives, *e.negatives)})
    column = {r: c for c, r in enumerate(candidates)}
    docs = doc_matrix[torch.as_tensor(candidates)]
    logits = out @ docs.T / temperature  # [B, C]
    blocked = torch.zeros_like(logits, dtype=torch.bool)
    for b, e in enumerate(examples):  # a query's other gold articles are not negatives
        for r in e.positives[1:]:
            blocked[b, column[r]] = True
    targets = torch.as_tensor([column[e.positives[0]] for e in examples])
    return torch.nn.functional.cross_entropy(logits.masked_fill(blocked, float("-inf")), targets)


def train_event_encoder(data: EmbeddedRealtimeQA, train_positions: Sequence[int], config: EventTrainConfig,
                        show_progress: bool | None = None) -> tuple[EventQueryEncoder, dict]:
    """Train a head on the questions at ``train_positions``; returns the encoder and a training record."""
    import torch

    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    examples = build_examples(data, train_positions, config.hard_negatives, config.negative_window_days)
    if len(examples) < 2:
        raise ConfigError(f"only {len(examples)} training questions have a published gold article")
    encoder = EventQueryEncoder(config.encoder)
    head = encoder.head
    base = data.query_vectors[[e.query for e in examples]]
    queries = torch.from_numpy(np.ascontiguousarray(base))
    windows = encoder.window_tensors(base, [e.when for e in examples], data.events) \
        if config.encoder.use_events else None
    doc_matrix = torch.from_numpy(data.documents)
    stepper = Stepper(*make_optimizer(head.parameters(), config.lr, weight_decay=config.weight_decay),
                      max_grad_norm=None)
    steps_per_epoch = int(np.ceil(len(examples) / config.batch_size))
    history, started = [], time.perf_counter()
    head.train()
    with progress_bar(config.epochs, "training event head", unit="epoch", show=show_progress) as bar:
        for _ in range(config.epochs):
            order, total = rng.permutation(len(examples)), 0.0
            for step in range(steps_per_epoch):
                batch = order[step * config.batch_size:(step + 1) * config.batch_size]
                if len(batch) < 2:
                    continue
                picked = [examples[b] for b in batch]
                index = torch.as_tensor(batch)
                plain = head(queries[index], with_events=False)
                loss = (_contrastive_loss(plain, doc_matrix, picked, config.temperature)
                        * (config.plain_loss_weight if windows is not None else 1.0))
                if windows is not None:
                    events, ages, mask = (t[index] for t in windows)
                    out = head(queries[index], events, ages, mask)
                    loss = loss + _contrastive_loss(out, doc_matrix, picked, config.temperature)
                stepper.step(loss)
                total += loss.item()
            history.append(round(total / steps_per_epoch, 4))
            bar.update(1)
    head.eval()
    record = {"examples": len(examples), "epochs": config.epochs, "loss_per_epoch": history,
              "seconds": round(time.perf_counter() - started, 1), "train": dataclasses.asdict(config)}
    logger.info("trained event head on %d questions in %.1f s (loss %.3f -> %.3f)", len(examples),
                record["seconds"], history[0], history[-1])
    return encoder, record


def dense_run(data: EmbeddedRealtimeQA, positions: Sequence[int], vectors: np.ndarray, k: int = 100,
              window_days: int | None = None, name: str = "dense") -> Run:
    """Rank the pool for the questions at ``positions`` (``vectors[j]`` for ``positions[j]``).

    Candidates: every article dated up to the question's day; with ``window_days``, only those of the
    last ``window_days`` days (the plain date filter).
    """
    results = {}
    for j, i in enumerate(positions):
        question = data.questions[i]
        rows = data.candidates(question.date)
        if window_days is not None:
            rows = rows[data.article_days[rows]
                        >= np.datetime64(question.date, "D") - np.timedelta64(window_days, "D")]
        scores = data.documents[rows] @ vectors[j]
        top = np.argsort(-scores, kind="stable")[:k]
        results[question.id] = [Hit(data.articles[rows[t]].id, float(scores[t])) for t in top]
    return Run(results, name=name)


def gold_qrels(data: EmbeddedRealtimeQA, positions: Sequence[int]) -> Qrels:
    """Gold articles of the questions at ``positions`` (grade 1)."""
    return Qrels({data.questions[i].id: {doc: 1 for doc in sorted(data.gold[data.questions[i].id])}
                  for i in positions})


def train_realtimeqa(folder: str | Path, out: str | Path, config: EventTrainConfig, last_train_week: str,
                     cache_dir: str | Path | None = None, event_source: str = "documents",
                     last_test_date: dt.date | None = dt.date(2023, 12, 31)) -> tuple[Path, dict]:
    """Train on RealTime QA weeks up to ``last_train_week``, save to ``out``, score the later weeks.

    Returns the saved folder and its training record, which holds recall@5 / MRR@10 of the gold article
    on the test weeks (candidates: every article dated up to each question's day).
    """
    from sparsa.data.realtimeqa import load_realtimeqa
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder
    from sparsa.retrieval.event_data import embed_realtimeqa, split_by_week

    backbone = DenseEncoder(DenseConfig(model=config.encoder.backbone))
    data = embed_realtimeqa(load_realtimeqa(folder), backbone, cache_dir, event_source=event_source)
    train, test = split_by_week(data.questions, last_train_week, last_test_date)
    if not test:
        raise ConfigError(f"no labelled questions after week {last_train_week} to test on")
    return _train_and_score(data, train, test, config, out, data=str(folder), event_source=event_source,
                            last_train_week=last_train_week)


def train_dated(folder: str | Path, out: str | Path, config: EventTrainConfig, train_split: str = "train",
                test_split: str | None = "test", cache_dir: str | Path | None = None,
                event_source: str = "documents") -> tuple[Path, dict]:
    """Train on a dated dataset's ``train_split`` questions (``sparsa.retrieval.event_data``:
    ``embed_dated_dataset``), save to ``out``, score ``test_split`` (None: no test) as RealTime QA is."""
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder
    from sparsa.retrieval.event_data import embed_dated_dataset

    backbone = DenseEncoder(DenseConfig(model=config.encoder.backbone))
    splits = [train_split] + ([test_split] if test_split else [])
    data, positions = embed_dated_dataset(folder, backbone, cache_dir, splits, event_source)
    return _train_and_score(data, positions[0], positions[1] if test_split else [], config, out,
                            data=str(folder), event_source=event_source, train_split=train_split,
                            test_split=test_split)


def _train_and_score(embedded: EmbeddedRealtimeQA, train: Sequence[int], test: Sequence[int],
                     config: EventTrainConfig, out: str | Path, **facts) -> tuple[Path, dict]:
    """Train on ``train``, score recall@5 / MRR@10 on ``test`` (candidates: every document dated up to
    each question's day), save with the record."""
    from sparsa.eval import evaluate_run

    encoder, record = train_event_encoder(embedded, train, config)
    record.update(facts, test_questions=len(test))
    if test:
        vectors = encoder.encode_vectors(embedded.query_vectors[test],
                                         [embedded.questions[i].date for i in test], embedded.events)
        scores = evaluate_run(dense_run(embedded, test, vectors), gold_qrels(embedded, test),
                              ("R@5", "MRR@10"))
        record["test"] = scores.aggregate
    return encoder.save(out, training=record), record
