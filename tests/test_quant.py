import pytest
import torch

from edge_awq.quant import dequantize, fake_quantize, quantize


@pytest.mark.parametrize("group", [32, 64, 128])
def test_quantize_error_within_one_step(group):
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(group)) * 0.1
    q, scale, zero = quantize(w, group)
    assert q.min() >= 0 and q.max() <= 15 and zero.max() <= 15
    assert torch.equal(scale, scale.half().float())  # what the fp16 checkpoint stores
    err = (dequantize(q, scale, zero, group) - w).abs().reshape(48, -1, group)
    # Rounding the zero point can push a group's end one step out of range, so the bound is one
    # step; the typical error is the uniform-rounding quarter step.
    steps = err / scale.unsqueeze(-1)
    assert (steps <= 1 + 1e-5).all()
    assert 0.2 < steps.mean() < 0.3


def test_fake_quantize_is_idempotent_and_uses_16_levels():
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    once = fake_quantize(w, 128)
    assert torch.allclose(fake_quantize(once, 128), once, atol=1e-6)
    assert all(len(torch.unique(row)) <= 16 for row in once)


def test_group_must_divide_in_features():
    with pytest.raises(ValueError, match="not a multiple"):
        quantize(torch.randn(4, 96), 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_quantize_is_dequantize_of_quantize_bit_for_bit(dtype):
    # fake_quantize is computed in place for speed; the search must see exactly what gets packed.
    # The expectation is written out here, independently of quant.py's helpers.
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 512, generator=gen) * torch.logspace(-6, 1, 64)[:, None]
    w[0, :128] = 0  # an all-zero group
    w[1] = w[1].abs()  # groups without negative weights
    w[2] = -w[2].abs()
    w = w.to(dtype)
    for group in (32, 64, 128):
        g = w.float().reshape(64, -1, group)
        scale = ((g.amax(-1).clamp(min=0) - g.amin(-1).clamp(max=0)).clamp(min=1e-5) / 15).half().float()
        zero = (-torch.round(g.amin(-1).clamp(max=0) / scale)).clamp(0, 15)
        q = (torch.round(g / scale[..., None]) + zero[..., None]).clamp(0, 15)
        expect = ((q - zero[..., None]) * scale[..., None]).reshape(w.shape).to(dtype)
        got_q, got_scale, got_zero = quantize(w, group)
        assert torch.equal(got_q, q.reshape(w.shape).to(torch.uint8)) and torch.equal(got_scale, scale)
        assert torch.equal(got_zero, zero.to(torch.uint8))
        got = fake_quantize(w, group)
        assert got.dtype == dtype and torch.equal(got, expect)
        assert torch.equal(got, dequantize(got_q, got_scale, got_zero, group).to(dtype))
