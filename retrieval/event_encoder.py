"""Event-aware query encoder, after "Event-driven Real-time Retrieval in Web Search" (Yang et al., 2023).

A query is encoded by the plain dense backbone (:class:`DenseEncoder`, minilm-l6 by default), then a
cross-attention layer lets the query embedding attend to the embeddings of recent events (news items
from a window before the query's time, :mod:`sparsa.retrieval.event_window`), each key carrying an
embedding of its age in days. A gate computed from the query and the attended context decides how
much of that context joins the query (a gated residual), so the result is a time-context query vector
in the same space as the documents, which the plain backbone encodes unchanged::

    base = q + W_p q                                  # light projection (zero-initialised)
    ctx  = MultiHeadAttention(base, E + age(E), E)    # query token attends to events
    out  = normalize(base + sigmoid(W_g [base; ctx]) * ctx)

``use_events=False`` keeps only the projection: the same encoder fine-tuned without events (the
ablation). The attention starts as a similarity-weighted average of the events (identity projections,
sharp temperature) with the gate mostly open, a pseudo-relevance-feedback step restricted to recent
news; training then learns which events (and ages) to trust, and how much, per dimension. Saved as a folder:
``sparsa.json`` (config) and ``head.pt``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sparsa.errors import ConfigError, IndexCorruptError
from sparsa.retrieval.event_window import EventSelection, EventStore

if TYPE_CHECKING:
    import datetime as dt


logger = logging.getLogger(__name__)

KIND = "event-query-encoder"
_HEAD_FILE = "head.pt"


@dataclass(frozen=True, slots=True)
class EventEncoderConfig:
    """An event-aware query encoder: backbone, attention shape and which events it sees."""

    backbone: str = "minilm-l6"
    dim: int = 384
    use_events: bool = True
    heads: int = 1
    window_days: int = 14
    max_events: int = 16
    selection: EventSelection = "similar"
    max_age_days: int = 31  # ages beyond share the last age embedding
    attention_temperature: float = 0.05  # initial sharpness of the query-event softmax
    gate_bias: float = 2.0  # initial gate ~0.88 (chosen on dev weeks over -2, 0, 4)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.selection not in ("similar", "recent"):
            raise ConfigError(f"selection {self.selection!r}: expected 'similar' or 'recent'")
        for name in ("window_days", "max_events", "max_age_days"):
            if getattr(self, name) < (0 if name == "window_days" else 1):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or self.attention_temperature <= 0:
            raise ConfigError("dropout must be in [0, 1) and attention_temperature > 0")


def _build_head(config: EventEncoderConfig):
    import torch
    from torch import nn

    class EventAttentionHead(nn.Module):
        """``(q float32[B, d], events float32[B, N, d], ages int64[B, N], mask bool[B, N])
        -> float32[B, d]``."""

        def __init__(self) -> None:
            super().__init__()
            d = config.dim
            self.query_proj = nn.Linear(d, d)
            nn.init.zeros_(self.query_proj.weight)
            nn.init.zeros_(self.query_proj.bias)
            if not config.use_events:
                return
            self.age = nn.Embedding(config.max_age_days + 1, d)
            nn.init.normal_(self.age.weight, std=0.01)
            self.attention = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
            # Identity projections with a sharp softmax: attention starts as a cosine-weighted mean of events.
            scale = math.sqrt(math.sqrt(d // config.heads) / config.attention_temperature)
            with torch.no_grad():
                eye = torch.eye(d)
                self.attention.in_proj_weight.copy_(torch.cat([eye * scale, eye * scale, eye]))
                self.attention.in_proj_bias.zero_()
                self.attention.out_proj.weight.copy_(eye)
                self.attention.out_proj.bias.zero_()
            self.gate = nn.Linear(2 * d, d)
            nn.init.normal_(self.gate.weight, std=0.01)
            nn.init.constant_(self.gate.bias, config.gate_bias)

        def forward(self, q, events=None, ages=None, mask=None, with_events: bool = True):
            base = q + self.query_proj(q)  # [B, d]
            if not (config.use_events and with_events) or events is None:
                return nn.functional.normalize(base, dim=-1)
            empty = ~mask.any(dim=1)  # [B]: windows without any event
            safe_mask = mask.clone()
            safe_mask[empty, 0] = True  # attention over zero keys is undefined; zeroed below
            keys = events + self.age(ages.clamp(0, config.max_age_days))  # [B, N, d]
            ctx, _ = self.attention(base.unsqueeze(1), keys, events, key_padding_mask=~safe_mask,
                                    need_weights=False)
            ctx = ctx.squeeze(1).masked_fill(empty.unsqueeze(1), 0.0)  # [B, d]
            gate = torch.sigmoid(self.gate(torch.cat([base, ctx], dim=-1)))
            return nn.functional.normalize(base + gate * ctx, dim=-1)

    return EventAttentionHead()


class EventQueryEncoder:
    """Query texts + query times + an :class:`EventStore` -> ``float32[n, d]`` time-context query vectors.

    ``backbone`` is a loaded :class:`DenseEncoder` (loaded on demand from ``config.backbone``); documents
    are encoded by that backbone unchanged.
    """

    def __init__(self, config: EventEncoderConfig | None = None, backbone=None, head=None):
        self.config = config or EventEncoderConfig()
        self._backbone = backbone
        self.head = head if head is not None else _build_head(self.config)

    @property
    def backbone(self):
        if self._backbone is None:
            from sparsa.retrieval.dense import DenseConfig, DenseEncoder

            self._backbone = DenseEncoder(DenseConfig(model=self.config.backbone))
        return self._backbone

    def window_tensors(self, base: np.ndarray, whens: Sequence[dt.date], store: EventStore):
        """Torch ``(events, ages, mask)`` for plain query vectors ``base float32[B, d]``
        asked on ``whens``."""
        import torch

        events, ages, mask = store.batch(base, whens, self.config.window_days, self.config.max_events,
                                         self.config.selection)
        return torch.from_numpy(events), torch.from_numpy(ages), torch.from_numpy(mask)

    def encode_vectors(self, base: np.ndarray, whens: Sequence[dt.date],
                       store: EventStore | None) -> np.ndarray:
        """Apply the head to plain query vectors ``float32[B, d]`` (already encoded by the backbone)."""
        import torch

        if base.ndim != 2 or base.shape[1] != self.config.dim:
            raise ConfigError(f"expected query vectors [B, {self.config.dim}], got {base.shape}")
        if self.config.use_events and store is None:
            raise ConfigError("this encoder attends to events: give an EventStore")
        self.head.eval()
        with torch.inference_mode():
            q = torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32))
            if not self.config.use_events:
                return self.head(q).numpy()
            return self.head(q, *self.window_tensors(base, whens, store)).numpy()

    def encode_queries(self, texts: Sequence[str], whens: Sequence[dt.date], store: EventStore | None = None,
                       batch_size: int | None = None, show_progress: bool | None = None) -> np.ndarray:
        """``float32[n, d]`` time-context query vectors; ``whens[i]`` is the time ``texts[i]`` was asked."""
        if len(texts) != len(whens):
            raise ConfigError(f"{len(texts)} queries but {len(whens)} query times")
        base = self.backbone.encode_queries(texts, batch_size=batch_size, show_progress=show_progress)
        return self.encode_vectors(base, whens, store)

    def encode_documents(self, texts: Sequence[str], batch_size: int | None = None,
                         show_progress: bool | None = None) -> np.ndarray:
        """Documents go through the plain backbone: the index does not depend on the news of the day."""
        return self.backbone.encode_documents(texts, batch_size=batch_size, show_progress=show_progress)

    def save(self, folder: str | Path, training: dict | None = None) -> Path:
        """Write ``head.pt`` and ``sparsa.json`` (config, training record) atomically into ``folder``."""
        import torch

        from sparsa.artifacts import atomic_dir, write_manifest

        with atomic_dir(folder) as work:
            torch.save(self.head.state_dict(), work / _HEAD_FILE)
            write_manifest(work, KIND, dataclasses.asdict(self.config), training=training or {})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path, backbone=None) -> EventQueryEncoder:
        """Rebuild from a saved folder; the backbone loads lazily from the registry unless given."""
        import torch

        from sparsa.artifacts import read_manifest

        manifest = read_manifest(folder, kind=KIND)
        try:
            config = EventEncoderConfig(**manifest["config"])
        except TypeError as exc:
            raise IndexCorruptError(f"{folder}: config does not match this sparsa version ({exc})") from None
        head = _build_head(config)
        state = torch.load(Path(folder) / _HEAD_FILE, map_location="cpu", weights_only=True)
        head.load_state_dict(state)
        logger.info("loaded event query encoder from %s (events=%s)", folder, config.use_events)
        return cls(config, backbone=backbone, head=head.eval())

