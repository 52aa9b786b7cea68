"""Where minilm-l6's bf16 CPU error comes from, and what cheaper-than-fp32 precision plans leave of it.

    python bench/probe_dense_precision.py [--sample 1000] [--calibration-docs 300] [--full] [--name dense_precision]

Issue 10 asks for >= 2x sentence-transformers on 2 CPU threads with SciFact nDCG@10 equal to fp32's at 3
decimals; all-bf16 linears give 2.19x but 0.6456 vs 0.6451. This probe measures, against the fp32 forward:

* emulated plans (fp32 arithmetic, chosen values rounded to bf16) on a fixed random sample of the corpus:
  which rounding (linear inputs, weights, outputs; attention; GELU) and which linear (fused QKV,
  attention output ``o``, FFN ``up``/``down``) carries the error of the pooled embeddings;
* real plans (bf16 matmuls as ``Bf16BertForward`` runs them): plain bf16; ``o split`` (the attention output
  weight as bf16 hi + lo parts, one matmul of twice the width, halves summed in fp32); ``gptq`` (bf16 weights
  rounded column by column with GPTQ's error feedback, Frantar et al. 2023, calibrated on Cranfield
  abstracts, not SciFact); their throughput on the sample (two single-threaded batches at once, as
  ``DenseEncoder`` runs) and sentence-transformers' on the same texts;
* with ``--full``: the real plans on the whole corpus with SciFact test nDCG@10 (the scoring of
  ``bench_encoding.py``).

Cosine distance is ``1 - cos(embedding, fp32 embedding)`` per document, max and mean. Timings on the shared
2-core machine are noisy: the load averages are recorded. Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import gelu, layer_norm, linear, scaled_dot_product_attention

sys.path.insert(0, str(Path(__file__).parent))

from bench_encoding import evaluate, exact_run
from common import write_results

from sparsa.batching import length_sorted_batches, map_batches, pad_right
from sparsa.config import load_settings
from sparsa.data import load_dataset
from sparsa.models import resolve_model
from sparsa.retrieval.dense import DenseConfig, DenseEncoder, pool_hidden

BF16 = torch.bfloat16
SITES = ("qkv", "o", "up", "down")
# Real plans also run on the whole corpus with --full (fp32 first: the reference).
FULL_PLANS = ("fp32", "bf16", "bf16, o split", "bf16 gptq, o split")


def rounded(t: torch.Tensor) -> torch.Tensor:
    return t.to(BF16).float()


def site_weights(model: torch.nn.Module, layer: int, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight [N, K], bias [N])`` of one linear; QKV fused as ``Bf16BertForward`` fuses it."""
    block = model.encoder.layer[layer]
    if site == "qkv":
        att = block.attention.self
        return (
            torch.cat([att.query.weight, att.key.weight, att.value.weight]),
            torch.cat([att.query.bias, att.key.bias, att.value.bias]),
        )
    dense = {"o": block.attention.output.dense, "up": block.intermediate.dense, "down": block.output.dense}[
        site
    ]
    return dense.weight, dense.bias


class PlanForward:
    """BERT's forward with each linear replaced by ``linear_at(layer, site, x)`` (as ``Bf16BertForward``:
    fused QKV, SDPA, fp32 residual stream and layer norms); attention and GELU optionally in bf16."""

    def __init__(self, model: torch.nn.Module, linear_at, bf16_attention: bool, bf16_gelu: bool):
        self.model, self.linear_at = model, linear_at
        self.bf16_attention, self.bf16_gelu = bf16_attention, bf16_gelu

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.model.embeddings(input_ids=input_ids)
        batch, length, dim = x.shape
        heads = self.model.config.num_attention_heads
        keys = attention_mask.bool()[:, None, None, :]
        for i, block in enumerate(self.model.encoder.layer):
            qkv = self.linear_at(i, "qkv", x).to(BF16 if self.bf16_attention else torch.float32)
            q, k, v = qkv.view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            scale = float(block.attention.self.scaling)
            attended = scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=scale)
            attended = attended.transpose(1, 2).reshape(batch, length, dim)
            ln1, ln2 = block.attention.output.LayerNorm, block.output.LayerNorm
            x = layer_norm(self.linear_at(i, "o", attended) + x, (dim,), ln1.weight, ln1.bias, ln1.eps)
            hidden = self.linear_at(i, "up", x)
            hidden = gelu(hidden.to(BF16)) if self.bf16_gelu else gelu(hidden.float())
            x = layer_norm(self.linear_at(i, "down", hidden) + x, (dim,), ln2.weight, ln2.bias, ln2.eps)
        return x


def emulated(model: torch.nn.Module, rounding: dict[str, str], weights: dict | None = None) -> PlanForward:
    """fp32 arithmetic; ``rounding[site]`` letters round to bf16: a = input, w = weight and bias, o = output;
    ``rounding['attn'/'gelu'] == 'b'``: that step in bf16. ``weights[(layer, site)]``: replacement weights."""
    cache: dict = {}

    def linear_at(layer: int, site: str, x: torch.Tensor) -> torch.Tensor:
        flags = rounding.get(site, "")
        if (layer, site) not in cache:
            w, b = weights[(layer, site)] if weights else site_weights(model, layer, site)
            cache[(layer, site)] = (rounded(w), rounded(b)) if "w" in flags else (w, b)
        y = linear(rounded(x) if "a" in flags else x.float(), *cache[(layer, site)])
        return rounded(y) if "o" in flags else y

    return PlanForward(model, linear_at, rounding.get("attn") == "b", rounding.get("gelu") == "b")


def real_bf16(
    model: torch.nn.Module, split: tuple[str, ...] = (), weights: dict | None = None
) -> PlanForward:
    """bf16 matmuls with fp32 accumulation; sites in ``split`` use bf16 hi + lo parts of the model's weights in
    one matmul of twice the width, the halves summed in fp32 (their weight rounding goes, their cost doubles);
    the other sites use ``weights`` (re-rounded) where given."""
    prepared = {}
    for layer in range(len(model.encoder.layer)):
        for site in SITES:
            # A split site keeps the model's weights: re-rounded weights have no low part.
            replaced = weights and site not in split
            w, b = weights[(layer, site)] if replaced else site_weights(model, layer, site)
            hi, b_hi = w.to(BF16), b.to(BF16)
            if site in split:
                hi = torch.cat([hi, (w - hi.float()).to(BF16)])
                b_hi = torch.cat([b_hi, (b - b_hi.float()).to(BF16)])
            prepared[(layer, site)] = (hi, b_hi, site in split)

    def linear_at(layer: int, site: str, x: torch.Tensor) -> torch.Tensor:
        w, b, is_split = prepared[(layer, site)]
        y = linear(x.to(BF16), w, b)
        return y[..., : w.shape[0] // 2].float() + y[..., w.shape[0] // 2 :] if is_split else y

    return PlanForward(model, linear_at, bf16_attention=True, bf16_gelu=True)


def input_moments(encoder: DenseEncoder, texts: list[str]) -> dict:
    """``H = sum [1, x]^T [1, x]`` (float64) over the real tokens entering each linear, fp32 forward."""
    moments: dict = {}
    valid: list[torch.Tensor] = []

    def linear_at(layer: int, site: str, x: torch.Tensor) -> torch.Tensor:
        rows = x[valid[0]].double()
        rows = torch.cat([torch.ones(len(rows), 1, dtype=rows.dtype), rows], 1)
        moments[(layer, site)] = moments.get((layer, site), 0) + rows.T @ rows
        return linear(x, *site_weights(encoder.model, layer, site))

    forward = PlanForward(encoder.model, linear_at, False, False)

    def capture(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        valid[:] = [mask.bool()]
        return forward(ids, mask)

    encode(encoder, capture, texts, workers=1)
    return moments


def gptq_bf16(w: torch.Tensor, b: torch.Tensor, moments: torch.Tensor, damp: float = 0.01) -> tuple:
    """``[b | W]`` rounded to bf16 column by column, bias first; each column's rounding error is pushed onto
    the columns not yet rounded (GPTQ's update through the Cholesky factor of ``H^-1``), so the output
    error on inputs with second moment ``H`` is smaller than round-to-nearest's."""
    todo = torch.cat([b[:, None], w], 1).double()
    h = moments + damp * moments.diagonal().mean() * torch.eye(len(moments), dtype=moments.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.empty_like(todo)
    for k in range(todo.shape[1]):
        out[:, k] = todo[:, k].float().to(BF16).double()
        err = (todo[:, k] - out[:, k]) / h_inv[k, k]
        todo[:, k + 1 :] -= err[:, None] * h_inv[k, k + 1 :][None]
    return out[:, 1:].float().contiguous(), out[:, 0].float().contiguous()


def encode(encoder: DenseEncoder, forward, texts: list[str], workers: int = 2) -> np.ndarray:
    """Normalised mean-pooled ``float32[n, d]`` in input order, batched as ``DenseEncoder`` batches on CPU."""
    ids = encoder._tokenize(texts)
    batches = length_sorted_batches([len(x) for x in ids], None, 4096)
    out = np.zeros((len(texts), encoder.dim), np.float32)

    def run(batch: list[int]) -> np.ndarray:
        tokens, mask = (torch.from_numpy(a) for a in pad_right([ids[j] for j in batch], 0))
        with torch.inference_mode():
            pooled = pool_hidden(forward(tokens, mask).float(), mask, "mean")
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    for batch, vectors in zip(batches, map_batches(run, batches, workers), strict=True):
        out[batch] = vectors
    return out


def cosine_distance(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    dist = 1.0 - np.sum(emb * ref, axis=1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
    return {"cos_dist_max": float(dist.max()), "cos_dist_mean": float(dist.mean())}


def top10_changed(run, reference) -> int:
    """Queries whose ten best documents (in order) differ from the reference run's."""

    def top(hits):
        return [h.doc_id for h in sorted(hits, key=lambda h: -h.score)[:10]]

    return sum(top(run[qid]) != top(reference[qid]) for qid in reference)


def emulated_plans() -> dict[str, dict[str, str]]:
    every = dict.fromkeys(SITES, "awo") | {"attn": "b", "gelu": "b"}
    plans = {
        "all bf16": every,
        "linear inputs only": dict.fromkeys(SITES, "a"),
        "weights only": dict.fromkeys(SITES, "w"),
        "linear outputs only": dict.fromkeys(SITES, "o"),
    }
    plans |= {f"weights of {site} only": {site: "w"} for site in SITES}
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=1000, help="random corpus documents (seed 0)")
    parser.add_argument("--calibration-docs", type=int, default=300, help="Cranfield abstracts for GPTQ")
    parser.add_argument(
        "--full", action="store_true", help="also the real plans on the whole corpus + nDCG@10"
    )
    parser.add_argument("--name", default="dense_precision")
    args = parser.parse_args()

    torch.set_num_threads(2)
    data_dir = load_settings().data_dir
    data = load_dataset(str(data_dir / "scifact"))
    docs = [d.full_text for d in data.corpus.documents]
    pick = np.sort(np.random.default_rng(0).choice(len(docs), args.sample, replace=False))
    sample = [docs[i] for i in pick]
    encoder = DenseEncoder(DenseConfig(device="cpu", dtype="float32"))
    model = encoder.model

    def fp32(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    reference = encode(encoder, fp32, sample)
    rows = []
    for name, rounding in emulated_plans().items():
        rows.append(
            {
                "plan": f"emulated: {name}",
                **cosine_distance(encode(encoder, emulated(model, rounding), sample), reference),
            }
        )
        print(rows[-1], flush=True)

    calibration = [d.full_text for d in load_dataset(str(data_dir / "cranfield")).corpus.documents]
    moments = input_moments(encoder, calibration[: args.calibration_docs])
    gptq = {key: gptq_bf16(*site_weights(model, *key), h) for key, h in moments.items()}
    real = {
        "fp32": fp32,
        "bf16": real_bf16(model),
        "bf16, o split": real_bf16(model, ("o",)),
        "bf16 gptq": real_bf16(model, weights=gptq),
        "bf16 gptq, o split": real_bf16(model, ("o",), gptq),
    }
    real["bf16 fp32-attention"] = PlanForward(model, real["bf16"].linear_at, False, True)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(resolve_model("minilm-l6"), device="cpu")
    st.encode(sample[:16])
    started = time.perf_counter()
    st.encode(sample, batch_size=64)
    st_rate = len(sample) / (time.perf_counter() - started)
    reference_full = None
    for name, forward in real.items():
        encode(encoder, forward, sample[:32])  # warm-up
        started = time.perf_counter()
        emb = encode(encoder, forward, sample)
        rate = len(sample) / (time.perf_counter() - started)
        rows.append(
            {
                "plan": f"real: {name}",
                **cosine_distance(emb, reference),
                "docs_per_s": round(rate, 1),
                "x_sentence_transformers": round(rate / st_rate, 2),
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
            }
        )
        if args.full and name in FULL_PLANS:
            full = encode(encoder, forward, docs)
            queries = encode(encoder, forward, [q.text for q in data.queries])
            run = exact_run(
                [q.id for q in data.queries], [d.id for d in data.corpus.documents], queries @ full.T
            )
            rows[-1] |= evaluate(run, data.qrels)
            reference_full = reference_full or (full, run)  # FULL_PLANS starts with fp32
            rows[-1] |= {f"full_{k}": v for k, v in cosine_distance(full, reference_full[0]).items()}
            rows[-1]["queries_top10_changed"] = top10_changed(run, reference_full[1])
        print(rows[-1], flush=True)
    payload = {
        "dataset": data.name,
        "sample_docs": args.sample,
        "calibration": f"cranfield, first {args.calibration_docs} documents",
        "sentence_transformers_docs_per_s": round(st_rate, 1),
        "note": "CPU timings on a shared 2-core machine: see load averages",
        "rows": rows,
    }
    print(f"wrote {write_results(args.name, payload, ('torch', 'transformers', 'sentence-transformers'))}")


if __name__ == "__main__":
    main()
