"""The reader: a causal LM answers a question from passages and cites them by id.

Prompt building uses the model's chat template: a system line asking for a short answer, then the
packed passages numbered ``[1]..[n]`` and the question. Context packing works in tokens: each
passage is cut to ``max_passage_tokens`` and passages are added in rank order while the whole
context fits ``max_context_tokens`` (the first passage is cut to fit when it alone is too long), so
the prompt never exceeds the budget. With no passages the same LM answers closed-book ("recall").

Generation is greedy (``rag/generate.py``); :meth:`Reader.answer_batch` answers many questions in
length-sorted, left-padded batches (for bench runs on a GPU). Any Hugging Face causal LM with a chat
template reads (a local folder, or a registry name such as the GGUF Qwen2.5): its own template builds
the prompt and its generation config names the stop tokens. The attention (``ReaderConfig.attention``,
``rag/config.py``) is the model's own (``full``) or the kernels of ``sparsa.kernels`` (block-sparse
prefill, sparse decode, KV compression); ``auto`` picks the kernels on a GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsa.errors import ConfigError, MissingDependencyError
from sparsa.models import resolve_model
from sparsa.rag.answer_text import parse_citations, passages_containing, short_answer
from sparsa.rag.config import AttentionConfig, ReaderConfig
from sparsa.rag.generate import GenerationStats, generate_greedy, generate_greedy_batch
from sparsa.types import Document

logger = logging.getLogger(__name__)

READ_SYSTEM = ("You answer questions from the given passages. Reply with the short answer only "
               "(a name, date, number or short phrase), then the number of the passage you used "
               "in brackets, like: Paris [2]")
RECALL_SYSTEM = ("You answer questions from memory. Reply with the short answer only "
                 "(a name, date, number or short phrase), not a sentence.")
# One worked example per prompt: small LMs copy the demonstrated format (a bare short answer) more
# reliably than they follow the instruction alone. A date answer in the example made SmolLM2-135M
# answer most questions with a year; a name answer did not (10 dev questions: F1 0.10 vs 0.00).
READ_EXAMPLE = (("Passages:\n"
                 "[1] Eiffel Tower: The tower in Paris was designed by the engineer Gustave Eiffel.\n"
                 "[2] Big Ben: The clock tower in London was finished in 1859.\n\n"
                 "Question: Who designed the Eiffel Tower?"), "Gustave Eiffel [1]")
RECALL_EXAMPLE = ("Who wrote the play Hamlet?", "William Shakespeare")


@dataclass(frozen=True, slots=True)
class ReaderOutput:
    """``text``: the short answer; ``raw``: what the LM wrote; ``citations`` ⊆ ids of ``passages``."""

    text: str
    raw: str
    citations: list[str]
    passages: list[str]  # ids of the passages packed into the prompt, in prompt order
    mean_logprob: float
    prompt_tokens: int
    new_tokens: int
    timings: dict[str, float] = field(default_factory=dict)  # "prefill", "decode", "read"
    decode_mode: str = "eager"  # "graph" when decode steps replayed a CUDA graph (rag/generate.py)


class Reader:
    """Answers from passages (or closed-book) with a causal LM; generation is serialised by a lock."""

    def __init__(self, config: ReaderConfig | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        self.config = config = (config or ReaderConfig()).resolved()
        self.device = config.device
        self.path = Path(resolve_model(config.model))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        if self.tokenizer.chat_template is None:
            raise ConfigError(f"{self.path}: the tokenizer has no chat template; the reader "
                              "needs an instruct model")
        self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, config.dtype))
        self.model.to(self.device).eval()
        self.max_prompt_tokens = context_limit(self.model, self.tokenizer) - config.max_new_tokens
        if config.max_context_tokens > self.max_prompt_tokens:
            raise ConfigError(f"max_context_tokens={config.max_context_tokens} plus max_new_tokens="
                              f"{config.max_new_tokens} exceeds {self.path.name}'s context of "
                              f"{self.max_prompt_tokens + config.max_new_tokens} tokens")
        if not config.attention.is_full or self.device.startswith("cuda"):
            # On CUDA full attention runs through our interface too: SDPA prefill and Triton flash-decoding
            # replayed as CUDA graphs, 25 vs 75 ms/token at 27.6k tokens with the same answers
            # (rag_longcontext_realtimeqa.json: full-kernels vs full).
            install_sparse_attention(self.model, config.attention)
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self._lock = threading.Lock()
        logger.info("loaded reader %s on %s (%s, %s attention) in %.1f s", self.path, self.device,
                    config.dtype, config.attention.name, time.perf_counter() - started)

    @classmethod
    def load(cls, model: str | Path | None = None, **config: Any) -> Reader:
        return cls(ReaderConfig(model=str(model), **config) if model else ReaderConfig(**config))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def pack_context(self, passages: Sequence[Document],
                     max_tokens: int | None = None) -> list[tuple[Document, str]]:
        """Passages (in rank order) with their prompt text ``[n] title: text``, together within
        ``max_tokens`` (default ``config.max_context_tokens``) counting one separator token each."""
        budget = self.config.max_context_tokens if max_tokens is None else max_tokens
        packed: list[tuple[Document, str]] = []
        for doc in passages:
            label = f"[{len(packed) + 1}] "
            body = self._ids(f"{doc.title}: {doc.text}" if doc.title
                             else doc.text)[: self.config.max_passage_tokens]
            # Decoding a cut token list and encoding it again can change its length: measure the text itself.
            while True:
                text = label + self.tokenizer.decode(body).strip()
                cost = len(self._ids(text)) + 1  # +1: the newline between passages
                if cost <= budget or packed or not body:
                    break
                body = body[: len(body) - max(cost - budget, 1)]  # only the first passage is cut to fit
            if cost > budget:
                break
            packed.append((doc, text))
            budget -= cost
        return packed

    def build_prompt(self, question: str, passages: Sequence[Document]) -> tuple[list[int], list[Document]]:
        """Prompt token ids and the passages that fit; no passages -> the closed-book prompt."""
        question = question.strip()
        if not question:
            raise ConfigError("the question is empty")
        packed = self.pack_context(passages)
        if packed:
            context = "\n".join(text for _, text in packed)
            system, example, user = READ_SYSTEM, READ_EXAMPLE, f"Passages:\n{context}\n\nQuestion: {question}"
        else:
            system, example, user = RECALL_SYSTEM, RECALL_EXAMPLE, question
        demo = ([{"role": "user", "content": example[0]}, {"role": "assistant", "content": example[1]}]
                if example else [])
        messages = [{"role": "system", "content": system}, *demo, {"role": "user", "content": user}]
        try:
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates without a system role (Gemma's) raise their own errors
            first = {"role": "user", "content": f"{system}\n\n{messages[1]['content']}"}
            prompt = self.tokenizer.apply_chat_template([first, *messages[2:]], tokenize=False,
                                                        add_generation_prompt=True)
        ids = self._ids(prompt)
        if len(ids) > self.max_prompt_tokens:
            raise ConfigError(f"the prompt has {len(ids)} tokens; {self.path.name} reads at most "
                              f"{self.max_prompt_tokens} before its {self.config.max_new_tokens} answer "
                              "tokens (shorten the question or lower max_context_tokens)")
        return ids, [doc for doc, _ in packed]

    def answer(self, question: str, passages: Sequence[Document] = ()) -> ReaderOutput:
        """Answer ``question`` from ``passages`` (closed-book when empty)."""
        *_, output = self.stream(question, passages)
        return output

    def answer_batch(self, items: Sequence[tuple[str, Sequence[Document]]],
                     batch_size: int = 32) -> list[ReaderOutput]:
        """Answers to ``(question, passages)`` pairs, in order, generated ``batch_size`` prompts at a time
        (longest prompts first, so a batch pads little). Greedy like :meth:`answer`; padded batches may
        differ from it in the last bits of low-precision logits. Timings are each batch's."""
        from sparsa.batching import length_sorted_batches

        prompts = [self.build_prompt(question, passages) for question, passages in items]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        outputs: list[ReaderOutput | None] = [None] * len(prompts)
        with self._lock:
            for batch in length_sorted_batches([len(ids) for ids, _ in prompts], batch_size):
                started = time.perf_counter()
                results = generate_greedy_batch(self.model, [prompts[i][0] for i in batch],
                                                self.config.max_new_tokens, self.stop_ids, pad_id)
                seconds = time.perf_counter() - started
                for i, (tokens, stats) in zip(batch.tolist(), results, strict=True):
                    raw = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                    outputs[i] = self._output(raw, prompts[i][1], stats, seconds)
        return outputs  # type: ignore[return-value]

    def stream(self, question: str, passages: Sequence[Document] = ()) -> Iterator[str | ReaderOutput]:
        """Yield text pieces as they are generated, then the final :class:`ReaderOutput`."""
        started = time.perf_counter()
        prompt_ids, used = self.build_prompt(question, passages)
        stats = GenerationStats()
        tokens: list[int] = []
        shown = ""
        with self._lock:
            for token in generate_greedy(self.model, prompt_ids, self.config.max_new_tokens,
                                         self.stop_ids, stats):
                tokens.append(token)
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                if len(text) > len(shown) and not text.endswith("\ufffd"):  # wait for whole characters
                    yield text[len(shown):]
                    shown = text
        raw = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        yield self._output(raw, used, stats, time.perf_counter() - started)

    def _output(self, raw: str, used: Sequence[Document], stats: GenerationStats,
                seconds: float) -> ReaderOutput:
        ids = [doc.id for doc in used]
        text = short_answer(raw)
        citations = parse_citations(raw, ids)
        containing = passages_containing(text, [(doc.id, doc.full_text) for doc in used]) if used else []
        if containing:
            # Small LMs omit the marker or copy the worked example's number: a cited passage that does not
            # hold the answer gives way to the passages that do.
            citations = [c for c in citations if c in containing] or containing
        return ReaderOutput(text=text, raw=raw, citations=citations, passages=ids,
                            mean_logprob=stats.mean_logprob,
                            prompt_tokens=stats.prompt_tokens, new_tokens=stats.new_tokens,
                            timings={"prefill": stats.prefill_seconds, "decode": stats.decode_seconds,
                                     "read": seconds},
                            decode_mode=stats.decode_mode)


def context_limit(model: Any, tokenizer: Any) -> int:
    """The longest sequence the model was trained for: its config's positions, else the tokenizer's limit."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        limit = tokenizer.model_max_length if tokenizer.model_max_length < 10**9 else 2048
    return int(limit)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids: the generation config's (instruct models list their end-of-turn token there) and the
    tokenizer's end-of-sequence token."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in (*ids, tokenizer.eos_token_id) if isinstance(i, int)})


def install_sparse_attention(model: Any, attention: AttentionConfig) -> Any:
    """Switch ``model`` to the sparse kernels (``sparsa.kernels.hf_attention.use_sparse_attention``)."""
    try:
        from sparsa.kernels.hf_attention import use_sparse_attention
    except ImportError as exc:
        raise MissingDependencyError(f"sparse attention needs the kernels ({exc}): "
                                     "pip install 'sparsa[gpu]', or use attention='full'") from exc
    settings = attention.kernel_settings()
    if attention.is_full:
        settings["full_retrieval_heads"] = False  # nothing sparse to exempt them from: no head profiling
    return use_sparse_attention(model, **settings)
