"""A fused CPU kernel for the bf16 screen of SPLADE pooling: ``max_t hidden[b, t] . weight[v]`` in one pass.

The torch screen (``splade_pooling._chunked_max_logits``) writes a ``[tokens, chunk]`` bf16 logits
block per vocabulary chunk and max-pools it in a second pass; on a 2-core AVX512 machine the max
pass cost almost as much as the matmul (bf16 ``amax`` runs through fp32 conversions). This kernel
multiplies with AVX512-BF16 ``vdpbf16ps`` (bf16 pairs, fp32 accumulation) into a register tile of
4 tokens x 64 vocabulary rows and folds the tile into running maxima at once, so no logits are
stored. Products are the same bf16 x bf16 products the torch screen forms, accumulated in fp32
and never rounded to bf16 (so the screen's bound, which allows for that rounding, still holds).

Built on first use with ``torch.utils.cpp_extension.load_inline`` (g++ with ``-mavx512bf16``;
cached by torch under ``TORCH_EXTENSIONS_DIR``); :func:`fused_max_logits_available` is False when
the CPU lacks AVX512-BF16, there is no compiler, or the build fails, and callers then keep the torch
path.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

VOCAB_TILE = 64  # vocabulary rows per register tile (4 zmm of 16 fp32 lanes)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <limits>

// hidden: bf16 [B, L, D] contiguous (D even); start/end: int32 [B]; packed: bf16 [V/64*4, D/2, 16, 2]
// (vocabulary rows in groups of 16, pairs of dimensions interleaved: the vdpbf16ps layout).
// Returns float32 [B, V]: max over t in [start_b, end_b) of sum_d hidden[b, t, d] * weight[v, d]
// (0 for rows with an empty range).
torch::Tensor max_logits(torch::Tensor hidden, torch::Tensor start, torch::Tensor end,
                         torch::Tensor packed, int64_t vocab_chunk) {
  TORCH_CHECK(hidden.scalar_type() == at::kBFloat16 && packed.scalar_type() == at::kBFloat16);
  TORCH_CHECK(hidden.is_contiguous() && packed.is_contiguous() && hidden.dim() == 3);
  const int64_t B = hidden.size(0), L = hidden.size(1), D = hidden.size(2);
  const int64_t pairs = D / 2;
  TORCH_CHECK(D % 2 == 0 && packed.size(1) == pairs && packed.size(0) % 4 == 0);
  const int64_t tiles = packed.size(0) / 4;  // 64-row vocabulary tiles
  const int64_t V = tiles * 64;
  auto out = torch::zeros({B, V}, hidden.options().dtype(at::kFloat));
  const int32_t* s = start.data_ptr<int32_t>();
  const int32_t* e = end.data_ptr<int32_t>();
  const uint32_t* h = reinterpret_cast<const uint32_t*>(hidden.data_ptr<at::BFloat16>());  // bf16 pairs
  const __m512i* w = reinterpret_cast<const __m512i*>(packed.data_ptr<at::BFloat16>());
  float* o = out.data_ptr<float>();
  const int64_t chunk_tiles = std::max<int64_t>(1, vocab_chunk / 64);
  const int64_t chunks = (tiles + chunk_tiles - 1) / chunk_tiles;
  at::parallel_for(0, B * chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t b = item / chunks, c = item % chunks;
      const int64_t t0 = s[b], t1 = e[b];
      if (t1 <= t0) continue;
      const uint32_t* hb = h + b * L * pairs;
      for (int64_t tile = c * chunk_tiles; tile < std::min(tiles, (c + 1) * chunk_tiles); ++tile) {
        const __m512i* wt = w + tile * 4 * pairs;  // 4 groups of 16 rows, each [pairs] zmm
        __m512 m0 = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0, m2 = m0, m3 = m0;
        for (int64_t t = t0; t < t1; t += 4) {
          // A short last group repeats the last token (a max over duplicates is unchanged).
          const uint32_t* r0 = hb + t * pairs;
          const uint32_t* r1 = hb + std::min(t + 1, t1 - 1) * pairs;
          const uint32_t* r2 = hb + std::min(t + 2, t1 - 1) * pairs;
          const uint32_t* r3 = hb + std::min(t + 3, t1 - 1) * pairs;
          __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
          __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
          __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
          __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;
          for (int64_t k = 0; k < pairs; ++k) {
            const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wt + k);
            const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wt + pairs + k);
            const __m512bh w2 = (__m512bh)_mm512_loadu_si512(wt + 2 * pairs + k);
            const __m512bh w3 = (__m512bh)_mm512_loadu_si512(wt + 3 * pairs + k);
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)r0[k]);
            a00 = _mm512_dpbf16_ps(a00, x, w0); a01 = _mm512_dpbf16_ps(a01, x, w1);
            a02 = _mm512_dpbf16_ps(a02, x, w2); a03 = _mm512_dpbf16_ps(a03, x, w3);
            x = (__m512bh)_mm512_set1_epi32((int)r1[k]);
            a10 = _mm512_dpbf16_ps(a10, x, w0); a11 = _mm512_dpbf16_ps(a11, x, w1);
            a12 = _mm512_dpbf16_ps(a12, x, w2); a13 = _mm512_dpbf16_ps(a13, x, w3);
            x = (__m512bh)_mm512_set1_epi32((int)r2[k]);
            a20 = _mm512_dpbf16_ps(a20, x, w0); a21 = _mm512_dpbf16_ps(a21, x, w1);
            a22 = _mm512_dpbf16_ps(a22, x, w2); a23 = _mm512_dpbf16_ps(a23, x, w3);
            x = (__m512bh)_mm512_set1_epi32((int)r3[k]);
            a30 = _mm512_dpbf16_ps(a30, x, w0); a31 = _mm512_dpbf16_ps(a31, x, w1);
            a32 = _mm512_dpbf16_ps(a32, x, w2); a33 = _mm512_dpbf16_ps(a33, x, w3);
          }
          m0 = _mm512_max_ps(m0, _mm512_max_ps(_mm512_max_ps(a00, a10), _mm512_max_ps(a20, a30)));
          m1 = _mm512_max_ps(m1, _mm512_max_ps(_mm512_max_ps(a01, a11), _mm512_max_ps(a21, a31)));
          m2 = _mm512_max_ps(m2, _mm512_max_ps(_mm512_max_ps(a02, a12), _mm512_max_ps(a22, a32)));
          m3 = _mm512_max_ps(m3, _mm512_max_ps(_mm512_max_ps(a03, a13), _mm512_max_ps(a23, a33)));
        }
        float* ob = o + b * V + tile * 64;
        _mm512_storeu_ps(ob, m0); _mm512_storeu_ps(ob + 16, m1);
        _mm512_storeu_ps(ob + 32, m2); _mm512_storeu_ps(ob + 48, m3);
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("max_logits", &max_logits); }
"""

_lock = threading.Lock()
_module: object | None = None
_failed = False


def _cpu_has_avx512_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512_bf16" in flags.split()


def _load() -> object | None:
    """The compiled extension (built once per process, cached on disk by torch), or None."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    with _lock:
        if _module is not None or _failed:
            return _module
        try:
            if not _cpu_has_avx512_bf16():
                raise RuntimeError("CPU without AVX512-BF16")
            from torch.utils.cpp_extension import load_inline

            flags = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp"]
            _module = load_inline("sparsa_splade_max_logits_v1", cpp_sources=_SOURCE, extra_cflags=flags,
                                  extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler, no ninja, unsupported CPU: the torch path stays
            logger.info("fused bf16 max-logits kernel unavailable (%s); using the torch screen", exc)
            _failed = True
    return _module


def fused_max_logits_available() -> bool:
    """Whether the fused kernel can run here (builds it on the first call)."""
    return _load() is not None


def pack_weight(weight_bf16: torch.Tensor) -> torch.Tensor:
    """``bf16[V, D]`` -> the kernel's layout ``bf16[ceil(V/64)*4, D'/2, 16, 2]`` (zero rows/dims padded)."""
    import torch

    vocab, dim = weight_bf16.shape
    padded_v = -(-vocab // VOCAB_TILE) * VOCAB_TILE
    padded_d = dim + dim % 2
    w = torch.zeros(padded_v, padded_d, dtype=torch.bfloat16)
    w[:vocab, :dim] = weight_bf16
    # [V/16, 16, D/2, 2] -> [V/16, D/2, 16, 2]
    return w.view(padded_v // 16, 16, padded_d // 2, 2).transpose(1, 2).contiguous()


def fused_max_logits(
    hidden_bf16: torch.Tensor, start: torch.Tensor, end: torch.Tensor, packed: torch.Tensor, vocab: int,
    vocab_chunk: int = 1024,
) -> torch.Tensor:
    """``float32[B, vocab]``: ``max_{t in [start_b, end_b)} hidden[b, t] . weight[v]`` (0 for empty ranges).

    ``hidden_bf16``: ``bf16[B, L, D]``; ``packed``: :func:`pack_weight` of the bf16 weight.
    """
    import torch

    module = _load()
    if module is None:
        raise RuntimeError("fused bf16 max-logits kernel unavailable")
    if hidden_bf16.shape[2] % 2:
        hidden_bf16 = torch.nn.functional.pad(hidden_bf16, (0, 1))
    out = module.max_logits(hidden_bf16.contiguous(), start.to(torch.int32).contiguous(),
                            end.to(torch.int32).contiguous(), packed, vocab_chunk)
    return out[:, :vocab]
