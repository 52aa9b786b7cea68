"""Low-rank adapters (LoRA, Hu et al. 2021) for fine-tuning large backbones cheaply.

``add_lora`` freezes the model and wraps its attention projections with a trainable low-rank
update; ``merge_lora`` folds the update back into the weights and unwraps, leaving a plain model.
"""

from __future__ import annotations

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoRALinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.down = torch.nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device) / rank)
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.down.T.to(x.dtype)) @ self.up.T.to(x.dtype) * self.scale

    def merged(self) -> torch.nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.up @ self.down * self.scale).to(self.base.weight.dtype)
        return self.base


def add_lora(model: torch.nn.Module, rank: int = 16, alpha: float | None = None,
             targets: tuple[str, ...] = TARGETS) -> int:
    """Freeze ``model`` and wrap every ``nn.Linear`` named in ``targets``; returns how many."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, torch.nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha or 2.0 * rank))
                wrapped += 1
    if not wrapped:
        raise ValueError(f"no Linear layers named {targets} to adapt")
    return wrapped


def merge_lora(model: torch.nn.Module) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
