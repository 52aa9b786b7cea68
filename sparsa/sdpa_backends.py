"""Torch's SDPA (what transformers' ``"sdpa"`` attention calls) without its cuDNN backend, where a model
sees a new shape on every call: encoder and reranker batches, growing-cache decode steps, training steps.

cuDNN builds an execution plan for every new input shape and keeps it for that shape: tens of ms on the host
each time (``bench/results/gate.json``: 46-74 ms for the first call at an unseen length on an H100, against
0.1-7 ms for flash or memory-efficient SDPA). Encoding batches have a new (batch, length) shape almost every
time, so the SPLADE index job spent 1.8 s of a 2.4 s profiled stretch (20,000 passages) building plans while
the GPU was busy 12% of it (``indexing_gpu.json``, ``parts.profile``), and transformers' SDPA attention
decoded at 72 ms per token at 2,048 tokens without a static cache (``decode.json``). Without cuDNN, torch
picks flash or memory-efficient attention (the latter takes the padding mask), whose per-shape cost is a
kernel launch.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any


def without_cudnn(device: Any) -> AbstractContextManager:
    """A context in which SDPA on ``device`` (a ``torch.device`` or its name: "cuda", "cuda:1") may pick any
    backend but cuDNN; on other devices nothing changes."""
    if str(getattr(device, "type", device)).split(":")[0] != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


SDPA_SETTINGS = ("default", "no-cudnn")  # how the benches name a baseline's SDPA setting in their rows


def sdpa_setting(name: str, device: Any) -> AbstractContextManager:
    """The context for one of :data:`SDPA_SETTINGS`: torch's own backend choice, or :func:`without_cudnn`."""
    if name not in SDPA_SETTINGS:
        raise ValueError(f"SDPA setting {name!r}: expected one of {', '.join(SDPA_SETTINGS)}")
    return nullcontext() if name == "default" else without_cudnn(device)
