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


@pytest.mark.parametrize("heads,kv_heads,d,pos,splits,block_t", [
    (9, 3, 64, 0, 4, 16), (4, 4, 128, 299, 8, 32), (28, 4, 128, 76, 16, 16), (8, 2, 64, 999, 2, 64),
    (8, 2, 64, 199, 1, 32), (8, 2, 64, 64, 1, 16), (4, 4, 128, 40, 16, 16), (32, 32, 128, 255, 16, 16)])
def test_decode_attention_rotates_writes_the_cache_and_attends(heads, kv_heads, d, pos, splits, block_t):
    """One new token at ``pos``: RoPE on its q and k, k and v written into the caches there, attention
    over positions 0..pos (the earlier ones read from the cache, the new one from registers); with
    empty splits (pos 0, 40 over 16 splits), splits that loop, and twice in a row (the arrival
    counters must be left at zero for the next launch)."""
    qkv = torch.randn(1, (heads + 2 * kv_heads) * d, generator=_g(pos)) * 3
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    k = torch.randn(1, kv_heads, 1024, d, generator=_g(pos + 1)).half()
    v = torch.randn(1, kv_heads, 1024, d, generator=_g(pos + 2)).half()
    k[:, :, pos:] = float("nan")  # the new position is written, later ones must not be read
    v[:, :, pos:] = float("nan")
    kd, vd = k.to(DEVICE), v.to(DEVICE)
    part = torch.full((heads, splits, d), float("nan"), dtype=torch.float32, device=DEVICE)
    ml = torch.full((heads, splits, 2), float("nan"), dtype=torch.float32, device=DEVICE)
    arrivals = torch.zeros(kv_heads, dtype=torch.int32, device=DEVICE)
    for _ in range(2):
        out = torch.full((heads * d,), float("nan"), dtype=torch.float16, device=DEVICE)
        ops.decode_attention(qkv.to(DEVICE), inv.to(DEVICE), torch.tensor([pos], device=DEVICE), kd, vd, out, part,
                             ml, arrivals, d ** -0.5, block_t=block_t, splits=splits)
        assert (arrivals == 0).all()
    rq, rk, rv = rope_kv_reference(qkv, inv, pos, heads, kv_heads, d)
    assert _rel(kd[0, :, pos], rk) < 2e-3 and _rel(vd[0, :, pos], rv) < 2e-3
    assert torch.isnan(kd[0, :, pos + 1:].float()).all() and torch.isnan(vd[0, :, pos + 1:].float()).all()
    keys = torch.cat([k[0, :, :pos].float(), rk[:, None]], dim=1)
    values = torch.cat([v[0, :, :pos].float(), rv[:, None]], dim=1)
    ref = decode_attention_reference(rq, keys, values, d ** -0.5)
    assert _rel(out.view(heads, d), ref) < 3e-3


def test_silu_mul():
    x = torch.randn(1, 2 * 1500, generator=_g(5)).to(DEVICE) * 4
    out = torch.full((1, 1500), float("nan"), dtype=torch.float16, device=DEVICE)
    ops.silu_mul(x, out)
    assert _rel(out, silu_mul_reference(x)) < 2e-3
