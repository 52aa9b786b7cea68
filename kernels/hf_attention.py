"""Run a Hugging Face decoder (Llama/Qwen/Mistral family) with the sparse attention kernels.

Stable entry point (``rag/reader.py`` calls it)::

    use_sparse_attention(model, prefill="block-sparse" | "dense", decode="full" | "sparse",
                         kv="full" | "duo", **cfg) -> SparseAttentionConfig
    remove_sparse_attention(model)              # back to the model's own attention
    install_sparse_attention(model)             # = use_sparse_attention(model) with the defaults

``cfg`` (all optional, see :class:`SparseAttentionConfig`): ``block_size`` (64), one block rule:
``gate_coverage`` (default 0.95: per query block, the best KV blocks until they hold 95% of the gate's
probability), ``gate_topk`` or ``gate_threshold``; ``gate_keys`` ("pooled": SeerAttention's pooled keys;
"tokens": the pooled queries' attention mass over every key, per block), ``min_sparse_tokens`` (12,288:
shorter prompts use dense prefill, where SDPA is faster); ``selector`` ("quest" | "tidal"), ``budget_tokens``
(2048), ``page_size`` (64),
``dense_layers`` (2: Quest leaves the first layers dense, as the paper does),
``tidal_layers`` (token-selection layers; default 2 and ``n_layers * 13 // 32``, as TidalDecode on
Llama-3-8B, earlier layers attend fully); ``profile`` (a :class:`HeadProfile` or JSON path; default:
profiled once and saved under ``$SPARSA_HOME/head_profiles/``), ``retrieval_fraction`` (0.25),
``sink`` (64), ``window`` (256); ``full_retrieval_heads`` (False: with True, the profile's retrieval heads
attend to every block and key, and the gate / decode selector applies to the other heads only).

How it hooks in, without editing model code: an ``attn_implementation`` named ``"sparsa"`` is
registered with ``transformers.AttentionInterface`` (with SDPA's mask function, so padded batches get a
mask and fall back to exact SDPA); per-layer settings ride on each attention module. Prefill (more than
one query token) runs SeerAttention's training-free gate + block-sparse attention, decode (one token)
runs full or Quest/TidalDecode sparse decode (``kernels/hf_decode.py``: over a growing cache, or over a
preallocated one whose steps can be captured in a CUDA graph), and ``kv="duo"`` adds a forward pre-hook that
gives every new generation a head-compressed cache (``kernels/kv_compression.py``), which works with
``generate()`` and with ``rag/generate.py``'s loops (its static one copies it into a preallocated
head-compressed cache after prefill). On CUDA with fp16/bf16 the Triton kernels run; otherwise the PyTorch
references (``kernels/attention_ops.py``), so the same settings can be evaluated on a CPU.
``model.sparse_attention_stats`` counts the attention actually computed (kept blocks, keys read).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from sparsa.transformers_compat import cache_argument

from . import attention_ops as ops
from .block_gating import GATE_KEYS
from .gate_select import visible_block_count
from .hf_decode import LayerState, decode, new_stats
from .kv_compression import (
    HeadProfile,
    HeadSplitKV,
    compressed_cache,
    head_split_attention,
    profile_retrieval_heads,
)
from .modes import (
    DECODE_MODES,
    DENSE_KERNEL,
    DENSE_KERNELS,
    KV_MODES,
    MIN_SPARSE_TOKENS,
    PREFILL_MODES,
    SELECTORS,
)

__all__ = ["SparseAttentionConfig", "install_sparse_attention", "remove_sparse_attention",
           "use_sparse_attention"]

logger = logging.getLogger(__name__)
ATTN_NAME = "sparsa"
DEFAULT_GATE_COVERAGE = 0.95


@dataclass(frozen=True)
class SparseAttentionConfig:
    prefill: str = "block-sparse"
    decode: str = "full"
    kv: str = "full"
    block_size: int = 64
    # At most one block rule; none given = coverage 0.95: on 30 dev needles SmolLM2 kept 0.92 of full accuracy
    # with it (0.84 with 0.9), and 1.04 with the retrieval heads exempt as well (longcontext_accuracy.json).
    gate_topk: int | None = None
    gate_threshold: float | None = None
    gate_coverage: float | None = None  # top-p over the gate's block probabilities
    gate_keys: str = "pooled"  # "pooled": SeerAttention's pooled keys; "tokens": every key, per block
    min_sparse_tokens: int = MIN_SPARSE_TOKENS  # shorter prompts prefill densely (kernels/modes.py)
    dense_kernel: str = DENSE_KERNEL  # what a dense prefill runs: "triton" (ours) or "sdpa" (torch's choice)
    selector: str = "quest"
    budget_tokens: int = 2048
    # Quest pages of 64 keys: on dev needles as accurate as pages of 16 (SmolLM2, 1,024-token budget), and on
    # the H200 at 128k / 4k tokens 5.3x full decode against 3.1x in a CUDA-graphed layer stack, as there are
    # 4x fewer bounds to score and rank (longcontext_accuracy.json quest_page_size_choice; an earlier kernels
    # record, in git history). Eager, as generate() runs it, the step is slower than full decode
    # (bench/results/kernels.json).
    page_size: int = 64
    tidal_layers: tuple[int, ...] | None = None
    dense_layers: int = 2  # Quest decode: layers below this attend fully (as in the Quest paper)
    retrieval_fraction: float = 0.25
    sink: int = 64
    window: int = 256
    # DuoAttention's head split applied to the sparse rules: the profile's retrieval heads attend to every
    # block / key; the gate or the decode selector applies to the other heads only.
    full_retrieval_heads: bool = False
    profile: HeadProfile | None = field(default=None, repr=False)

    def validate(self) -> SparseAttentionConfig:
        """Check the settings; returns them with the default block rule filled in when none was given."""
        from sparsa.errors import ConfigError

        for name, value, allowed in (("prefill", self.prefill, PREFILL_MODES),
                                     ("decode", self.decode, DECODE_MODES),
                                     ("kv", self.kv, KV_MODES), ("selector", self.selector, SELECTORS),
                                     ("dense_kernel", self.dense_kernel, DENSE_KERNELS)):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
        if self.block_size not in (16, 32, 64, 128):
            raise ConfigError(f"block_size must be 16, 32, 64 or 128, got {self.block_size}")
        if self.gate_keys not in GATE_KEYS:
            raise ConfigError(f"gate_keys={self.gate_keys!r}: choose one of {', '.join(GATE_KEYS)}")
        rules = sum(x is not None for x in (self.gate_topk, self.gate_threshold, self.gate_coverage))
        if rules > 1:
            raise ConfigError("give at most one of gate_topk, gate_threshold and gate_coverage")
        if self.budget_tokens < 1 or self.page_size < 1 or self.sink < 0 or self.window < 1:
            raise ConfigError("budget_tokens, page_size and window must be >= 1 and sink >= 0")
        if self.decode == "sparse" and self.selector == "quest" and self.budget_tokens < 3 * self.page_size:
            raise ConfigError(f"budget_tokens={self.budget_tokens} holds fewer than 3 pages of "
                              f"{self.page_size}: the always-kept first and newest pages would fill it; "
                              "lower page_size or raise the budget")
        if not 0.0 <= self.retrieval_fraction <= 1.0:
            raise ConfigError(f"retrieval_fraction must be in [0, 1], got {self.retrieval_fraction}")
        return self if rules else replace(self, gate_coverage=DEFAULT_GATE_COVERAGE)

    def block_rule(self) -> tuple[str, float]:
        """The gate's rule and its value, e.g. ("coverage", 0.95) (validated settings have exactly one)."""
        for rule, value in (("coverage", self.gate_coverage), ("topk", self.gate_topk),
                            ("threshold", self.gate_threshold)):
            if value is not None:
                return rule, value
        return "coverage", DEFAULT_GATE_COVERAGE


def _tidal_layers(config: SparseAttentionConfig, n_layers: int) -> tuple[int, ...]:
    if config.tidal_layers is not None:
        return tuple(sorted(config.tidal_layers))
    return tuple(sorted({min(2, n_layers - 1), max(2, n_layers * 13 // 32)}))


def _prefill(state: LayerState, q, k, v, scale):
    cfg = state.config
    if cfg.prefill == "dense" or q.shape[2] < cfg.min_sparse_tokens:
        return ops.dense_prefill(q, k, v, scale, cfg.dense_kernel)
    rule, value = cfg.block_rule()
    kept = ops.gate_blocks(q, k, block_size=cfg.block_size, rule=rule, value=value, scale=scale,
                           keys=cfg.gate_keys, full_heads=state.full_head_mask(q.device))
    # The one host read of a sparse prefill layer: the kept count decides sparse vs dense and feeds the stats.
    n_kept = int(kept.counts.sum())
    n_visible = visible_block_count(q.shape[2], k.shape[2], cfg.block_size) * q.shape[0] * q.shape[1]
    stats = state.shared["stats"]
    stats["prefill_blocks_kept"] += n_kept
    stats["prefill_blocks_visible"] += n_visible
    return ops.block_sparse_prefill(q, k, v, kept, block_size=cfg.block_size, scale=scale,
                                    share=n_kept / n_visible, dense_kernel=cfg.dense_kernel)


def sparsa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """``AttentionInterface`` function: ``query [B, Hq, Sq, D]`` etc. -> (``[B, Sq, Hq, D]``, None)."""
    state: LayerState | None = getattr(module, "_sparsa_state", None)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if state is not None and query.shape[2] > 1:
        state.bounds = None  # a new prompt: the next decode step rebuilds Quest's page bounds from every page
    # A preallocated cache's step (kernels/hf_decode.StaticDecode): its mask hides only the buffer past the
    # length, which decode takes from the device.
    static = (state is not None and query.shape[2] == 1 and state.shared.get("static") is not None
              and not dropout)
    if isinstance(key, HeadSplitKV):
        if (not static and attention_mask is not None and attention_mask.dtype == torch.bool
                and not bool(attention_mask.all())):
            raise ValueError("kv='duo' supports unpadded inputs only (batch of one or equal lengths)")
        full = None
        if query.shape[2] == 1 and state is not None:
            def full(q, k, v):
                return decode(state, q, k, v, scale)
        out = head_split_attention(query, key, value, scale=scale, full_attention=full)
        return out.transpose(1, 2).contiguous(), None
    if static:
        return decode(state, query, key, value, scale).transpose(1, 2).contiguous(), None
    if state is None or attention_mask is not None or dropout:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[2] == 1:
        out = decode(state, query, key, value, scale)
    else:
        out = _prefill(state, query, key, value, scale)
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, sparsa_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


def _attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]


def _default_profile(model, config: SparseAttentionConfig) -> HeadProfile:
    """Load the model's saved head profile, or profile it once (RazorAttention echo/induction) and save it."""
    from sparsa.config import load_settings

    name = Path(str(getattr(model.config, "_name_or_path", "") or model.config.model_type)).name
    path = load_settings().home / "head_profiles" / f"{name}.json"
    if path.exists():
        profile = HeadProfile.load(path)
    else:
        logger.info("profiling retrieval heads of %s (saved to %s)", name, path)
        profile = profile_retrieval_heads(model, retrieval_fraction=config.retrieval_fraction,
                                          model_name=name)
        profile.save(path)
    return profile


def _check_profile(model, profile: HeadProfile) -> None:
    from sparsa.errors import ConfigError

    n_layers, n_kv = model.config.num_hidden_layers, model.config.num_key_value_heads
    if len(profile.retrieval) != n_layers or any(len(r) != n_kv for r in profile.retrieval):
        raise ConfigError(f"head profile of {profile.model!r} does not fit this model "
                          f"({n_layers} layers x {n_kv} kv heads)")


def use_sparse_attention(model, prefill: str = "block-sparse", decode: str = "full", kv: str = "full",
                         **cfg) -> SparseAttentionConfig:
    """Install the sparse kernels on ``model`` (in place); calling again replaces the settings."""
    from sparsa.errors import ConfigError

    known = set(SparseAttentionConfig.__dataclass_fields__)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"unknown sparse attention setting(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    if isinstance(cfg.get("profile"), (str, Path)):
        cfg["profile"] = HeadProfile.load(cfg["profile"])
    config = SparseAttentionConfig(prefill=prefill, decode=decode, kv=kv, **cfg).validate()
    modules = _attention_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has no attention modules with q_proj/layer_idx to patch")
    if kv == "duo" or config.full_retrieval_heads:
        profile = config.profile
        if profile is None:
            profile = _default_profile(model, config)
        if abs(profile.retrieval_fraction - config.retrieval_fraction) > 1e-6:
            profile = profile.with_fraction(config.retrieval_fraction)
        _check_profile(model, profile)
        config = replace(config, profile=profile)
    remove_sparse_attention(model)
    _register()
    shared = {"config": config, "stats": new_stats(),
              "tidal_layers": _tidal_layers(config, model.config.num_hidden_layers)}
    for module in modules:
        module._sparsa_state = LayerState(config, module.layer_idx, shared)
    model.sparse_attention_stats = shared["stats"]
    model._sparsa_shared = shared
    model._sparsa_previous_attn = model.config._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    if kv == "duo":
        model._sparsa_hook = model.register_forward_pre_hook(_cache_injector(model, config), with_kwargs=True)
    return config


def _cache_injector(model, config: SparseAttentionConfig):
    modern = cache_argument(model)

    def hook(module, args, kwargs):
        # Callers may use either name (transformers 5.2x renamed ``past_key_values`` to ``cache``).
        name = next((n for n in ("cache", "past_key_values") if kwargs.get(n) is not None), modern)
        current = kwargs.get(name)
        if not kwargs.get("use_cache", module.config.use_cache):
            return None
        # Compressed first: a static cache's length is a device tensor, and reading it would break a graph.
        if current is None or (not _is_compressed(current) and current.get_seq_length() == 0):
            kwargs[name] = compressed_cache(config.profile, sink=config.sink, window=config.window)
            return args, kwargs
        return None

    return hook


def _is_compressed(cache) -> bool:
    from .kv_compression import HeadCompressedLayer

    return any(isinstance(layer, HeadCompressedLayer) for layer in getattr(cache, "layers", []))


def remove_sparse_attention(model) -> None:
    """Undo :func:`use_sparse_attention` (no-op on a model without it)."""
    hook = getattr(model, "_sparsa_hook", None)
    if hook is not None:
        hook.remove()
        del model._sparsa_hook
    for module in _attention_modules(model):
        if hasattr(module, "_sparsa_state"):
            del module._sparsa_state
    if hasattr(model, "_sparsa_shared"):
        del model._sparsa_shared
    previous = getattr(model, "_sparsa_previous_attn", None)
    if previous is not None:
        model.set_attn_implementation(previous)
        del model._sparsa_previous_attn


def install_sparse_attention(model) -> SparseAttentionConfig:
    """The reader's hook: block-sparse prefill, full decode, full KV cache (all defaults)."""
    return use_sparse_attention(model)
