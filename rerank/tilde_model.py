"""The TILDEv2 passage encoder: one non-negative weight per passage token, and its training.

TILDEv2 (Zhuang & Zuccon, "Fast Passage Re-ranking with Contextualized Exact Term Matching and
Efficient Passage Expansion", 2021): a BERT encoder reads ``[CLS] passage [SEP] added [SEP]``
(``added``: the TILDE expansion terms) and a linear layer maps each token's state to a weight
``w_j = relu(W h_j + b)``. The score of a query is

    s(q, p) = sum over query tokens t of  max { w_j : p_j = t }   (0 when t is not in p)

counting a repeated query token once per occurrence. Training: localised contrastive estimation,
softmax cross-entropy of each query's positive against its BM25 hard negatives (the paper's LCE
loss). Weights depend only on the passage, so they are computed once at indexing time
(:mod:`sparsa.rerank.tilde`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from sparsa.artifacts import atomic_dir, read_manifest, write_manifest
from sparsa.errors import ConfigError
from sparsa.models import resolve_model
from sparsa.rerank.tilde_expansion import ExpandedPassage, TildeExpander
from sparsa.rerank.tokens import PassageTokenizer
from sparsa.rerank.training import LabelledExample, OptimConfig, pad_batch, train_loop
from sparsa.sdpa_backends import without_cudnn
from sparsa.training import seed_everything

logger = logging.getLogger(__name__)

KIND = "tildev2-model"
_HEAD = "tildev2_head.pt"


@dataclass(frozen=True, slots=True)
class TildeV2Config:
    """``model``: a BERT checkpoint to start from (registry name or folder) or a trained TILDEv2 folder."""

    model: str = "splade-tiny"
    max_passage_tokens: int = 256
    batch_size: int = 32
    device: str = "cpu"


@dataclass(frozen=True, slots=True)
class TildeV2TrainConfig:
    encoder: TildeV2Config = field(default_factory=TildeV2Config)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=250, batch_size=8, lr=2e-4,
                                                                   warmup_steps=25))
    group_size: int = 4  # the positive and group_size - 1 hard negatives per query
    max_query_tokens: int = 32

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError("TILDEv2 training needs group_size >= 2 (a positive and a negative)")


class TildeV2Encoder(torch.nn.Module):
    """BERT + a scalar head: ``float32[B, L]`` token weights for ``[CLS] passage [SEP] added [SEP]``."""

    def __init__(self, config: TildeV2Config = TildeV2Config()):
        super().__init__()
        from transformers import AutoConfig, BertForMaskedLM, BertModel

        started = time.perf_counter()
        self.config = config
        self.path = Path(resolve_model(config.model))
        if any("MaskedLM" in a for a in AutoConfig.from_pretrained(self.path).architectures or ()):
            self.bert = BertForMaskedLM.from_pretrained(self.path).bert  # drop the MLM head
        else:
            self.bert = BertModel.from_pretrained(self.path, add_pooling_layer=False)
        self.head = torch.nn.Linear(self.bert.config.hidden_size, 1)
        trained = self.path / _HEAD
        if trained.is_file():
            self.head.load_state_dict(torch.load(trained, map_location="cpu"))
        else:  # a fresh head: small weights, every token starts with a small positive weight
            torch.nn.init.normal_(self.head.weight, std=0.02)
            torch.nn.init.constant_(self.head.bias, 0.1)
        self.tokenizer = PassageTokenizer(self.path)
        self.to(config.device).eval()
        logger.info("loaded TILDEv2 encoder from %s (%s head) in %.1f s", self.path,
                    "trained" if trained.is_file() else "fresh", time.perf_counter() - started)

    def inputs(self, passages: Sequence[ExpandedPassage]) -> list[list[int]]:
        cls, sep, limit = self.tokenizer.cls_id, self.tokenizer.sep_id, self.config.max_passage_tokens
        return [[cls, *p.passage[:limit].tolist(), sep, *([*p.added.tolist(), sep] if len(p.added) else [])]
                for p in passages]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``int64[B, L]`` ids and mask -> ``float32[B, L]`` weights, 0 on padding and special tokens."""
        with without_cudnn(ids.device):  # a new batch shape each time: cuDNN would plan each one
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = torch.relu(self.head(hidden).squeeze(-1))
        special = (ids == self.tokenizer.cls_id) | (ids == self.tokenizer.sep_id) | (mask == 0)
        return weights.masked_fill(special, 0.0)

    def weigh(self, passages: Sequence[ExpandedPassage]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_batch(self.inputs(passages), self.tokenizer.pad_id)
        ids, mask = ids.to(self.config.device), mask.to(self.config.device)
        return ids, self(ids, mask)

    @torch.inference_mode()
    def encode(self, passages: Sequence[ExpandedPassage]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per passage: sorted unique ``int32`` token ids with a positive weight, and
        ``float32`` max weights."""
        ids, weights = self.weigh(passages)
        return [max_per_token(i.cpu().numpy(), w.float().cpu().numpy())
                for i, w in zip(ids, weights, strict=True)]

    def save(self, out: str | Path, training: dict | None = None) -> Path:
        with atomic_dir(out) as work:
            self.bert.save_pretrained(work)
            torch.save(self.head.state_dict(), work / _HEAD)
            (work / "tokenizer.json").write_bytes(self.tokenizer.path.read_bytes())
            config = replace(self.config, model=str(Path(out).expanduser().resolve()))
            write_manifest(work, KIND, config=asdict(config), started_from=str(self.path),
                           training=training or {})
        return Path(out)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> TildeV2Encoder:
        record = read_manifest(folder, kind=KIND)
        return cls(TildeV2Config(**{**record["config"], "model": str(Path(folder).expanduser().resolve()),
                                    "device": device}))


def max_per_token(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Collapse positions to ``(sorted unique ids, max weight)``, keeping only positive weights."""
    keep = weights > 0
    ids, weights = ids[keep], weights[keep]
    order = np.lexsort((-weights, ids))  # by id, heaviest first within an id
    ids, weights = ids[order], weights[order]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return ids[first].astype(np.int32), weights[first].astype(np.float32)


def tildev2_scores(query_ids: torch.Tensor, query_mask: torch.Tensor, passage_ids: torch.Tensor,
                   passage_weights: torch.Tensor) -> torch.Tensor:
    """Differentiable TILDEv2 scores of query ``i`` against its own passages.

    ``query_ids``/``query_mask``: ``int64[B, Lq]``; ``passage_ids``/``passage_weights``:
    ``[B, G, L]``. Returns ``float32[B, G]``.
    """
    match = query_ids[:, None, :, None] == passage_ids[:, :, None, :]  # [B, G, Lq, L]
    best = (match * passage_weights[:, :, None, :]).amax(dim=-1)  # [B, G, Lq]
    return (best * query_mask[:, None, :]).sum(dim=-1)


def tildev2_loss(encoder: TildeV2Encoder, batch: Sequence[tuple[str, list[ExpandedPassage]]],
                 config: TildeV2TrainConfig) -> torch.Tensor:
    """Softmax cross-entropy of each query's positive (first) against its hard negatives."""
    group = config.group_size
    q_ids, q_mask = pad_batch([x.tolist() for x in encoder.tokenizer.ids([q for q, _ in batch],
                                                                         config.max_query_tokens)], 0)
    ids, weights = encoder.weigh([p for _, passages in batch for p in passages])
    scores = tildev2_scores(q_ids.to(ids.device), q_mask.to(ids.device),
                            ids.view(len(batch), group, -1), weights.view(len(batch), group, -1))
    return torch.nn.functional.cross_entropy(scores,
                                             torch.zeros(len(batch), dtype=torch.long, device=ids.device))


def train_tildev2(examples: Sequence[LabelledExample], out: str | Path,
                  config: TildeV2TrainConfig = TildeV2TrainConfig(),
                  expander: TildeExpander | None = None, data_description: dict | None = None,
                  show_progress: bool | None = None) -> Path:
    """Train TILDEv2 on (query, positive, hard negatives) examples, passages expanded by ``expander``."""
    need = config.group_size - 1
    if any(len(e.negatives) < need for e in examples):
        raise ConfigError(f"every example needs {need} negatives for group_size {config.group_size}")
    # Seeded here, not only in train_loop: the fresh head is drawn from torch's global generator, so
    # without it the model would depend on what ran earlier in the process (the bench trains TILDE
    # first, the CLI starts fresh) and 'sparsa train tildev2' could not rebuild the bench's model.
    seed_everything(config.optim.seed)
    encoder = TildeV2Encoder(config.encoder)
    texts = sorted({t for e in examples for t in (e.positive, *e.negatives[:need])})
    started = time.perf_counter()
    if expander is not None:
        expanded = expander.expand(texts, show_progress)
    else:
        expanded = [ExpandedPassage(p, np.zeros(0, np.int32))
                    for p in encoder.tokenizer.ids(texts, config.encoder.max_passage_tokens)]
    by_text = dict(zip(texts, expanded, strict=True))
    expand_seconds = time.perf_counter() - started
    items = [(e.query, [by_text[t] for t in (e.positive, *e.negatives[:need])]) for e in examples]
    summary = train_loop(encoder, items, lambda b: tildev2_loss(encoder, b, config), config.optim,
                         "training TILDEv2", show_progress)
    record = {"optim": asdict(config.optim), "group_size": config.group_size, "examples": len(examples),
              "data": data_description or {}, **summary, "expansion_seconds": round(expand_seconds, 1),
              "expander": str(expander.path) if expander else None, "device": config.encoder.device}
    return encoder.save(out, record)
