"""The fused SPLADE pooling kernel against its plain-torch reference (CPU: TRITON_INTERPRET=1)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsa.kernels.splade_pool import splade_pool, splade_pool_ref

# (B, L, D, V): single token, ragged lengths, D and V not multiples of the tiles.
SHAPES = [(1, 1, 8, 5), (3, 37, 48, 101), (2, 70, 130, 257)]
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1e-2)}


def _inputs(shape, dtype, device="cpu", seed=0):
    batch, length, dim, vocab = shape
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, dim, generator=gen).to(device, dtype)
    weight = (torch.randn(vocab, dim, generator=gen) / math.sqrt(dim)).to(device, dtype)
    bias = torch.randn(vocab, generator=gen).to(device)
    start = torch.randint(0, length, (batch,), generator=gen, dtype=torch.int32)
    end = torch.maximum(start + 1, torch.randint(0, length + 1, (batch,), generator=gen, dtype=torch.int32))
    if batch > 1:
        end[-1] = start[-1]  # an empty pooled range pools to zeros
    return hidden, weight, bias, start.to(device), end.to(device)


def test_reference_matches_hand_computed_example():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])  # third token is padding
    weight = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [-1.0, -1.0]])
    bias = torch.tensor([0.0, 0.5, 0.0])
    # token logits: t0 = (1, -0.5, -1), t1 = (2, 1.5, -2); max over t0, t1 then log1p(relu(.)).
    expected = torch.tensor([[math.log1p(2.0), math.log1p(1.5), 0.0]])
    out = splade_pool_ref(hidden, weight, bias, torch.tensor([0]), torch.tensor([2]))
    torch.testing.assert_close(out, expected)


CASES = {f"{'x'.join(map(str, shape))}-{str(dtype)[6:]}": (shape, dtype)
         for shape in SHAPES for dtype in (torch.float32, torch.float16)}
CASES["2x19x16x40-float32-nobias"] = ((2, 19, 16, 40), torch.float32)


def _kernel_outputs() -> dict[str, torch.Tensor]:
    """Run every case through the kernel (called in a child process with TRITON_INTERPRET=1)."""
    outputs = {}
    for name, (shape, dtype) in CASES.items():
        hidden, weight, bias, start, end = _inputs(shape, dtype)
        if name.endswith("nobias"):
            outputs[name] = splade_pool(hidden, weight, precise=True)
        else:
            outputs[name] = splade_pool(hidden, weight, bias, start, end, precise=True)
    return outputs


@pytest.fixture(scope="module")
def interpreted_outputs(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Kernel outputs under the Triton interpreter, computed once in a child process.

    ``TRITON_INTERPRET`` must be set before triton is first imported, so the interpreter runs in a
    fresh process and this one's environment stays untouched.
    """
    pytest.importorskip("triton")
    target = tmp_path_factory.mktemp("kernel") / "outputs.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, __file__, str(target)], env=env, check=True, cwd=Path(__file__).parent)
    return torch.load(target)


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_reference_interpreted(name, interpreted_outputs):
    shape, dtype = CASES[name]
    hidden, weight, bias, start, end = _inputs(shape, dtype)
    if name.endswith("nobias"):
        expected = splade_pool_ref(hidden, weight)
    else:
        expected = splade_pool_ref(hidden, weight, bias, start, end)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(interpreted_outputs[name], expected, atol=atol, rtol=rtol)
    if shape[0] > 1 and not name.endswith("nobias"):
        assert not interpreted_outputs[name][-1].any()


@pytest.mark.parametrize(
    "hidden_shape, weight_shape, dtype",
    [((2, 3, 4), (5, 6), torch.float32), ((2, 3), (5, 3), torch.float32), ((2, 3, 4), (5, 4), torch.int32)],
)
def test_wrapper_rejects_bad_inputs(hidden_shape, weight_shape, dtype):
    with pytest.raises(ValueError):
        splade_pool(torch.zeros(hidden_shape, dtype=dtype), torch.zeros(weight_shape, dtype=dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_matches_reference_cuda(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    hidden, weight, bias, start, end = _inputs((16, 300, 128, 30522), dtype, device="cuda")
    out = splade_pool(hidden, weight, bias, start, end)
    atol, rtol = TOLERANCE[dtype] if dtype != torch.float32 else (2e-2, 2e-2)  # fp32 runs as TF32
    torch.testing.assert_close(out, splade_pool_ref(hidden, weight, bias, start, end), atol=atol, rtol=rtol)


if __name__ == "__main__":
    torch.save(_kernel_outputs(), sys.argv[1])
