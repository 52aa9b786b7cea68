"""The decode step (one query token) of the ``"sparsa"`` attention interface: full, Quest or TidalDecode.

:func:`decode` is what ``kernels/hf_attention.py`` runs for a one-token query, on either kind of cache:

* growing (transformers' ``DynamicCache``: ``model.generate()``, ``rag/generate.py``'s eager loop):
  ``k.shape[2]`` is the length, and Quest's page bounds (:class:`PageBounds`) take the new keys each step;
* preallocated (transformers' ``StaticCache``, while :class:`StaticDecode` is bound: ``rag/generate.py``'s
  graphed loop): ``k, v`` are buffers of fixed capacity whose valid length is a device tensor; the bounds
  live in fixed buffers (:class:`PageBoundsBuffer`) of which a step rewrites only the newest page, and
  nothing reads a device value on the host, so a step has fixed shapes and launches and can be captured in
  a CUDA graph.

Statistics (``model.sparse_attention_stats``) come from what the host knows without reading the device:
every selector keeps a fixed number of pages or tokens per KV head, so a step reads ``min(selected,
length)`` keys per sparse head and ``length`` per full one. Eager steps add them at once; a static decode
keeps each layer's rule and applies it to every step's length when the generation ends
(:meth:`StaticDecode.finish`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import attention_ops as ops
from .quest import PageBoundsBuffer
from .sparse_decode import PageBounds, quest_select, tidal_select

if TYPE_CHECKING:
    from .hf_attention import SparseAttentionConfig

# length -> (keys read, keys in the cache, key-sized vectors read to select) of one layer's decode step
Cost = Callable[[int], tuple[int, int, int]]


def new_stats() -> dict:
    # decode_selection_reads: key-sized vectors a selector reads to choose (Quest: a min and a max per page)
    return {"prefill_blocks_kept": 0, "prefill_blocks_visible": 0, "decode_keys_read": 0,
            "decode_keys_total": 0, "decode_selection_reads": 0}


@dataclass
class LayerState:
    config: SparseAttentionConfig
    layer_idx: int
    shared: dict  # one per model: settings, TidalDecode's selected tokens, statistics, a bound StaticDecode
    bounds: PageBounds | None = None
    full_heads: torch.Tensor | None = None  # bool [Hkv] on the device: heads exempt from the sparse rule

    def full_head_mask(self, device) -> torch.Tensor | None:
        """This layer's exempt KV heads (when ``full_retrieval_heads`` is on and it has any), else None."""
        cfg = self.config
        if not cfg.full_retrieval_heads or not any(cfg.profile.retrieval[self.layer_idx]):
            return None
        if self.full_heads is None or self.full_heads.device != device:
            self.full_heads = torch.tensor(cfg.profile.retrieval[self.layer_idx], device=device)
        return self.full_heads

    def n_exempt(self) -> int:
        cfg = self.config
        return sum(cfg.profile.retrieval[self.layer_idx]) if cfg.full_retrieval_heads else 0

    def exempts_all(self, n_heads: int) -> bool:
        """kv="duo" gives decode only the retrieval heads: with the exemption, all of them read all."""
        cfg = self.config
        return cfg.full_retrieval_heads and n_heads != len(cfg.profile.retrieval[self.layer_idx])


class StaticDecode:
    """Decode steps over a preallocated KV cache, bound to a model's sparse attention while a generation runs.

    ``length``: int64 device tensor (one entry), the valid keys including the step's own; the caller advances
    it inside its step (see ``rag/generate.py``). With ``kv="duo"`` the steps see only the retrieval heads'
    buffer (the streaming heads' sink + window are attended in ``kv_compression.head_split_attention``).
    Owns the layers' :class:`PageBoundsBuffer`, so a CUDA graph captured over the steps stays valid while this
    object lives. Call :meth:`new_sequence` when the cache holds a new prompt: each layer's next step rebuilds
    its bounds from every page (in a graph of its own, see ``rag/generate.py``)."""

    def __init__(self, shared: dict, length: torch.Tensor):
        self.shared, self.length = shared, length
        self.bounds: dict[int, PageBoundsBuffer] = {}
        self._rebuilt: set[int] = set()
        self._costs: dict[int, Cost] = {}

    @property
    def rebuilds(self) -> bool:
        """Whether a sequence's first step differs from the later ones (it rebuilds Quest's page bounds)."""
        return self.shared["config"].decode == "sparse"

    def new_sequence(self) -> None:
        self._rebuilt.clear()

    @contextmanager
    def bound(self) -> Iterator[StaticDecode]:
        """One-token queries run as static decode steps inside this block (prefill is unaffected)."""
        self.shared["static"] = self
        try:
            yield self
        finally:
            self.shared.pop("static", None)

    def page_bounds(self, layer_idx: int, k: torch.Tensor, page_size: int) -> PageBoundsBuffer:
        bounds = self.bounds.get(layer_idx)
        if bounds is None or bounds.kmax.shape[:3] != (*k.shape[:2], -(-k.shape[2] // page_size)):
            bounds = self.bounds[layer_idx] = PageBoundsBuffer.from_keys(k, self.length, page_size)
        elif layer_idx not in self._rebuilt:
            bounds.rebuild(k, self.length)
        else:
            bounds.update(k, self.length)
        self._rebuilt.add(layer_idx)
        return bounds

    def record(self, layer_idx: int, cost: Cost) -> None:
        self._costs[layer_idx] = cost

    def finish(self, lengths: Iterable[int]) -> None:
        """Add the statistics of the steps that ran, one per length in ``lengths``, to the model's."""
        stats = self.shared["stats"]
        for n in lengths:
            for cost in self._costs.values():
                read, total, selection = cost(n)
                stats["decode_keys_read"] += read
                stats["decode_keys_total"] += total
                stats["decode_selection_reads"] += selection


def _count(state: LayerState, static: StaticDecode | None, seqlen: int, cost: Cost) -> None:
    if static is not None:
        static.record(state.layer_idx, cost)
        return
    read, total, selection = cost(seqlen)
    stats = state.shared["stats"]
    stats["decode_keys_read"] += read
    stats["decode_keys_total"] += total
    stats["decode_selection_reads"] += selection


def decode(state: LayerState, q, k, v, scale):
    """One-token attention ``q [B, Hq, 1, D]`` over ``k, v [B, Hkv, S, D]`` under the layer's settings."""
    cfg = state.config
    static: StaticDecode | None = state.shared.get("static")
    length = None if static is None else static.length
    seqlen, hkv = k.shape[2], k.shape[1]  # static: the capacity

    def full():
        _count(state, static, seqlen, lambda n: (n * hkv, n * hkv, 0))
        return ops.decode(q, k, v, scale=scale, length=length)

    if cfg.decode == "full" or seqlen <= cfg.budget_tokens or state.exempts_all(hkv):
        return full()
    if cfg.selector == "quest":
        if state.layer_idx < cfg.dense_layers:
            return full()
        page = cfg.page_size
        if static is not None:
            bounds = static.page_bounds(state.layer_idx, k, page)
        elif state.bounds is None or state.bounds.length > seqlen or state.bounds.kmax.shape[1] != hkv:
            bounds = state.bounds = PageBounds.from_keys(k, page)
        else:
            bounds = state.bounds.update(k)
        indices, counts = quest_select(q, bounds, cfg.budget_tokens, length)
        return _sparse_decode(state, static, q, k, v, scale, indices, counts, page,
                              selection=lambda n: 2 * -(-n // page) * hkv)
    selection_layers = state.shared["tidal_layers"]
    if state.layer_idx < selection_layers[0] or state.layer_idx in selection_layers:
        if state.layer_idx in selection_layers:
            state.shared["tidal"] = tidal_select(q, k, cfg.budget_tokens, sm_scale=scale, length=length)
        return full()
    indices, counts = state.shared["tidal"]
    return _sparse_decode(state, static, q, k, v, scale, indices, counts, 1)


def _sparse_decode(state: LayerState, static: StaticDecode | None, q, k, v, scale, indices, counts,
                   page_size: int, selection: Callable[[int], int] = lambda n: 0):
    """Decode over the selected pages; with ``full_retrieval_heads`` the layer's retrieval heads read all."""
    b, hkv, seqlen = k.shape[:3]
    selected = indices.shape[-1] * page_size  # keys listed per sparse head (the newest page may be partial)
    full = state.full_head_mask(q.device)
    n_exempt = 0
    if full is not None:
        n_units = -(-seqlen // page_size)
        everything = torch.arange(n_units, device=q.device, dtype=indices.dtype).expand(b, hkv, n_units)
        picked = torch.nn.functional.pad(indices, (0, n_units - indices.shape[-1])).expand(b, hkv, n_units)
        indices = torch.where(full[None, :, None], everything, picked)
        counts = torch.where(full[None, :], n_units, counts.expand(b, hkv)).to(torch.int32)
        n_exempt = state.n_exempt()
    _count(state, static, seqlen,
           lambda n: (n_exempt * n + (hkv - n_exempt) * min(selected, n), n * hkv, selection(n)))
    length = None if static is None else static.length
    return ops.decode(q, k, v, scale=scale, indices=indices, counts=counts, page_size=page_size,
                      length=length)
