"""TILDE passage expansion: add the query terms a passage is likely to be searched with.

TILDE (Zhuang & Zuccon, SIGIR 2021) projects a passage's ``[CLS]`` state through the masked-LM
head to one logit per vocabulary token: how likely that token is to appear in a query for which
the passage is relevant. It is trained as multi-label classification (binary cross-entropy over
the vocabulary, the query's tokens as positives). TILDEv2 (Zhuang & Zuccon, 2021) appends each
passage's ``expansion_terms`` most likely *new* tokens (not already in the passage, not stopwords,
not special tokens) before indexing, so exact matching can reach query terms the passage lacks.

Expansion works on token ids: :meth:`TildeExpander.expand` returns the passage's own (truncated)
ids unchanged plus the added ids, which TILDEv2 encodes as ``[CLS] passage [SEP] added [SEP]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from sparsa.artifacts import atomic_dir, read_manifest, write_manifest
from sparsa.errors import ConfigError
from sparsa.models import resolve_model
from sparsa.progress import progress_bar
from sparsa.rerank.tokens import PassageTokenizer
from sparsa.rerank.training import LabelledExample, OptimConfig, pad_batch, train_loop
from sparsa.sdpa_backends import without_cudnn

logger = logging.getLogger(__name__)

KIND = "tilde-expansion-model"


@dataclass(frozen=True, slots=True)
class TildeConfig:
    """``model``: a ``BertForMaskedLM`` to start from (registry name or folder) or a trained TILDE folder."""

    model: str = "splade-tiny"
    max_passage_tokens: int = 192  # the [CLS] state reads the title and the start of the body
    expansion_terms: int = 64
    batch_size: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.expansion_terms < 0 or self.max_passage_tokens < 1 or self.batch_size < 1:
            raise ConfigError("TILDE needs expansion_terms >= 0, max_passage_tokens >= 1, batch_size >= 1")


@dataclass(frozen=True, slots=True)
class TildeTrainConfig:
    tilde: TildeConfig = field(default_factory=TildeConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=150, batch_size=32, lr=2e-4,
                                                                   warmup_steps=15))


class ExpandedPassage(NamedTuple):
    """``passage``: int32 ids of the (truncated) passage; ``added``: int32 new ids, most likely first."""

    passage: np.ndarray
    added: np.ndarray


class TildeExpander:
    """A TILDE query-likelihood model over the vocabulary, used to expand passages."""

    def __init__(self, config: TildeConfig = TildeConfig()):
        from transformers import BertForMaskedLM

        started = time.perf_counter()
        self.config = config
        self.path = Path(resolve_model(config.model))
        self.model = BertForMaskedLM.from_pretrained(self.path).to(config.device).eval()
        self.tokenizer = PassageTokenizer(self.path)
        self._eligible = torch.from_numpy(self.tokenizer.expansion_vocabulary).to(config.device)
        logger.info("loaded TILDE model from %s in %.1f s", self.path, time.perf_counter() - started)

    def term_logits(self, passages: Sequence[np.ndarray]) -> torch.Tensor:
        """``float32[B, V]`` query-term logits from each passage's ``[CLS]`` state (with
        gradients if enabled)."""
        rows = [[self.tokenizer.cls_id, *p.tolist(), self.tokenizer.sep_id] for p in passages]
        ids, mask = pad_batch(rows, self.tokenizer.pad_id)
        device = self.config.device
        with without_cudnn(device):  # a new batch shape each time: cuDNN would plan each one
            hidden = self.model.bert(input_ids=ids.to(device), attention_mask=mask.to(device))
        hidden = hidden.last_hidden_state
        return self.model.cls(hidden[:, 0])  # only [CLS]: no [B, L, V] logits

    def expand(self, texts: Sequence[str], show_progress: bool | None = None) -> list[ExpandedPassage]:
        """Each text's truncated ids plus its ``expansion_terms`` most likely new terms."""
        passages = self.tokenizer.ids(texts, self.config.max_passage_tokens)
        return self.expand_ids(passages, show_progress)

    @torch.inference_mode()
    def expand_ids(self, passages: Sequence[np.ndarray],
                   show_progress: bool | None = None) -> list[ExpandedPassage]:
        m = self.config.expansion_terms
        out: list[ExpandedPassage | None] = [None] * len(passages)
        order = np.argsort([-len(p) for p in passages], kind="stable")  # similar lengths per batch
        with progress_bar(len(passages), "TILDE expansion", unit="doc", show=show_progress) as bar:
            for begin in range(0, len(order), self.config.batch_size):
                chosen = order[begin : begin + self.config.batch_size]
                batch = [passages[i] for i in chosen]
                logits = self.term_logits(batch).float()
                logits[:, ~self._eligible] = -torch.inf
                for row, p in enumerate(batch):  # never re-add a term the passage has
                    logits[row, torch.from_numpy(p.astype(np.int64)).to(logits.device)] = -torch.inf
                top = logits.topk(min(m, logits.shape[1]), dim=1)
                for row, i in enumerate(chosen):
                    keep = torch.isfinite(top.values[row])
                    out[i] = ExpandedPassage(passages[i],
                                             top.indices[row][keep].cpu().numpy().astype(np.int32))
                bar.update(len(chosen))
        return out  # type: ignore[return-value]

    def save(self, out: str | Path, training: dict | None = None) -> Path:
        """Write a model folder (Hugging Face weights, tokenizer, ``sparsa.json``) atomically."""
        with atomic_dir(out) as work:
            self.model.save_pretrained(work)
            (work / "tokenizer.json").write_bytes(self.tokenizer.path.read_bytes())
            config = replace(self.config, model=str(Path(out).expanduser().resolve()))
            write_manifest(work, KIND, config=asdict(config), started_from=str(self.path),
                           training=training or {})
        return Path(out)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> TildeExpander:
        """Open a folder written by :meth:`save` (its config comes from the manifest)."""
        record = read_manifest(folder, kind=KIND)
        config = TildeConfig(**{**record["config"], "model": str(Path(folder).expanduser().resolve()),
                                "device": device})
        return cls(config)


def tilde_loss(expander: TildeExpander, batch: Sequence[LabelledExample]) -> torch.Tensor:
    """Binary cross-entropy over the vocabulary; positives: the query's eligible tokens."""
    tok = expander.tokenizer
    logits = expander.term_logits(tok.ids([e.positive for e in batch], expander.config.max_passage_tokens))
    targets = torch.zeros_like(logits)
    eligible = tok.expansion_vocabulary
    for row, q in enumerate(tok.ids([e.query for e in batch])):
        q = q[eligible[q]]
        targets[row, torch.from_numpy(q.astype(np.int64))] = 1.0
    per_token = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_token.sum(dim=1).mean()


def train_tilde(examples: Sequence[LabelledExample], out: str | Path,
                config: TildeTrainConfig = TildeTrainConfig(),
                data_description: dict | None = None, show_progress: bool | None = None) -> Path:
    """Fine-tune a masked LM's ``[CLS]`` -> vocabulary projection as TILDE; saves a folder at ``out``."""
    expander = TildeExpander(config.tilde)
    summary = train_loop(expander.model, list(examples), lambda b: tilde_loss(expander, b), config.optim,
                         "training TILDE", show_progress)
    record = {"optim": asdict(config.optim), "examples": len(examples),
              "data": data_description or {}, **summary, "device": config.tilde.device}
    return expander.save(out, record)
