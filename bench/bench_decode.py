"""Decode tokens/s of ``rag/generate.generate_greedy`` at long context: Quest sparse decode against full
decode through our attention interface, each CUDA-graphed (static cache) and eager (growing cache).

    python3 bench/bench_decode.py --commit <sha> --out $OUT/decode.json

The model is a Llama stack with random weights in bf16 and real attention shapes (32 query / 8 KV heads of
128), ``--layers`` deep (8), in one of two ``--stacks``: ``attention`` (hidden 1024, MLP 1024, vocab 1024:
little besides attention) and ``llama3-8b`` (Llama-3-8B's layers: hidden 4096, MLP 14336, vocab 128256: the
weights a real model reads every token). Each row is one ``generate_greedy`` call on a random prompt of
``context`` tokens, prefilled with dense SDPA in every row, then ``--new-tokens`` greedy tokens.
``ms_per_token``: the median gap between streamed tokens after the first two (a generation's eager first
step, and graphed the warm-up + capture), so it holds everything a step costs: the layers, the page-bound
update, the greedy pick, the host's read of the token. ``decode_tokens_per_s`` is over the whole decode
(first step and capture included). Rows by ``attention``: ``sparsa-quest`` (Quest, ``--budget`` 4096 tokens,
pages of 64, every layer sparse unless ``--dense-layers``), ``sparsa-full`` (our flash-decoding over every
key) and ``sdpa`` (transformers' own SDPA attention, which the graphed path feeds the static cache's mask);
each sparse row's ``baseline`` is the faster full row in the same path (``speedup_vs_full_same_path``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from common import RESULTS
from common.attention import gpu_run_metadata

from sparsa.kernels.hf_attention import remove_sparse_attention, use_sparse_attention
from sparsa.rag.generate import GenerationStats, generate_greedy, release_decode_graph

STACKS = {
    "attention": {"hidden_size": 1024, "intermediate_size": 1024, "vocab_size": 1024},
    "llama3-8b": {"hidden_size": 4096, "intermediate_size": 14336, "vocab_size": 128256},
}
ATTENTION = ("sparsa-quest", "sparsa-full", "sdpa")


def build(stack: str, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**STACKS[stack], num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, max_position_embeddings=1 << 18,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def set_attention(model, attention: str, args) -> None:
    remove_sparse_attention(model)
    release_decode_graph(model)
    if attention == "sparsa-quest":
        use_sparse_attention(model, prefill="dense", decode="sparse", selector="quest",
                             budget_tokens=args.budget, page_size=64, dense_layers=args.dense_layers)
    elif attention == "sparsa-full":
        use_sparse_attention(model, prefill="dense", decode="full")


def run_row(model, prompt: list[int], graph: bool, new_tokens: int) -> dict:
    stats = GenerationStats()
    before = dict(getattr(model, "sparse_attention_stats", None) or {})
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    stamps = []
    for _ in generate_greedy(model, prompt, new_tokens, stop_ids=[], stats=stats, cuda_graph=graph):
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(stamps)][2:]
    ms = statistics.median(gaps) * 1e3
    row = {"decode_mode": stats.decode_mode, "new_tokens": stats.new_tokens, "ms_per_token": ms,
           "tokens_per_s": 1e3 / ms, "decode_tokens_per_s": (stats.new_tokens - 1) / stats.decode_seconds,
           "decode_seconds": stats.decode_seconds, "capture_seconds": stats.capture_seconds,
           "prefill_seconds": stats.prefill_seconds,
           "ms_per_token_p90": sorted(gaps)[int(0.9 * len(gaps))] * 1e3,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
    after = getattr(model, "sparse_attention_stats", None)
    if after:
        read, total = (after[k] - before.get(k, 0) for k in ("decode_keys_read", "decode_keys_total"))
        row["keys_read_fraction"] = read / total if total else None
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", nargs="+", choices=sorted(STACKS), default=["attention", "llama3-8b"])
    parser.add_argument("--contexts", type=int, nargs="+", default=[131072, 32768])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--budget", type=int, default=4096)
    parser.add_argument("--dense-layers", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--attention", nargs="+", choices=ATTENTION, default=list(ATTENTION))
    parser.add_argument("--commit", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "decode.json")
    args = parser.parse_args(argv)
    meta = gpu_run_metadata(args.commit)
    if meta is None:
        print("needs a CUDA device", file=sys.stderr)
        return 2
    from importlib import metadata

    meta["versions"]["transformers"] = metadata.version("transformers")
    payload = {"meta": meta, "setup": {
        "batch": 1, "q_heads": 32, "kv_heads": 8, "head_dim": 128, "dtype": "bfloat16", "layers": args.layers,
        "stacks": {name: STACKS[name] for name in args.stacks}, "quest": {"budget_tokens": args.budget,
        "page_size": 64, "dense_layers": args.dense_layers}, "prefill": "dense SDPA (torch's backend choice)",
        "new_tokens": args.new_tokens, "timing": "median gap between streamed tokens after the first two"},
        "rows": [], "errors": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for stack in args.stacks:
        model = build(stack, args.layers)
        for context in args.contexts:
            prompt = torch.randint(0, STACKS[stack]["vocab_size"], (context,), generator=gen).tolist()
            rows = []
            for graph in (True, False):
                for attention in args.attention:
                    set_attention(model, attention, args)
                    base = {"stack": stack, "context": context, "attention": attention, "cuda_graph": graph,
                            "card": meta["hardware"]["gpu"]}
                    try:
                        rows.append(base | run_row(model, prompt, graph, args.new_tokens))
                    except Exception as exc:  # noqa: BLE001 - record, keep measuring
                        payload["errors"].append(base | {"error": f"{type(exc).__name__}: {exc}"})
                        print("ERROR", json.dumps(payload["errors"][-1]), flush=True)
                    finally:
                        release_decode_graph(model)
                        torch.cuda.empty_cache()
                    if rows and rows[-1]["attention"] == attention:
                        print(json.dumps(rows[-1]), flush=True)
            for row in rows:
                if row["attention"] == "sparsa-quest":
                    full = [r for r in rows if r["cuda_graph"] == row["cuda_graph"] and r is not row]
                    if full:
                        best = min(full, key=lambda r: r["ms_per_token"])
                        row["baseline"] = (f"{best['attention']} at the same context, same stack, "
                                           f"{'static cache + CUDA graph' if row['cuda_graph'] else 'eager'}")
                        row["speedup_vs_full_same_path"] = best["ms_per_token"] / row["ms_per_token"]
                        row["speedup_vs_sparsa_full_same_path"] = next(
                            (r["ms_per_token"] / row["ms_per_token"] for r in full
                             if r["attention"] == "sparsa-full"), None)
            payload["rows"].extend(rows)
            args.out.write_text(json.dumps(payload, indent=2) + "\n")
        remove_sparse_attention(model)
        del model
        torch.cuda.empty_cache()
    for row in payload["rows"]:
        if "speedup_vs_full_same_path" in row:
            print(f"{row['stack']:>10} {row['context']:>7} graph={row['cuda_graph']!s:5} quest "
                  f"{row['tokens_per_s']:8.1f} tok/s  x{row['speedup_vs_full_same_path']:.2f} vs "
                  f"{row['baseline']}")
    return 1 if payload["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
