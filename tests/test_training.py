"""The shared training pieces (sparsa/training.py): schedule shapes, the optimiser step, seeding, step
order, checkpoints and LoRA through peft."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sparsa.errors import ConfigError
from sparsa.training import (
    Stepper,
    add_lora,
    autocast,
    epoch_order,
    load_checkpoint,
    lr_factor,
    make_optimizer,
    merge_lora,
    save_checkpoint,
    seed_everything,
    trainable_state,
)


def test_schedule_shapes():
    # warm-up times a linear decay to 0 (SPLADE, dense, TILDE, Amar stage 2)
    assert [lr_factor(s, 4, 10) for s in range(5)] == pytest.approx([0.25, 0.5 * 0.9, 0.75 * 0.8, 0.7, 0.6])
    assert lr_factor(10, 4, 10) == 0.0 and lr_factor(12, 4, 10) == 0.0
    # warm-up then constant (the judge), no warm-up (0 or 1), constant (event, Amar stage 1)
    assert [lr_factor(s, 3) for s in (0, 1, 2, 50)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert lr_factor(0, 0, 10) == lr_factor(0, 1, 10) == 1.0
    assert lr_factor(0) == lr_factor(1000) == 1.0


def test_the_schedule_follows_lr_factor():
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer, schedule = make_optimizer([weight], 0.1, warmup_steps=2, total_steps=5)
    stepper = Stepper(optimizer, schedule)
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        stepper.step((weight - 1).pow(2).sum())
    assert rates == pytest.approx([0.1 * lr_factor(s, 2, 5) for s in range(5)])
    assert stepper.steps == 5 and float(weight.detach().sum()) > 0


def test_stepper_clips_the_gradient_norm():
    weight = torch.nn.Parameter(torch.zeros(3))
    stepper = Stepper(torch.optim.SGD([weight], lr=1.0), max_grad_norm=1.0)
    stepper.step((weight * torch.tensor([300.0, 400.0, 0.0])).sum())  # gradient norm 500
    assert float(weight.detach().norm()) == pytest.approx(1.0)
    free = torch.nn.Parameter(torch.zeros(1))
    Stepper(torch.optim.SGD([free], lr=1.0), max_grad_norm=None).step(free.sum() * 5)
    assert float(free.detach()) == -5.0


def test_seed_everything_seeds_every_generator():
    draws = []
    for _ in range(2):
        seed_everything(7)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]


def test_epoch_order_is_whole_shuffled_epochs():
    order = epoch_order(5, steps=4, batch_size=3, seed=13)  # 12 items needed: 3 epochs + 1
    assert len(order) == 20 and all(sorted(order[i : i + 5]) == list(range(5)) for i in range(0, 20, 5))
    assert order == epoch_order(5, 4, 3, 13) != epoch_order(5, 4, 3, 14)


def test_autocast_is_float32_on_the_cpu():
    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_checkpoint_round_trip_resumes_the_stepper(tmp_path):
    model = torch.nn.Linear(3, 1)
    model.bias.requires_grad_(False)
    stepper = Stepper(*make_optimizer(model.parameters(), 0.01, warmup_steps=2, total_steps=10))
    for _ in range(3):
        stepper.step(model(torch.ones(1, 3)).sum())
    assert load_checkpoint(tmp_path / "checkpoint.pt") is None
    save_checkpoint(tmp_path / "checkpoint.pt", params=trainable_state(model), **stepper.state_dict())
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert list(state["params"]) == ["weight"] and not (tmp_path / "checkpoint.tmp").exists()
    fresh = Stepper(*make_optimizer(torch.nn.Linear(3, 1).parameters(), 0.01, warmup_steps=2, total_steps=10))
    fresh.load_state_dict(state)
    assert (fresh.steps == 3
            and fresh.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * lr_factor(3, 2, 10)))


def test_lora_on_a_decoder_block_merges_into_plain_layers():
    torch.manual_seed(0)
    block = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(6, 6), "v_proj": torch.nn.Linear(6, 6),
                                 "mlp": torch.nn.Linear(6, 6)})
    assert add_lora(block, rank=2, target_modules=("q_proj", "v_proj")) == 2
    assert block["q_proj"].scaling["default"] == 2.0  # alpha defaults to 2 * rank
    assert not block["mlp"].weight.requires_grad
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(block["q_proj"](x), block["q_proj"].get_base_layer()(x))  # B starts at 0
        block["q_proj"].lora_B["default"].weight.normal_()
        adapted = block["q_proj"](x)
    merge_lora(block)
    assert type(block["q_proj"]) is torch.nn.Linear and not hasattr(block, "peft_config")
    torch.testing.assert_close(block["q_proj"](x), adapted)
    with pytest.raises(ConfigError, match="no linear layers named"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), rank=2)
