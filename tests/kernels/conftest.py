"""The kernel tests run Triton through its CPU interpreter: set it before any test module imports
``sparsa.kernels`` (jit functions bind to the backend at import), whatever order pytest collects in."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

PASS_KEY = "48213"


@pytest.fixture
def smollm2_pass_key():
    """A fresh SmolLM2-135M (float32, eval; tests install attention on it) from the registry, its tokenizer,
    and a ~600-token prompt whose answer is a pass key amid filler: (tokenizer, model, text)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparsa.models import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    filler = "The grass is green. The sky is blue. The sun is yellow. " * 20
    needle = f"The pass key is {PASS_KEY}. Remember it. "
    text = filler + needle + filler + "What is the pass key? The pass key is"
    return tokenizer, model, text
