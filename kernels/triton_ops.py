"""Triton kernels for the rest of a decode step (one token), so a decoder layer is a handful of
launches: ``add_rms_norm`` (residual add + RMSNorm), ``rope_kv`` (RoPE on q and k, k and v written
into the cache at the position held on the device), ``decode_attention`` (flash-decoding over the
cache, split along the sequence, then combined) and ``silu_mul``. Positions and lengths are read
from device tensors, never from Python ints, so a step can be captured in a CUDA graph once and
replayed at every position. With ``pdl`` (sm_90) each launches as a programmatic dependent of
the kernel before it: it starts under that kernel's tail and waits only where it reads its
output. The torch references beside them are in ``reference.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _pdl_wait(PDL: tl.constexpr):
    """Wait for the previous kernel's results, then let the next kernel launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def _pdl(pdl: bool) -> dict:
    return {"launch_pdl": True} if pdl else {}


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, y_ptr, N, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
                         PDL: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    _pdl_wait(PDL)
    h = tl.load(x_ptr + row * N + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:  # the residual stream is kept in fp32
        h += tl.load(res_ptr + row * N + offs, mask=mask, other=0.0)
        tl.store(res_ptr + row * N + offs, h, mask=mask)
    r = tl.rsqrt(tl.sum(h * h, axis=0) / N + eps)
    dt = y_ptr.dtype.element_ty
    # as the HF models: normalise in fp32, round to the activation dtype, then scale by the weight
    y = (h * r).to(dt) * w.to(dt)
    tl.store(y_ptr + row * N + offs, y, mask=mask)


def add_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor,
                 residual: torch.Tensor | None = None, pdl: bool = False) -> torch.Tensor:
    """x (R, N) any float dtype → out (R, N) = RMSNorm(x + residual)·weight; with ``residual``
    (fp32 (R, N)) the sum is also written back into it."""
    r, n = x.shape
    _add_rms_norm_kernel[(r,)](x, residual if residual is not None else x, weight, out, n, eps,
                               HAS_RES=residual is not None, BLOCK=triton.next_power_of_2(n), PDL=pdl,
                               num_warps=4 if n <= 4096 else 8, **_pdl(pdl))
    return out


@triton.jit
def _rope_kv_kernel(qkv_ptr, inv_ptr, pos_ptr, q_ptr, k_ptr, v_ptr, stride_kh, stride_kt,
                    H, HKV, D: tl.constexpr, PDL: tl.constexpr):
    """Program h < H: query head h; H ≤ h < H + HKV: key/value head h − H."""
    h = tl.program_id(0)
    half = tl.arange(0, D // 2)
    inv = tl.load(inv_ptr + half)
    _pdl_wait(PDL)
    pos = tl.load(pos_ptr)
    ang = pos.to(tl.float32) * inv
    c = tl.cos(ang)
    s = tl.sin(ang)
    x1 = tl.load(qkv_ptr + h * D + half).to(tl.float32)
    x2 = tl.load(qkv_ptr + h * D + D // 2 + half).to(tl.float32)
    o1 = x1 * c - x2 * s  # channel pairs (i, i + D/2): the HF "rotate_half" convention
    o2 = x2 * c + x1 * s
    if h < H:
        tl.store(q_ptr + h * D + half, o1.to(q_ptr.dtype.element_ty))
        tl.store(q_ptr + h * D + D // 2 + half, o2.to(q_ptr.dtype.element_ty))
    else:
        kh = h - H
        base = kh * stride_kh + pos * stride_kt
        tl.store(k_ptr + base + half, o1.to(k_ptr.dtype.element_ty))
        tl.store(k_ptr + base + D // 2 + half, o2.to(k_ptr.dtype.element_ty))
        d = tl.arange(0, D)
        tl.store(v_ptr + base + d, tl.load(qkv_ptr + (H + HKV + kh) * D + d).to(v_ptr.dtype.element_ty))


def rope_kv(qkv: torch.Tensor, inv_freq: torch.Tensor, pos: torch.Tensor, q_out: torch.Tensor,
            k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int, kv_heads: int, pdl: bool = False) -> None:
    """One token: qkv (1, (H + 2·HKV)·D) → q_out (H·D,) rotated; rotated k and v written into the
    caches (1, HKV, T, D) at position ``pos`` (int64 (1,) on the device)."""
    d = k_cache.shape[-1]
    _rope_kv_kernel[(heads + kv_heads,)](qkv, inv_freq, pos, q_out, k_cache, v_cache, k_cache.stride(1),
                                         k_cache.stride(2), heads, kv_heads, D=d, PDL=pdl, num_warps=1,
                                         **_pdl(pdl))


@triton.jit
def _attn_split_kernel(q_ptr, k_ptr, v_ptr, len_ptr, o_ptr, ml_ptr, scale, stride_kh, stride_kt, H, SPLITS,
                       REP: tl.constexpr, REP_P: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr,
                       PDL: tl.constexpr, DIRECT: tl.constexpr):
    """Flash-decoding, one split of the sequence for one KV head and its REP query heads. DIRECT
    (one split): the result itself goes to ``o_ptr`` in the output dtype, no combine step."""
    kh = tl.program_id(0)
    sp = tl.program_id(1)
    _pdl_wait(PDL)
    length = tl.load(len_ptr).to(tl.int32)
    per = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_T) * BLOCK_T
    t0 = sp * per
    t1 = tl.minimum(t0 + per, length)
    r = tl.arange(0, REP_P)
    d = tl.arange(0, D)
    heads = kh * REP + r
    q = tl.load(q_ptr + heads[:, None] * D + d[None, :], mask=(r < REP)[:, None], other=0.0)
    m = tl.full((REP_P,), float("-inf"), tl.float32)
    den = tl.zeros((REP_P,), tl.float32)  # softmax denominators
    acc = tl.zeros((REP_P, D), tl.float32)
    tt = tl.arange(0, BLOCK_T)
    for t in range(t0, t1, BLOCK_T):
        ts = t + tt
        valid = ts < t1
        kv_off = kh * stride_kh + ts[:, None] * stride_kt + d[None, :]
        k = tl.load(k_ptr + kv_off, mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), out_dtype=tl.float32) * scale  # (REP_P, BLOCK_T)
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        v = tl.load(v_ptr + kv_off, mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
        den = den * alpha + tl.sum(p, axis=1)
        m = m_new
    if DIRECT:
        out = acc / den[:, None]
        tl.store(o_ptr + heads[:, None] * D + d[None, :], out.to(o_ptr.dtype.element_ty), mask=(r < REP)[:, None])
    else:
        rows = heads * SPLITS + sp
        tl.store(o_ptr + rows[:, None] * D + d[None, :], acc, mask=(r < REP)[:, None])
        tl.store(ml_ptr + rows * 2, m, mask=r < REP)
        tl.store(ml_ptr + rows * 2 + 1, den, mask=r < REP)


@triton.jit
def _attn_combine_kernel(o_ptr, ml_ptr, out_ptr, SPLITS: tl.constexpr, D: tl.constexpr, PDL: tl.constexpr):
    h = tl.program_id(0)
    _pdl_wait(PDL)
    sp = tl.arange(0, SPLITS)
    d = tl.arange(0, D)
    m = tl.load(ml_ptr + (h * SPLITS + sp) * 2)
    den = tl.load(ml_ptr + (h * SPLITS + sp) * 2 + 1)
    mx = tl.max(m, axis=0)
    w = tl.where(den > 0, tl.exp(m - mx), 0.0)  # empty splits (m = −inf, den = 0) weigh nothing
    o = tl.load(o_ptr + (h * SPLITS + sp)[:, None] * D + d[None, :])
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(den * w, axis=0)
    tl.store(out_ptr + h * D + d, out.to(out_ptr.dtype.element_ty))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: torch.Tensor,
                     out: torch.Tensor, partial: torch.Tensor, ml: torch.Tensor, scale: float,
                     block_t: int = 64, pdl: bool = False, splits: int | None = None) -> torch.Tensor:
    """One query per head: q (H·D,) against the first ``length`` (int64 (1,) on the device)
    positions of the caches (1, HKV, T, D) → out (H·D,). ``partial`` fp32 (H, S, D) and ``ml`` fp32
    (H, S, 2) hold the splits' partial sums; ``splits`` (a power of two ≤ S, default S) runs
    whatever the length, so one launch shape serves every position. One split needs no combine."""
    heads, max_splits, d = partial.shape
    splits = splits or max_splits
    kv_heads = k_cache.shape[1]
    rep = heads // kv_heads
    _attn_split_kernel[(kv_heads, splits)](q, k_cache, v_cache, length, out if splits == 1 else partial, ml, scale,
                                           k_cache.stride(1), k_cache.stride(2), heads, splits, REP=rep,
                                           REP_P=max(16, triton.next_power_of_2(rep)), D=d, BLOCK_T=block_t,
                                           PDL=pdl, DIRECT=splits == 1, num_warps=4, **_pdl(pdl))
    if splits > 1:
        _attn_combine_kernel[(heads,)](partial, ml, out, SPLITS=splits, D=d, PDL=pdl, num_warps=1, **_pdl(pdl))
    return out


@triton.jit
def _silu_mul_kernel(x_ptr, y_ptr, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
    _pdl_wait(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + N + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (g / (1.0 + tl.exp(-g)) * u).to(y_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor, out: torch.Tensor, pdl: bool = False) -> torch.Tensor:
    """One row: gate_up (1, 2I) = [gate | up] → out (1, I) = silu(gate)·up."""
    n = out.shape[-1]
    _silu_mul_kernel[(triton.cdiv(n, 1024),)](gate_up, out, n, BLOCK=1024, PDL=pdl, num_warps=4, **_pdl(pdl))
    return out
