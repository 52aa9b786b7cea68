"""Training SPLADE encoders (MLM or decoder backbone): contrastive loss + FLOPS regularisation.

- Loss: softmax cross-entropy of each query's positive against in-batch and mined hard negatives
  (SPLADE v2, Formal et al. 2021), plus FLOPS regularisers ``lambda * sum_v (mean_i w_iv)^2`` with
  separate query and document weights, ramped up quadratically over the first third of training.
- Optional distillation: examples that carry teacher scores add a KL term between the teacher's
  and the student's distributions over (positive, negatives).
- Decoder backbones (Mistral-SPLADE) train LoRA adapters (peft, :func:`sparsa.training.add_lora`) on the
  attention projections, merged into the weights at the end, so the saved folder is a plain Hugging Face
  model.
- Checkpoints every ``checkpoint_every`` steps (atomic) and resumes from the last one.
- Memory: pooling keeps each (text, term)'s best position, not the ``[B, L, V]`` logits
  (:func:`pool_with_grad`); ``gradient_checkpointing`` recomputes the backbone's activations in the backward
  (a 1.5B decoder at batch 32 needs it on an 80 GB GPU).
- AdamW (weight decay 0.01), linear warm-up over ``warmup_steps`` then linear decay to 0 at ``steps``,
  gradient norm clipped at 1, bf16 autocast on CUDA: the shared pieces of :mod:`sparsa.training`.

The saved folder loads with ``SpladeEncoder(SpladeConfig(model=folder))``; its ``sparsa.json``
records the training data, steps and wall time.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sparsa.batching import pad_right
from sparsa.errors import ConfigError
from sparsa.progress import progress_bar
from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder
from sparsa.training import (
    Stepper,
    add_lora,
    autocast,
    epoch_order,
    load_checkpoint,
    make_optimizer,
    merge_lora,
    save_checkpoint,
    seed_everything,
    trainable_state,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainingExample:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    teacher_scores: tuple[float, ...] | None = None  # positive first, then negatives


@dataclass(frozen=True, slots=True)
class SpladeTrainConfig:
    encoder: SpladeConfig = field(default_factory=SpladeConfig)
    steps: int = 1000
    batch_size: int = 16
    negatives_per_query: int = 1
    lr: float = 5e-5
    warmup_steps: int = 100
    lambda_query: float = 1e-3
    lambda_doc: float = 1e-3
    distill_weight: float = 1.0
    max_query_length: int = 64
    max_doc_length: int = 256
    lora_rank: int = 16  # decoder backbones only
    initial_doc_terms: int = 256  # decoder backbones: the term bias starts where a document keeps ~this many
    checkpoint_every: int = 200
    seed: int = 13
    gradient_checkpointing: bool = False  # recompute the backbone's activations in the backward (memory)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ConfigError("training needs steps >= 1 and batch_size >= 2 (in-batch negatives)")


class TrainableSplade(torch.nn.Module):
    """A backbone plus its vocabulary projection, pooled like :class:`SpladeEncoder` (differentiably)."""

    def __init__(self, config: SpladeConfig, device: torch.device):
        super().__init__()
        # The encoder supplies tokenisation and the input layout (echo for decoders).
        self.layout = SpladeEncoder(SpladeConfig(**{**asdict(config), "device": "cpu", "dtype": "float32"}))
        self.backbone = self.layout.model  # its projection is already an identity
        self.head = _vocabulary_head(self.backbone, self.layout)
        self.to(device)
        self.device = device

    def forward(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """``float32[B, V]`` SPLADE weights with gradients."""
        ids = [x[: max_length] for x in self.layout._tokenize(list(texts))]
        items = [self.layout._model_input(x) for x in ids]
        tokens, mask = pad_right([item[0] for item in items], self.layout.pad_id)
        kwargs = {"use_cache": False} if self.layout.architecture == "causal-lm" else {}
        hidden = self.backbone(input_ids=torch.from_numpy(tokens).to(self.device),
                               attention_mask=torch.from_numpy(mask).to(self.device), **kwargs).logits
        start = torch.tensor([item[1] for item in items], device=self.device)
        end = torch.tensor([item[2] for item in items], device=self.device)
        return pool_with_grad(hidden, self.head.weight, self.head.bias, start, end)


# Logit elements per vocabulary chunk of pool_with_grad's forward (float32: 512 MiB).
POOL_CHUNK_ELEMENTS = 1 << 27


def pool_with_grad(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """SPLADE pooling with gradients, without keeping the ``[B, L, V]`` logits (``splade_pool_ref``'s value).

    ``log1p(relu(.))`` is monotone, so ``max_l log1p(relu(x_l)) = log1p(relu(max_l x_l))``: the forward
    keeps each (text, term)'s best position and the backward sends the gradient there only (ties
    aside, what autograd through the reference does). Memory is one vocabulary chunk's logits instead of
    several full ``[B, L, V]`` float32 tensors: a decoder's 150k-term vocabulary over echoed documents did
    not fit a GPU, and on a CPU allocating them was most of a step's time.
    """
    lo, hi = int(start.min()), int(end.max())  # only the pooled span is projected
    positions = torch.arange(lo, hi, device=hidden.device)
    inside = (positions[None] >= start[:, None]) & (positions[None] < end[:, None])  # [B, L']
    best = _MaxLogits.apply(hidden[:, lo:hi], weight, bias, inside)
    return torch.log1p(torch.relu(best))


class _MaxLogits(torch.autograd.Function):
    """``max`` over the unmasked positions of ``hidden @ weight.T + bias``, float32 ``[B, V]``."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, inside):
        batch, length, _ = hidden.shape
        chunk = max(1, POOL_CHUNK_ELEMENTS // max(1, batch * length))
        best = torch.empty(batch, weight.shape[0], dtype=torch.float32, device=hidden.device)
        where = torch.empty(batch, weight.shape[0], dtype=torch.long, device=hidden.device)
        for v in range(0, weight.shape[0], chunk):
            logits = (hidden @ weight[v : v + chunk].T).float()  # autocast picks the matmul's dtype
            if bias is not None:
                logits += bias[v : v + chunk].float()
            logits.masked_fill_(~inside[:, :, None], float("-inf"))
            best[:, v : v + chunk], where[:, v : v + chunk] = logits.max(dim=1)  # first best position
        ctx.save_for_backward(hidden, weight, where)
        ctx.has_bias = bias is not None
        return best

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, where = ctx.saved_tensors
        # Only (text, term) pairs with a positive best logit have a gradient (relu's is 0 elsewhere).
        rows, terms = grad.nonzero(as_tuple=True)
        g = grad[rows, terms].float()
        at = where[rows, terms]
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
            grad_hidden.index_put_((rows, at), g[:, None] * weight[terms].float(), accumulate=True)
            grad_hidden = grad_hidden.to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_weight.index_add_(0, terms, g[:, None] * hidden[rows, at].float())
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
            grad_bias.index_add_(0, terms, g)
        return grad_hidden, grad_weight, grad_bias, None


def _vocabulary_head(backbone: torch.nn.Module, layout: SpladeEncoder) -> torch.nn.Linear:
    """A trainable projection: the tied input embeddings when tied, else a copy of the head.

    Decoder backbones always get a bias (see ``SpladeEncoder``'s term bias); it starts at zero
    here and ``centre_term_bias`` sets it before training.
    """
    has_bias = layout.bias is not None or layout.architecture == "causal-lm"
    head = torch.nn.Linear(layout.weight.shape[1], layout.weight.shape[0], bias=has_bias)
    head.weight = backbone.get_input_embeddings().weight if backbone.config.tie_word_embeddings \
        else torch.nn.Parameter(layout.weight.clone())
    if layout.bias is not None:
        head.bias = torch.nn.Parameter(layout.bias.clone())
    elif has_bias:
        torch.nn.init.zeros_(head.bias)
    return head


@torch.no_grad()
def centre_term_bias(model: TrainableSplade, texts: Sequence[str], doc_terms: int, max_length: int) -> None:
    """Set a decoder's term bias so that pooled documents start with about ``doc_terms`` non-zeros.

    A causal LM's logits are mostly positive, so ``log1p(relu(.))`` keeps nearly the whole
    vocabulary. Subtracting each term's mean max-pooled logit over ``texts`` removes what every
    text predicts (frequent tokens); one shared offset then leaves ``doc_terms`` terms per text.
    """
    model.head.bias.zero_()
    was_training = model.training
    model.eval()
    pooled = []
    for start in range(0, len(texts), 8):
        pooled.append(_max_logits(model, texts[start : start + 8], max_length))
    logits = torch.cat(pooled).float()  # [n, V] max over each text's tokens
    centred = logits - logits.mean(dim=0)
    keep = min(doc_terms, centred.shape[1]) / centred.shape[1]
    offset = torch.quantile(centred.flatten()[torch.randperm(centred.numel())[:1_000_000]], 1 - keep)
    model.head.bias.copy_(-(logits.mean(dim=0) + offset))
    model.train(was_training)


def _max_logits(model: TrainableSplade, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """Max over each text's pooled tokens of the raw head logits, ``[B, V]``."""
    ids = [x[: max_length] for x in model.layout._tokenize(list(texts))]
    items = [model.layout._model_input(x) for x in ids]
    tokens, mask = pad_right([item[0] for item in items], model.layout.pad_id)
    hidden = model.backbone(input_ids=torch.from_numpy(tokens).to(model.device),
                            attention_mask=torch.from_numpy(mask).to(model.device), use_cache=False).logits
    logits = hidden.float() @ model.head.weight.float().T  # [B, L, V]
    positions = torch.arange(logits.shape[1], device=model.device)
    start = torch.tensor([item[1] for item in items], device=model.device)[:, None]
    end = torch.tensor([item[2] for item in items], device=model.device)[:, None]
    inside = (positions[None] >= start) & (positions[None] < end)
    return logits.masked_fill(~inside[..., None], float("-inf")).amax(dim=1)


def flops(weights: torch.Tensor) -> torch.Tensor:
    """FLOPS regulariser: sum over terms of the squared mean weight in the batch."""
    return (weights.mean(dim=0) ** 2).sum()


def training_loss(model: TrainableSplade, batch: Sequence[TrainingExample], config: SpladeTrainConfig,
                  step: int) -> tuple[torch.Tensor, dict[str, float]]:
    n_neg = config.negatives_per_query
    queries = model([e.query for e in batch], config.max_query_length)  # [B, V]
    docs = [e.positive for e in batch] + [n for e in batch for n in e.negatives[:n_neg]]
    doc_weights = model(docs, config.max_doc_length)  # [B + B*n, V]
    scores = queries @ doc_weights.T  # [B, B + B*n]
    targets = torch.arange(len(batch), device=scores.device)
    loss = torch.nn.functional.cross_entropy(scores, targets)
    ramp = min(1.0, step / max(1, config.steps // 3)) ** 2
    reg = ramp * (config.lambda_query * flops(queries) + config.lambda_doc * flops(doc_weights))
    parts = {"contrastive": float(loss.detach())}
    if all(e.teacher_scores for e in batch):
        own = torch.stack([scores[i, [i] + [len(batch) + i * n_neg + j for j in range(n_neg)]]
                           for i in range(len(batch))])  # [B, 1 + n]
        teacher = torch.tensor([e.teacher_scores[: 1 + n_neg] for e in batch], device=scores.device)
        kl = torch.nn.functional.kl_div(own.log_softmax(-1), teacher.log_softmax(-1), log_target=True,
                                        reduction="batchmean")
        loss = loss + config.distill_weight * kl
        parts["distill"] = float(kl)
    parts.update(flops=float(reg.detach()), q_terms=float((queries > 0).sum(1).float().mean()),
                 d_terms=float((doc_weights > 0).sum(1).float().mean()))
    return loss + reg, parts


def _peft_names(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints written with the old hand-written LoRA named the adapters ``<layer>.down`` / ``.up``."""
    names = {"down": "lora_A.default.weight", "up": "lora_B.default.weight"}
    return {re.sub(r"\.(down|up)$", lambda m: "." + names[m.group(1)], n): p for n, p in params.items()}


def train_splade(examples: Sequence[TrainingExample], out: str | Path, config: SpladeTrainConfig,
                 device: str = "auto", data_description: dict | None = None,
                 show_progress: bool | None = None) -> Path:
    """Train on ``examples`` and save a Hugging Face model folder at ``out``; resumes from ``out``."""
    from sparsa.config import resolve_device

    if len(examples) < config.batch_size:
        raise ConfigError(f"{len(examples)} training examples, fewer than one batch of {config.batch_size}")
    if any(len(e.negatives) < config.negatives_per_query for e in examples):
        raise ConfigError(f"every example needs {config.negatives_per_query} negatives")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    seed_everything(config.seed)
    model = TrainableSplade(config.encoder, torch.device(resolve_device(device)))
    if model.layout.architecture == "causal-lm":
        add_lora(model.backbone, config.lora_rank)
        if model.layout.bias is None and not checkpoint.is_file():
            docs = [e.positive for e in examples[:: max(1, len(examples) // 256)]][:256]
            centre_term_bias(model, docs, config.initial_doc_terms, config.max_doc_length)
    if config.gradient_checkpointing:
        _checkpoint_activations(model.backbone)
    params = [p for p in model.parameters() if p.requires_grad]
    stepper = Stepper(*make_optimizer(params, config.lr, weight_decay=0.01, warmup_steps=config.warmup_steps,
                                      total_steps=config.steps))
    state = load_checkpoint(checkpoint, model.device)
    if state is not None:
        model.load_state_dict(_peft_names(state["params"]), strict=False)
        stepper.load_state_dict(state)
        logger.info("resuming training at step %d from %s", stepper.steps, checkpoint)

    order = epoch_order(len(examples), config.steps, config.batch_size, config.seed)
    model.train()
    started, last = time.perf_counter(), {}
    with progress_bar(total=config.steps, desc="training SPLADE", unit="step", show=show_progress) as bar:
        bar.update(stepper.steps)
        while (step := stepper.steps) < config.steps:
            batch = [examples[i] for i in order[step * config.batch_size : (step + 1) * config.batch_size]]
            with autocast(model.device):
                loss, last = training_loss(model, batch, config, step)
            stepper.step(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", d_terms=f"{last['d_terms']:.0f}")
            if stepper.steps % config.checkpoint_every == 0 or stepper.steps == config.steps:
                save_checkpoint(checkpoint, params=trainable_state(model), **stepper.state_dict())

    if model.layout.architecture == "causal-lm":
        merge_lora(model.backbone)
    _restore_head_and_save(model, out)
    record = {"trained_with": "sparsa.retrieval.splade_train", "config": _jsonable(asdict(config)),
              "examples": len(examples), "data": data_description or {}, "steps": stepper.steps,
              "wall_seconds_this_run": round(time.perf_counter() - started, 1), "final": last,
              "device": str(model.device)}
    (out / "sparsa.json").write_text(json.dumps(record, indent=2))
    checkpoint.unlink()
    return out


def _checkpoint_activations(backbone: torch.nn.Module) -> None:
    """transformers' activation checkpointing, non-reentrant (frozen LoRA bases need no input grads);
    ``gradient_checkpointing_enable`` became ``activation_checkpointing_enable`` in transformers 5.2x."""
    enable = getattr(backbone, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _restore_head_and_save(model: TrainableSplade, out: Path) -> None:
    from safetensors.torch import save_file

    from sparsa.retrieval.splade import TERM_BIAS_FILE

    backbone = model.backbone.to("cpu")
    head = model.head.to("cpu")
    if model.layout.architecture == "causal-lm":
        # The LM head keeps no bias (and stays tied); the learned term bias is saved beside it.
        save_file({"bias": head.bias.detach().float().contiguous()}, str(out / TERM_BIAS_FILE))
        plain = torch.nn.Linear(head.in_features, head.out_features, bias=False)
        plain.weight = head.weight
        head = plain
    for module in backbone.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Identity) and name in ("decoder", "lm_head"):
                setattr(module, name, head)
                if head.bias is not None and isinstance(getattr(module, "bias", None), torch.nn.Parameter):
                    module.bias.data.copy_(head.bias.data)  # BERT keeps the decoder bias twice
    backbone.save_pretrained(out)
    model.layout.tokenizer.save_pretrained(out)


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str))
