"""Probe (not yet adopted): Quest's per-row top-k with 16 buckets per round instead of one bisection pivot.

    TRITON_INTERPRET=1 python bench/probe_select_buckets.py --check          # correctness, on the CPU
    python bench/probe_select_buckets.py --check --time --out $OUT/select_buckets.json   # H200

Why: at 128k tokens with pages of 16, ``kernels.quest.select_topk`` (one program per row, a value bisection
of ~13-20 rounds, each a block-wide count) took 15.7 us of Quest's ~40 us step (kernels_h200.json). Here each
round splits the candidate range into 16 buckets and counts all of them in one reduction (four int64 words
holding four 16-bit counts each), so ~4 rounds replace ~13. Exactness does not rest on float thresholds:
the bucket index ``clamp(floor((s - lo) * 16 / (hi - lo)))`` is a monotone function of ``s`` (IEEE
subtraction and multiplication round monotonically), so "bucket >= j" is always an upper set of the row and
its size is exactly the counted one. The candidates are kept as a mask; ties and ranges below float
resolution finish with the same exact key bisection as ``select_topk``. If ``--time`` shows it faster on the
H200, it replaces the bisection in ``kernels/quest.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
try:
    from sparsa.kernels.quest import _order_key, select_topk, select_topk_ref
except ImportError:  # a bare GPU machine: import the folder as a package
    from kernels.quest import _order_key, select_topk, select_topk_ref

NB = 16  # buckets per round: four 16-bit counts in each of four int64 words
MAX_ROUNDS = 8


@triton.jit
def _add4(a0, a1, a2, a3, b0, b1, b2, b3):
    return a0 + b0, a1 + b1, a2 + b2, a3 + b3


@triton.jit
def _bucket_topk_kernel(S, OUT, CNT, n, k, NP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, NP)
    valid = offs < n
    s = tl.load(S + row * n + offs, mask=valid, other=float("-inf"))
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 -> +0.0, so the value and key orders agree
    key = _order_key(s.to(tl.int32, bitcast=True))
    finite = valid & (tl.abs(s) < float("inf"))
    lo = tl.min(tl.where(finite, s, float("inf")), 0)
    hi = tl.max(tl.where(finite, s, float("-inf")), 0)
    cand = valid  # invariant: an upper set of the row holding the top k; n_ge = its size >= k
    n_ge = n
    rounds = 0
    while (lo < hi) & (n_ge != k) & (rounds < 8):
        width = (hi - lo) / 16.0
        b = tl.minimum(tl.maximum((s - lo) * (16.0 / (hi - lo)), 0.0), 15.0).to(tl.int32)
        one = tl.full([NP], 1, tl.int64) << (16 * (b % 4)).to(tl.int64)
        word = b // 4
        w0, w1, w2, w3 = tl.reduce((tl.where(cand & (word == 0), one, 0), tl.where(cand & (word == 1), one, 0),
                                    tl.where(cand & (word == 2), one, 0), tl.where(cand & (word == 3), one, 0)),
                                   0, _add4)
        # The highest bucket j whose suffix count (#candidates in buckets >= j) still reaches k.
        above = n_ge * 0
        j_star = 0
        c_star = n_ge
        found = n_ge < 0
        for j in tl.static_range(15, -1, -1):
            if j >= 12:
                w = w3
            elif j >= 8:
                w = w2
            elif j >= 4:
                w = w1
            else:
                w = w0
            above += ((w >> (16 * (j % 4))) & 0xFFFF).to(tl.int32)
            hit = (above >= k) & ~found
            j_star = tl.where(hit, j, j_star)
            c_star = tl.where(hit, above, c_star)
            found = found | hit
        cand = cand & (b >= j_star)
        n_ge = c_star
        new_lo = lo + j_star * width
        hi = tl.where(j_star == 15, hi, lo + (j_star + 1) * width)
        lo = new_lo
        rounds += 1
    # Exact finish over the keys of the candidates (ties, adjacent floats, infinities).
    lo_key = tl.min(tl.where(cand, key, 2147483647), 0)
    hi_key = tl.max(tl.where(cand, key, -2147483648), 0)
    while (lo_key < hi_key) & (n_ge != k):
        mid = lo_key + (hi_key - lo_key + 1) // 2
        count = tl.sum((cand & (key >= mid)).to(tl.int32), 0)
        enough = count >= k
        lo_key = tl.where(enough, mid, lo_key)
        hi_key = tl.where(enough, hi_key, mid - 1)
        n_ge = tl.where(enough, count, n_ge)
    over = cand & (key > lo_key)
    tie = cand & (key == lo_key)
    n_over = tl.sum(over.to(tl.int32), 0)
    take = over | (tie & (tl.cumsum(tie.to(tl.int32), 0) <= k - n_over))
    pos = tl.cumsum(take.to(tl.int32), 0) - 1
    tl.store(OUT + row * k + pos, offs.to(tl.int64), mask=take)
    tl.store(CNT + row, k)


def select_topk_buckets(scores: torch.Tensor, k: int) -> torch.Tensor:
    """As ``kernels.quest.select_topk``: int64 ``[..., k]`` positions of each row's k largest, ascending."""
    n = scores.shape[-1]
    if not 1 <= k <= n or n > 16384 or scores.dtype != torch.float32:
        raise ValueError(f"need float32 rows of at most 16384 and 1 <= k <= n: {tuple(scores.shape)}, k={k}")
    rows = scores.reshape(-1, n).contiguous()
    out = torch.empty(rows.shape[0], k, dtype=torch.int64, device=scores.device)
    cnt = torch.empty(rows.shape[0], dtype=torch.int32, device=scores.device)
    _bucket_topk_kernel[(rows.shape[0],)](rows, out, cnt, n, k, NP=max(16, triton.next_power_of_2(n)),
                                         num_warps=8 if n > 4096 else 4)
    return out.view(*scores.shape[:-1], k)


def _cases(device: str):
    """(name, scores, k): spread values, heavy ties, infinities (Quest's sink/newest pages), tiny ranges."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    quest_like = rand(8, 8192)
    quest_like[:, [0, -1]] = float("inf")
    tied = torch.randint(0, 5, (4, 1000), generator=g).float()
    narrow = 1.0 + rand(3, 777) * 1e-6
    mixed = rand(2, 300)
    mixed[:, ::7] = float("-inf")
    mixed[0, 5] = -0.0
    cases = [("quest-like 8x8192", quest_like, 256), ("pages64 8x2048", rand(8, 2048), 64),
             ("ties 4x1000", tied, 100), ("narrow 3x777", narrow, 50), ("-inf/-0 2x300", mixed, 40),
             ("k=1", rand(2, 513), 1), ("k=n", rand(2, 64), 64)]
    return [(name, x.to(device), k) for name, x, k in cases]


def check(device: str) -> list[dict]:
    rows = []
    for name, scores, k in _cases(device):
        picked = select_topk_buckets(scores, k)
        # Same multiset of values as torch.topk, positions ascending and unique; ties to the lowest positions.
        same_values = torch.equal(scores.gather(-1, picked).sort(-1).values,
                                  scores.gather(-1, select_topk_ref(scores, k)).sort(-1).values)
        ascending = bool((picked.diff(dim=-1) > 0).all()) if k > 1 else True
        same_as_bisection = torch.equal(picked, select_topk(scores, k))  # the same tie rule
        rows.append({"case": name, "k": k, "same_values_as_topk": same_values, "ascending_unique": ascending,
                     "same_positions_as_select_topk": same_as_bisection,
                     "passed": same_values and ascending and same_as_bisection})
        print(("PASS " if rows[-1]["passed"] else "FAIL ") + json.dumps(rows[-1]), flush=True)
    return rows


def time_rows() -> list[dict]:
    """CUDA-graph replay times (median of do_bench) of both selects on Quest's shapes at 128k tokens."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_attention import _bench
    from bench_kernels_h200 import _graphed

    rows = []
    for pages, k in ((8192, 256), (8192, 128), (4096, 128), (2048, 64)):
        scores = torch.randn(8, pages, device="cuda")
        us = {name: 1e3 * _bench(_graphed(lambda f=f, x=scores, k=k: f(x, k)))
              for name, f in (("bisection", select_topk), ("buckets", select_topk_buckets))}
        rows.append({"rows": 8, "pages": pages, "k": k, "us": us, "speedup": us["bisection"] / us["buckets"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--time", action="store_true", help="needs CUDA")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET=1)"}
    if args.check:
        result["checks"] = check(device)
    if args.time:
        result["timings"] = time_rows()
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any(not r["passed"] for r in result.get("checks", [])) else 0


if __name__ == "__main__":
    sys.exit(main())
