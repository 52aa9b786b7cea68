"""The attention modes the kernels run, named once.

``hf_attention.SparseAttentionConfig`` validates against them, and ``rag/config.py`` checks a pipeline
file with them; this module imports nothing, so a config check never loads torch.
"""

from __future__ import annotations

PREFILL_MODES = ("dense", "block-sparse")
DECODE_MODES = ("full", "sparse")
KV_MODES = ("full", "duo")
SELECTORS = ("quest", "tidal")
