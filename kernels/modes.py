"""The attention modes the kernels run, and the shared defaults, named once.

``hf_attention.SparseAttentionConfig`` validates against them, and ``rag/config.py`` checks a pipeline
file with them; this module imports nothing, so a config check never loads torch.
"""

from __future__ import annotations

PREFILL_MODES = ("dense", "block-sparse")
DECODE_MODES = ("full", "sparse")
KV_MODES = ("full", "duo")
# Dense prefill (short prompts, prefill="dense", or too many kept blocks): "sdpa" = torch's backend choice
# (cuDNN on the H100); "triton" = our kernel, which builds no per-shape plan (cuDNN builds one for every new
# prompt length, and a reader's every request has a new length).
DENSE_KERNELS = ("sdpa", "triton")
# The default is ours: per request it is faster. One H100, Qwen2.5-1.5B's shapes (bench/results/gate.json):
# SDPA's first call at an unseen length costs 47-66 ms (cuDNN's plan; flash 0.1-7 ms, ours 0.2-4.9 ms), so a
# 28-layer prefill (one new length, then 27 warm calls) costs SDPA 58 / 53 / 95 / 163 ms against ours 3.7 /
# 7.4 / 38 / 139 ms at 1.5k / 5.6k / 14k / 28k tokens, though warm cuDNN is faster than ours from ~5k on.
DENSE_KERNEL = "triton"
SELECTORS = ("quest", "tidal")

# Block-sparse prefill starts at this prompt length; shorter prompts prefill with dense SDPA. On one H100 at
# Qwen2.5-1.5B's shapes (bench/results/gate.json) the sparse layer (fused gate + kernel) lost to the fastest
# SDPA at 5,632 tokens at every kept share measured (0.13-0.93 kept: 0.35-0.59x), and won at 14,336 up to
# 0.495 kept (1.24x); RealTime QA prompts keep ~0.55 of their blocks at gate coverage 0.95
# (rag_longcontext_realtimeqa.json: 0.5x attention at 5,312 tokens, 1.11x at 13,066). Fitting the gate.json
# rows (SDPA ~ n^2; kernel ~ kept * n^2; gate and host read ~0.2 ms) puts parity at 0.55 kept near 11.6k.
MIN_SPARSE_TOKENS = 12288
