"""The training loop TILDE and TILDEv2 share: shuffled epochs, AdamW, warmup + linear decay, clipping at 1
(the pieces of :mod:`sparsa.training`; float32 on every device).

Examples are anything with ``query``, ``positive`` and (for TILDEv2) ``negatives`` attributes, such
as :class:`sparsa.retrieval.splade_train.TrainingExample` built by
:func:`sparsa.retrieval.training_data.labelled_examples` (BM25 hard negatives).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from sparsa.errors import ConfigError
from sparsa.progress import progress_bar
from sparsa.training import Stepper, epoch_order, make_optimizer, seed_everything

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LabelledExample(Protocol):
    query: str
    positive: str
    negatives: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OptimConfig:
    steps: int = 400
    batch_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 40
    weight_decay: float = 0.01
    seed: int = 13

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("training needs steps >= 1, batch_size >= 1 and lr > 0")


def train_loop(model: torch.nn.Module, items: Sequence[T], loss_fn: Callable[[list[T]], torch.Tensor],
               config: OptimConfig, desc: str, show_progress: bool | None = None) -> dict[str, float]:
    """Run ``config.steps`` optimiser steps over shuffled epochs of ``items``; returns a summary."""
    if len(items) < config.batch_size:
        raise ConfigError(f"{len(items)} training examples, fewer than one batch of {config.batch_size}")
    seed_everything(config.seed)
    order = epoch_order(len(items), config.steps, config.batch_size, config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    stepper = Stepper(*make_optimizer(params, config.lr, weight_decay=config.weight_decay,
                                      warmup_steps=config.warmup_steps, total_steps=config.steps))
    model.train()
    started, recent = time.perf_counter(), []
    with progress_bar(total=config.steps, desc=desc, unit="step", show=show_progress) as bar:
        for step in range(config.steps):
            batch = [items[i] for i in order[step * config.batch_size : (step + 1) * config.batch_size]]
            loss = loss_fn(batch)
            stepper.step(loss)
            recent = (recent + [float(loss.detach())])[-50:]
            bar.update(1)
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    model.eval()
    seconds = time.perf_counter() - started
    logger.info("%s: %d steps in %.0f s, final loss %.4f", desc, config.steps, seconds,
                sum(recent) / len(recent))
    return {"steps": config.steps, "wall_seconds": round(seconds, 1),
            "final_loss_mean_last_50": round(sum(recent) / len(recent), 5),
            "epochs": round(config.steps * config.batch_size / len(items), 2)}


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``int64[B, L]`` ids padded on the right and their ``int64[B, L]`` attention mask."""
    from sparsa.batching import pad_right

    ids, mask = pad_right(rows, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)
