"""Triton kernels for the rest of a decode step (one token), so a decoder layer is a handful of
launches: ``add_rms_norm`` (residual add + RMSNorm), ``decode_attention`` (RoPE on the new token's q
and k, its k and v written into the cache at the position held on the device, flash-decoding over
the cache split along the sequence, combined by the last split to finish) and ``silu_mul``.
Positions and lengths are read from device tensors, never from Python ints, so a step can be
captured in a CUDA graph once and replayed at every position. With ``pdl`` (sm_90) each launches
as a programmatic dependent of the kernel before it: it starts under that kernel's tail and waits
only where it reads its output. The torch references beside them are in ``reference.py``."""

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
                               num_warps=4 if n <= 1024 else 8, **_pdl(pdl))
    return out


@triton.jit
def _head_part(qkv_ptr, heads, mask, j, D: tl.constexpr):
    """Values j of the given heads of one token's q/k/v projection, fp32."""
    return tl.load(qkv_ptr + heads[:, None] * D + j[None, :], mask=mask[:, None], other=0.0).to(tl.float32)


@triton.jit
def _attend(q1, q2, ka, kb, v, valid, m, den, acc, scale, D: tl.constexpr):
    """Online-softmax update of (m, den, acc) with one block of cached keys (two halves) and values."""
    s = (tl.dot(q1, tl.trans(ka), out_dtype=tl.float32) + tl.dot(q2, tl.trans(kb), out_dtype=tl.float32)) * scale
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(s - m_new[:, None])
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
    return m_new, den * alpha + tl.sum(p, axis=1), acc


@triton.jit
def _kv_block(k_ptr, v_ptr, kh, ts, end, stride_kh, stride_kt, half, d, D: tl.constexpr):
    valid = ts < end
    row = kh * stride_kh + ts[:, None] * stride_kt
    ka = tl.load(k_ptr + row + half[None, :], mask=valid[:, None], other=0.0)
    kb = tl.load(k_ptr + row + D // 2 + half[None, :], mask=valid[:, None], other=0.0)
    v = tl.load(v_ptr + row + d[None, :], mask=valid[:, None], other=0.0)
    return ka, kb, v, valid


@triton.jit
def _attn_kernel(qkv_ptr, inv_ptr, pos_ptr, k_ptr, v_ptr, out_ptr, part_ptr, ml_ptr, cnt_ptr, scale, stride_kh,
                 stride_kt, H, HKV, SPLITS: tl.constexpr, REP: tl.constexpr, REP_P: tl.constexpr, D: tl.constexpr,
                 BLOCK_T: tl.constexpr, PDL: tl.constexpr):
    """Flash-decoding for one new token, one split of the sequence for one KV head and its REP
    query heads. The position and this split's first block of cached keys and values are loaded
    before waiting for the q/k/v projection (earlier steps wrote them, not the kernel before), so
    the cache read overlaps that kernel's tail. Then every program rotates its query heads and
    the new key (RoPE, HF's rotate-half channel pairs); split 0 writes the key and value into the
    cache at ``pos``; the new position is taken from registers, so no program reads what another
    writes. With several splits, each stores its partial sums and the last to arrive at its KV
    head (a counter, left at zero) combines them: one launch."""
    kh = tl.program_id(0)
    sp = tl.program_id(1)
    half = tl.arange(0, D // 2)
    d = tl.arange(0, D)
    inv = tl.load(inv_ptr + half)
    pos = tl.load(pos_ptr).to(tl.int32)
    length = pos + 1
    per = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_T) * BLOCK_T
    t0 = sp * per
    t1 = tl.minimum(t0 + per, length)
    cached_end = tl.minimum(t1, pos)  # this split's positions already in the cache
    tt = tl.arange(0, BLOCK_T)
    ka, kb, vb, valid = _kv_block(k_ptr, v_ptr, kh, t0 + tt, cached_end, stride_kh, stride_kt, half, d, D)
    _pdl_wait(PDL)
    ang = pos.to(tl.float32) * inv
    cos = tl.cos(ang)[None, :]
    sin = tl.sin(ang)[None, :]
    dt = k_ptr.dtype.element_ty
    r = tl.arange(0, REP_P)
    hm = r < REP
    heads = kh * REP + r
    x1 = _head_part(qkv_ptr, heads, hm, half, D)
    x2 = _head_part(qkv_ptr, heads, hm, D // 2 + half, D)
    q1 = (x1 * cos - x2 * sin).to(dt)  # (REP_P, D/2), the cache's dtype, as the dots take it
    q2 = (x2 * cos + x1 * sin).to(dt)
    one = tl.arange(0, 1)
    kidx = H + kh + one
    y1 = _head_part(qkv_ptr, kidx, one < 1, half, D)
    y2 = _head_part(qkv_ptr, kidx, one < 1, D // 2 + half, D)
    k1 = (y1 * cos - y2 * sin).to(dt)  # (1, D/2)
    k2 = (y2 * cos + y1 * sin).to(dt)
    vn = _head_part(qkv_ptr, H + HKV + kh + one, one < 1, d, D).to(dt)  # (1, D)
    if sp == 0:
        at = kh * stride_kh + pos * stride_kt
        tl.store(k_ptr + at + half[None, :], k1)
        tl.store(k_ptr + at + D // 2 + half[None, :], k2)
        tl.store(v_ptr + at + d[None, :], vn)
    m = tl.full((REP_P,), float("-inf"), tl.float32)
    den = tl.zeros((REP_P,), tl.float32)  # softmax denominators
    acc = tl.zeros((REP_P, D), tl.float32)
    if t0 < cached_end:
        m, den, acc = _attend(q1, q2, ka, kb, vb, valid, m, den, acc, scale, D)
    for t in range(t0 + BLOCK_T, cached_end, BLOCK_T):
        ka, kb, vb, valid = _kv_block(k_ptr, v_ptr, kh, t + tt, cached_end, stride_kh, stride_kt, half, d, D)
        m, den, acc = _attend(q1, q2, ka, kb, vb, valid, m, den, acc, scale, D)
    if (t0 <= pos) & (pos < t1):  # the new token falls in this split
        s = (tl.sum(q1.to(tl.float32) * k1.to(tl.float32), axis=1)
             + tl.sum(q2.to(tl.float32) * k2.to(tl.float32), axis=1)) * scale  # (REP_P,)
        m_new = tl.maximum(m, s)
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        acc = acc * alpha[:, None] + p[:, None] * vn.to(tl.float32)
        den = den * alpha + p
        m = m_new
    if SPLITS == 1:
        tl.store(out_ptr + heads[:, None] * D + d[None, :], (acc / den[:, None]).to(out_ptr.dtype.element_ty),
                 mask=hm[:, None])
    else:
        rows = heads * SPLITS + sp
        tl.store(part_ptr + rows[:, None] * D + d[None, :], acc, mask=hm[:, None])
        tl.store(ml_ptr + rows * 2, m, mask=hm)
        tl.store(ml_ptr + rows * 2 + 1, den, mask=hm)
        arrived = tl.atomic_add(cnt_ptr + kh, 1)  # acq_rel: the stores above are visible first
        if arrived == SPLITS - 1:
            tl.store(cnt_ptr + kh, 0)
            sps = tl.arange(0, SPLITS)
            for j in tl.static_range(REP):
                hrow = (kh * REP + j) * SPLITS + sps
                # .cg: from L2, where the other programs' stores are, never a stale L1 line
                ms = tl.load(ml_ptr + hrow * 2, cache_modifier=".cg")
                ds = tl.load(ml_ptr + hrow * 2 + 1, cache_modifier=".cg")
                w = tl.where(ds > 0, tl.exp(ms - tl.max(ms, axis=0)), 0.0)  # empty splits weigh nothing
                o = tl.load(part_ptr + hrow[:, None] * D + d[None, :], cache_modifier=".cg")
                o = tl.sum(o * w[:, None], axis=0) / tl.sum(ds * w, axis=0)
                tl.store(out_ptr + (kh * REP + j) * D + d, o.to(out_ptr.dtype.element_ty))


def decode_attention(qkv: torch.Tensor, inv_freq: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, out: torch.Tensor, partial: torch.Tensor, ml: torch.Tensor,
                     counters: torch.Tensor, scale: float, block_t: int = 16, pdl: bool = False,
                     splits: int | None = None) -> torch.Tensor:
    """One new token at position ``pos`` (int64 (1,) on the device): its q/k/v projection ``qkv``
    (1, (H + 2·HKV)·D, any float dtype) is rotated to ``pos``, its key and value written into the
    caches (1, HKV, T, D), and its attention over positions 0..pos → out (H·D,). ``partial`` fp32
    (H, S, D) and ``ml`` fp32 (H, S, 2) hold the splits' partial sums, ``counters`` int32 (≥ HKV,
    zero, left at zero) their arrivals; ``splits`` (a power of two ≤ S, default S) and ``block_t``
    (keys per step, ≥ 16) serve every length, so one launch shape serves every position."""
    heads, max_splits, d = partial.shape
    splits = splits or max_splits
    kv_heads = k_cache.shape[1]
    rep = heads // kv_heads
    assert splits <= max_splits and counters.numel() >= kv_heads and block_t >= 16
    _attn_kernel[(kv_heads, splits)](
        qkv, inv_freq, pos, k_cache, v_cache, out, partial, ml, counters, scale, k_cache.stride(1),
        k_cache.stride(2), heads, kv_heads, SPLITS=splits, REP=rep, REP_P=max(16, triton.next_power_of_2(rep)), D=d,
        BLOCK_T=block_t, PDL=pdl, num_warps=4, **_pdl(pdl))
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
