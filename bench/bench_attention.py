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
import contextlib
import functools
import itertools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
from common import RESULTS, run_metadata

from sparsa.kernels import (
    block_sparse_attention as bsa,  # installed (a wheel of this checkout on the GPU host)
)
from sparsa.kernels.block_gating import attention_block_max, attention_block_max_ref, training_free_gate

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


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def flex_block_mask(mask: torch.Tensor, block: int, seqlen: int):
    """The same kept blocks as a FlexAttention BlockMask: below-diagonal blocks full, diagonal partial.

    The mask_mod is plain causal ``q_idx >= kv_idx``: the compiled kernel skips the blocks the BlockMask
    leaves out and runs the mask_mod on the partial (diagonal) blocks only, so it needs no per-element block
    lookup. Eager ``flex_attention`` ignores the block structure and would compute dense causal attention:
    only the compiled one computes the block-sparse function (``Flex`` compiles with fullgraph=True).
    """
    from torch.nn.attention.flex_attention import BlockMask

    n = mask.shape[-1]
    diag = torch.eye(n, dtype=torch.bool, device=mask.device)

    def ordered(m):
        ar = torch.arange(n, device=m.device, dtype=torch.int32)
        idx = torch.where(m, ar, n).sort(-1).values.clamp_max(n - 1).to(torch.int32)
        return m.sum(-1, dtype=torch.int32), idx

    partial_n, partial_idx = ordered(mask & diag)
    full_n, full_idx = ordered(mask & ~diag)
    return BlockMask.from_kv_blocks(partial_n, partial_idx, full_n, full_idx, BLOCK_SIZE=block,
                                    mask_mod=_causal, seq_lengths=(seqlen, seqlen))


def _bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


@dataclass
class Baselines:
    """One baseline (``prefix``: "sdpa" or "flex") timed in each of its configurations on one input."""

    prefix: str
    ms: dict[str, float] = field(default_factory=dict)  # configuration -> median ms
    fns: dict[str, Callable] = field(default_factory=dict)  # configuration -> zero-argument call
    configs: dict[str, dict] = field(default_factory=dict)  # configuration -> how it ran
    unavailable: dict[str, str] = field(default_factory=dict)  # configuration -> why it could not run

    @classmethod
    def measure(cls, prefix: str, configs: dict[str, dict]) -> Baselines:
        """``configs``: name -> {"fn": zero-argument call, **how it runs} or {"error": text}."""
        out = cls(prefix)
        for name, config in configs.items():
            if "error" in config:
                out.unavailable[name] = config["error"]
                print(f"{prefix}-{name} unavailable: {config['error']}", flush=True)
                continue
            out.fns[name] = config["fn"]
            out.configs[name] = {key: val for key, val in config.items() if key != "fn"}
            out.ms[name] = _bench(config["fn"])
        return out

    @property
    def best(self) -> str | None:
        """The fastest configuration; None where none could run."""
        return min(self.ms, key=self.ms.__getitem__) if self.ms else None

    def summary(self, t_ours: float) -> dict:
        """Ours (``t_ours`` ms) against the fastest configuration, and against the "default" one."""
        p, best, default = self.prefix, self.best, self.ms.get("default")
        return {f"{p}_best": best, f"{p}_best_config": self.configs.get(best),
                f"speedup_vs_{p}": self.ms[best] / t_ours if best else None,
                f"speedup_vs_{p}_default": default / t_ours if default else None}

    def fields(self, t_ours: float) -> dict:
        """``summary`` plus every configuration's ms, how it ran, and those that could not run."""
        p = self.prefix
        return {f"{p}_ms": self.ms, **self.summary(t_ours), f"{p}_configs": self.configs,
                f"{p}_unavailable": self.unavailable}

    def rows(self, point: dict, flops: float, sdpa_ms: float | None) -> list[dict]:
        """One row per configuration (provider ``<prefix>-<name>``) at ``point``; ``sdpa_ms``: best SDPA."""
        rows = [{"provider": f"{self.prefix}-{name}", **point, "error": error}
                for name, error in self.unavailable.items()]
        for name, ms in self.ms.items():
            rows.append({"provider": f"{self.prefix}-{name}", **point, "ms": ms, "tflops": flops / ms * 1e-9,
                         "speedup_vs_sdpa": sdpa_ms / ms if sdpa_ms else None,
                         "baseline": self.configs[name]})
        return rows

    def max_abs_err(self, out: torch.Tensor) -> float | None:
        """Max abs difference between ``out`` and the fastest configuration's output."""
        best = self.best
        return float((out.float() - self.fns[best]().float()).abs().max()) if best else None


# "default": no sdpa_kernel context (torch's own choice); the others force one SDPBackend alone.
SDPA_BACKENDS = {"default": None, "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION"}


def _sdpa_call(q, k, v, backend: str | None, enable_gqa: bool):
    """A zero-argument causal SDPA call, forced to ``SDPBackend.<backend>`` (None: torch's choice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    forced = None if backend is None else getattr(SDPBackend, backend)
    kwargs = {"is_causal": True, "enable_gqa": True} if enable_gqa else {"is_causal": True}

    def run():
        with contextlib.nullcontext() if forced is None else sdpa_kernel(forced):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)

    return run


def _ran(fn):
    """``fn`` after one synchronized run: raises where it cannot run."""
    fn()
    torch.cuda.synchronize()
    return fn


def sdpa_configs(q, k, v) -> dict[str, dict]:
    """Every SDPA configuration of ``SDPA_BACKENDS``, run once for causal attention: name -> {"fn", "backend",
    "gqa"}, or {"error": text} where it cannot run at all. Each tries ``enable_gqa=True`` first; where that
    raises RuntimeError, K and V are expanded to the query heads with ``repeat_interleave`` here, outside the
    timed call ("gqa": "expanded-kv")."""
    expanded: list[torch.Tensor] = []  # built on first need, shared by the backends
    configs = {}
    for name, backend in SDPA_BACKENDS.items():
        how = {"backend": backend or "torch's choice"}
        try:
            try:
                configs[name] = {"fn": _ran(_sdpa_call(q, k, v, backend, True)), **how, "gqa": "enable_gqa"}
            except RuntimeError:
                expanded = expanded or [t.repeat_interleave(q.shape[1] // k.shape[1], 1) for t in (k, v)]
                fn = _ran(_sdpa_call(q, *expanded, backend, False))
                configs[name] = {"fn": fn, **how, "gqa": "expanded-kv"}
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run is recorded, not fatal
            configs[name] = {"error": _error_text(exc)}
    return configs


FLEX_TILES = ((128, 64), (64, 64), (128, 128))  # (BLOCK_M, BLOCK_N): both divide the BlockMask's block 128


def flex_options(kind: str) -> dict[str, tuple[str, dict | None]]:
    """FlexAttention configurations: name -> (torch.compile mode, kernel_options). "quick": the compiled
    default and max-autotune (inductor benchmarks its own list of tiles); "full" adds explicit tiles
    (BLOCK_M x BLOCK_N of FLEX_TILES, num_warps 4/8, num_stages 2/3), TMA loads (USE_TMA) and the
    CuTe DSL flash backend (BACKEND="FLASH", which needs flash-attn's cute package)."""
    options: dict[str, tuple[str, dict | None]] = {"default": ("default", None),
                                                    "max-autotune": ("max-autotune-no-cudagraphs", None)}
    if kind == "full":
        for (m, n), warps, stages in itertools.product(FLEX_TILES, (4, 8), (2, 3)):
            tile = {"BLOCK_M": m, "BLOCK_N": n, "num_warps": warps, "num_stages": stages}
            options[f"m{m}-n{n}-w{warps}-s{stages}"] = ("default", tile)
        options["tma"] = ("default", {"USE_TMA": True})
        options["flash-backend"] = ("default", {"BACKEND": "FLASH"})
    return options


class Flex:
    """FlexAttention compiled once per torch.compile mode of ``flex_options(kind)``, with fullgraph=True: a
    compile that fails (or would pass the recompile limit) raises instead of falling back to eager."""

    def __init__(self, kind: str, n_shapes: int):
        from torch.nn.attention import flex_attention as fa

        self.options = flex_options(kind)
        typed = getattr(fa, "FlexKernelOptions", None)  # the kernel_options keys this torch documents
        self.known_keys = None if typed is None else typed.__required_keys__ | typed.__optional_keys__
        limit = 2 * len(self.options) * n_shapes  # one compiled graph per configuration and input shape
        dynamo = torch._dynamo.config
        dynamo.cache_size_limit = max(64, dynamo.cache_size_limit, limit)
        dynamo.accumulated_cache_size_limit = max(dynamo.accumulated_cache_size_limit, limit)
        self.compiled = {mode: torch.compile(fa.flex_attention, dynamic=False, fullgraph=True, mode=mode)
                         for mode in {mode for mode, _ in self.options.values()}}
        self.rejected: dict[tuple, str] = {}  # (configuration, q shape, k shape) -> why it failed

    def _run_once(self, key: tuple, fn, options: dict | None):
        """``(fn(), None)``, or ``(None, why)`` where this torch rejects ``options`` or ``fn`` fails to
        compile or run; a failure is remembered per ``key`` (configuration and shapes), not retried."""
        if key not in self.rejected:
            try:
                unknown = [] if self.known_keys is None else sorted(set(options or ()) - self.known_keys)
                if unknown:
                    raise ValueError(f"kernel_options {unknown} unknown to torch {torch.__version__}")
                return fn(), None
            except Exception as exc:  # noqa: BLE001 - a rejected configuration is recorded and skipped
                self.rejected[key] = _error_text(exc)
        return None, self.rejected[key]

    def configs(self, q, k, v, block_mask, reference: torch.Tensor) -> dict[str, dict]:
        """Each configuration compiled and run once: name -> {"fn", "compile_mode", "kernel_options",
        "rel_diff_vs_ours"}, or {"error": text} where it is rejected (``_run_once``) or its output is more
        than 2x the check tolerance of its dtype away from ``reference`` (ours on the same kept blocks)."""
        configs = {}
        for name, (mode, options) in self.options.items():
            fn = functools.partial(self.compiled[mode], q, k, v, block_mask=block_mask, enable_gqa=True,
                                   kernel_options=options)
            out, error = self._run_once((name, q.shape, k.shape), fn, options)
            err = None if out is None else _rel_err(out, reference)
            if err is not None and err > 2 * TOLERANCE[q.dtype]:
                error = f"relative difference {err:.2e} from ours"
            how = {"compile_mode": mode, "kernel_options": options, "rel_diff_vs_ours": err}
            configs[name] = {"error": error} if error else {"fn": fn, **how}
        return configs


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

                t, out = _bench(ours), ours()
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
                        print(f"flex failed at d={d} s={s} sparsity={sparsity}: {_error_text(exc)}")
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
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    meta = run_metadata(("torch", "triton"))
    meta["git_commit"] = meta["git_commit"] or args.commit
    meta["hardware"]["gpu"] = torch.cuda.get_device_name()
    meta["versions"]["cuda"] = torch.version.cuda
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
