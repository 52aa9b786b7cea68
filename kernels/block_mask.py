"""The compact block mask the gates make and the block-sparse kernel reads: per query block, the sorted
indices of the KV blocks it keeps (``block_gating``, ``gate_select`` and ``attention_ops`` make or read it;
``block_sparse_attention`` walks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeptBlocks:
    """Compact block mask: for each query block, the sorted KV block indices it keeps.

    ``indices``: int32 ``[B, Hm, n_q_blocks, max_kept]`` (entries past ``counts`` are ignored);
    ``counts``: int32 ``[B, Hm, n_q_blocks]``.
    """

    indices: torch.Tensor
    counts: torch.Tensor

    @staticmethod
    def from_mask(mask: torch.Tensor) -> KeptBlocks:
        """Convert a boolean ``[B, Hm, n_q_blocks, n_k_blocks]`` mask (True = keep)."""
        if mask.dtype != torch.bool or mask.dim() != 4:
            raise ValueError(f"block mask must be a 4-d bool tensor, got {mask.dtype} {tuple(mask.shape)}")
        counts = mask.sum(-1, dtype=torch.int32)
        n_k_blocks = mask.shape[-1]
        # Kept blocks get their own index, dropped ones a sentinel past the end; sorting puts kept first.
        ar = torch.arange(n_k_blocks, device=mask.device, dtype=torch.int32)
        keyed = torch.where(mask, ar, torch.full_like(ar, n_k_blocks))
        indices = keyed.sort(-1).values.to(torch.int32)
        max_kept = max(int(counts.max()), 1) if counts.numel() else 1
        return KeptBlocks(indices[..., :max_kept].contiguous(), counts.contiguous())

    def to_mask(self, n_k_blocks: int) -> torch.Tensor:
        """The boolean ``[B, Hm, n_q_blocks, n_k_blocks]`` mask these indices describe."""
        valid = torch.arange(self.indices.shape[-1], device=self.indices.device) < self.counts[..., None]
        mask = torch.zeros(*self.counts.shape, n_k_blocks + 1, dtype=torch.bool, device=self.indices.device)
        idx = torch.where(valid, self.indices.long().clamp(0, n_k_blocks), n_k_blocks)
        mask.scatter_(-1, idx, True)
        return mask[..., :n_k_blocks]
