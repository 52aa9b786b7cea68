"""SPLADE encoders over masked LMs and decoder-only causal LMs (Mistral-SPLADE style).

A text becomes ``max_t log(1 + relu(logits[t, v]))`` over its tokens ``t`` for every vocabulary term
``v`` (SPLADE v2, Formal et al. 2021), returned as a :class:`~sparsa.types.SparseVector`.

- Masked LMs (any ``*ForMaskedLM``, default ``splade-tiny``): the MLM head's logits.
- Causal LMs (any ``*ForCausalLM``, default backbone ``smollm2-135m-instruct``): the LM head's
  logits, as in Mistral-SPLADE (Doshi et al. 2024). A causal token sees only its left context, so
  with ``echo=True`` the input is the text twice (``[bos] x x``) and only the second copy is
  pooled: each of its tokens has seen the whole text (echo embeddings, Springer et al. 2024).

The model's output projection (``get_output_embeddings()``, an ``nn.Linear``) is replaced by an
identity at load time, so the model returns the hidden states that feed it, and
:mod:`sparsa.retrieval.splade_pooling` projects and pools them without materialising the
``[batch, length, vocab]`` logits (Triton on CUDA, chunked or bf16-screened torch on CPU). Heads
that post-process logits (e.g. Gemma-2 soft-capping) are not supported.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from sparsa.batching import TokenIds, length_sorted_batches, map_batches, pad_right
from sparsa.config import resolve_device
from sparsa.errors import ConfigError
from sparsa.models import resolve_model
from sparsa.progress import progress_bar
from sparsa.sdpa_backends import without_cudnn
from sparsa.sparse_rows import SparseRows
from sparsa.types import SparseVector

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Architecture = Literal["auto", "masked-lm", "causal-lm"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
# Padded tokens per batch. On the GPU the job is host-bound (launches, syncs per batch): 131072 tokens fill
# the 512-text chunks (token_batches.CHUNK_SIZES); on one H100 host it ran 30,826 docs/s against 18,494 at
# 65536 (0332378), on another 13,655 timed first against 15,490-18,255 (indexing_gpu.json: order and host
# dominate; no interleaved A/B yet).
_TOKENS_PER_BATCH = {"cpu": 8192, "cuda": 131072}


@dataclass(frozen=True, slots=True)
class SpladeConfig:
    """How to build and run a :class:`SpladeEncoder`; every default works offline.

    ``dtype="auto"``: bfloat16 on CUDA, float32 on CPU. ``pooling="auto"``: the Triton kernel on
    CUDA, the bf16-screened exact path on CPUs with native bf16, else the chunked fp32 path.
    ``max_tokens`` bounds ``batch x padded length`` when no batch size is given (None: by device).
    """

    model: str = "splade-tiny"
    architecture: Architecture = "auto"
    max_length: int = 512
    query_top_k: int | None = None
    doc_top_k: int | None = None
    device: str = "auto"
    dtype: DType = "auto"
    batch_size: int | None = None
    max_tokens: int | None = None
    pooling: str = "auto"
    echo: bool = True

    def __post_init__(self) -> None:
        if self.architecture not in ("auto", "masked-lm", "causal-lm"):
            raise ConfigError(f"architecture {self.architecture!r}: expected auto, masked-lm or causal-lm")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype {self.dtype!r}: expected auto, float32, bfloat16 or float16")
        if self.max_length < 4:
            raise ConfigError(f"max_length must be >= 4, got {self.max_length}")
        for name in ("query_top_k", "doc_top_k", "batch_size", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or None, got {value}")

    @classmethod
    def mistral_splade(cls, model: str = "smollm2-135m-instruct", **changes: object) -> SpladeConfig:
        """The decoder-backbone configuration (echoed input, LM-head expansion)."""
        return cls(model=model, architecture="causal-lm", **changes)


def _detect_architecture(path: str) -> str:
    config_file = Path(path) / "config.json"
    archs = json.loads(config_file.read_text()).get("architectures", []) if config_file.is_file() else []
    if any(a.endswith("ForMaskedLM") for a in archs):
        return "masked-lm"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal-lm"
    raise ConfigError(f"{path}: cannot tell masked-lm from causal-lm ({archs or 'no architectures'}); "
                      "set SpladeConfig.architecture")


def _detach_output_projection(model: torch.nn.Module) -> torch.nn.Linear:
    """Swap the model's vocabulary projection for an identity (so it returns hidden states); return it."""
    import torch

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(
            f"{type(model).__name__}: output projection is {type(head).__name__}, not nn.Linear"
        )
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is head:
                setattr(module, child_name, torch.nn.Identity())
                return head
    raise ConfigError(f"{type(model).__name__}: output projection not found among its modules")


TERM_BIAS_FILE = "splade_term_bias.safetensors"


def _term_bias(path: str, head: torch.nn.Linear) -> torch.Tensor | None:
    """The projection's bias, or the per-term bias a Mistral-SPLADE training run saved beside the model.

    A decoder's LM head has no bias and nearly every vocabulary logit is positive, so SPLADE
    pooling would give dense vectors; training learns a per-term shift (``splade_train``) that the
    tied, bias-free head cannot store, so it travels as its own file.
    """
    file = Path(path) / TERM_BIAS_FILE
    if file.is_file():
        from safetensors.torch import load_file

        bias = load_file(str(file))["bias"]
        if bias.shape != (head.weight.shape[0],):
            raise ConfigError(f"{file}: bias of shape {tuple(bias.shape)}, the vocabulary has "
                              f"{head.weight.shape[0]}")
        return bias
    return None if head.bias is None else head.bias.detach()


class SpladeEncoder:
    """Texts -> SPLADE sparse vectors over the model's vocabulary (``SparseVector``, int32/float32)."""

    def __init__(self, config: SpladeConfig | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

        from sparsa.retrieval.splade_pooling import resolve_pool_method

        self.config = config = config or SpladeConfig()
        started = time.perf_counter()
        path = resolve_model(config.model)
        self.architecture = (
            _detect_architecture(path) if config.architecture == "auto" else config.architecture
        )
        self.device = torch.device(resolve_device(config.device))
        dtype_name = config.dtype
        if dtype_name == "auto":
            dtype_name = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype_name)
        auto = AutoModelForMaskedLM if self.architecture == "masked-lm" else AutoModelForCausalLM
        model = auto.from_pretrained(path, dtype=self.dtype)
        head = _detach_output_projection(model)
        self.model = model.to(self.device).eval()
        self.weight = head.weight.detach().to(self.device)  # [V, D]
        self.bias = _term_bias(path, head)
        self.bias = None if self.bias is None else self.bias.float().to(self.device)  # [V]
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        limit = config.max_length
        if self.architecture == "causal-lm":
            # [bos] + text (+ text again when echoing) must fit in max_length.
            limit = (limit - 1) // (2 if config.echo else 1)
        self._token_ids = TokenIds(self.tokenizer, limit, add_special_tokens=self.architecture == "masked-lm")
        self.pooling = resolve_pool_method(config.pooling, self.device)
        self._pool_cache: dict[str, torch.Tensor] = {}
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        logger.info("loaded SPLADE %s (%s) from %s on %s/%s, pooling=%s in %.1f s", config.model,
                    self.architecture, path, self.device, dtype_name, self.pooling,
                    time.perf_counter() - started)

    config_class = SpladeConfig

    def spec(self) -> dict:
        """What rebuilds this encoder (see ``sparsa.registry.build_encoder``)."""
        return {"name": "splade", "config": asdict(self.config)}

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    def encode_queries(
        self, texts: Sequence[str], batch_size: int | None = None, show_progress: bool | None = None
    ) -> list[SparseVector]:
        """One sparse vector per query, pruned to ``config.query_top_k`` terms if set."""
        return self.encode(texts, batch_size, show_progress, self.config.query_top_k, "queries")

    def encode_documents(
        self, texts: Sequence[str], batch_size: int | None = None, show_progress: bool | None = None
    ) -> list[SparseVector]:
        """One sparse vector per document, pruned to ``config.doc_top_k`` terms if set."""
        return self.encode(texts, batch_size, show_progress, self.config.doc_top_k, "docs")

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int | None = None,
        show_progress: bool | None = None,
        top_k: int | None = None,
        desc: str = "texts",
        threads: int | None = None,
    ) -> list[SparseVector]:
        """Encode in length-sorted batches; results come back in input order."""
        blocks = self.stream(texts, top_k, threads, show_progress, desc, batch_size)
        return SparseRows.concat([rows for _, rows in blocks]).vectors()

    def stream(
        self,
        texts: Sequence[str],
        top_k: int | None = None,
        threads: int | None = None,
        show_progress: bool | None = None,
        desc: str = "texts",
        batch_size: int | None = None,
    ) -> Iterator[tuple[int, SparseRows]]:
        """``(offset, rows)`` per chunk of ``texts`` in input order, as CSR blocks (the indexing path:
        ``retrieval/splade_stream.py``); ``threads``: CPU threads the job may use (None: all cores)."""
        from sparsa.retrieval.splade_stream import stream_rows

        return stream_rows(self, texts, top_k, threads, show_progress, desc, batch_size)

    def stream_documents(
        self, texts: Sequence[str], threads: int | None = None, show_progress: bool | None = None
    ) -> Iterator[tuple[int, SparseRows]]:
        """Document rows pruned to ``config.doc_top_k`` terms if set, chunk by chunk (see :meth:`stream`)."""
        return self.stream(texts, self.config.doc_top_k, threads, show_progress, "docs")

    def encode_dense(
        self, texts: Sequence[str], batch_size: int | None = None, top_k: int | None = None
    ) -> torch.Tensor:
        """Pooled weights as ``float32[n, V]`` on the CPU (for small inputs, tests and inspection)."""
        import torch

        dense = torch.zeros(len(texts), self.vocab_size)
        for index, pooled in self._pooled_batches(texts, batch_size, False, top_k, "texts"):
            dense[torch.from_numpy(index)] = pooled.float().cpu()
        return dense

    def _pooled_batches(
        self,
        texts: Sequence[str],
        batch_size: int | None,
        show_progress: bool | None,
        top_k: int | None,
        desc: str,
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(input positions int64[B], pooled float32[B, V] on the device)`` per batch."""
        import torch

        if isinstance(texts, str):
            raise TypeError("expected a sequence of texts, got one str")
        batch_size = batch_size or self.config.batch_size
        max_tokens = self.config.max_tokens or _TOKENS_PER_BATCH.get(self.device.type, 16384)
        bar = progress_bar(len(texts), f"SPLADE {desc}", unit="doc", show=show_progress)
        # One batch at a time on all torch threads: two single-threaded batches at once (as the dense
        # encoder runs) measured 10% slower here, the screening kernel scales over threads.
        workers = 1

        def run(batch: np.ndarray, items: list) -> torch.Tensor:
            with torch.inference_mode():
                pooled = self._encode_batch([items[i] for i in batch])
                return pooled if top_k is None else _keep_top_k(pooled, top_k)

        with bar, torch.inference_mode():
            for offset, ids in self._token_ids.blocks(texts, self.device.type):
                items = [self._model_input(x) for x in ids]
                batches = length_sorted_batches([len(item[0]) for item in items], batch_size, max_tokens)
                results = map_batches(lambda batch, items=items: run(batch, items), batches, workers)
                for batch, pooled in zip(batches, results, strict=True):
                    yield offset + batch, pooled
                    bar.update(len(batch))

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of the texts, without the echo/bos layout (decoders: no special tokens)."""
        return self._token_ids(texts)

    def _model_input(self, ids: list[int]) -> tuple[list[int], int, int]:
        """Model token ids and the pooled range ``[start, end)`` of one text."""
        if self.architecture == "masked-lm":
            return ids, 0, len(ids)
        ids = ids.tolist() if isinstance(ids, np.ndarray) else ids  # pooled tokenisation gives arrays
        bos = self.tokenizer.bos_token_id
        prefix = [bos] if bos is not None else []
        if not self.config.echo:
            return prefix + ids, len(prefix), len(prefix) + len(ids)
        return prefix + ids + ids, len(prefix) + len(ids), len(prefix) + 2 * len(ids)

    def _encode_batch(self, items: list[tuple[list[int], int, int]]) -> torch.Tensor:
        """Pooled ``float32[B, V]`` on the model's device for one batch of ``(ids, start, end)``."""
        import torch

        from sparsa.retrieval.splade_pooling import pool_splade

        ids, mask = pad_right([item[0] for item in items], self.pad_id)
        input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
        attention_mask = torch.from_numpy(mask).to(self.device, non_blocking=True)
        start = torch.tensor([item[1] for item in items], dtype=torch.int32, device=self.device)
        end = torch.tensor([item[2] for item in items], dtype=torch.int32, device=self.device)
        kwargs = {"use_cache": False} if self.architecture == "causal-lm" else {}
        with without_cudnn(self.device):  # a new batch shape each time: cuDNN would plan each one
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        return pool_splade(hidden, self.weight, self.bias, start, end, self.pooling, self._pool_cache)

    def decode(self, vector: SparseVector, top_k: int | None = None) -> list[tuple[str, float]]:
        """The vector's terms as ``(token, weight)`` pairs, heaviest first (``top_k`` of them if set)."""
        order = np.argsort(-vector.values, kind="stable")[:top_k]
        tokens = self.tokenizer.convert_ids_to_tokens(vector.indices[order].tolist())
        return list(zip(tokens, vector.values[order].tolist(), strict=True))


def _keep_top_k(pooled: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the ``k`` largest weights of each row of ``[B, V]``."""
    import torch

    if k >= pooled.shape[1]:
        return pooled
    values, index = pooled.topk(k, dim=1)
    return torch.zeros_like(pooled).scatter_(1, index, values)
