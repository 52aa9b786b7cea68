"""The fused gate selection against its PyTorch reference (CPU under TRITON_INTERPRET=1, or CUDA)."""

import pytest
import torch

from sparsa.kernels.block_gating import block_gate_scores, block_visibility
from sparsa.kernels.block_sparse_attention import KeptBlocks
from sparsa.kernels.gate_select import kept_blocks, kept_blocks_ref, pooled_logits, visible_block_count

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter (conftest)


@pytest.mark.parametrize("rule,value", [("coverage", 0.9), ("coverage", 0.5), ("coverage", 1.0),
                                        ("threshold", 0.05), ("topk", 3)])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(200, 200), (70, 200), (33, 33)])  # ragged, offset, tiny
def test_kept_blocks_matches_reference(rule, value, seqlen_q, seqlen_k):
    torch.manual_seed(0)
    b, hq, hkv, bs = 1, 4, 2, 16
    q = torch.randn(b, hq, seqlen_q, 64, device=DEVICE)
    k = torch.randn(b, hkv, seqlen_k, 64, device=DEVICE) * 3  # peaked blocks, so rules keep few
    logits = pooled_logits(q, k, bs, 0.125)
    full = torch.tensor([False, True], device=DEVICE)
    for heads in (None, full):
        got = kept_blocks(logits, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_size=bs, rule=rule, value=value,
                          full_heads=heads)
        want = kept_blocks_ref(logits, seqlen_q=seqlen_q, seqlen_k=seqlen_k, block_size=bs, rule=rule,
                               value=value, full_heads=heads)
        n_k = logits.shape[-1]
        assert torch.equal(got.to_mask(n_k), want)
        # Indices come sorted and compact, as the attention kernel reads them.
        valid = torch.arange(got.indices.shape[-1], device=DEVICE) < got.counts[..., None]
        idx = got.indices.masked_fill(~valid, 1 << 30)
        assert torch.equal(idx, idx.sort(-1).values)
    if rule == "coverage" and value < 1.0 and seqlen_k >= 200:
        visible, _ = block_visibility(seqlen_q, seqlen_k, bs, True, DEVICE)
        assert int(want.sum()) < int(visible.sum()) * b * hq  # the rule dropped something


def test_pooled_logits_are_the_gates_scores():
    torch.manual_seed(1)
    q, k = torch.randn(1, 6, 100, 64, device=DEVICE), torch.randn(1, 2, 100, 64, device=DEVICE)
    logits = pooled_logits(q, k, 16, 0.125)
    visible, _ = block_visibility(100, 100, 16, True, DEVICE)
    probs = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1)
    torch.testing.assert_close(probs, block_gate_scores(q, k, block_size=16, causal=True, sm_scale=0.125))


@pytest.mark.parametrize("seqlen_q,seqlen_k,bs", [(200, 200, 16), (70, 200, 16), (1, 65, 64), (128, 128, 64)])
def test_visible_block_count(seqlen_q, seqlen_k, bs):
    visible, _ = block_visibility(seqlen_q, seqlen_k, bs, True, "cpu")
    assert visible_block_count(seqlen_q, seqlen_k, bs) == int(visible.sum())


def test_bad_rule_and_shape_are_refused():
    logits = torch.zeros(1, 1, 2, 2, device=DEVICE)
    with pytest.raises(ValueError, match="rule"):
        kept_blocks(logits, seqlen_q=32, seqlen_k=32, block_size=16, rule="top-p", value=0.9)
    with pytest.raises(ValueError, match="do not match"):
        kept_blocks(logits, seqlen_q=64, seqlen_k=64, block_size=16, rule="topk", value=1)
    assert isinstance(kept_blocks(logits, seqlen_q=32, seqlen_k=32, block_size=16, rule="topk", value=1),
                      KeptBlocks)
