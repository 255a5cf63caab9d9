"""Decode-step Triton ops against their torch references on fresh random inputs (interpreter on
CPU, compiled on the GPU); outputs poisoned first."""

import pytest
import torch

from edge_awq.kernels.reference import (
    add_rms_norm_reference,
    decode_attention_reference,
    rope_kv_reference,
    silu_mul_reference,
)

ops = pytest.importorskip("edge_awq.kernels.triton_ops", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _rel(y, ref):
    assert not torch.isnan(y.float()).any(), "unwritten or NaN output"
    y, ref = y.double().cpu(), ref.double().cpu()
    return ((y - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("n,residual", [(576, True), (4096, False), (200, True)])
def test_add_rms_norm(n, residual):
    x = (torch.randn(2, n, generator=_g(n)) * 3).to(DEVICE)
    res = torch.randn(2, n, generator=_g(n + 1)).to(DEVICE) if residual else None
    w = (1 + 0.1 * torch.randn(n, generator=_g(n + 2))).half().to(DEVICE)
    ref, h = add_rms_norm_reference(x, w, 1e-5, torch.float16, res)
    out = torch.full((2, n), float("nan"), dtype=torch.float16, device=DEVICE)
    ops.add_rms_norm(x, w, 1e-5, out, res)
    assert _rel(out, ref) < 2e-3
    if residual:
        assert torch.allclose(res, h)  # the sum went back into the fp32 residual


@pytest.mark.parametrize("heads,kv_heads,d,pos", [(9, 3, 64, 37), (4, 4, 128, 0), (8, 2, 64, 511)])
def test_rope_kv_writes_the_cache_at_the_device_position(heads, kv_heads, d, pos):
    qkv = torch.randn(1, (heads + 2 * kv_heads) * d, generator=_g(pos)).to(DEVICE)
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    kc = torch.full((1, kv_heads, 600, d), float("nan"), dtype=torch.float16, device=DEVICE)
    vc = torch.full_like(kc, float("nan"))
    q = torch.full((heads * d,), float("nan"), dtype=torch.float16, device=DEVICE)
    ops.rope_kv(qkv, inv.to(DEVICE), torch.tensor([pos], device=DEVICE), q, kc, vc, heads, kv_heads)
    rq, rk, rv = rope_kv_reference(qkv.cpu(), inv, pos, heads, kv_heads, d)
    assert _rel(q.view(heads, d), rq) < 2e-3
    assert _rel(kc[0, :, pos], rk) < 2e-3 and _rel(vc[0, :, pos], rv) < 2e-3
    others = torch.cat([kc[0, :, :pos], kc[0, :, pos + 1:]], dim=1)
    assert torch.isnan(others).all()  # nothing else written


@pytest.mark.parametrize("heads,kv_heads,d,length,splits", [(9, 3, 64, 1, 4), (4, 4, 128, 300, 8),
                                                             (28, 4, 128, 77, 16), (8, 2, 64, 1000, 2),
                                                             (8, 2, 64, 200, 1)])
def test_decode_attention(heads, kv_heads, d, length, splits):
    q = torch.randn(heads * d, generator=_g(length)).half().to(DEVICE)
    k = torch.randn(1, kv_heads, 1024, d, generator=_g(length + 1)).half().to(DEVICE)
    v = torch.randn(1, kv_heads, 1024, d, generator=_g(length + 2)).half().to(DEVICE)
    k[:, :, length:] = float("nan")  # positions past the length must not be read
    v[:, :, length:] = float("nan")
    out = torch.full((heads * d,), float("nan"), dtype=torch.float16, device=DEVICE)
    part = torch.empty(heads, splits, d, dtype=torch.float32, device=DEVICE)
    ml = torch.empty(heads, splits, 2, dtype=torch.float32, device=DEVICE)
    ops.decode_attention(q, k, v, torch.tensor([length], device=DEVICE), out, part, ml, d ** -0.5, block_t=32)
    ref = decode_attention_reference(q.view(heads, d), k[0, :, :length], v[0, :, :length], d ** -0.5)
    assert _rel(out.view(heads, d), ref) < 3e-3


def test_silu_mul():
    x = torch.randn(1, 2 * 1500, generator=_g(5)).to(DEVICE) * 4
    out = torch.full((1, 1500), float("nan"), dtype=torch.float16, device=DEVICE)
    ops.silu_mul(x, out)
    assert _rel(out, silu_mul_reference(x)) < 2e-3
