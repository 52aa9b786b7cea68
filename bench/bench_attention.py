"""Block-sparse prefill attention on the GPU: correctness at realistic sizes, then speed.

    python bench/bench_attention.py          # checks + sweep, writes bench/results/attention.json
    python bench/bench_attention.py --seqlens 4096 8192 --sparsities 0 0.9 --out /tmp/attention.json

Correctness: ``block_sparse_attention`` and ``attention_block_max`` against their fp32 PyTorch references
(bf16/fp16, causal/non-causal, GQA/MQA, head dim 64/128, ragged and varlen lengths, NaN-poisoned dropped
blocks); relative error ``||out - ref|| / ||ref||``.

Speed: causal prefill, batch 1, 32 query heads, 8 KV heads, bf16, block 128, sequence lengths swept.
Providers, each baseline in every configuration a user could pick, ours compared with the fastest:
  * PyTorch SDPA (dense): ``default`` (no ``sdpa_kernel`` context: torch's own backend choice) and each
    backend forced alone (``cudnn``, ``flash``, ``efficient``); each with ``enable_gqa=True``, or where
    the backend refuses it with K/V expanded to the query heads outside the timed call ("expanded-kv").
    A backend that cannot run is a row with its error. One row per configuration (``sdpa-<name>``).
  * FlexAttention, compiled (fullgraph), on the same BlockMask: blocks below the diagonal as full blocks,
    diagonal blocks partial with a plain causal mask_mod. ``--flex-configs quick``: the compiled default
    and ``mode="max-autotune-no-cudagraphs"``; ``full`` adds explicit ``kernel_options`` (tiles, warps,
    stages, TMA, the flash backend). A configuration that is rejected, or whose output is off ours, is a
    row with its error. One row per configuration (``flex-<name>``).
  * ours (dense mode and block-sparse): ``speedup_vs_sdpa`` / ``speedup_vs_flex`` against the fastest
    configuration (named in ``sdpa_best`` / ``flex_best``), ``speedup_vs_*_default`` against the default;
    dense rows carry ``max_abs_err_vs_sdpa_best``.
Sparsity is the fraction of causally visible blocks dropped; each query block always keeps the sink and
diagonal blocks and a random choice of the rest, per head. Median of ``triton.testing.do_bench``.
TFLOP/s counts ``4 * D`` FLOPs per visible (query, key) pair inside kept blocks only ("useful" FLOPs);
the dense rows count the causal triangle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton
from common import RESULTS
from common.attention import (
    SDPA_BACKENDS,
    TOLERANCE,
    Baselines,
    Flex,
    causal_block_mask,
    error_text,
    flex_block_mask,
    flex_options,
    gpu_run_metadata,
    median_ms,
    rel_err,
    sdpa_configs,
    useful_flops,
)

from sparsa.kernels import (
    block_sparse_attention as bsa,  # installed (a wheel of this checkout on the GPU host)
)
from sparsa.kernels.block_gating import attention_block_max, attention_block_max_ref, training_free_gate


def _random_qkv(b, hq, hkv, sq, sk, d, dtype, varlen=False):
    shape_q, shape_k = ((sq, hq, d), (sk, hkv, d)) if varlen else ((b, hq, sq, d), (b, hkv, sk, d))
    return tuple(torch.randn(shape, device="cuda", dtype=dtype) for shape in (shape_q, shape_k, shape_k))


def check_correctness() -> list[dict]:
    """Each case: (name, dtype, B, Hq, Hkv, Sq, Sk, D, block, causal, mask kind, varlen lengths)."""
    cases = [
        ("dense-gqa-ragged", torch.bfloat16, 2, 16, 4, 3000, 3000, 128, 128, True, "dense", None),
        ("sparse-gqa-ragged", torch.bfloat16, 2, 16, 4, 3000, 3000, 128, 128, True, "random", None),
        ("sparse-mqa-noncausal", torch.float16, 1, 8, 1, 2000, 2500, 64, 64, False, "random", None),
        ("dense-noncausal-hd128", torch.bfloat16, 1, 8, 8, 1500, 1500, 128, 64, False, "dense", None),
        ("gate-topk-causal-hd128", torch.float16, 1, 8, 2, 4096, 4096, 128, 64, True, "gate", None),
        ("varlen-sparse-causal", torch.bfloat16, 3, 8, 2, 0, 0, 64, 64, True, "random", [1000, 2500, 777]),
        ("varlen-dense-causal", torch.float16, 3, 8, 2, 0, 0, 64, 128, True, "dense", [1000, 2500, 777]),
        ("single-query-decode-like", torch.bfloat16, 2, 8, 2, 1, 1000, 128, 64, True, "dense", None),
        ("poisoned-dropped-blocks", torch.bfloat16, 1, 8, 2, 2048, 2048, 128, 128, True, "poison", None),
    ]
    results = []
    for name, dtype, b, hq, hkv, sq, sk, d, block, causal, kind, lens in cases:
        torch.manual_seed(len(results))
        kwargs = {"block_size": block, "causal": causal}
        if lens:
            cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
            q, k, v = _random_qkv(b, hq, hkv, sum(lens), sum(lens), d, dtype, varlen=True)
            kwargs.update(cu_seqlens_q=cu, cu_seqlens_k=cu)
            sq = sk = max(lens)
        else:
            q, k, v = _random_qkv(b, hq, hkv, sq, sk, d, dtype)
        n_q, n_k = triton.cdiv(sq, block), triton.cdiv(sk, block)
        mask, k_in, v_in = None, k, v
        if kind in ("random", "poison"):
            mask = torch.rand(b, 1 if kind == "poison" else hq, n_q, n_k, device="cuda") < 0.5
        if kind == "poison":  # drop KV block 1 for every query block, and fill it with NaN
            mask[..., 1] = False
            k_in, v_in = k.clone(), v.clone()
            k_in[:, :, block:2 * block] = float("nan")
            v_in[:, :, block:2 * block] = float("nan")
        if kind == "gate":
            mask = training_free_gate(q, k, block_size=block, causal=causal, topk=8)
        out = bsa.block_sparse_attention(q, k_in, v_in, mask, **kwargs)
        ref = bsa.block_sparse_attention_ref(q, k, v, mask, **kwargs)
        err = rel_err(out, ref)
        ok = err < TOLERANCE[dtype] and not torch.isnan(out).any().item()
        results.append({"check": f"attention/{name}", "dtype": str(dtype), "rel_err": err, "pass": ok})
    for causal, dtype, d, block, sq, sk in [(True, torch.bfloat16, 128, 64, 2048, 2048),
                                            (False, torch.float16, 64, 128, 1000, 1500)]:
        q, k, _ = _random_qkv(1, 8, 2, sq, sk, d, dtype)
        out = attention_block_max(q, k, block_size=block, causal=causal)
        ref = attention_block_max_ref(q, k, block_size=block, causal=causal)
        err = rel_err(out, ref)
        results.append({"check": f"block_max/causal={causal}/d={d}/bs={block}", "dtype": str(dtype),
                        "rel_err": err, "pass": err < TOLERANCE[dtype] and not torch.isnan(out).any().item()})
    return results


def sweep(args, rows: list[dict], write) -> None:
    flex = None
    if not args.no_flex:
        try:
            flex = Flex(args.flex_configs, n_shapes=len(args.seqlens) * len(args.flex_head_dims))
        except ImportError as exc:
            print(f"FlexAttention unavailable: {exc}")
    gen = torch.Generator(device="cuda").manual_seed(0)
    b, hq, hkv, block = 1, args.q_heads, args.kv_heads, args.block
    start = time.time()
    for d in args.head_dims:
        for s in args.seqlens:
            if time.time() - start > args.time_budget:
                print(f"time budget of {args.time_budget}s spent: skipping d={d} s={s}")
                continue
            q, k, v = _random_qkv(b, hq, hkv, s, s, d, torch.bfloat16)
            n_blocks = triton.cdiv(s, block)
            dense_flops = useful_flops(None, b, hq, s, d, block)
            sdpa = Baselines.measure("sdpa", sdpa_configs(q, k, v))
            sdpa_ms = sdpa.ms.get(sdpa.best)
            rows.extend(sdpa.rows({"head_dim": d, "seqlen": s, "sparsity": 0.0}, dense_flops, sdpa_ms))
            sparsities = args.sparsities if d in args.sparse_head_dims else [0.0]
            for sparsity in sparsities:
                mask = None if sparsity == 0 else causal_block_mask(b, hq, n_blocks, sparsity, gen)
                flops = useful_flops(mask, b, hq, s, d, block)
                actual = 0.0 if mask is None else 1 - flops / dense_flops
                point = {"head_dim": d, "seqlen": s, "sparsity": round(actual, 3)}
                kept = None if mask is None else bsa.KeptBlocks.from_mask(mask)

                def ours(q=q, k=k, v=v, kept=kept):
                    return bsa.block_sparse_attention(q, k, v, kept, block_size=block, causal=True)

                t, out = median_ms(ours), ours()
                row = {"provider": "ours", **point, "ms": t, "tflops": flops / t * 1e-9, **sdpa.summary(t),
                       "config": str(getattr(bsa._block_sparse_fwd_kernel, "best_config", ""))}
                if mask is None:
                    row["max_abs_err_vs_sdpa_best"] = sdpa.max_abs_err(out)
                flex_rows = []
                if flex is not None and d in args.flex_head_dims:
                    try:
                        full = torch.ones(b, hq, n_blocks, n_blocks, dtype=torch.bool, device="cuda").tril()
                        bm = flex_block_mask(full if mask is None else mask, block, s)
                        flex_timed = Baselines.measure("flex", flex.configs(q, k, v, bm, out))
                        row |= flex_timed.summary(t)
                        flex_rows = flex_timed.rows(point, flops, sdpa_ms)
                    except Exception as exc:  # noqa: BLE001 - a competitor failing must not stop the sweep
                        print(f"flex failed at d={d} s={s} sparsity={sparsity}: {error_text(exc)}")
                rows.extend([row, *flex_rows])
                print(json.dumps(row))
                write()
            del q, k, v, sdpa, out
            torch.cuda.empty_cache()


def print_table(rows: list[dict]) -> None:
    print(f"{'provider':<26}{'d':>5}{'seqlen':>8}{'sparsity':>10}{'ms':>10}{'TFLOP/s':>10}{'vs SDPA':>9}")
    for r in rows:
        head = f"{r['provider']:<26}{r['head_dim']:>5}{r['seqlen']:>8}{r['sparsity']:>10.3f}"
        if "error" in r:
            print(f"{head}  unavailable: {r['error'][:80]}")
            continue
        vs = r.get("speedup_vs_sdpa")
        print(f"{head}{r['ms']:>10.3f}{r['tflops']:>10.1f}" + (f"{vs:>8.2f}x" if vs else f"{'-':>9}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9, 0.95])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--sparse-head-dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--flex-head-dims", type=int, nargs="+", default=[128])
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--flex-configs", choices=("quick", "full"), default="quick",
                        help="quick: compiled default and max-autotune; full: also explicit kernel_options")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--time-budget", type=float, default=400.0, help="seconds for the speed sweep")
    parser.add_argument("--commit", default="", help="git commit, where the machine has no .git")
    parser.add_argument("--out", type=Path, default=RESULTS / "attention.json")
    args = parser.parse_args(argv)
    meta = gpu_run_metadata(args.commit)
    if meta is None:
        print("needs a CUDA device", file=sys.stderr)
        return 2
    payload: dict = {"meta": meta, "flop_formula": "4 * head_dim * visible (query, key) pairs in kept blocks",
                     "setup": {"batch": 1, "q_heads": args.q_heads, "kv_heads": args.kv_heads,
                               "block": args.block, "dtype": "bfloat16", "causal": True,
                               "sdpa_configs": SDPA_BACKENDS,
                               "flex_configs": None if args.no_flex else flex_options(args.flex_configs)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write():
        args.out.write_text(json.dumps(payload, indent=2) + "\n")

    if not args.skip_checks:
        t0 = time.time()
        payload["correctness"] = check_correctness()
        for r in payload["correctness"]:
            verdict = "PASS" if r["pass"] else "FAIL"
            print(f"{verdict} {r['check']:<45} {r['dtype']:<15} rel_err={r['rel_err']:.2e}")
        print(f"checks took {time.time() - t0:.1f}s")
        write()
    payload["rows"] = []
    sweep(args, payload["rows"], write)
    write()
    print_table(payload["rows"])
    failed = [r for r in payload.get("correctness", []) if not r["pass"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
