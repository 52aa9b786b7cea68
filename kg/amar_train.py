"""Training the Amar head (gates + self-alignment) on KGQA questions; the LM stays frozen.

Two stages, both checkpointed (``checkpoint.pt`` beside the output; a rerun resumes):

1. **Gate and alignment** (cheap: embedding lookups and the small head only): binary cross-entropy
   between each path item's gate and whether the path reaches a gold answer, plus the alignment
   InfoNCE (``lambda_align``) over a batch of questions.
2. **Answer generation** (through the frozen LM): cross-entropy of the gold answer after the gated,
   aligned soft prompts, plus the gate loss (``lambda_gate``) so the gates keep their meaning.
   The target is the first gold answer that an open item names, else the first gold answer.

On CPU the second stage is the expensive one (a forward and backward pass of the LM per example).
AdamW (weight decay 0.01), no clipping, float32; stage 1 at a constant rate, stage 2 with a linear warm-up
and a linear decay to 0 at ``lm_steps``, or sooner when ``time_limit_s`` cuts the run
(:mod:`sparsa.training`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sparsa.errors import ConfigError
from sparsa.kg.amar import AmarModel, AspectItem, aspect_items
from sparsa.kg.kg import KGQuestion, KGRetrieval
from sparsa.progress import progress_bar
from sparsa.rag.answer_text import normalize_answer
from sparsa.training import (
    Stepper,
    load_checkpoint,
    lr_factor,
    make_optimizer,
    save_checkpoint,
    seed_everything,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AmarTrainConfig:
    gate_epochs: int = 4
    gate_batch: int = 8
    gate_lr: float = 3e-3
    lambda_align: float = 0.1
    lm_steps: int = 100  # optimizer steps of stage 2
    lm_batch: int = 2
    lm_lr: float = 3e-4
    lora_lr: float = 1e-3  # the LM's low-rank adapters, when the model has them (AmarConfig.lora_rank)
    warmup_steps: int = 10  # stage 2: linear warm-up, then linear decay to 0 at lm_steps
    lambda_gate: float = 1.0
    # Stage 2 prompt: "amar" (gated, aligned items) or "text" (all items as text: only adapters learn,
    # the control that tells the gates' share of a gain from the adapters')
    train_mode: str = "amar"
    temperature: float = 0.1
    checkpoint_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("gate_batch", "lm_batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.gate_epochs < 0 or self.lm_steps < 0:
            raise ConfigError("gate_epochs and lm_steps must be >= 0")
        if self.train_mode not in ("amar", "text"):
            raise ConfigError(f"train_mode {self.train_mode!r}: expected amar or text")


def item_labels(items: Sequence[AspectItem], answers: Sequence[str]) -> list[float | None]:
    """1.0 for a path item that names a gold answer, 0.0 for one that does not, None otherwise."""
    gold = {normalize_answer(a) for a in answers}
    return [None if item.kind != "path" else float(bool(gold & {normalize_answer(t) for t in item.tails}))
            for item in items]


def gate_bce(logits, items: Sequence[AspectItem], answers: Sequence[str]):
    """Binary cross-entropy of the path items' gate logits against :func:`item_labels`."""
    import torch

    labels = item_labels(items, answers)
    picked = [i for i, y in enumerate(labels) if y is not None]
    if not picked:
        return logits.sum() * 0.0
    target = torch.tensor([labels[i] for i in picked], device=logits.device)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[picked], target)


def _gate_loss(model: AmarModel, retrieval: KGRetrieval, items: list[AspectItem], answers: Sequence[str]):
    logits, q_pool, token_embeds = model._gate_logits(retrieval, items)
    return gate_bce(logits, items, answers), logits, q_pool, token_embeds


def _aspect_summaries(model: AmarModel, items, logits, q_pool, token_embeds):
    """(entity, relation, subgraph) aligned summaries ``[p]`` each, or None when an aspect is missing."""
    import torch

    kinds = [i.kind for i in items]
    if not {"entities", "relations", "path"} <= set(kinds):
        return None
    pools = torch.stack([t.mean(0) for t in token_embeds])
    aligned = [a.mean(0) for a in model.head.aligned(token_embeds, pools, q_pool, strength=1.0)]
    entity = aligned[kinds.index("entities")]
    relation = aligned[kinds.index("relations")]
    paths = [i for i, k in enumerate(kinds) if k == "path"]
    weights = torch.softmax(logits[paths], 0)
    subgraph = (weights[:, None] * torch.stack([aligned[i] for i in paths])).sum(0)
    return [torch.nn.functional.normalize(model.head.align_proj(v), dim=-1)
            for v in (entity, relation, subgraph)]


def alignment_loss(summaries: list, temperature: float):
    """InfoNCE: each question's subgraph summary should match its own entity and relation summaries."""
    import torch

    kept = [s for s in summaries if s is not None]
    if len(kept) < 2:
        return None
    entity, relation, subgraph = (torch.stack(x) for x in zip(*kept))
    target = torch.arange(len(kept), device=entity.device)
    ce = torch.nn.functional.cross_entropy
    return (ce(entity @ subgraph.T / temperature, target)
            + ce(relation @ subgraph.T / temperature, target)) / 2


def answer_target(items: Sequence[AspectItem], open_: Sequence[int], answers: Sequence[str]) -> str:
    """The gold answer the prompt names first (open items in prompt order), else the first gold answer."""
    gold = {normalize_answer(a) for a in answers}
    return next((t for i in open_ for t in items[i].tails if normalize_answer(t) in gold), answers[0])


def _lm_loss(model: AmarModel, batch: list[tuple[KGRetrieval, KGQuestion]], lambda_gate: float,
             mode: str = "amar"):
    """Answer cross-entropy after the soft prompts (right-padded batch) plus the gate loss."""
    import torch

    rows, labels, gate_losses = [], [], []
    for retrieval, question in batch:
        items = aspect_items(retrieval, model.config.key_dim)
        embeds, info = model.prompt_embeds(retrieval, items, mode)
        if mode == "amar" and items:
            gate_losses.append(gate_bce(info["logits"], items, question.answers))
        shown = info["open"] if mode == "amar" else range(len(items))
        # The name follows "The answer is" after a space, as the LM itself would write it, and ends the
        # turn with the LM's own end-of-turn token.
        target = [*model.tokens(" " + answer_target(items, shown, question.answers)), model.chat.end_of_turn]
        target_embeds = model._embed_ids(target)
        rows.append(torch.cat([embeds, target_embeds]))
        labels.append([-100] * embeds.shape[0] + target)
    longest = max(r.shape[0] for r in rows)
    hidden = rows[0].shape[1]
    inputs = torch.stack([torch.cat([r, r.new_zeros(longest - r.shape[0], hidden)]) for r in rows])
    mask = torch.tensor([[1] * r.shape[0] + [0] * (longest - r.shape[0]) for r in rows], device=model.device)
    label_ids = torch.tensor([y + [-100] * (longest - len(y)) for y in labels], device=model.device)
    loss = model.lm(inputs_embeds=inputs, attention_mask=mask, labels=label_ids).loss
    gate = torch.stack(gate_losses).mean() if gate_losses else loss * 0.0
    return loss + lambda_gate * gate, float(loss.detach()), float(gate.detach())


def train_amar(model: AmarModel, retrievals: Sequence[KGRetrieval], questions: Sequence[KGQuestion],
               out: str | Path, config: AmarTrainConfig | None = None, time_limit_s: float | None = None,
               show_progress: bool | None = None, meta: dict | None = None) -> dict:
    """Train ``model.head`` in place, save it to ``out`` and return the training record; ``meta`` joins
    the record (``sparsa train amar``: the head it started from and the question draw, which
    ``sparsa kg tune`` checks so that its held-out questions were held out from this head)."""
    import torch

    config = config or AmarTrainConfig()
    if len(retrievals) != len(questions) or not questions:
        raise ConfigError("need one retrieval per question and at least one question")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    adapters = [p for n, p in model.head.named_parameters() if n.startswith("lora.")]
    head_params = [p for n, p in model.head.named_parameters() if not n.startswith("lora.")]
    gate = Stepper(*make_optimizer(head_params, config.gate_lr), max_grad_norm=None)
    # stage 2 sets its rates itself: the decay's end moves when a time limit cuts the run
    lm_opt, _ = make_optimizer([{"params": head_params, "lr": config.lm_lr},
                                {"params": adapters, "lr": config.lora_lr}], config.lm_lr)
    lm = Stepper(lm_opt, max_grad_norm=None)
    state = {"gate_epoch": 0, "lm_step": 0, "history": []}
    saved = load_checkpoint(checkpoint, model.device)
    if saved is not None:
        model.head.load_state_dict(saved["head"])
        gate.optimizer.load_state_dict(saved["gate_opt"])
        lm_opt.load_state_dict(saved["lm_opt"])
        state = saved["state"]
        logger.info("resuming Amar training from %s (%s)", checkpoint,
                    {k: state[k] for k in ("gate_epoch", "lm_step")})

    def checkpoint_now() -> None:
        save_checkpoint(checkpoint, head=model.head.state_dict(), gate_opt=gate.optimizer.state_dict(),
                        lm_opt=lm_opt.state_dict(), state=state)

    started = time.perf_counter()
    model.head.train()
    pairs = list(zip(retrievals, questions))
    # Stage 1: gates and alignment, no LM pass.
    while state["gate_epoch"] < config.gate_epochs:
        order = rng.permutation(len(pairs))
        total = bce_sum = 0.0
        with progress_bar(len(order), f"amar gates epoch {state['gate_epoch'] + 1}", "q",
                          show_progress) as bar:
            for start in range(0, len(order), config.gate_batch):
                losses, summaries = [], []
                for i in order[start:start + config.gate_batch]:
                    retrieval, question = pairs[i]
                    items = aspect_items(retrieval, model.config.key_dim)
                    if not items:
                        continue
                    bce, logits, q_pool, token_embeds = _gate_loss(model, retrieval, items, question.answers)
                    losses.append(bce)
                    summaries.append(_aspect_summaries(model, items, logits, q_pool, token_embeds))
                if not losses:
                    continue
                loss = torch.stack(losses).mean()
                bce_sum += float(loss.detach()) * len(losses)
                align = alignment_loss(summaries, config.temperature)
                if align is not None:
                    loss = loss + config.lambda_align * align
                gate.step(loss)
                total += len(losses)
                bar.update(len(order[start:start + config.gate_batch]))
        state["gate_epoch"] += 1
        state["history"].append({"stage": "gates", "epoch": state["gate_epoch"],
                                 "bce": bce_sum / max(total, 1)})
        logger.info("gate epoch %d: bce %.4f", state["gate_epoch"], bce_sum / max(total, 1))
        checkpoint_now()
    # Stage 2: answer generation through the frozen LM.
    planned, stage2_from, stage2_started = config.lm_steps, state["lm_step"], started
    with progress_bar(config.lm_steps, "amar answer loss", "step", show_progress) as bar:
        bar.update(state["lm_step"])
        while state["lm_step"] < config.lm_steps:
            if (state["lm_step"] >= planned
                    or (time_limit_s is not None and time.perf_counter() - started > time_limit_s)):
                logger.info("time limit reached at step %d", state["lm_step"])
                break
            batch = [pairs[i] for i in rng.choice(len(pairs), size=min(config.lm_batch, len(pairs)),
                                                  replace=False)]
            loss, lm_part, gate_part = _lm_loss(model, batch, config.lambda_gate, config.train_mode)
            step = state["lm_step"]
            if step == stage2_from + 3:
                stage2_started = time.perf_counter()
            if time_limit_s is not None and step == stage2_from + 8:  # fit the decay into the time left
                per_step = (time.perf_counter() - stage2_started) / 5
                planned = min(planned,
                              step + int((time_limit_s - (time.perf_counter() - started)) / per_step))
            factor = lr_factor(step, config.warmup_steps, planned)
            for group, base in zip(lm_opt.param_groups, (config.lm_lr, config.lora_lr)):
                group["lr"] = base * factor
            lm.step(loss)
            state["lm_step"] += 1
            state["history"].append({"stage": "answer", "step": state["lm_step"], "lm": lm_part,
                                     "gate": gate_part})
            bar.update(1)
            if state["lm_step"] % config.checkpoint_every == 0:
                checkpoint_now()
    checkpoint_now()
    model.head.eval()
    record = {"config": asdict(config), "questions": len(questions), "gate_epochs": state["gate_epoch"],
              "lm_steps": state["lm_step"], "seconds_this_run": round(time.perf_counter() - started, 1),
              "history": state["history"][-50:], **(meta or {})}
    model.save(out)
    (out / "training.json").write_text(json.dumps(record, indent=2))
    return record
