"""Would int8 linears keep minilm-l6's SciFact ranking? Emulated W8A8 and W7A7 against fp32.

    python bench/probe_dense_int8.py [--bits 8 7] [--name dense_int8]

Issue 10 asks for >= 2x sentence-transformers on 2 CPU threads with SciFact nDCG@10 equal to fp32's at 3
decimals. On an AVX2-only CPU fp32 cannot get there (its FMA peak caps minilm-l6 at ~1.7x) and bf16 has no
hardware, so the one faster arithmetic left is int8 (``vpmaddubsw``; exact without saturation only for 7-bit
operands, as in ``retrieval/splade_cpu_kernel.py``). This probe asks whether the rankings survive before any
kernel is written: every linear (fused QKV, attention output, FFN up and down) gets symmetric per-output-channel
weights and per-token inputs rounded to ``bits`` (fp32 arithmetic on the rounded values, so the quantisation
is exact and only its error is measured); attention, GELU and layer norms stay fp32. Whole corpus, SciFact test
nDCG@10 and the cosine distance of the document embeddings to fp32's. Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.nn.functional import linear

sys.path.insert(0, str(Path(__file__).parent))

from bench_encoding import evaluate, exact_run
from common import write_results
from probe_dense_precision import PlanForward, cosine_distance, encode, site_weights, top10_changed

from sparsa.config import load_settings
from sparsa.data import load_dataset
from sparsa.retrieval.dense import DenseConfig, DenseEncoder


def rounded_to(t: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric rounding of each row (last dim) to ``2^(bits-1) - 1`` levels, back in fp32."""
    levels = 2 ** (bits - 1) - 1
    scale = t.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / levels
    return torch.round(t / scale).clamp(-levels, levels) * scale


def int8_forward(model: torch.nn.Module, bits: int) -> PlanForward:
    weights: dict = {}

    def linear_at(layer: int, site: str, x: torch.Tensor) -> torch.Tensor:
        if (layer, site) not in weights:
            w, b = site_weights(model, layer, site)
            weights[(layer, site)] = (rounded_to(w, bits), b)
        return linear(rounded_to(x.float(), bits), *weights[(layer, site)])

    return PlanForward(model, linear_at, bf16_attention=False, bf16_gelu=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 7], help="weight and input bits per plan")
    parser.add_argument("--name", default="dense_int8")
    args = parser.parse_args()

    torch.set_num_threads(2)
    data = load_dataset(str(load_settings().data_dir / "scifact"))
    docs = [d.full_text for d in data.corpus.documents]
    encoder = DenseEncoder(DenseConfig(device="cpu", dtype="float32"))
    model = encoder.model

    def fp32(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    plans = {"fp32": fp32} | {f"W{b}A{b}": int8_forward(model, b) for b in args.bits}
    rows, reference = [], None
    for name, forward in plans.items():
        emb = encode(encoder, forward, docs)
        queries = encode(encoder, forward, [q.text for q in data.queries])
        run = exact_run([q.id for q in data.queries], [d.id for d in data.corpus.documents], queries @ emb.T)
        reference = reference or (emb, run)  # fp32 first
        rows.append({"plan": name, **evaluate(run, data.qrels), **cosine_distance(emb, reference[0]),
                     "queries_top10_changed": top10_changed(run, reference[1])})
        print(rows[-1], flush=True)
    payload = {"dataset": data.name, "docs": len(docs),
               "quantisation": "symmetric; weights per output channel, linear inputs per token; fp32 arithmetic",
               "rows": rows}
    print(f"wrote {write_results(args.name, payload, ('torch', 'transformers'))}")


if __name__ == "__main__":
    main()
