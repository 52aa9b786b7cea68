"""What one sparse prefill layer of the reader costs against SDPA, at the reader's own shapes (issue 24).

Qwen2.5-1.5B's attention (12 query / 2 KV heads, head dim 128, bf16, causal, gate blocks of 64) at the prompt
lengths of 5-100 RealTime QA passages. Per length, median ms (``triton.testing.do_bench``) of:

* every SDPA backend (torch's choice, cuDNN, flash, efficient): the dense baseline is the fastest of them;
  and our kernel over every block (the reader's ``dense_kernel="triton"``);
* the gate as the reader ran it before (PyTorch: pooled scores, top-p by sort, ``KeptBlocks.from_mask``,
  three host reads) and as it runs now (``kernels/gate_select.py``: one GEMM, one kernel, one host read);
* our block-sparse kernel at kept shares set by a top-k rule, and gate + kernel: the whole sparse layer;
* the break-even kept share: the largest share measured at which the sparse layer beats the fastest SDPA;
* the first call at a prompt length the process has not seen, as every request's length is new to a reader:
  per SDPA backend and for the sparse layer at the reader's rule (coverage 0.95), after one untimed call at
  another unseen length, so one-time compiles (a new Triton specialisation) are left out while costs that
  recur per length (such as a plan built for each new shape) are counted.

Inputs are random (the timing does not depend on the values once the kept blocks are fixed); the kept share
real prompts give is measured by ``bench_rag_longcontext.py``. Writes ``bench/results/gate.json``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch
from common import write_results
from common.attention import median_ms, sdpa_call, sdpa_configs

from sparsa.kernels import attention_ops as ops
from sparsa.kernels.block_gating import block_visibility
from sparsa.kernels.block_sparse_attention import KeptBlocks, block_sparse_attention
from sparsa.kernels.gate_select import visible_block_count

HQ, HKV, D, BLOCK = 12, 2, 128, 64  # Qwen2.5-1.5B's attention; the reader's gate block
LENGTHS = (1536, 5632, 14336, 28672)  # ~5, 20, 50 and 100 passages of 200 words
TOPKS = (4, 8, 16, 32, 64)


def gate_torch(q, k, scale):
    """The gate as ``hf_attention._prefill`` ran it before the fused selection (same rule, same result)."""
    mask = ops.gate_mask(q, k, block_size=BLOCK, topk=None, threshold=None, coverage=0.95, scale=scale)
    visible, _ = block_visibility(q.shape[2], k.shape[2], BLOCK, True, q.device)
    kept, total = int(mask.sum()), int(visible.sum()) * HQ
    return KeptBlocks.from_mask(mask), kept / total


def gate_fused(q, k, scale, rule="coverage", value=0.95):
    kept = ops.gate_blocks(q, k, block_size=BLOCK, rule=rule, value=value, scale=scale)
    return kept, int(kept.counts.sum()) / (visible_block_count(q.shape[2], k.shape[2], BLOCK) * HQ)


def sparse_layer(q, k, v, scale, rule="coverage", value=0.95):
    """What ``hf_attention._prefill`` runs: the gate, its count read, the kernel."""
    kept, _ = gate_fused(q, k, scale, rule, value)
    return block_sparse_attention(q, k, v, kept, block_size=BLOCK, causal=True, sm_scale=scale)


def ours_dense(q, k, v, scale):
    """Our kernel over every block: the reader's ``dense_kernel="triton"``."""
    return ops.dense_prefill(q, k, v, scale, "triton")


def random_qkv(seqlen: int):
    gen = torch.Generator(device="cuda").manual_seed(seqlen)
    return tuple(torch.randn(1, heads, seqlen, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                 for heads in (HQ, HKV, HKV))


def first_call_ms(fn) -> float:
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def unseen_length_ms(seqlen: int, scale: float, configs: dict, tries: int = 3) -> dict:
    """Median ms of each provider's first call at ``tries`` lengths near ``seqlen`` that it has not seen,
    after one untimed call at another; each provider has its own lengths ("default" and "cudnn" may share
    a cache)."""
    own = {"ours dense": ours_dense, "sparse layer": sparse_layer}
    providers = [name for name, c in configs.items() if "fn" in c] + list(own)
    out = {}
    for index, name in enumerate(providers):
        times = []
        for j in range(tries + 1):
            length = seqlen + 1 + 16 * (index * (tries + 1) + j)  # never a multiple of 16, never seen
            q, k, v = random_qkv(length)
            call = (functools.partial(own[name], q, k, v, scale) if name in own
                    else sdpa_call(q, k, v, name, configs[name]["gqa"]))
            ms = first_call_ms(call)
            if j:  # the first length is the untimed one
                times.append(ms)
        out[name] = round(statistics.median(times), 3)
    return out


def measure(seqlen: int) -> dict:
    q, k, v = random_qkv(seqlen)
    scale = D ** -0.5
    row = {"seqlen": seqlen}
    configs = sdpa_configs(q, k, v)
    sdpa = {name: (round(median_ms(c["fn"]), 4) if "fn" in c else c["error"]) for name, c in configs.items()}
    row["sdpa_ms"] = sdpa
    best = min((ms, name) for name, ms in sdpa.items() if isinstance(ms, float))
    row["sdpa_fastest"] = {"backend": best[1], "ms": best[0]}
    row["ours_dense_ms"] = round(median_ms(functools.partial(ours_dense, q, k, v, scale)), 4)
    row["gate_torch_ms"] = round(median_ms(lambda: gate_torch(q, k, scale)), 4)
    row["gate_fused_ms"] = round(median_ms(lambda: gate_fused(q, k, scale)), 4)
    shares = []
    for topk in TOPKS:
        kept, share = gate_fused(q, k, scale, "topk", topk)
        kernel = median_ms(lambda kept=kept: block_sparse_attention(q, k, v, kept, block_size=BLOCK,
                                                                   causal=True, sm_scale=scale))
        layer_ms = median_ms(functools.partial(sparse_layer, q, k, v, scale, "topk", topk))
        shares.append({"topk": topk, "kept_share": round(share, 3), "kernel_ms": round(kernel, 4),
                       "layer_ms": round(layer_ms, 4), "vs_fastest_sdpa": round(best[0] / layer_ms, 2)})
    row["sparse"] = shares
    row["unseen_length_first_call_ms"] = unseen_length_ms(seqlen, scale, configs)
    paying = [s["kept_share"] for s in shares if s["vs_fastest_sdpa"] > 1.0]
    row["break_even_kept_share"] = max(paying) if paying else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=list(LENGTHS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--commit", default="",
                        help="the commit the kernels came from (the GPU copy's .git may be stale)")
    args = parser.parse_args()
    card = torch.cuda.get_device_name()
    rows = []
    print(f"{'tokens':>7} {'SDPA best':>14} {'gate torch':>10} {'gate fused':>10}  "
          "sparse layer vs SDPA (kept share)")
    for seqlen in args.lengths:
        row = measure(seqlen)
        rows.append(row)
        sparse = " ".join(f"{s['vs_fastest_sdpa']:.2f}x({s['kept_share']:.2f})" for s in row["sparse"])
        print(f"{seqlen:>7} {row['sdpa_fastest']['ms']:>8.3f} {row['sdpa_fastest']['backend']:>5} "
              f"{row['gate_torch_ms']:>10.3f} {row['gate_fused_ms']:>10.3f}  {sparse}", flush=True)
        print(f"{'':>7} first call at an unseen length, ms: {row['unseen_length_first_call_ms']}", flush=True)
        write_results("gate", {
            "card": card, "kernels_commit": args.commit or None,
            "shape": {"q_heads": HQ, "kv_heads": HKV, "head_dim": D, "block": BLOCK, "dtype": "bfloat16",
                      "causal": True, "model": "Qwen2.5-1.5B attention"},
            "baseline": "SDPA, every backend (enable_gqa; torch's choice first); the fastest is the "
                        "reference",
            "rows": rows}, packages=("torch", "triton"), path=args.out, gpu=card)


if __name__ == "__main__":
    main()
