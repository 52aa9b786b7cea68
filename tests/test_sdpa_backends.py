"""``sparsa.sdpa_backends.without_cudnn``: SDPA without cuDNN on CUDA, untouched elsewhere."""

import pytest
import torch

from sparsa.sdpa_backends import SDPA_SETTINGS, sdpa_setting, without_cudnn


def test_off_cuda_nothing_changes():
    q = torch.randn(2, 2, 5, 8)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    with without_cudnn(torch.device("cpu")), without_cudnn("cpu"):
        inside = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    assert torch.equal(inside, torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask))


def test_settings_by_name():
    assert SDPA_SETTINGS == ("default", "no-cudnn")
    for name in SDPA_SETTINGS:
        with sdpa_setting(name, "cpu"):
            pass
    with pytest.raises(ValueError, match="expected one of default, no-cudnn"):
        sdpa_setting("cudnn-only", "cpu")


@pytest.mark.gpu
def test_on_cuda_cudnn_is_off_inside_and_back_after():
    q = torch.randn(2, 2, 37, 64, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(2, 1, 1, 37, dtype=torch.bool, device="cuda")
    mask[1, ..., 30:] = False  # padding, as an encoder batch has
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with without_cudnn("cuda:0"):  # a device name, as the rerankers keep it
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    with without_cudnn(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), q.float(), q.float(), attn_mask=mask)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
