"""Probe: full decode per layer (bench_kernels_h200's ``decode_layers`` measure) for each launch config x split count.

Times ``decode_attention`` the way a model runs decode: one CUDA graph over a stack of layers, no L2 flush. It
chose ``kernels/sparse_decode.py``'s ``LAUNCH`` and its one-wave split count (the first run swept the five
configs the kernel was then autotuned over, plus the rest of the list below).

    python3 bench/probe_decode_configs.py --out $OUT/decode_configs.json     (H200; ~1 min per head dim)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_kernels_h200 import HKV, HQ, _per_layer_ms, copy_bandwidth, layer_copy_ms, sd

CONFIGS = [(64, 4, 2), (64, 4, 3), (128, 4, 3), (128, 8, 3), (32, 4, 4),  # (BLOCK_N, num_warps, num_stages)
           (128, 4, 2), (64, 4, 4), (64, 8, 2), (32, 2, 4), (128, 8, 2), (64, 2, 3)]


def sweep(s: int, d: int, splits: list[int | None], stack_bytes: int) -> list[dict]:
    kv_bytes = 2 * HKV * s * d * 2
    n_layers = max(2, stack_bytes // kv_bytes)
    q = torch.randn(1, HQ, d, device="cuda", dtype=torch.bfloat16)
    layers = [tuple(torch.randn(1, HKV, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
              for _ in range(n_layers)]
    copy_ms = layer_copy_ms(kv_bytes, n_layers)
    rows = []
    for bn, warps, stages in CONFIGS:
        sd.LAUNCH = {"BLOCK_N": bn, "num_warps": warps, "num_stages": stages}
        for n in splits:
            try:
                ms = _per_layer_ms([lambda k=k, v=v, n=n: sd.decode_attention(q, k, v, num_splits=n)
                                    for k, v in layers])
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory; keep sweeping
                print(f"{sd.LAUNCH} splits {n}: {type(exc).__name__}", flush=True)
                continue
            rows.append({"seqlen": s, "head_dim": d, "layers": n_layers, "launch": dict(sd.LAUNCH),
                         "splits": n or "auto", "per_layer_us": 1e3 * ms, "kv_gb_per_s": kv_bytes / ms * 1e-6,
                         "fraction_of_same_size_copy": copy_ms / ms})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128])
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 16, 24, 33, 48, 66, 99, 132],
                        help="0 = the automatic count")
    parser.add_argument("--stack-gib", type=float, default=8.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    chosen = dict(sd.LAUNCH)
    result = {"device": torch.cuda.get_device_name(), "chosen_launch": chosen, "copy_bandwidth": copy_bandwidth(),
              "rows": []}
    print(json.dumps(result["copy_bandwidth"]), flush=True)
    try:
        for d in args.head_dims:
            for s in args.seqlens:
                result["rows"] += sweep(s, d, [n or None for n in args.splits], int(args.stack_gib * (1 << 30)))
                torch.cuda.empty_cache()
    finally:
        sd.LAUNCH = chosen
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    for d in args.head_dims:
        for s in args.seqlens:
            rows = [r for r in result["rows"] if (r["seqlen"], r["head_dim"]) == (s, d)]
            best = max(rows, key=lambda r: r["kv_gb_per_s"], default=None)
            auto = next((r for r in rows if r["launch"] == chosen and r["splits"] == "auto"), None)
            for label, r in (("best", best), ("chosen", auto)):
                if r:
                    print(f"{label} d={d} S={s}: {r['launch']} splits {r['splits']}: {r['per_layer_us']:.1f} us, "
                          f"{r['kv_gb_per_s']:.0f} GB/s = {r['kv_gb_per_s'] / result['copy_bandwidth']['gb_per_s']:.1%}"
                          f" of the 4 GiB copy, {r['fraction_of_same_size_copy']:.1%} of the same-size copy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
