"""What every trainer shares: seeding, AdamW with a linear warm-up / decay schedule, the optimiser step
(gradient clipping), bf16 autocast on CUDA, the shuffled order of training items, atomic checkpoints,
and LoRA adapters through ``peft``.

Each trainer keeps its own loop (its loss, batching, records) and builds it from these pieces:
``retrieval/splade_train.py``, ``retrieval/dense_train.py``, ``retrieval/event_train.py``,
``rerank/training.py`` (TILDE and TILDEv2), ``judge/train.py`` and ``kg/amar_train.py`` (Amar's LoRA:
``kg/amar.py``). Progress bars are :func:`sparsa.progress.progress_bar`.

Typical use::

    seed_everything(config.seed)
    stepper = Stepper(*make_optimizer(params, config.lr, warmup_steps=100, total_steps=config.steps))
    for step in range(config.steps):
        with autocast(device):
            loss = ...
        stepper.step(loss)

torch and peft load inside the functions, so ``import sparsa.training`` stays light.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsa.errors import ConfigError, require
from sparsa.sdpa_backends import without_cudnn

if TYPE_CHECKING:
    import torch

# LoRA's default targets: a decoder's attention projections (Llama / Mistral / Qwen / SmolLM names).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup_steps: int = 0, total_steps: int | None = None) -> float:
    """The learning rate's multiplier for optimiser step ``step`` (0-based): a linear warm-up
    ``(step + 1) / warmup_steps`` (0 or 1: none), then a linear decay reaching 0 at ``total_steps``;
    ``total_steps=None`` keeps the full rate after the warm-up."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    return warm if total_steps is None else warm * max(0.0, 1.0 - step / total_steps)


def make_optimizer(params: Iterable[Any], lr: float, *, weight_decay: float = 0.01, warmup_steps: int = 0,
                   total_steps: int | None = None, fused: bool = False):
    """AdamW over ``params`` (tensors or param-group dicts, which may set their own ``lr``) and a
    ``LambdaLR`` following :func:`lr_factor`; the defaults give a constant rate. ``fused``: one kernel
    for the whole update (CUDA). Returns ``(optimizer, schedule)``."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps))
    return optimizer, schedule


class Stepper:
    """One optimiser step per :meth:`step`: zero the gradients, backward, clip the gradient norm of the
    optimiser's parameters to ``max_grad_norm`` (None: no clipping), step the optimiser and ``schedule``
    (None: the caller sets the rate). ``steps`` counts the steps taken, resumed ones included."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Any = None,
                 max_grad_norm: float | None = 1.0):
        self.optimizer, self.schedule, self.max_grad_norm = optimizer, schedule, max_grad_norm
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.steps = 0

    def step(self, loss: torch.Tensor) -> None:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        with without_cudnn(loss.device):  # gradient checkpointing re-runs forward passes in here
            loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        self.steps += 1

    def state_dict(self) -> dict:
        """``{"step", "optimizer", "schedule"}``, for :func:`save_checkpoint`."""
        return {"step": self.steps, "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` gave (a checkpoint without a schedule keeps the fresh one)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("schedule") and self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        self.steps = state["step"]


def autocast(device: str | torch.device):
    """bfloat16 autocast on CUDA (the weights stay float32), with SDPA off cuDNN (each batch has a new shape,
    and cuDNN plans every new shape: ``sparsa/sdpa_backends.py``); elsewhere nothing, so CPU training is
    float32."""
    import torch

    if torch.device(device).type != "cuda":
        return nullcontext()
    return _cuda_autocast(device)


@contextmanager
def _cuda_autocast(device: str | torch.device):
    import torch

    with torch.autocast("cuda", dtype=torch.bfloat16), without_cudnn(device):
        yield


def epoch_order(items: int, steps: int, batch_size: int, seed: int) -> list[int]:
    """Item indices for ``steps`` batches of ``batch_size``: whole epochs, each a fresh shuffle by
    ``random.Random(seed)``, one more epoch than the steps need. Batch ``k`` is
    ``order[k * batch_size : (k + 1) * batch_size]``, so a resumed run sees the same batches."""
    rng = random.Random(seed)
    epochs = math.ceil(steps * batch_size / items) + 1
    return [i for _ in range(epochs) for i in rng.sample(range(items), items)]


# -- checkpoints
def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (``requires_grad``), by name, on the CPU."""
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """``torch.save`` ``state`` at ``path`` atomically (a temporary file renamed over it)."""
    import torch

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict | None:
    """What :func:`save_checkpoint` wrote at ``path`` (tensors on ``device``), or None without a file."""
    import torch

    path = Path(path)
    return torch.load(path, map_location=device) if path.is_file() else None


# -- LoRA (peft)
def add_lora(model: torch.nn.Module, rank: int = 16, alpha: float | None = None,
             target_modules: Iterable[str] = LORA_TARGETS, init: bool | str = "gaussian") -> int:
    """Freeze ``model`` and give every linear layer named one of ``target_modules`` a trainable LoRA
    adapter (peft, in place: the model keeps its class); returns how many layers were adapted.

    ``alpha`` defaults to ``2 * rank`` (scale ``alpha / rank``). ``init``: peft's ``init_lora_weights``;
    ``"gaussian"`` draws A with std 1/rank (as the hand-written LoRA did); B starts at 0, so an untrained
    adapter changes nothing.
    """
    require("peft", "models")
    from peft import LoraConfig, inject_adapter_in_model

    targets = sorted(set(target_modules))
    if not any(name.rpartition(".")[2] in targets for name, _ in model.named_modules()):
        raise ConfigError(f"no linear layers named one of {targets} to adapt")
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2.0 * rank, target_modules=targets,
                        lora_dropout=0.0, init_lora_weights=init)
    inject_adapter_in_model(config, model)
    return len(lora_layers(model))


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The layers :func:`add_lora` adapted, by module path (each has ``lora_A`` / ``lora_B``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every adapter into its layer's weights and put the plain layer back (peft's ``merge_and_unload``
    for a model adapted in place), so the model saves as a plain Hugging Face model; returns ``model``."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model
