"""Query-likelihood reranking under a causal LM (UPR-style): score = log P(query | passage).

Unsupervised Passage Re-ranking (Sachan et al., 2022) asks an LM to read a passage and then
scores the query's tokens as its continuation. Here the input is ``prompt(passage) + " " + query``;
the score is the sum of the query tokens' log-probabilities (for one query every candidate is
scored on the same tokens, so sum and mean rank alike). The query is tokenised once and appended
as ids, so every candidate is scored on exactly the same tokens.

Batching: pairs are sorted by length and grouped under a token budget; rows are padded on the
left so every row's query ends the sequence, and only the last ``max query length + 1`` positions
go through the LM head (``logits_to_keep``), never the ``[B, L, vocab]`` logits; their float32
log-softmax runs over a few rows at a time (``LOGPROB_CHUNK_ELEMENTS``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsa.batching import length_sorted_batches, pad_left
from sparsa.config import resolve_device
from sparsa.errors import ConfigError
from sparsa.models import resolve_model
from sparsa.progress import progress_bar
from sparsa.sdpa_backends import without_cudnn
from sparsa.types import Document, Hit, Query, sort_hits

logger = logging.getLogger(__name__)

LOGPROB_CHUNK_ELEMENTS = 1 << 28  # logits per float32 log-softmax chunk (1 GiB)
DEFAULT_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"


@dataclass(frozen=True, slots=True)
class QueryLikelihoodConfig:
    """``prompt`` must contain ``{passage}``; the query follows it after a space.

    ``device="auto"`` takes the GPU when there is one; ``dtype="auto"`` is bfloat16 there and float32
    on the CPU; ``max_tokens_per_batch=None`` is 8,192 tokens on the CPU and 65,536 on a GPU.
    """

    model: str = "smollm2-135m-instruct"
    prompt: str = DEFAULT_PROMPT
    max_passage_tokens: int = 256
    max_query_tokens: int = 64
    max_tokens_per_batch: int | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.prompt.count("{passage}") != 1:
            raise ConfigError("the prompt must contain '{passage}' exactly once")
        if min(self.max_passage_tokens, self.max_query_tokens, self.max_tokens_per_batch or 1) < 1:
            raise ConfigError("token limits must be >= 1")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype {self.dtype!r}: expected auto, float32, bfloat16 or float16")


class QueryLikelihoodReranker:
    """Rerank by log P(query | passage) under a causal LM (default SmolLM2-135M-Instruct)."""

    def __init__(self, config: QueryLikelihoodConfig = QueryLikelihoodConfig()):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        self.config = config
        self.device = resolve_device(config.device)
        on_gpu = self.device.startswith("cuda")
        dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        self.max_tokens_per_batch = config.max_tokens_per_batch or (65_536 if on_gpu else 8_192)
        self.path = resolve_model(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        before, after = config.prompt.split("{passage}")
        self._before, self._after = self._ids(before), self._ids(after)
        logger.info("loaded query-likelihood LM %s on %s/%s in %.1f s", self.path, self.device, dtype,
                    time.perf_counter() - started)

    @classmethod
    def load(cls, model: str | Path | None = None) -> QueryLikelihoodReranker:
        """The uniform constructor the CLI uses: a model name or folder (None: the default LM)."""
        return cls(QueryLikelihoodConfig(model=str(model)) if model else QueryLikelihoodConfig())

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def rerank(self, query: Query, candidates: Sequence[Document], top_k: int | None = None) -> list[Hit]:
        return self.rerank_batch([query], [candidates], top_k, show_progress=False)[0]

    def rerank_batch(self, queries: Sequence[Query], candidates: Sequence[Sequence[Document]],
                     top_k: int | None = None, show_progress: bool | None = None) -> list[list[Hit]]:
        """All (query, candidate) pairs of all queries are batched together, then ranked per query."""
        if len(queries) != len(candidates):
            raise ConfigError(f"{len(queries)} queries but {len(candidates)} candidate lists")
        pairs = [(qi, doc) for qi, docs in enumerate(candidates) for doc in docs]
        query_ids = [self._ids(" " + q.text)[: self.config.max_query_tokens] for q in queries]
        if any(not ids for ids in query_ids):
            raise ConfigError("a query is empty after tokenisation")
        passages = self.tokenizer([d.full_text for _, d in pairs], add_special_tokens=False, truncation=True,
                                  max_length=self.config.max_passage_tokens)["input_ids"] if pairs else []
        sequences = [(self._before + p + self._after, query_ids[qi])
                     for (qi, _), p in zip(pairs, passages, strict=True)]
        scores = self.score_ids(sequences, show_progress)
        ranked: list[list[Hit]] = [[] for _ in queries]
        for (qi, doc), score in zip(pairs, scores.tolist(), strict=True):
            ranked[qi].append(Hit(doc.id, score))
        return [sort_hits(hits)[:top_k] if top_k is not None else sort_hits(hits) for hits in ranked]

    def score_ids(self, sequences: Sequence[tuple[list[int], list[int]]],
                  show_progress: bool | None = None) -> np.ndarray:
        """``float32[n]``: sum of log P(target ids | context ids) for each ``(context, target)`` pair."""
        return np.array([lp.sum() for lp in self.token_logprobs(sequences, show_progress)], dtype=np.float32)

    def token_logprobs(self, sequences: Sequence[tuple[list[int], list[int]]],
                       show_progress: bool | None = None) -> list[np.ndarray]:
        """``float32[len(target)]`` per ``(context, target)`` pair: log P(each target id | context and the
        target ids before it)."""
        import torch

        from sparsa.deadline import check_deadline

        out: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(sequences)
        lengths = [len(c) + len(t) for c, t in sequences]
        batches = length_sorted_batches(lengths, max_tokens=self.max_tokens_per_batch)
        with torch.inference_mode(), progress_bar(len(sequences), "query likelihood", unit="pair",
                                                   show=show_progress) as bar:
            for batch in batches:
                check_deadline()  # a caller's deadline (the service's) stops the scoring between batches
                items = [sequences[i] for i in batch]
                picked = self._score_batch(items)
                for row, (i, (_, target)) in enumerate(zip(batch, items, strict=True)):
                    out[i] = picked[row, picked.shape[1] - len(target):]
                bar.update(len(batch))
        return out

    def _score_batch(self, items: Sequence[tuple[list[int], list[int]]]) -> np.ndarray:
        """``float32[B, longest target]``: each row's target log-probabilities, right-aligned."""
        import torch

        keep = max(len(t) for _, t in items) + 1
        # left padding: the query ends every row, so its positions are the last keep - 1 of every row
        ids, mask, positions = (torch.from_numpy(a).to(self.device)
                                for a in pad_left([c + t for c, t in items], self.pad_id))
        targets = torch.full((len(items), keep - 1), -100, dtype=torch.long)
        for row, (_, target) in enumerate(items):
            targets[row, keep - 1 - len(target):] = torch.tensor(target)
        with without_cudnn(self.device):  # a new batch shape each time: cuDNN would plan each one
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=keep, use_cache=False).logits  # [B, keep, V]
        targets = targets.to(self.device)
        picked = torch.zeros(targets.shape, device=self.device)
        # float32 log-softmax over a few rows at a time: with a 152k vocabulary and passage-long targets,
        # [B, keep, V] in float32 (twice) would outgrow even a 141 GB GPU at a 65k-token batch
        rows = max(1, LOGPROB_CHUNK_ELEMENTS // (logits.shape[1] * logits.shape[2]))
        for start in range(0, len(items), rows):
            # position j predicts token j + 1
            logprobs = logits[start : start + rows, :-1].float().log_softmax(-1)
            wanted = targets[start : start + rows].clamp(min=0)[..., None]
            picked[start : start + rows] = logprobs.gather(-1, wanted).squeeze(-1)
        return (picked * (targets != -100)).cpu().numpy()
