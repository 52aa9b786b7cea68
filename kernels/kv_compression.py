"""KV cache compression by head type: retrieval heads keep the whole cache, streaming heads sink + recent.

Ideas:
  * RazorAttention (Tang et al., 2024, arXiv:2407.15891): a few "retrieval" heads (echo heads, which
    attend to the previous occurrence of the current token, and induction heads, which attend to the
    token that followed it) need the whole context; the others only look at attention sinks and nearby
    tokens. Heads are found without training by :func:`profile_retrieval_heads`: the model reads a
    random token sequence repeated twice, and each head scores the attention probability it puts, from
    the second copy, on the echo and induction positions of the first copy (mean over positions).
  * DuoAttention (Xiao et al., 2024, arXiv:2410.10819): per KV head, retrieval heads keep the full
    cache, streaming heads keep ``sink`` + ``window`` tokens (StreamingLLM). Prefill is exact (all
    heads attend fully, as in RazorAttention); the cache is trimmed as it is stored, so decoding reads
    and holds only the compressed cache.

With GQA a KV head is a retrieval head if any query head of its group scores high (max over the group);
the top ``retrieval_fraction`` of all KV heads of the model (ranked globally) are retrieval heads.
Profiles are saved per model as JSON (:meth:`HeadProfile.save` / :meth:`HeadProfile.load`).

Cache: :class:`HeadCompressedLayer` is a ``transformers`` cache layer (``Cache(layers=[...])``, see
:func:`compressed_cache`); after prefill its ``update`` returns :class:`HeadSplitKV` pairs, which
:func:`head_split_attention` (and the attention function in ``kernels/hf_attention.py``) consume. Prefill
and eager decode grow it; ``rag/generate.py``'s static decode copies the prompt's into a preallocated one
(:func:`static_compressed_cache`: the same split and sink + window, fixed shapes, the length on the device),
whose steps can be captured in a CUDA graph.
:func:`kv_cache_bytes` counts the bytes a cache holds. Known limits: batch rows share one head split;
no beam search reordering or cropping of a compressed cache.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = [
    "HeadCompressedLayer",
    "HeadProfile",
    "HeadSplitKV",
    "compressed_cache",
    "head_split_attention",
    "kv_cache_bytes",
    "profile_retrieval_heads",
    "repeated_sequence_scores",
    "static_compressed_cache",
]


@dataclass
class HeadProfile:
    """Per-model head scores ``[n_layers][n_kv_heads]`` and which KV heads are retrieval heads."""

    model: str
    method: str
    scores: list[list[float]]
    retrieval: list[list[bool]]

    @property
    def retrieval_fraction(self) -> float:
        flat = [r for layer in self.retrieval for r in layer]
        return sum(flat) / max(len(flat), 1)

    @staticmethod
    def from_scores(scores: torch.Tensor, retrieval_fraction: float, *, model: str = "",
                    method: str = "echo+induction") -> HeadProfile:
        """Mark the top ``retrieval_fraction`` of KV heads (``scores [L, Hkv]``) as retrieval heads."""
        if not 0.0 <= retrieval_fraction <= 1.0:
            raise ValueError(f"retrieval_fraction must be in [0, 1], got {retrieval_fraction}")
        n_keep = round(retrieval_fraction * scores.numel())
        keep = torch.zeros(scores.numel(), dtype=torch.bool)
        keep[scores.flatten().argsort(descending=True)[:n_keep]] = True
        return HeadProfile(model, method, scores.tolist(), keep.view(scores.shape).tolist())

    def with_fraction(self, retrieval_fraction: float) -> HeadProfile:
        return HeadProfile.from_scores(torch.tensor(self.scores), retrieval_fraction, model=self.model,
                                       method=self.method)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self)) + "\n")
        tmp.replace(path)
        return path

    @staticmethod
    def load(path: str | Path) -> HeadProfile:
        from sparsa.errors import DataFormatError

        path = Path(path)
        try:
            data = json.loads(path.read_text())
            profile = HeadProfile(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise DataFormatError(path, f"not a head profile ({exc})") from None
        if len(profile.scores) != len(profile.retrieval):
            raise DataFormatError(path, "scores and retrieval flags differ in layer count")
        return profile


def repeated_sequence_scores(attentions: list[torch.Tensor], period: int, n_kv_heads: int) -> torch.Tensor:
    """Echo + induction score per KV head from attention maps of a sequence repeated with ``period``.

    ``attentions``: per layer ``[B, Hq, S, S]`` probabilities. Query ``i`` in the second copy scores
    ``p[i, i - period]`` (echo) + ``p[i, i - period + 1]`` (induction), averaged over queries and
    batch, then maxed over the query heads of each KV head. Returns ``[L, Hkv]``.
    """
    per_layer = []
    for att in attentions:
        s = att.shape[-1]
        rows = torch.arange(period, s - 1, device=att.device)
        echo = att[:, :, rows, rows - period]
        induction = att[:, :, rows, rows - period + 1]
        score = (echo + induction).float().mean((0, 2))  # [Hq]
        per_layer.append(score.view(n_kv_heads, -1).amax(-1))
    return torch.stack(per_layer).cpu()


def profile_retrieval_heads(model, *, retrieval_fraction: float = 0.25, period: int = 256,
                            n_sequences: int = 4, seed: int = 0, model_name: str = "") -> HeadProfile:
    """RazorAttention-style profile of a Hugging Face decoder: random tokens repeated twice.

    Runs ``n_sequences`` sequences of ``2 * period`` tokens with eager attention (to get attention maps)
    and restores the model's attention implementation afterwards.
    """
    config = model.config
    vocab = config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    previous = config._attn_implementation
    device = next(model.parameters()).device
    total = None
    try:
        model.set_attn_implementation("eager")
        with torch.inference_mode():
            for _ in range(n_sequences):
                # Skip the lowest ids (special tokens in most vocabularies).
                half = torch.randint(min(1000, vocab // 2), vocab, (1, period), generator=gen)
                ids = torch.cat([half, half], 1).to(device)
                out = model(input_ids=ids, output_attentions=True, use_cache=False)
                scores = repeated_sequence_scores(list(out.attentions), period, config.num_key_value_heads)
                total = scores if total is None else total + scores
    finally:
        model.set_attn_implementation(previous)
    return HeadProfile.from_scores(total / n_sequences, retrieval_fraction, model=model_name)


@dataclass
class HeadSplitKV:
    """One layer's keys (or values) split by head type, as the compressed cache returns them.

    ``full [B, Hr, S, D]``: retrieval KV heads ``full_heads``, every position ``0..length-1``;
    ``recent [B, Hs, W, D]``: streaming KV heads ``stream_heads`` at ``positions [W]`` (sink + window).
    A preallocated cache's are buffers: ``length`` is then a device tensor ``[1]``, ``full`` holds keys past
    it (stale) and ``positions`` marks empty slots with :data:`EMPTY_SLOT`, so attention masks both.
    """

    full: torch.Tensor
    recent: torch.Tensor
    full_heads: torch.Tensor
    stream_heads: torch.Tensor
    positions: torch.Tensor
    length: int | torch.Tensor


EMPTY_SLOT = torch.iinfo(torch.long).max  # a static cache's unwritten slot: later than any query position


class HeadCompressedLayer:
    """A ``transformers`` cache layer keeping full KV for retrieval heads, sink + window for the rest.

    Subclasses ``DynamicLayer`` at first use (imported lazily, see :func:`compressed_cache`). ``update``
    returns the plain new states on the first (prefill) call, so prefill attention is exact, and
    :class:`HeadSplitKV` pairs afterwards. The static layer (:func:`static_compressed_cache`) is one too.
    """

    is_croppable = False

    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        held = (self.keys, self.values, self.rec_keys, self.rec_values)
        return sum(t.numel() * t.element_size() for t in held)

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("a head-compressed KV cache cannot be reordered (no beam search)")


def _layer_class():
    from transformers.cache_utils import DynamicLayer

    class _HeadCompressedLayer(HeadCompressedLayer, DynamicLayer):  # the shared methods first
        def __init__(self, retrieval: list[bool], sink: int, window: int):
            super().__init__()
            self.full_heads = torch.tensor([h for h, r in enumerate(retrieval) if r], dtype=torch.long)
            self.stream_heads = torch.tensor([h for h, r in enumerate(retrieval) if not r], dtype=torch.long)
            self.sink, self.window, self.length = sink, window, 0

        def update(self, key_states, value_states, *args, **kwargs):
            first = not self.is_initialized
            dev = key_states.device
            fh, sh = self.full_heads.to(dev), self.stream_heads.to(dev)
            new_pos = torch.arange(self.length, self.length + key_states.shape[2], device=dev)
            if first:
                self.device, self.is_initialized = dev, True
                self.keys, self.values = key_states[:, fh], value_states[:, fh]
                self.rec_keys, self.rec_values, self.positions = (key_states[:, sh], value_states[:, sh],
                                                                  new_pos)
            else:
                self.keys = torch.cat([self.keys, key_states[:, fh]], 2)
                self.values = torch.cat([self.values, value_states[:, fh]], 2)
                self.rec_keys = torch.cat([self.rec_keys, key_states[:, sh]], 2)
                self.rec_values = torch.cat([self.rec_values, value_states[:, sh]], 2)
                self.positions = torch.cat([self.positions, new_pos])
            self.length += key_states.shape[2]
            if self.positions.numel() > self.sink + self.window:
                keep = torch.cat([torch.arange(self.sink, device=dev),
                                  torch.arange(self.positions.numel() - self.window, self.positions.numel(),
                                               device=dev)])
                self.rec_keys, self.rec_values = self.rec_keys[:, :, keep], self.rec_values[:, :, keep]
                self.positions = self.positions[keep]
            if first:
                return key_states, value_states
            split = (fh, sh, self.positions, self.length)
            return (HeadSplitKV(self.keys, self.rec_keys, *split),
                    HeadSplitKV(self.values, self.rec_values, *split))

        def get_seq_length(self) -> int:
            return self.length

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.length + query_length, 0

    return _HeadCompressedLayer


def _static_layer_class():
    from transformers.cache_utils import StaticLayer

    class _StaticHeadCompressedLayer(HeadCompressedLayer, StaticLayer):
        """Preallocated buffers: retrieval heads ``[B, Hr, capacity, D]``; streaming heads ``[B, Hs, sink +
        window, D]``, position ``p`` in slot ``p`` below ``sink + window`` and later in the ring slot ``sink +
        (p - sink) % window``, so the slots hold exactly what the growing layer keeps. ``cumulative_length``
        (a device tensor, as in ``StaticLayer``) is the next write position; ``update`` takes one token."""

        def __init__(self, retrieval: list[bool], sink: int, window: int, capacity: int):
            super().__init__(max_cache_len=capacity)
            self.retrieval, self.sink, self.window = retrieval, sink, window

        def lazy_initialization(self, key_states, value_states):
            raise ValueError("a static head-compressed cache starts from a prompt's cache (load_prompt)")

        def _allocate(self, prompt) -> None:
            """Buffers shaped after the prompt's compressed layer (batch, head dim, dtype, device)."""
            dev, (b, _, _, d) = prompt.keys.device, prompt.keys.shape
            flags = torch.tensor(self.retrieval, device=dev)
            self.full_heads, self.stream_heads = flags.nonzero().view(-1), (~flags).nonzero().view(-1)

            def buffers(heads, n):  # keys and values
                shape = (b, heads.numel(), n, d)
                return (torch.zeros(shape, dtype=prompt.keys.dtype, device=dev) for _ in "kv")

            self.keys, self.values = buffers(self.full_heads, self.max_cache_len)
            self.rec_keys, self.rec_values = buffers(self.stream_heads, self.sink + self.window)
            self.positions = torch.full((self.sink + self.window,), EMPTY_SLOT, dtype=torch.long, device=dev)
            self.cumulative_length = self.cumulative_length.to(dev)
            self.device, self.is_initialized = dev, True

        def _write_recent(self, pos, keys, values) -> None:
            slots = torch.where(pos < self.sink, pos, self.sink + (pos - self.sink).remainder(self.window))
            self.rec_keys.index_copy_(2, slots, keys)
            self.rec_values.index_copy_(2, slots, values)
            self.positions.index_copy_(0, slots, pos)

        def load_prompt(self, prompt) -> None:
            """Take a prefilled growing layer's keys and values (the hand-over from prefill to decode)."""
            if prompt.length > self.max_cache_len:
                raise ValueError(f"a prompt of {prompt.length} tokens exceeds capacity {self.max_cache_len}")
            if not self.is_initialized or self.keys.shape[0] != prompt.keys.shape[0] or (
                    self.keys.shape[3], self.keys.dtype, self.device) != (
                    prompt.keys.shape[3], prompt.keys.dtype, prompt.keys.device):
                self._allocate(prompt)
            self.keys[:, :, :prompt.length].copy_(prompt.keys)
            self.values[:, :, :prompt.length].copy_(prompt.values)
            self.positions.fill_(EMPTY_SLOT)
            self._write_recent(prompt.positions, prompt.rec_keys, prompt.rec_values)
            self.cumulative_length.fill_(prompt.length)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or key_states.shape[2] != 1:
                raise ValueError("a static head-compressed cache takes one token per step after load_prompt")
            pos = self.cumulative_length.view(1)
            self.keys.index_copy_(2, pos, key_states[:, self.full_heads])
            self.values.index_copy_(2, pos, value_states[:, self.full_heads])
            self._write_recent(pos, key_states[:, self.stream_heads], value_states[:, self.stream_heads])
            self.cumulative_length.add_(1)
            split = (self.full_heads, self.stream_heads, self.positions, self.cumulative_length.view(1))
            return (HeadSplitKV(self.keys, self.rec_keys, *split),
                    HeadSplitKV(self.values, self.rec_values, *split))

        def reset(self) -> None:
            super().reset()
            if self.is_initialized:
                self.positions.fill_(EMPTY_SLOT)

    return _StaticHeadCompressedLayer


def static_compressed_cache(profile: HeadProfile, capacity: int, *, sink: int = 64, window: int = 256):
    """A preallocated head-compressed ``transformers.Cache`` for ``capacity`` positions: fill it with
    ``layer.load_prompt(prefilled_layer)`` per layer of a :func:`compressed_cache` after prefill; each
    ``update`` then writes one token in place (no host reads, fixed shapes)."""
    from transformers.cache_utils import Cache

    if sink < 0 or window < 1:
        raise ValueError(f"need sink >= 0 and window >= 1, got sink={sink} window={window}")
    layer_cls = _static_layer_class()
    return Cache(layers=[layer_cls(flags, sink, window, capacity) for flags in profile.retrieval])


def compressed_cache(profile: HeadProfile, *, sink: int = 64, window: int = 256):
    """A ``transformers.Cache`` with one :class:`HeadCompressedLayer` per layer of ``profile``."""
    from transformers.cache_utils import Cache

    if sink < 0 or window < 1:
        raise ValueError(f"need sink >= 0 and window >= 1, got sink={sink} window={window}")
    layer_cls = _layer_class()
    return Cache(layers=[layer_cls(flags, sink, window) for flags in profile.retrieval])


def kv_cache_bytes(cache) -> int:
    """Bytes of key/value tensors a ``transformers`` cache holds (compressed layers count what they keep)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        if hasattr(layer, "nbytes"):
            total += layer.nbytes()
        elif getattr(layer, "keys", None) is not None and getattr(layer, "is_initialized", True):
            total += sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))
    return total


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _masked_attention(q, k, v, q_pos, k_pos, scale):
    """Dense attention of ``q [B, H, Sq, D]`` on ``k, v [B, Hkv, W, D]`` where key position
    <= query position."""
    group = q.shape[1] // max(k.shape[1], 1)
    # expand + reshape, not repeat_interleave: no host sync, so a static decode step can be graph-captured
    k, v = (x[:, :, None].expand(-1, -1, group, -1, -1).flatten(1, 2) for x in (k, v))
    mask = k_pos[None, :] <= q_pos[:, None]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def head_split_attention(q: torch.Tensor, keys: HeadSplitKV, values: HeadSplitKV, *,
                         scale: float | None = None,
                         full_attention: AttentionFn | None = None) -> torch.Tensor:
    """Attention of ``q [B, Hq, Sq, D]`` (the newest ``Sq`` positions) on a head-split cache.

    Retrieval heads go through ``full_attention(q_r, k_r, v_r)`` (default: causal SDPA aligned bottom-right,
    e.g. a decode kernel can be passed); streaming heads attend to their sink + window keys. Over a static
    cache (``keys.length`` a device tensor) nothing is read on the host. Returns ``[B, Hq, Sq, D]``.
    """
    _b, hq, sq, d = q.shape
    n_kv = keys.full_heads.numel() + keys.stream_heads.numel()
    group = hq // n_kv
    scale = scale if scale is not None else 1.0 / math.sqrt(d)
    out = torch.empty_like(q)
    q_pos = torch.arange(sq, device=q.device) + (keys.length - sq)  # length: an int or a device tensor
    offs = torch.arange(group, device=q.device)
    if keys.full_heads.numel():
        rows = (keys.full_heads.to(q.device)[:, None] * group + offs).flatten()
        if full_attention is None:
            k_pos = torch.arange(keys.full.shape[2], device=q.device)
            part = _masked_attention(q[:, rows], keys.full, values.full, q_pos, k_pos, scale)
        else:
            part = full_attention(q[:, rows], keys.full, values.full)
        out.index_copy_(1, rows, part)
    if keys.stream_heads.numel():
        rows = (keys.stream_heads.to(q.device)[:, None] * group + offs).flatten()
        out.index_copy_(1, rows, _masked_attention(q[:, rows], keys.recent, values.recent, q_pos,
                                                   keys.positions, scale))
    return out
