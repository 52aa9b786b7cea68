"""Greedy generation as free functions over a Hugging Face causal LM: prefill, decode step, generate.

A manual loop instead of ``model.generate`` because the reader needs three things at once: tokens as
they are produced (streaming without a helper thread), each token's log-probability (the LM's
confidence, a routing feature) and the prefill and decode times separately (reader latency per stage).
The KV cache is whatever ``transformers`` returns (``DynamicCache``), so an attention backend
installed on the model (``sparsa.kernels`` block-sparse prefill) is used unchanged.

:func:`generate_greedy_batch` runs several prompts at once (left-padded, with an attention mask and
explicit positions, so each row sees exactly its own prompt): many short answers on a GPU cost about
as many decode steps as one. Rows that stop early keep running with their output ignored.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sparsa.batching import pad_left


@dataclass(slots=True)
class GenerationStats:
    """Filled while :func:`generate_greedy` runs; complete once the iterator is exhausted."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    logprobs: list[float] = field(default_factory=list)

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability of the generated tokens (0.0 when none were generated)."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


def prefill(model: Any, input_ids: Any) -> tuple[Any, Any]:
    """Run the prompt ``int64[1, L]`` once; returns (last-position logits ``[1, V]``, KV cache)."""
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], _returned_cache(out)


def decode_step(model: Any, token: Any, cache: Any) -> tuple[Any, Any]:
    """One token ``int64[1, 1]`` through the cached model; returns (logits ``[1, V]``, cache)."""
    out = model(input_ids=token, use_cache=True, **{_cache_argument(model): cache})
    return out.logits[:, -1], _returned_cache(out)


@functools.cache
def _cache_argument_of(cls: type) -> str:
    # transformers 5.2x renamed ``past_key_values`` to ``cache``; the GPU machine runs 5.17.
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    return output["cache"] if "cache" in output else output["past_key_values"]


def _cache_argument(model: Any) -> str:
    return _cache_argument_of(type(model))


def generate_greedy(model: Any, prompt_ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int],
                    stats: GenerationStats | None = None) -> Iterator[int]:
    """Yield greedily decoded token ids until a stop id (not yielded) or ``max_new_tokens``."""
    import torch

    from sparsa.deadline import check_deadline

    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt_ids)
    device = next(model.parameters()).device
    stop = set(stop_ids)
    with torch.inference_mode():
        started = time.perf_counter()
        logits, cache = prefill(model, torch.tensor([list(prompt_ids)], device=device))
        token_id, logprob = _pick(logits)
        stats.prefill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for step in range(max_new_tokens):
            if token_id in stop:
                break
            stats.new_tokens += 1
            stats.logprobs.append(logprob)
            yield token_id
            if step + 1 == max_new_tokens:
                break
            check_deadline()  # a caller's deadline (the service's) stops the decoding between steps
            logits, cache = decode_step(model, torch.tensor([[token_id]], device=device), cache)
            token_id, logprob = _pick(logits)
        stats.decode_seconds = time.perf_counter() - started


def generate_greedy_batch(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                          stop_ids: Sequence[int], pad_id: int) -> list[tuple[list[int], GenerationStats]]:
    """Greedy tokens of each prompt (stop id excluded) with its stats; one forward pass per step for all.

    Each row's stats hold its own tokens and log-probs; ``prefill_seconds`` / ``decode_seconds`` are
    the whole batch's (shared by its rows)."""
    import torch

    if not prompts or min(len(p) for p in prompts) < 1:
        raise ValueError("generate_greedy_batch needs at least one non-empty prompt")
    device = next(model.parameters()).device
    ids, mask, positions = (torch.from_numpy(a).to(device) for a in pad_left(prompts, pad_id))
    stats = [GenerationStats(prompt_tokens=len(p)) for p in prompts]
    tokens: list[list[int]] = [[] for _ in prompts]
    stop = set(stop_ids)
    with torch.inference_mode():
        started = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
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
            mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
            positions = positions + 1
            out = model(input_ids=picked[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                        **{_cache_argument(model): _returned_cache(out)})
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
    if not bool(torch.isfinite(best).all()):  # e.g. an attention backend that turns fully padded rows into NaN
        raise FloatingPointError("non-finite logits in a padded batch: generate one prompt at a time instead")
    return token, best


def _pick(logits: Any) -> tuple[int, float]:
    logprobs = logits[0].float().log_softmax(-1)
    token = int(logprobs.argmax())
    return token, float(logprobs[token])
