"""Greedy generation as free functions over a Hugging Face causal LM: prefill, decode step, generate.

A manual loop instead of ``model.generate`` because the reader needs three things at once: tokens as
they are produced (streaming without a helper thread), each token's log-probability (the LM's
confidence, a routing feature) and the prefill and decode times separately (reader latency per stage).
The prompt's KV cache is whatever ``transformers`` returns (``DynamicCache``), so an attention backend
installed on the model (``sparsa.kernels`` block-sparse prefill) is used unchanged.

Decoding then either grows that cache token by token (eager: a Python forward per step), or, with
``cuda_graph`` (by default on CUDA when the model runs ``sparsa.kernels``' attention), copies it into a
preallocated ``StaticCache`` (with ``kv="duo"``, a preallocated head-compressed cache:
``kernels/kv_compression.static_compressed_cache``) and replays each step as one CUDA graph
(:class:`_StaticDecoder`): the step's inputs, position, mask and greedy pick live in fixed device buffers and
the attention reads the length from the device (``kernels/hf_decode.py``), so a step costs one replay and one
read of the picked token.

:func:`generate_greedy_batch` runs several prompts at once (left-padded, with an attention mask and
explicit positions, so each row sees exactly its own prompt): many short answers on a GPU cost about
as many decode steps as one. Rows that stop early keep running with their output ignored.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sparsa.batching import pad_left
from sparsa.sdpa_backends import without_cudnn
from sparsa.transformers_compat import cache_argument, returned_cache


@dataclass(slots=True)
class GenerationStats:
    """Filled while :func:`generate_greedy` runs; complete once the iterator is exhausted."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    logprobs: list[float] = field(default_factory=list)
    decode_mode: str = "eager"  # "eager" (growing cache), "static" (preallocated, run eagerly) or "graph"
    capture_seconds: float = 0.0  # CUDA graph capture (first use only), inside decode_seconds

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability of the generated tokens (0.0 when none were generated)."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


def prefill(model: Any, input_ids: Any) -> tuple[Any, Any]:
    """Run the prompt ``int64[1, L]`` once; returns (last-position logits ``[1, V]``, KV cache)."""
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], returned_cache(out)


def decode_step(model: Any, token: Any, cache: Any) -> tuple[Any, Any]:
    """One token ``int64[1, 1]`` through the cached model; returns (logits ``[1, V]``, cache)."""
    with without_cudnn(token.device):  # a new key length every step: cuDNN would plan each one
        out = model(input_ids=token, use_cache=True, **{cache_argument(model): cache})
    return out.logits[:, -1], returned_cache(out)


def generate_greedy(model: Any, prompt_ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int],
                    stats: GenerationStats | None = None, *, cuda_graph: bool | None = None) -> Iterator[int]:
    """Yield greedily decoded token ids until a stop id (not yielded) or ``max_new_tokens``.

    ``cuda_graph``: decode from a preallocated cache, each step replayed as one CUDA graph. None (default): on
    CUDA when the model runs ``sparsa.kernels``' attention (any ``kv``); True: always (raises where the model
    cannot; off CUDA the same static steps run eagerly); False: the growing-cache loop."""
    import torch

    from sparsa.deadline import check_deadline

    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt_ids)
    device = next(model.parameters()).device
    stop = set(stop_ids)
    with torch.inference_mode():
        decoder = _StaticDecoder.for_model(model, len(prompt_ids) + max_new_tokens, device, cuda_graph)
        started = time.perf_counter()
        check_deadline()  # a request already past its deadline (e.g. after routing) never starts its prefill
        logits, cache = prefill(model, torch.tensor([list(prompt_ids)], device=device))
        token_id, logprob = _pick(logits)
        stats.prefill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        if decoder is not None:
            decoder.start(cache, len(prompt_ids), token_id)
            cache = None  # the static cache holds the prompt now
            stats.decode_mode = "graph" if decoder.capture else "static"
        try:
            for step in range(max_new_tokens):
                if token_id in stop:
                    break
                stats.new_tokens += 1
                stats.logprobs.append(logprob)
                yield token_id
                if step + 1 == max_new_tokens:
                    break
                check_deadline()  # a caller's deadline (the service's) stops the decoding between steps
                if decoder is not None:
                    token_id, logprob = decoder.step(stats)
                else:
                    logits, cache = decode_step(model, torch.tensor([[token_id]], device=device), cache)
                    token_id, logprob = _pick(logits)
        finally:
            if decoder is not None:
                decoder.finish()
        stats.decode_seconds = time.perf_counter() - started


class _StaticDecoder:
    """Greedy decode steps of one model from a preallocated KV cache (transformers' ``StaticCache``, or with
    ``kv="duo"`` a static head-compressed one that takes the prefilled compressed cache as it is).

    Each step reads its token, position and mask from fixed device buffers and writes the next token, its
    log-probability and the next position back into them, so on CUDA its work is captured once as a CUDA graph
    and replayed; the host reads only the picked token. Where the attention keeps Quest page bounds, a
    generation's first step rebuilds them from the new prompt and every later step updates the newest page:
    two graphs, each captured the first time its kind of step runs; otherwise one graph serves every step.
    One decoder (and its buffers) stays on the model for the next generation that fits its capacity."""

    def __init__(self, model: Any, capacity: int, device: Any, capture: bool):
        import torch
        from transformers import StaticCache

        self.model, self.capacity, self.capture = model, capacity, capture
        self.attn_implementation = model.config._attn_implementation
        self.shared = getattr(model, "_sparsa_shared", None)  # the attention settings it was captured with
        config = self.shared["config"] if self.shared is not None else None
        self.duo = config is not None and config.kv == "duo"
        if self.duo:
            from sparsa.kernels.kv_compression import static_compressed_cache

            self.cache = static_compressed_cache(config.profile, capacity, sink=config.sink,
                                                 window=config.window)
        else:
            self.cache = StaticCache(config=model.config, max_cache_len=capacity)
        zeros = functools.partial(torch.zeros, device=device)
        self.token = zeros(1, 1, dtype=torch.long)
        self.position = zeros(1, 1, dtype=torch.long)  # of the token being decoded
        self.length = zeros(1, dtype=torch.long)  # keys in the cache once it is written: position + 1
        self.mask = zeros(1, 1, 1, capacity, dtype=torch.bool)  # for attention backends without ``length``
        self.picked = zeros(2, dtype=torch.float64)  # next token id, its log-probability
        self.attention = None
        if self.shared is not None:
            from sparsa.kernels.hf_decode import StaticDecode

            self.attention = StaticDecode(self.shared, self.length)
        self.graphs: dict[bool, Any] = {}  # first step of a generation (rebuilds the page bounds)? -> graph
        self.fresh = True
        self.prompt_tokens = self.steps = 0

    @property
    def rebuilds(self) -> bool:
        """Whether a generation's first step differs from the later ones (it rebuilds Quest's page bounds),
        so gets a graph of its own. Read from the attention settings: they are fixed for this decoder's life
        (``for_model`` reuses it only with the same ``shared``, whose frozen config is never replaced)."""
        return self.attention is not None and self.attention.rebuilds

    @staticmethod
    def for_model(model: Any, needed: int, device: Any, cuda_graph: bool | None) -> _StaticDecoder | None:
        """The model's decoder for ``needed`` tokens (reused if it fits without much slack), or None where the
        growing-cache loop runs instead (``cuda_graph`` False, or None and not on CUDA with our attention)."""
        shared = getattr(model, "_sparsa_shared", None)
        why = _static_unsupported(model, shared) if cuda_graph is not False else None
        if cuda_graph is None:
            cuda_graph = device.type == "cuda" and shared is not None and not why
        if not cuda_graph:
            return None
        if why:
            raise ValueError(f"cuda_graph=True: {why}; pass cuda_graph=False")
        capture = _capture_on(device)
        cached = getattr(model, "_sparsa_static_decoder", None)
        # Our attention reads only the keys up to the length, so a larger cache costs nothing per step and is
        # kept (no new cache or graph when a shorter prompt comes); a masked backend reads the whole buffer.
        slack = None if shared is not None else max(1024, needed // 8)
        if (cached is not None and cached.shared is shared and cached.capture == capture
                and cached.attn_implementation == model.config._attn_implementation
                and needed <= cached.capacity and (slack is None or cached.capacity <= needed + slack)):
            return cached
        model._sparsa_static_decoder = None  # frees the old buffers and graph before allocating new ones
        decoder = _StaticDecoder(model, -(-needed // 256) * 256, device, capture)
        model._sparsa_static_decoder = decoder
        return decoder

    def start(self, prompt_cache: Any, prompt_tokens: int, token_id: int) -> None:
        """Take the prompt's keys and values and its first generated token."""
        self.cache.reset()
        for idx, layer in enumerate(prompt_cache.layers):
            if self.duo:  # the streaming heads' sink + window as prefill left them, into their slots
                self.cache.layers[idx].load_prompt(layer)
            else:
                self.cache.update(layer.keys, layer.values, idx)
        self.position.fill_(prompt_tokens)
        self.mask.zero_()
        self.mask[..., :prompt_tokens] = True
        self.token.fill_(token_id)
        if self.attention is not None:
            self.attention.new_sequence()
        self.fresh = True
        self.prompt_tokens, self.steps = prompt_tokens, 0

    def _step(self) -> None:
        """One decode step on the device: no host reads, fixed shapes (what the CUDA graph holds)."""
        import torch

        position = self.position.view(1)
        self.mask.index_fill_(3, position, True)
        torch.add(position, 1, out=self.length)
        out = self.model(input_ids=self.token, position_ids=self.position, attention_mask=self.mask,
                         use_cache=True, **{cache_argument(self.model): self.cache})
        logprobs = out.logits[0, -1].float().log_softmax(-1)
        token = logprobs.argmax().view(1)
        self.token.copy_(token.view(1, 1))
        self.picked.copy_(torch.cat([token.double(), logprobs.gather(0, token).double()]))
        self.position.add_(1)

    def step(self, stats: GenerationStats) -> tuple[int, float]:
        """Decode the next token: (token id, log-probability)."""
        bound = self.attention.bound() if self.attention is not None else contextlib.nullcontext()
        with bound:
            kind = self.fresh and self.rebuilds
            if not self.capture:
                self._step()
            elif kind not in self.graphs:
                self._warm_up_and_capture(stats, kind)
            else:
                self.graphs[kind].replay()
        self.fresh = False
        self.steps += 1
        token_id, logprob = self.picked.tolist()
        return int(token_id), logprob

    def _warm_up_and_capture(self, stats: GenerationStats, rebuild: bool) -> None:
        """Run this step eagerly on a side stream (as torch.cuda.graph asks: every kernel of the steady-state
        step compiled and loaded first), then record the same step, which leaves the state untouched.
        ``rebuild``: a first step, whose recording must rebuild the page bounds as its eager run did."""
        import torch

        started = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream().wait_stream(side)
        if rebuild:
            self.attention.new_sequence()  # the eager run marked the bounds rebuilt; record the rebuild again
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self.graphs[rebuild] = graph
        stats.capture_seconds += time.perf_counter() - started

    def finish(self) -> None:
        """Add the attention statistics of the steps that ran (one per length) to the model's."""
        if self.attention is not None:
            first = self.prompt_tokens + 1
            self.attention.finish(range(first, first + self.steps))
            self.steps = 0


def _static_unsupported(model: Any, shared: dict | None) -> str | None:
    """Why the model cannot decode from a preallocated cache, or None."""
    if shared is None and model.config._attn_implementation != "sdpa":
        return f"attention {model.config._attn_implementation!r} may not take a static cache's bool mask"
    layer_types = getattr(model.config, "layer_types", None) or ["full_attention"]
    if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
        return "sliding-window attention"
    if set(layer_types) != {"full_attention"}:
        return f"layer types {sorted(set(layer_types))}"
    return None


def _capture_on(device: Any) -> bool:
    return device.type == "cuda"


def release_decode_graph(model: Any) -> None:
    """Free the preallocated cache and CUDA graph that :func:`generate_greedy` keeps on ``model``."""
    model._sparsa_static_decoder = None


def generate_greedy_batch(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                          stop_ids: Sequence[int], pad_id: int) -> list[tuple[list[int], GenerationStats]]:
    """Greedy tokens of each prompt (stop id excluded) with its stats; one forward pass per step for all.

    Each row's stats hold its own tokens and log-probs; ``prefill_seconds`` / ``decode_seconds`` are
    the whole batch's (shared by its rows)."""
    import torch

    from sparsa.deadline import check_deadline

    if not prompts or min(len(p) for p in prompts) < 1:
        raise ValueError("generate_greedy_batch needs at least one non-empty prompt")
    device = next(model.parameters()).device
    ids, mask, positions = (torch.from_numpy(a).to(device) for a in pad_left(prompts, pad_id))
    stats = [GenerationStats(prompt_tokens=len(p)) for p in prompts]
    tokens: list[list[int]] = [[] for _ in prompts]
    stop = set(stop_ids)
    # a new batch shape, then a new key length every step: cuDNN would plan each one
    with torch.inference_mode(), without_cudnn(device):
        started = time.perf_counter()
        check_deadline()  # as generate_greedy: no prefill past the caller's deadline, no step either
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1)
        picked, logprobs = _pick_rows(out.logits[:, -1])
        prefill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        running = [True] * len(prompts)
        positions = positions[:, -1:]
        for step in range(max_new_tokens):
            for row, (token, logprob) in enumerate(zip(picked.tolist(), logprobs.tolist(), strict=True)):
                if running[row] and token in stop:
                    running[row] = False
                elif running[row]:
                    tokens[row].append(token)
                    stats[row].logprobs.append(logprob)
            if not any(running) or step + 1 == max_new_tokens:
                break
            check_deadline()
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
            positions = positions + 1
            out = model(input_ids=picked[:, None], attention_mask=mask, position_ids=positions,
                        use_cache=True, **{cache_argument(model): returned_cache(out)})
            picked, logprobs = _pick_rows(out.logits[:, -1])
        decode_seconds = time.perf_counter() - started
    for row_stats, row_tokens in zip(stats, tokens, strict=True):
        row_stats.new_tokens = len(row_tokens)
        row_stats.prefill_seconds, row_stats.decode_seconds = prefill_seconds, decode_seconds
    return list(zip(tokens, stats, strict=True))


def _pick_rows(logits: Any) -> tuple[Any, Any]:
    """Greedy token and its log-probability per row of ``logits [B, V]``."""
    import torch

    logprobs = logits.float().log_softmax(-1)
    best, token = logprobs.max(-1)
    # e.g. an attention backend that turns fully padded rows into NaN
    if not bool(torch.isfinite(best).all()):
        raise FloatingPointError("non-finite logits in a padded batch: generate one prompt at a time instead")
    return token, best


def _pick(logits: Any) -> tuple[int, float]:
    logprobs = logits[0].float().log_softmax(-1)
    token = int(logprobs.argmax())
    return token, float(logprobs[token])
