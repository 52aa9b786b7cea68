"""Block-sparse prefill attention on the GPU: correctness at realistic sizes, then speed.

    python bench/bench_attention.py          # checks + sweep, writes bench/results/attention.json
    python bench/bench_attention.py --seqlens 4096 8192 --sparsities 0 0.9 --out /tmp/attention.json

Correctness: ``block_sparse_attention`` and ``attention_block_max`` against their fp32 PyTorch references
(bf16/fp16, causal/non-causal, GQA/MQA, head dim 64/128, ragged and varlen lengths, NaN-poisoned dropped
blocks); relative error ``||out - ref|| / ||ref||``.

Speed: causal prefill, batch 1, 32 query heads, 8 KV heads, bf16, block 128, sequence lengths swept.
Providers: PyTorch SDPA (flash backend, dense), FlexAttention (compiled, same BlockMask: blocks below
the diagonal as full blocks, diagonal blocks with a causal mask_mod), ours (dense mode and block-sparse).
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

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, run_metadata

try:
    from sparsa.kernels import block_sparse_attention as bsa
    from sparsa.kernels.block_gating import attention_block_max, attention_block_max_ref, training_free_gate
except ImportError:  # not installed (e.g. a bare GPU machine): import the folder as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kernels import block_sparse_attention as bsa
    from kernels.block_gating import attention_block_max, attention_block_max_ref, training_free_gate

TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3}  # relative Frobenius error


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


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
        err = _rel_err(out, ref)
        ok = err < TOLERANCE[dtype] and not torch.isnan(out).any().item()
        results.append({"check": f"attention/{name}", "dtype": str(dtype), "rel_err": err, "pass": ok})
    for causal, dtype, d, block, sq, sk in [(True, torch.bfloat16, 128, 64, 2048, 2048),
                                            (False, torch.float16, 64, 128, 1000, 1500)]:
        q, k, _ = _random_qkv(1, 8, 2, sq, sk, d, dtype)
        out = attention_block_max(q, k, block_size=block, causal=causal)
        ref = attention_block_max_ref(q, k, block_size=block, causal=causal)
        err = _rel_err(out, ref)
        results.append({"check": f"block_max/causal={causal}/d={d}/bs={block}", "dtype": str(dtype),
                        "rel_err": err, "pass": err < TOLERANCE[dtype] and not torch.isnan(out).any().item()})
    return results


def causal_block_mask(b, h, n_blocks, sparsity, gen) -> torch.Tensor:
    """Bool [b, h, n, n]: per query block, sink + diagonal + random visible blocks, dropping `sparsity`."""
    row = torch.arange(n_blocks, device="cuda")[:, None]
    col = torch.arange(n_blocks, device="cuda")[None, :]
    visible, forced = col <= row, (col == 0) | (col == row)
    score = torch.rand(b, h, n_blocks, n_blocks, device="cuda", generator=gen)
    score = score.masked_fill(~visible, -1.0).masked_fill(forced, 2.0)
    rank = score.argsort(-1, descending=True).argsort(-1)
    keep_n = torch.maximum(forced.sum(-1), torch.round((1 - sparsity) * visible.sum(-1)).long())
    return (rank < keep_n[:, None]) & visible


def useful_flops(mask: torch.Tensor | None, b, h, s, d, block) -> float:
    if mask is None:
        return 4.0 * d * b * h * s * (s + 1) / 2
    n = mask.shape[-1]
    idx = torch.arange(n, device=mask.device)
    pairs = torch.where(idx[:, None] > idx[None, :], block * block, 0.0)
    pairs = pairs + torch.diag(torch.full((n,), block * (block + 1) / 2, device=mask.device))
    return 4.0 * d * float((mask.float() * pairs).sum())


def flex_block_mask(mask: torch.Tensor, block: int, seqlen: int):
    """The same kept blocks as a FlexAttention BlockMask: below-diagonal blocks full, diagonal partial.

    The mask_mod (run on partial blocks only by the compiled kernel) also looks the block up, so eager
    flex_attention, which ignores the block structure, computes the same function.
    """
    from torch.nn.attention.flex_attention import BlockMask

    n = mask.shape[-1]
    diag = torch.eye(n, dtype=torch.bool, device=mask.device)

    def ordered(m):
        ar = torch.arange(n, device=m.device, dtype=torch.int32)
        idx = torch.where(m, ar, n).sort(-1).values.clamp_max(n - 1).to(torch.int32)
        return m.sum(-1, dtype=torch.int32), idx

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & mask[b, h, q_idx // block, kv_idx // block]

    partial_n, partial_idx = ordered(mask & diag)
    full_n, full_idx = ordered(mask & ~diag)
    return BlockMask.from_kv_blocks(partial_n, partial_idx, full_n, full_idx, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(seqlen, seqlen))


def _bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _sdpa_fn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    try:
        run()
        return run, "enable_gqa"
    except RuntimeError:  # flash backend without native GQA: expand KV outside the timed region
        group = q.shape[1] // k.shape[1]
        ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

        def run_expanded():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, ke, ve, is_causal=True)

        return run_expanded, "expanded-kv"


def sweep(args, rows: list[dict], write) -> None:
    flex = None
    if not args.no_flex:
        try:
            from torch.nn.attention.flex_attention import flex_attention

            torch._dynamo.config.cache_size_limit = 64
            flex = torch.compile(flex_attention, dynamic=False)
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
            sdpa, sdpa_mode = _sdpa_fn(q, k, v)
            t_sdpa = _bench(sdpa)
            rows.append({"provider": f"sdpa-flash ({sdpa_mode})", "head_dim": d, "seqlen": s, "sparsity": 0.0,
                         "ms": t_sdpa, "tflops": dense_flops / t_sdpa * 1e-9, "speedup_vs_sdpa": 1.0})
            sparsities = args.sparsities if d in args.sparse_head_dims else [0.0]
            for sparsity in sparsities:
                mask = None if sparsity == 0 else causal_block_mask(b, hq, n_blocks, sparsity, gen)
                flops = useful_flops(mask, b, hq, s, d, block)
                actual = 0.0 if mask is None else 1 - flops / dense_flops
                kept = None if mask is None else bsa.KeptBlocks.from_mask(mask)
                t = _bench(lambda q=q, k=k, v=v, kept=kept: bsa.block_sparse_attention(
                    q, k, v, kept, block_size=block, causal=True))
                config = str(getattr(bsa._block_sparse_fwd_kernel, "best_config", ""))
                rows.append({"provider": "ours", "head_dim": d, "seqlen": s, "sparsity": round(actual, 3), "ms": t,
                             "tflops": flops / t * 1e-9, "speedup_vs_sdpa": t_sdpa / t, "config": config})
                if flex is not None and d in args.flex_head_dims:
                    try:
                        full = torch.ones(b, hq, n_blocks, n_blocks, dtype=torch.bool, device="cuda").tril()
                        bm = flex_block_mask(full if mask is None else mask, block, s)
                        t_flex = _bench(lambda q=q, k=k, v=v, bm=bm: flex(q, k, v, block_mask=bm, enable_gqa=True))
                        ours = bsa.block_sparse_attention(q, k, v, kept, block_size=block, causal=True)
                        agree = _rel_err(flex(q, k, v, block_mask=bm, enable_gqa=True), ours)
                        rows.append({"provider": "flex", "head_dim": d, "seqlen": s, "sparsity": round(actual, 3),
                                     "ms": t_flex, "tflops": flops / t_flex * 1e-9,
                                     "speedup_vs_sdpa": t_sdpa / t_flex,
                                     "ours_speedup_vs_flex": t_flex / t, "rel_diff_vs_ours": agree})
                    except Exception as exc:  # noqa: BLE001 - a competitor failing must not stop the sweep
                        print(f"flex failed at d={d} s={s} sparsity={sparsity}: {type(exc).__name__}: {exc}")
                print(json.dumps(rows[-1]))
                write()
            del q, k, v
            torch.cuda.empty_cache()


def print_table(rows: list[dict]) -> None:
    print(f"{'provider':<26}{'d':>5}{'seqlen':>8}{'sparsity':>10}{'ms':>10}{'TFLOP/s':>10}{'vs SDPA':>9}")
    for r in rows:
        print(f"{r['provider']:<26}{r['head_dim']:>5}{r['seqlen']:>8}{r['sparsity']:>10.3f}{r['ms']:>10.3f}"
              f"{r['tflops']:>10.1f}{r['speedup_vs_sdpa']:>8.2f}x")


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
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--time-budget", type=float, default=400.0, help="seconds for the speed sweep")
    parser.add_argument("--commit", default="", help="git commit, where the machine has no .git")
    parser.add_argument("--out", type=Path, default=RESULTS / "attention.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    meta = run_metadata(("torch", "triton"))
    meta["git_commit"] = meta["git_commit"] or args.commit
    meta["hardware"]["gpu"] = torch.cuda.get_device_name()
    meta["versions"]["cuda"] = torch.version.cuda
    payload: dict = {"meta": meta, "flop_formula": "4 * head_dim * visible (query, key) pairs in kept blocks",
                     "setup": {"batch": 1, "q_heads": args.q_heads, "kv_heads": args.kv_heads,
                               "block": args.block, "dtype": "bfloat16", "causal": True}}
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
