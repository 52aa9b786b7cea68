"""Differences between the transformers releases we run on (the CPU machines and the GPU machine differ)."""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def _cache_argument_of(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_argument(model: Any) -> str:
    """The keyword under which ``model``'s forward() (and generate()) takes a KV cache: transformers 5.2x
    renamed ``past_key_values`` to ``cache`` (the old name warns there), and 5.17, on the GPU machine, refuses
    ``cache``. Asked of the model's own signature."""
    return _cache_argument_of(type(model))


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass with ``use_cache=True`` returned, under either release's name."""
    return output["cache"] if "cache" in output else output["past_key_values"]
