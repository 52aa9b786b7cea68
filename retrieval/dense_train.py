"""Contrastive training of a dense bi-encoder: self-supervised pre-training, then optional fine-tuning.

One loss for every stage: InfoNCE over in-batch negatives (each query against every passage of the
batch, scaled similarity, cross-entropy on its own passage), as in Chang et al. 2020 and
sentence-transformers' MultipleNegativesRankingLoss. Passages of the same source document as the
query are masked out, so a document is never its own negative. Stages run in order on one model
(e.g. ICT pre-training, then SciFact train qrels).

The output folder is a sentence-transformers folder: the start model's ``modules.json``, pooling
and tokenizer files (written for the settings used when the start model had none or they were
overridden; query/document prefixes become its prompts), the trained ``model.safetensors``, and
``sparsa.json`` recording data, steps, losses and wall time. ``DenseEncoder(DenseConfig(model=folder))``
and ``SentenceTransformer(folder)`` both load it. Runs are minutes long, so there are no mid-run
checkpoints: a killed run leaves nothing (the folder is published atomically) and is rerun.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparsa.artifacts import atomic_dir, write_manifest
from sparsa.errors import ConfigError
from sparsa.progress import progress_bar
from sparsa.retrieval.dense_pretrain import Pair
from sparsa.training import Stepper, autocast, epoch_order, make_optimizer, seed_everything

logger = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json", "sparsa.json")


@dataclass(frozen=True, slots=True)
class DenseTrainConfig:
    model: str = "minilm-l6"
    batch_size: int = 64
    lr: float = 2e-5
    warmup_fraction: float = 0.1
    max_query_length: int = 64
    max_passage_length: int = 256
    scale: float = 20.0  # similarity scale (1 / temperature), sentence-transformers' default
    seed: int = 13
    # "auto" / None: as the start model's sentence-transformers files say (a model without them must set
    # both); the output folder declares what was used.
    pooling: str = "auto"
    normalize: bool | None = None
    query_prefix: str = ""  # prepended to every query (and saved as the output's "query" prompt)
    doc_prefix: str = ""  # prepended to every passage ("document" prompt)

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (in-batch negatives)")
        if self.pooling not in ("auto", "mean", "cls", "max"):
            raise ConfigError(f"pooling {self.pooling!r}: expected auto, mean, cls or max")


@dataclass(slots=True)
class Stage:
    """``steps`` optimisation steps over ``pairs``; ``description`` goes to the training record."""

    name: str
    pairs: Sequence[Pair]
    steps: int
    description: dict = field(default_factory=dict)


class _Trainable:
    def __init__(self, config: DenseTrainConfig, device: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from sparsa.models import resolve_model
        from sparsa.retrieval.dense import _folder_settings, declares_settings

        self.source = Path(resolve_model(config.model))
        self.declared = declares_settings(self.source)
        if not self.declared and (config.pooling == "auto" or config.normalize is None):
            raise ConfigError(f"{config.model} has no sentence-transformers files (modules.json), so its "
                              "pooling and normalisation are unknown: set both (--pooling mean|cls|max, "
                              "--normalize/--no-normalize)")
        _, pooling, normalize = _folder_settings(self.source)
        self.pooling = pooling if config.pooling == "auto" else config.pooling
        self.normalize = normalize if config.normalize is None else config.normalize
        self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        self.device = torch.device(device)
        # fp32 master weights
        self.model = AutoModel.from_pretrained(self.source).float().to(self.device).train()

    def embed(self, texts: list[str], max_length: int):
        import torch

        from sparsa.retrieval.dense import pool_hidden

        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=tokens["input_ids"],
                            attention_mask=tokens["attention_mask"]).last_hidden_state
        pooled = pool_hidden(hidden.float(), tokens["attention_mask"], self.pooling)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def contrastive_loss(queries, passages, doc_ids: Sequence[str], scale: float):
    """InfoNCE: row i's target is passage i; other passages of the same document are masked."""
    import torch

    scores = scale * queries @ passages.T
    same = torch.tensor([[a == b for b in doc_ids] for a in doc_ids], device=scores.device)
    same.fill_diagonal_(False)
    scores = scores.masked_fill(same, float("-inf"))
    return torch.nn.functional.cross_entropy(scores, torch.arange(len(doc_ids), device=scores.device))


def _run_stage(trainer: _Trainable, stage: Stage, config: DenseTrainConfig,
               show_progress: bool | None) -> dict:
    if len(stage.pairs) < config.batch_size:
        raise ConfigError(f"stage {stage.name}: {len(stage.pairs)} pairs, fewer than one batch "
                          f"of {config.batch_size}")
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    # linear warm-up over the first warmup_fraction of the stage, then linear decay to 0 at its end
    stepper = Stepper(*make_optimizer(params, config.lr, weight_decay=0.01, total_steps=stage.steps,
                                      warmup_steps=int(config.warmup_fraction * stage.steps)))
    order = epoch_order(len(stage.pairs), stage.steps, config.batch_size, config.seed)
    losses, started = [], time.perf_counter()
    with progress_bar(total=stage.steps, desc=f"training dense ({stage.name})", unit="step",
                      show=show_progress) as bar:
        for step in range(stage.steps):
            batch = [stage.pairs[i] for i in order[step * config.batch_size : (step + 1) * config.batch_size]]
            with autocast(trainer.device):
                q = trainer.embed([config.query_prefix + p.query for p in batch], config.max_query_length)
                d = trainer.embed([config.doc_prefix + p.passage for p in batch], config.max_passage_length)
            loss = contrastive_loss(q, d, [p.doc_id for p in batch], config.scale)
            stepper.step(loss)
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    window = max(1, len(losses) // 10)
    return {"stage": stage.name, "pairs": len(stage.pairs), "steps": stage.steps, "data": stage.description,
            "tasks": sorted({p.task for p in stage.pairs}),
            "loss_first": round(sum(losses[:window]) / window, 4),
            "loss_last": round(sum(losses[-window:]) / window, 4),
            "wall_seconds": round(time.perf_counter() - started, 1)}


def train_dense(stages: Sequence[Stage], out: str | Path, config: DenseTrainConfig | None = None,
                device: str = "auto", show_progress: bool | None = None) -> Path:
    """Run ``stages`` in order on ``config.model`` and publish a sentence-transformers folder at ``out``."""
    from sparsa.config import resolve_device

    config = config or DenseTrainConfig()
    if not stages:
        raise ConfigError("nothing to train: no stages")
    seed_everything(config.seed)
    started = time.perf_counter()
    trainer = _Trainable(config, resolve_device(device))
    records = [_run_stage(trainer, stage, config, show_progress) for stage in stages]
    with atomic_dir(out) as work:
        for item in trainer.source.iterdir():  # modules.json, pooling, tokenizer: as the start model has them
            if item.name in _WEIGHT_FILES or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, work / item.name)
        trainer.model.to("cpu").save_pretrained(work, safe_serialization=True)
        _declare_settings(work, trainer, config)
        write_manifest(work, "dense-model", asdict(config), trained_with="sparsa.retrieval.dense_train",
                       start_model=str(trainer.source), stages=records, device=str(trainer.device),
                       wall_seconds=round(time.perf_counter() - started, 1))
    logger.info("trained dense model in %s (%s)", out,
                ", ".join(f"{r['stage']}: {r['steps']} steps" for r in records))
    return Path(out)


def _declare_settings(folder: Path, trainer: _Trainable, config: DenseTrainConfig) -> None:
    """Make ``folder`` say how it was trained: sentence-transformers modules (pooling, normalisation) when
    the start model had none or they were overridden, and the prefixes as its "query"/"document" prompts."""
    import json

    from sparsa.retrieval.dense import _folder_settings

    length, pooling, normalize = _folder_settings(folder) if trainer.declared else (None, None, None)
    if (pooling, normalize) != (trainer.pooling, trainer.normalize):
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"}]
        if trainer.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
            (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": int(trainer.model.config.hidden_size),
            **{f"pooling_mode_{m}": trainer.pooling == name
               for m, name in (("cls_token", "cls"), ("mean_tokens", "mean"), ("max_tokens", "max"))},
            "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
        (folder / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": length or config.max_passage_length, "do_lower_case": False}, indent=2))
    if config.query_prefix or config.doc_prefix:
        settings_file = folder / "config_sentence_transformers.json"
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        settings["prompts"] = {**(settings.get("prompts") or {}), "query": config.query_prefix,
                               "document": config.doc_prefix}
        settings_file.write_text(json.dumps(settings, indent=2))
