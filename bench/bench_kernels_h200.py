"""All attention kernels on one GPU: dense/block-sparse prefill, full/sparse decode, bandwidth.

    python3 bench/bench_kernels_h200.py --commit <sha> --out $OUT/kernels.json

Sections (batch 1, 32 query heads, 8 KV heads, bf16, causal; median of ``triton.testing.do_bench``):
  * ``checks``: decode kernel (full, Quest pages, TidalDecode tokens) against its fp32 reference;
  * ``copy_bandwidth``: ``dst.copy_(src)`` of 2 GiB, (read + write bytes) / time; each decode length also
    times a copy moving its KV bytes (``fraction_of_same_size_copy``);
  * ``dense``: ours (block_sparse_attention, dense mode) vs dense SDPA at 4k/16k/32k/64k, head dim 128/64.
    SDPA runs in every configuration a user could pick (``common.attention.sdpa_configs``): ``default`` (no
    ``sdpa_kernel`` context: torch's choice) and ``cudnn``, ``flash``, ``efficient`` each forced alone,
    each with ``enable_gqa=True`` or, where a backend refuses it, K/V expanded to the query heads outside
    the timed call. Each row: ``sdpa_ms`` per configuration, ``sdpa_configs`` (backend, GQA mode),
    ``sdpa_unavailable`` (error text), ``sdpa_best`` (the fastest) and ``speedup_vs_sdpa`` against it,
    ``speedup_vs_sdpa_default``, and ``max_abs_err_vs_sdpa_best`` (our output against the fastest's);
  * ``sparse``: 50/75/90/95% block sparsity at 32k (block 128, random kept blocks + sink + diagonal) vs
    dense SDPA (as above) and FlexAttention, compiled with fullgraph, on the same BlockMask (full blocks
    below the diagonal, diagonal blocks with a plain causal mask_mod), in each configuration of
    ``--flex-configs`` (``common.attention.flex_options``): ``quick`` = the compiled default and
    ``mode="max-autotune-no-cudagraphs"``; ``full`` (default) also explicit ``kernel_options`` (BLOCK_M x
    BLOCK_N 128x64/64x64/128x128 x num_warps 4/8 x num_stages 2/3, USE_TMA, BACKEND="FLASH"). A rejected
    configuration, or one whose output is off ours, lands in ``flex_unavailable``; the others in
    ``flex_ms`` / ``flex_configs`` (compile mode, kernel_options, rel_diff_vs_ours), ``flex_best`` and
    ``speedup_vs_flex`` against it, ``speedup_vs_flex_default`` against the compiled default;
  * ``decode``: one query token at 32k/128k: SDPA (torch's choice of backend), ours full, ours over Quest
    pages (kernel only, and end to end with page scoring + top-k from precomputed page bounds), ours over
    TidalDecode tokens (a reuse layer: kernel only), budgets 2k/4k; eager and as a replayed CUDA graph
    (launch overhead removed, as a serving engine would run a decode step). Bandwidth = KV bytes read / time.
  * ``decode_layers``: the same providers as a model's decode step runs them: one CUDA graph over a stack
    of layers (8 GiB of KV in all, each layer its own cache and page bounds), time per layer, no L2 flush
    (each layer starts cold on its own cache); the copy reference is copied the same way.
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
    Baselines,
    Flex,
    causal_block_mask,
    flex_block_mask,
    flex_options,
    gpu_run_metadata,
    median_ms,
    rel_err,
    sdpa_configs,
    useful_flops,
)
from common.decode_steps import decode_providers, hf_decode_providers

from sparsa.kernels import (
    block_sparse_attention as bsa,  # installed (a wheel of this checkout on the GPU host)
)
from sparsa.kernels import sparse_decode as sd

HQ, HKV = 32, 8


def _graphed(fn):
    """Capture ``fn`` (already warmed up, autotuned) in a CUDA graph; return its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def checks() -> list[dict]:
    rows = []
    for b, s, d, dtype in [(2, 5000, 128, torch.bfloat16), (1, 3001, 64, torch.float16)]:
        q = torch.randn(b, HQ, d, device="cuda", dtype=dtype)
        k, v = (torch.randn(b, HKV, s, d, device="cuda", dtype=dtype) for _ in range(2))
        bounds = sd.PageBounds.from_keys(k, 16)
        cases = {"full": {},
                 "quest": dict(zip(("indices", "counts"), sd.quest_select(q, bounds, 512)), page_size=16),
                 "tidal": dict(zip(("indices", "counts"), sd.tidal_select(q, k, 700)))}
        for name, kw in cases.items():
            err = rel_err(sd.decode_attention(q, k, v, **kw), sd.decode_attention_ref(q, k, v, **kw))
            rows.append({"check": f"decode/{name}/d={d}/S={s}", "dtype": str(dtype), "rel_err": err,
                             "passed": err < (1e-2 if dtype == torch.bfloat16 else 5e-3)})
    scores = torch.randn(8, 8192, device="cuda")
    picked = sd.select_topk(scores, 256)
    same = torch.equal(scores.gather(-1, picked).sort(-1).values,
                       scores.topk(256, dim=-1).values.sort(-1).values)
    rows.append({"check": "select_topk/8x8192/k=256", "dtype": "torch.float32",
                 "rel_err": 0.0 if same else 1.0, "passed": same})
    return rows


def copy_bandwidth(traffic_bytes: int = 1 << 32, graphed: bool = False) -> dict:
    """``dst.copy_(src)`` moving ``traffic_bytes`` (half read, half written); with ``graphed`` the faster of
    eager and CUDA-graph replay, as the decode rows report."""
    src = torch.empty(traffic_bytes // 4, dtype=torch.int16, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    if graphed:
        ms = min(ms, median_ms(_graphed(lambda: dst.copy_(src))))
    return {"bytes": 2 * src.numel() * 2, "ms": ms, "gb_per_s": 2 * src.numel() * 2 / ms * 1e-6}


def _qkv(s: int, d: int):
    return tuple(torch.randn(1, h, s, d, device="cuda", dtype=torch.bfloat16) for h in (HQ, HKV, HKV))


def _best_config() -> str:
    return str(getattr(bsa._block_sparse_fwd_kernel, "best_config", ""))


def dense_row(d: int, s: int) -> dict:
    q, k, v = _qkv(s, d)
    flops = useful_flops(None, 1, HQ, s, d, 128)
    sdpa = Baselines.measure("sdpa", sdpa_configs(q, k, v))

    def ours(tma=False):
        return bsa.block_sparse_attention(q, k, v, None, block_size=128, causal=True, tma=tma)

    t_ours = median_ms(ours)
    config = _best_config()
    sdpa_ms = sdpa.ms.get(sdpa.best)
    return {"head_dim": d, "seqlen": s, "ours_ms": t_ours, **sdpa.fields(t_ours),
            "sdpa_tflops": flops / sdpa_ms * 1e-9 if sdpa_ms else None, "ours_tflops": flops / t_ours * 1e-9,
            "max_abs_err_vs_sdpa_best": sdpa.max_abs_err(ours()), "config": config, **tma_fields(ours, sdpa)}


def tma_fields(ours, sdpa) -> dict:
    """Our kernel with K/V read through TMA descriptors (``tma=True``) beside the pointer path's row."""
    t_tma = median_ms(lambda: ours(tma=True))
    return {"ours_tma_ms": t_tma, "tma_speedup_vs_sdpa": sdpa.ms[sdpa.best] / t_tma if sdpa.best else None,
            "tma_max_abs_err_vs_pointer": float((ours(tma=True).float() - ours().float()).abs().max()),
            "tma_config": _best_config()}


def dense(args, out: list) -> None:
    for d in args.head_dims:
        for s in args.seqlens:
            out.append(dense_row(d, s))
            print(json.dumps(out[-1]), flush=True)


def sparse_rows(flex: Flex, gen, s: int, sparsities) -> list[dict]:
    d, block = 128, 128
    q, k, v = _qkv(s, d)
    n = triton.cdiv(s, block)
    dense_flops = useful_flops(None, 1, HQ, s, d, block)
    sdpa = Baselines.measure("sdpa", sdpa_configs(q, k, v))
    rows = []
    for sparsity in sparsities:
        mask = causal_block_mask(1, HQ, n, sparsity, gen)
        kept = bsa.KeptBlocks.from_mask(mask)

        def ours(kept=kept, tma=False):
            return bsa.block_sparse_attention(q, k, v, kept, block_size=block, causal=True, tma=tma)

        t_ours = median_ms(ours)
        config = _best_config()
        timed = Baselines.measure("flex", flex.configs(q, k, v, flex_block_mask(mask, block, s), ours()))
        actual = 1 - useful_flops(mask, 1, HQ, s, d, block) / dense_flops
        tma = tma_fields(ours, sdpa)
        tma["tma_speedup_vs_flex"] = timed.ms[timed.best] / tma["ours_tma_ms"] if timed.best else None
        rows.append({"head_dim": d, "seqlen": s, "sparsity": round(actual, 3), "ours_ms": t_ours,
                     **sdpa.fields(t_ours), **timed.fields(t_ours), "config": config, **tma})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def sparse(args, out: list) -> None:
    flex = Flex(args.flex_configs, n_shapes=len(args.sparse_seqlens))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for s in args.sparse_seqlens:
        out.extend(sparse_rows(flex, gen, s, args.sparsities))


def decode_rows(s: int, args, copy_gbps: float) -> list[dict]:
    d = 128
    q = torch.randn(1, HQ, d, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, HKV, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    kv_bytes = 2 * k.numel() * k.element_size()
    times = {}
    providers = decode_providers(q, k, v, args.decode_splits, args.budgets, args.quest_pages)
    for name, fn in (providers | hf_decode_providers(q, k, v, args.budgets)).items():
        eager = median_ms(fn)
        try:
            graphed = median_ms(_graphed(fn))
        except Exception as exc:  # noqa: BLE001 - report, keep measuring
            print(f"graph capture failed for {name}: {type(exc).__name__}: {exc}")
            graphed = None
        times[name] = (eager, graphed, str(sd.LAUNCH))
    full_e, full_g, _ = times["ours-full"]
    # A copy moving the same bytes pays the same launch and ramp-up costs as the decode step.
    same_size = copy_bandwidth(kv_bytes, graphed=True)
    print(json.dumps({"same_size_copy": same_size}), flush=True)
    rows = []
    for name, (eager, graphed, config) in times.items():
        row = {"seqlen": s, "provider": name, "eager_ms": eager, "graph_ms": graphed, "config": config,
               "speedup_vs_ours_full_eager": full_e / eager,
               "speedup_vs_ours_full_graph": (full_g / graphed) if graphed and full_g else None}
        if name.startswith(("ours-full", "sdpa")):
            best = min(t for t in (eager, graphed) if t)
            row["kv_gb_per_s"] = kv_bytes / best * 1e-6
            row["fraction_of_copy_bandwidth"] = row["kv_gb_per_s"] / copy_gbps
            row["same_size_copy_gb_per_s"] = same_size["gb_per_s"]
            row["fraction_of_same_size_copy"] = row["kv_gb_per_s"] / same_size["gb_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def decode(args, out: list, copy_gbps: float) -> None:
    for s in args.decode_seqlens:
        out.extend(decode_rows(s, args, copy_gbps))


def _per_layer_ms(steps: list, rounds: int = 30) -> float:
    """One CUDA graph calling ``steps`` in order (one per layer, each on its own tensors); median ms per step.

    No L2 flush between replays: the layers' tensors together are several times the 50 MB L2, so every step
    starts cold on its own data, as in a model's decode step. ``do_bench`` instead zeroes a 256 MB buffer
    before each call, which leaves L2 full of dirty lines that the timed call must write back to HBM: ~50 MB
    of writes charged to a 134 MB read at 32k."""
    replay = _graphed(lambda: [step() for step in steps])
    replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(steps))
    return sorted(times)[len(times) // 2]


def layer_copy_ms(traffic_bytes: int, n_layers: int) -> float:
    """Per-layer ms of a copy moving ``traffic_bytes`` (half read, half written) in each of ``n_layers``
    buffers, timed like the decode providers (``_per_layer_ms``): the same-size copy reference."""
    sources = (torch.empty(traffic_bytes // 4, dtype=torch.int16, device="cuda") for _ in range(n_layers))
    copies = [(src, torch.empty_like(src)) for src in sources]
    return _per_layer_ms([lambda src=src, dst=dst: dst.copy_(src) for src, dst in copies])


def decode_layer_rows(s: int, args, copy_gbps: float, stack_bytes: int = 1 << 33) -> list[dict]:
    """The decode providers over a stack of layers (``stack_bytes`` of KV in all), timed per layer. 8 GiB: a
    sparse provider touches only its selection (at 128k, 16 layers x ~8-25 MB of bounds and pages), which must
    still exceed L2 several times over."""
    d = 128
    q = torch.randn(1, HQ, d, device="cuda", dtype=torch.bfloat16)
    kv_bytes = 2 * HKV * s * d * 2
    n_layers = max(2, stack_bytes // kv_bytes)
    layers = [decode_providers(q, *(torch.randn(1, HKV, s, d, device="cuda", dtype=torch.bfloat16)
                                    for _ in range(2)),
                               (), args.budgets, args.quest_pages) for _ in range(n_layers)]
    same_size_gbps = kv_bytes / layer_copy_ms(kv_bytes, n_layers) * 1e-6
    full_ms = None
    rows = []
    for name in layers[0]:
        ms = _per_layer_ms([fns[name] for fns in layers])
        full_ms = ms if name == "ours-full" else full_ms
        row = {"seqlen": s, "layers": n_layers, "provider": name, "per_layer_ms": ms}
        if name in ("ours-full", "sdpa"):
            row |= {"kv_gb_per_s": kv_bytes / ms * 1e-6,
                    "fraction_of_copy_bandwidth": kv_bytes / ms * 1e-6 / copy_gbps,
                    "same_size_copy_gb_per_s": same_size_gbps,
                    "fraction_of_same_size_copy": kv_bytes / ms * 1e-6 / same_size_gbps}
        rows.append(row)
    for row in rows:
        row["speedup_vs_ours_full"] = full_ms / row["per_layer_ms"]
        print(json.dumps(row), flush=True)
    return rows


def decode_layers(args, out: list, copy_gbps: float) -> None:
    for s in args.decode_seqlens:
        out.extend(decode_layer_rows(s, args, copy_gbps))
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[4096, 16384, 32768, 65536])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--sparse-seqlens", type=int, nargs="+", default=[32768])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9, 0.95])
    parser.add_argument("--flex-configs", choices=("quick", "full"), default="full",
                        help="quick: compiled default and max-autotune; full: also explicit kernel_options")
    parser.add_argument("--decode-seqlens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--decode-splits", type=int, nargs="*", default=[8, 33, 66])
    parser.add_argument("--budgets", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--quest-pages", type=int, nargs="*", default=[32, 64],
                        help="extra Quest page sizes timed end to end")
    parser.add_argument("--sections", nargs="+",
                        default=["checks", "decode", "decode_layers", "dense", "sparse"])
    parser.add_argument("--commit", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "kernels.json")
    args = parser.parse_args(argv)
    meta = gpu_run_metadata(args.commit)
    if meta is None:
        print("needs a CUDA device", file=sys.stderr)
        return 2
    payload = {"meta": meta, "setup": {"batch": 1, "q_heads": HQ, "kv_heads": HKV, "dtype": "bfloat16",
                                       "causal": True, "sparse_block": 128, "quest_page": 16,
                                       "sdpa_configs": SDPA_BACKENDS,
                                       "flex_configs": flex_options(args.flex_configs)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write():
        args.out.write_text(json.dumps(payload, indent=2) + "\n")

    start = time.time()
    payload["copy_bandwidth"] = copy_bandwidth()
    print(json.dumps(payload["copy_bandwidth"]), flush=True)
    for section in args.sections:
        t0 = time.time()
        if section == "checks":
            payload["checks"] = checks()
            for r in payload["checks"]:
                print(("PASS " if r["passed"] else "FAIL ") + json.dumps(r), flush=True)
        else:
            payload[section] = []
            try:
                if section in ("decode", "decode_layers"):
                    fn = decode if section == "decode" else decode_layers
                    fn(args, payload[section], payload["copy_bandwidth"]["gb_per_s"])
                else:
                    {"dense": dense, "sparse": sparse}[section](args, payload[section])
            except Exception as exc:  # noqa: BLE001 - keep what was measured
                payload[f"{section}_error"] = f"{type(exc).__name__}: {exc}"
                print(f"{section} failed: {payload[section + '_error']}", flush=True)
        payload.setdefault("section_seconds", {})[section] = round(time.time() - t0, 1)
        write()
        torch.cuda.empty_cache()
    print(f"total {time.time() - start:.0f}s")
    return 1 if any(not r["passed"] for r in payload.get("checks", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
