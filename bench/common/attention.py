"""The attention benches' baselines (``bench_attention.py``, ``bench_kernels_h200.py``), each in every
configuration a user could pick, so ours is compared with the fastest:

- PyTorch SDPA: ``default`` (no ``sdpa_kernel`` context: torch's own backend choice) and each backend forced
  alone (``cudnn``, ``flash``, ``efficient``), with ``enable_gqa=True`` or, where the backend refuses it,
  K/V expanded to the query heads outside the timed call;
- FlexAttention compiled with fullgraph on the same kept blocks as ours (``flex_block_mask``), in the
  configurations of ``flex_options``; one whose output is off ours is recorded as unavailable.

Also the inputs both benches time: random causal block masks (sink + diagonal always kept) and the
"useful" FLOPs inside kept blocks. Timings are medians of ``triton.testing.do_bench``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import triton

from common import run_metadata

TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3}  # relative Frobenius error


def gpu_run_metadata(commit: str = "") -> dict | None:
    """``run_metadata`` of an attention bench with the card and the CUDA version; None without a CUDA device.
    ``commit`` (the script's ``--commit``) wins over the checkout's: the GPU machine's copy of the tree may
    carry no .git or a stale one."""
    if not torch.cuda.is_available():
        return None
    meta = run_metadata(("torch", "triton"))
    meta["git_commit"] = commit or meta["git_commit"]
    meta["hardware"]["gpu"] = torch.cuda.get_device_name()
    meta["versions"]["cuda"] = torch.version.cuda
    return meta


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


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


def median_ms(fn) -> float:
    """Median ms of ``fn`` under ``triton.testing.do_bench`` after one synchronized run."""
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def error_text(exc: BaseException) -> str:
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
            out.ms[name] = median_ms(config["fn"])
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


def expand_kv(q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V with each KV head repeated for its query heads (``[B, Hq, S, D]``): the "expanded-kv" GQA
    mode, for a backend that refuses ``enable_gqa``."""
    return tuple(t.repeat_interleave(q.shape[1] // k.shape[1], 1) for t in (k, v))


def sdpa_call(q, k, v, name: str, gqa: str):
    """The causal SDPA call of ``SDPA_BACKENDS[name]``, not yet run; ``gqa``: "enable_gqa" or "expanded-kv"
    (K and V expanded here, outside the call), as :func:`sdpa_configs` found the backend needs."""
    if gqa == "expanded-kv":
        k, v = expand_kv(q, k, v)
    return _sdpa_call(q, k, v, SDPA_BACKENDS[name], gqa == "enable_gqa")


def _ran(fn):
    """``fn`` after one synchronized run: raises where it cannot run."""
    fn()
    torch.cuda.synchronize()
    return fn


def sdpa_configs(q, k, v) -> dict[str, dict]:
    """Every SDPA configuration of ``SDPA_BACKENDS``, run once for causal attention: name -> {"fn", "backend",
    "gqa"}, or {"error": text} where it cannot run at all. Each tries ``enable_gqa=True`` first; where that
    raises RuntimeError, K and V are expanded to the query heads (:func:`expand_kv`) here, outside the
    timed call ("gqa": "expanded-kv")."""
    expanded: tuple[torch.Tensor, ...] = ()  # built on first need, shared by the backends
    configs = {}
    for name, backend in SDPA_BACKENDS.items():
        how = {"backend": backend or "torch's choice"}
        try:
            try:
                configs[name] = {"fn": _ran(_sdpa_call(q, k, v, backend, True)), **how, "gqa": "enable_gqa"}
            except RuntimeError:
                expanded = expanded or expand_kv(q, k, v)
                fn = _ran(_sdpa_call(q, *expanded, backend, False))
                configs[name] = {"fn": fn, **how, "gqa": "expanded-kv"}
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run is recorded, not fatal
            configs[name] = {"error": error_text(exc)}
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
                self.rejected[key] = error_text(exc)
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
            err = None if out is None else rel_err(out, reference)
            if err is not None and err > 2 * TOLERANCE[q.dtype]:
                error = f"relative difference {err:.2e} from ours"
            how = {"compile_mode": mode, "kernel_options": options, "rel_diff_vs_ours": err}
            configs[name] = {"error": error} if error else {"fn": fn, **how}
        return configs
