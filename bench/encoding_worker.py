"""One timed pass of ``bench_encoding.py``, in the fresh process it starts for each (never imported).

    python bench/encoding_worker.py SPEC_JSON

SPEC_JSON names the job (``ours``, ``baseline`` or ``tokenize``), the model and its variant or baseline
configuration, the device, the dataset and how many texts; the worker loads the encoder, warms it up on
marked copies of corpus texts (every word + ``spec["warmup_mark"]``, so no word cache is primed for the
corpus), times its first and only pass over the corpus texts, and pickles the result to ``spec["out"]``.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
import os
import pickle
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import numpy as np

from sparsa.data import load_dataset
from sparsa.models import resolve_model
from sparsa.types import SparseVector

_WORD = re.compile(r"[^\W_]+")  # letters and digits: a run the BERT pre-tokenizer keeps as one word


class PeakMemory:
    """Peak memory while the block runs: CUDA allocations on GPU, else RSS sampled every 10 ms (MiB)."""

    def __init__(self, device: str):
        self.device, self.peak_mib, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def _rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mib = max(self.peak_mib, self._rss_mib())

    def __enter__(self) -> Self:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_mib = self._rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()


def timed(device: str, fn: Callable[[], object]) -> tuple[object, float, float]:
    """``(result, seconds, peak MiB)`` of one call."""
    import torch

    gc.collect()
    with PeakMemory(device) as mem:
        started = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return result, seconds, mem.peak_mib


def sparse_rows(encoded) -> list[SparseVector]:
    """The rows of sentence-transformers' ``[n, vocab]`` sparse (or dense) tensor as SparseVectors."""
    coo = (encoded if encoded.is_sparse else encoded.to_sparse()).coalesce()  # sorted by (row, column)
    rows, cols = coo.indices().cpu().numpy()
    values = coo.values().float().cpu().numpy()
    keep = values != 0
    rows, cols, values = rows[keep], cols[keep].astype(np.int32), values[keep]
    bounds = np.searchsorted(rows, np.arange(encoded.shape[0] + 1)).tolist()
    return [SparseVector(cols[a:b], values[a:b]) for a, b in itertools.pairwise(bounds)]


def warmup_texts(corpus: list[str], n: int, suffix: str) -> list[str]:
    """``n`` corpus texts (cycled) with ``suffix`` appended to every word: same layout and punctuation,
    but not one word in common with the corpus (so no word cache is primed for it)."""
    mark = lambda match: match.group() + suffix
    return [_WORD.sub(mark, text) for text in itertools.islice(itertools.cycle(corpus), n)]



@dataclass
class Encoder:
    """One implementation in one configuration, as the timed pass calls it."""

    kind: str  # "sparse" or "dense"
    config: dict  # what a user picks: dtype, batch size (or token budget), pooling
    encode: Callable[[list[str]], object]  # texts -> vectors on the host: the timed call
    finish: Callable[[object], object] = lambda vectors: vectors  # untimed: as the scorer takes them


def build_ours(model: str, device: str, variant: str, decoder_top_k: int | None) -> tuple[Encoder, object]:
    """sparsa's encoder for ``model`` (``variant`` picks dtype or pooling), and the encoder object itself."""
    from sparsa.retrieval.dense import DenseConfig, DenseEncoder
    from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

    dtype = variant if variant in ("float32", "bfloat16") else "auto"
    pooling = variant if variant in ("chunked", "screened", "triton") else "auto"
    if model == "minilm-l6":
        dense = DenseEncoder(DenseConfig(device=device, dtype=dtype))
        return Encoder("dense", our_config(dense), dense.encode), dense
    if model == "splade-tiny":
        splade = SpladeEncoder(SpladeConfig(device=device, dtype=dtype, pooling=pooling))
        return Encoder("sparse", our_config(splade), splade.encode), splade
    decoder = SpladeEncoder(SpladeConfig.mistral_splade(device=device, dtype=dtype, pooling=pooling,
                                                        doc_top_k=decoder_top_k))
    return Encoder("sparse", our_config(decoder), decoder.encode_documents), decoder


def our_config(encoder) -> dict:
    """The dtype and batching an encoder runs with: by default batches are cut to a token budget
    (batch x padded length), the module's private per-device default unless the config sets one."""
    budgets = importlib.import_module(type(encoder).__module__)._TOKENS_PER_BATCH
    config = {"dtype": str(encoder.dtype).removeprefix("torch."), "batch_size": encoder.config.batch_size,
              "max_tokens": encoder.config.max_tokens or budgets.get(encoder.device.type, 16384)}
    if hasattr(encoder, "pooling"):
        config["pooling"] = encoder.pooling
    return config


def build_baseline(model: str, device: str, dtype: str, batch_size: int,
                   decoder_top_k: int | None, sdpa: str = "default") -> Encoder:
    """sentence-transformers for ``model`` in ``dtype`` (weights cast as a user would: ``.to(dtype)``)
    with ``batch_size`` and SDPA's backends (``"no-cudnn"``: cuDNN off); for smollm2, sparsa's encoder
    with full-logits reference pooling."""
    import torch

    from sparsa.sdpa_backends import sdpa_setting

    config = {"dtype": dtype, "batch_size": batch_size}
    if model == "smollm2":
        from sparsa.retrieval.splade import SpladeConfig, SpladeEncoder

        ref = SpladeEncoder(SpladeConfig.mistral_splade(device=device, dtype=dtype, pooling="reference",
                                                        doc_top_k=decoder_top_k))
        config = {**config, "dtype": str(ref.dtype).removeprefix("torch."), "pooling": "reference"}
        return Encoder("sparse", config, lambda texts: ref.encode_documents(texts, batch_size=batch_size))
    from sentence_transformers import SentenceTransformer, SparseEncoder

    sparse = model == "splade-tiny"
    st = (SparseEncoder if sparse else SentenceTransformer)(resolve_model(model), device=device)
    st = st.to(getattr(torch, dtype))
    config["sdpa"] = sdpa

    def encode(texts: list[str]):
        # One tensor for the whole job, then one copy to the host: faster than per-row numpy conversion.
        with sdpa_setting(sdpa, device):
            return st.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                             show_progress_bar=False).cpu()
    if sparse:
        return Encoder("sparse", config, encode, finish=sparse_rows)
    return Encoder("dense", config, lambda texts: encode(texts).float().numpy())


def tokenizers_of(encoder) -> tuple[Callable, Callable]:
    """The encoder's own tokenisation path (its blocks, tokenised ahead, drained), and the plain
    Hugging Face call with the same ids that the encoders used before (the 'before' figure)."""
    ids = encoder._token_ids

    def ours(texts: list[str]) -> int:
        return sum(len(block) for _, block in ids.blocks(texts, encoder.device.type))

    def plain(texts: list[str]) -> list[list[int]]:
        return encoder.tokenizer(texts, truncation=True, max_length=ids.max_length,
                                 add_special_tokens=ids.add_special_tokens, return_attention_mask=False,
                                 return_token_type_ids=False)["input_ids"]

    return ours, plain



def run_worker(spec: dict) -> None:
    """Load, warm up on marked texts, time one first pass over the corpus texts; pickle the result."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device, model = spec["device"], spec["model"]
    data = load_dataset(spec["dataset"])
    corpus = [d.full_text for d in data.corpus.documents]
    texts, warmup = corpus[: spec["docs"]], warmup_texts(corpus, spec["warmup_docs"], spec["warmup_mark"])
    started = time.perf_counter()
    if spec["job"] == "baseline":
        encoder = build_baseline(model, device, spec["dtype"], spec["batch_size"], spec["decoder_top_k"],
                                 spec.get("sdpa", "default"))
    else:
        encoder, ours = build_ours(model, device, spec["variant"], spec["decoder_top_k"])
    if device == "cuda":
        torch.cuda.synchronize()
    load_seconds = time.perf_counter() - started
    if spec["job"] == "tokenize":
        result = tokenize_job(ours, texts, warmup, device)
    else:
        result = encode_job(encoder, texts, warmup, device)
        result["entry"]["load_seconds"] = round(load_seconds, 2)
        if spec["queries"]:
            result["queries"] = encoder.finish(encoder.encode([q.text for q in data.queries]))
    result["hardware"] = {"device": device, "torch_threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name() if device == "cuda" else None}
    with open(spec["out"], "wb") as f:
        pickle.dump(result, f)


def encode_job(encoder: Encoder, texts: list[str], warmup: list[str], device: str) -> dict:
    """Warm up, then the timed pass: ``{"entry": figures, "docs": vectors, "kind": sparse or dense}``."""
    warmup_seconds = timed(device, lambda: encoder.encode(warmup))[1] if warmup else 0.0
    vectors, seconds, peak = timed(device, lambda: encoder.encode(texts))
    entry = {"docs": len(texts), "seconds": round(seconds, 3), "docs_per_s": round(len(texts) / seconds, 1),
             "peak_memory_mib": round(peak, 1), "warmup_docs": len(warmup),
             "warmup_seconds": round(warmup_seconds, 3), "config": encoder.config,
             "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    return {"entry": entry, "docs": encoder.finish(vectors), "kind": encoder.kind}


def tokenize_job(encoder, texts: list[str], warmup: list[str], device: str) -> dict:
    """Tokenisation alone: the encoder's path on its first pass over the texts, then the plain call."""
    ours, plain = tokenizers_of(encoder)
    if warmup:
        ours(warmup)  # on a GPU host, starts the tokenizer processes as the encoder's warm-up does
    ours_seconds = timed(device, lambda: ours(texts))[1]
    ids, plain_seconds, _ = timed(device, lambda: plain(texts))
    mean_tokens = lambda batch: round(float(np.mean([len(x) for x in batch])), 1) if batch else None
    return {"tokenize_only_docs_per_s": round(len(texts) / ours_seconds, 1),
            "tokenize_plain_hf_call_docs_per_s": round(len(texts) / plain_seconds, 1),
            "tokenize_docs": len(texts),
            "mean_tokens_per_doc": {"timed": mean_tokens(ids), "warmup": mean_tokens(plain(warmup))}}


if __name__ == "__main__":
    run_worker(json.loads(sys.argv[1]))
