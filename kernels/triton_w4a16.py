"""Triton W4A16 kernels on the K-major runtime layout (``layout.py``, docs/format.md).

- ``gemv_row`` (one row, decode at batch 1): each program reduces a (BLOCK_N, CHUNK_K) tile in one
  pass without a loop, so all its 16-byte loads are in flight at once; codes become floats by
  ``_offset_code`` (one LOP3 each, no conversion), one FFMA per weight, fp32 throughout.
- ``gemv_dot`` (2–16 rows): tensor cores on yᵀ = W xᵀ, one group per step, weights as the A
  operand in exact 16-bit codes (``_codes16``: two codes per LOP3, AWQ's nibble order).
- Both split K across programs to fill the GPU; partial sums meet in an fp32 workspace through
  atomics, and the program that finishes a column tile last (a per-tile counter) writes the
  output and leaves workspace and counter at zero: one launch, no memset.
- ``dequantize_kmajor`` writes the 16-bit weight for dequantize-then-cuBLAS prefill.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from edge_awq.pack import AWQ_REVERSE

# shift of natural column j within its word (zeros keep the GEMM layout; ``_shift_pattern``)
_SHIFTS = tuple(4 * i for i in AWQ_REVERSE)
# fp32 exponent fields that make a nibble at bit 12 / 16 the top of the mantissa (``_offset_code``)
_MAGIC12, _MAGIC16 = (150 - 12) << 23, (150 - 16) << 23

# 1024 (fp16) and 128 (bf16) as 16-bit float bit patterns, twice: a nibble OR-ed into either half
# is an exact code (``_pair16``)
_MAGIC16BIT = {torch.float16: 0x64006400, torch.bfloat16: 0x43004300}


def _interpreted() -> bool:
    """Triton's CPU interpreter runs no inline PTX: the kernels take their pure-Triton branch there."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _shift_pattern(BLOCK_N: tl.constexpr, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                   S3: tl.constexpr, S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    """(BLOCK_N,) shift of each natural column within its word, repeating every 8 columns."""
    j = tl.arange(0, 8)
    pattern = tl.where(j == 0, S0, tl.where(j == 1, S1, tl.where(j == 2, S2, tl.where(j == 3, S3, tl.where(
        j == 4, S4, tl.where(j == 5, S5, tl.where(j == 6, S6, S7)))))))
    return tl.reshape(tl.broadcast_to(pattern[None, :], (BLOCK_N // 8, 8)), (BLOCK_N,))


@triton.jit
def _pair16(words, P: tl.constexpr, magic, base, scale, DT: tl.constexpr, ASM: tl.constexpr):
    """(q − z)·s of k = 8j + 2P and 8j + 2P + 1 (nibbles P and P + 4, bits 4P and 4P + 16 of a
    K-major word) as two 16-bit floats, with no int→float conversion (a quarter-rate instruction):
    one shift and one LOP3 put both nibbles under the bit pattern of 1024 (fp16) or 128 (bf16) in
    each half (``magic`` holds it twice); then, as a half2, ``base`` (minus that power of two and
    the zero point) is added — exact — and the product with ``scale`` rounded once, as the torch
    reference rounds (q − z)·s. ``base`` and ``scale`` are (R, 1) int32 holding a row's 16-bit
    value twice. The inline PTX is elementwise on int32 (pack 1), so it is right whatever register
    layout Triton picks; the interpreter, which runs no PTX, takes the same arithmetic in Triton."""
    if ASM:
        if DT == tl.float16:
            v = tl.inline_asm_elementwise(
                "{.reg .b32 t, o; shr.u32 t, $1, $5; lop3.b32 t, t, 0x000F000F, $4, 0xEA; "
                "add.f16x2 t, t, $2; mul.f16x2 $0, t, $3;}",
                "=r,r,r,r,r,r", [words, base, scale, magic, tl.full(words.shape, 4 * P, tl.int32)], dtype=tl.int32,
                is_pure=True, pack=1)
        else:  # bf16 add and mul need sm_90; fma (sm_80, Jetson Orin's sm_87) does both
            v = tl.inline_asm_elementwise(
                "{.reg .b32 t, o, n; shr.u32 t, $1, $5; lop3.b32 t, t, 0x000F000F, $4, 0xEA; "
                "mov.b32 o, 0x3F803F80; mov.b32 n, 0x80008000; fma.rn.bf16x2 t, t, o, $2; "
                "fma.rn.bf16x2 $0, t, $3, n;}",
                "=r,r,r,r,r,r", [words, base, scale, magic, tl.full(words.shape, 4 * P, tl.int32)], dtype=tl.int32,
                is_pure=True, pack=1)
        lo = v.to(tl.int16).to(DT, bitcast=True)
        hi = (v >> 16).to(tl.int16).to(DT, bitcast=True)
    else:
        v = ((words >> (4 * P)) & 0x000F000F) | magic
        nb = base.to(tl.int16).to(DT, bitcast=True)
        sc = scale.to(tl.int16).to(DT, bitcast=True)
        lo = (v.to(tl.int16).to(DT, bitcast=True) + nb) * sc
        hi = ((v >> 16).to(tl.int16).to(DT, bitcast=True) + nb) * sc
    return lo, hi


@triton.jit
def _pairs(v, DT: tl.constexpr):
    """(R,) values → (R, 1) int32 holding each value's ``DT`` bit pattern in both halves."""
    h = v.to(DT).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return (h | (h << 16))[:, None]


@triton.jit
def _codes16(words, magic, zeros, scales, DT: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr):
    """(R, BK/8) K-major words, (R,) fp32 zero points and scales → (R, BK) (q − z)·s in ``DT`` (fp16
    or bf16), k in natural order: the torch reference's values. ``tl.join`` adds a minor axis:
    k = 8j + 4a + 2b + c is pair 2a + b, half c."""
    base = _pairs(-((magic & 0xFFFF).to(tl.int16).to(DT, bitcast=True).to(tl.float32) + zeros), DT)
    scale = _pairs(scales, DT)
    lo0, hi0 = _pair16(words, 0, magic, base, scale, DT, ASM)
    lo1, hi1 = _pair16(words, 1, magic, base, scale, DT, ASM)
    lo2, hi2 = _pair16(words, 2, magic, base, scale, DT, ASM)
    lo3, hi3 = _pair16(words, 3, magic, base, scale, DT, ASM)
    codes = tl.join(tl.join(tl.join(lo0, lo2), tl.join(lo1, lo3)), tl.join(tl.join(hi0, hi2), tl.join(hi1, hi3)))
    return tl.reshape(codes, (words.shape[0], BLOCK_K))


@triton.jit
def _offset_code(src, POS: tl.constexpr, magic):
    """The nibble at bits POS..POS+3 of ``src`` as the fp32 value 2^(23−POS) + q, exactly: the
    nibble becomes the top mantissa bits under an exponent of 23 − POS (``magic`` = (150 − POS)
    << 23, passed at run time so that ptxas fuses the AND and the OR into one LOP3; as two
    immediates they take two). No conversion and no subtraction: the caller removes
    2^(23−POS)·Σx once per group. POS is 12 or 16, so that offset is at most 2048 and costs fp32
    at most 8 of its 24 bits."""
    return ((src & (0xF << POS)) | magic).to(tl.float32, bitcast=True)


@triton.jit
def _dot8_h2(words, nb1, nb2, x01, x23, x45, x67, ASM: tl.constexpr):
    """Σ of one word's 8 products (q − z)·x as fp32, the products in half2: two LOP3s per pair put
    the codes of k, k+1 under 1024 (low nibbles) or 1024 + 16q (high nibbles, scaled back by 1/16),
    ``nb1``/``nb2`` (−(1024 + z), −(64 + z) twice) make them q − z exactly, four HFMA2 multiply by
    the x pairs and sum, two conversions and an add finish in fp32: 16 instructions for 8 weights.
    x must be scaled so that 4 products cannot overflow fp16 (``_gemv_row_kernel``)."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{.reg .b32 m, a, t, p0, p1, p2, p3; .reg .b16 lo, hi; .reg .f32 flo, fhi;"
            "mov.b32 m, 0x64006400; mov.b32 a, 0x2C002C00;"
            "lop3.b32 p0, $1, 0x000F000F, m, 0xEA; lop3.b32 p1, $1, 0x00F000F0, m, 0xEA;"
            "shr.u32 t, $1, 8;"
            "lop3.b32 p2, t, 0x000F000F, m, 0xEA; lop3.b32 p3, t, 0x00F000F0, m, 0xEA;"
            "add.f16x2 p0, p0, $2; fma.rn.f16x2 p1, p1, a, $3;"
            "add.f16x2 p2, p2, $2; fma.rn.f16x2 p3, p3, a, $3;"
            "mul.f16x2 t, p0, $4; fma.rn.f16x2 t, p1, $5, t; fma.rn.f16x2 t, p2, $6, t; fma.rn.f16x2 t, p3, $7, t;"
            "mov.b32 {lo, hi}, t; cvt.f32.f16 flo, lo; cvt.f32.f16 fhi, hi; add.f32 $0, flo, fhi;}",
            "=f,r,r,r,r,r,r,r", [words, nb1, nb2, x01, x23, x45, x67], dtype=tl.float32, is_pure=True, pack=1)
    # the interpreter: the same function in fp32 (AWQ nibble order: pair p is nibbles p and p + 4)
    z = -(nb1 & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) - 1024.0
    acc = tl.zeros(words.shape, tl.float32)
    for p in tl.static_range(4):
        xp = x01 if p == 0 else (x23 if p == 1 else (x45 if p == 2 else x67))
        xlo = (xp & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        xhi = ((xp >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        acc += (((words >> (4 * p)) & 0xF).to(tl.float32) - z) * xlo
        acc += (((words >> (4 * p + 16)) & 0xF).to(tl.float32) - z) * xhi
    return acc


@triton.jit
def _half_pairs(lo, hi):
    """Two fp32 tensors → int32 holding them as a half2 (lo in the low 16 bits)."""
    a = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    b = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return a | (b << 16)


@triton.jit
def _word_k(j, MMA: tl.constexpr):
    """Natural k of offset 0 of word j along a row: 8j, or in the ``mma`` order (layout.py)
    128⌊j/16⌋ + 32(j mod 4) + 2(⌊j/4⌋ mod 4); offset r then adds ``_r_k(r, MMA)``."""
    if MMA:
        return (j // 16) * 128 + (j % 4) * 32 + ((j // 4) % 4) * 2
    else:
        return j * 8


@triton.jit
def _r_k(r, MMA: tl.constexpr):
    """Natural k offset of a word's offset r (0–7): r, or 16⌊r/4⌋ + 8(⌊r/2⌋ mod 2) + r mod 2."""
    return r + MMA * (12 * (r // 4) + 6 * ((r // 2) % 2))


@triton.jit
def _x_at(ptr, mask, K, GATED: tl.constexpr):
    """Input values at ``ptr`` as fp32: x itself, or silu(gate)·up with up K values further on."""
    g = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    if GATED:
        return g / (1.0 + tl.exp(-g)) * tl.load(ptr + K, mask=mask, other=0.0).to(tl.float32)
    return g


@triton.jit
def _gemv_row_kernel(x_ptr, qk_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, N, K, k8, split_k, m12, m16,
                     GROUP: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_K: tl.constexpr, H2: tl.constexpr,
                     SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr,
                     GATED: tl.constexpr, MMA: tl.constexpr,
                     S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr,
                     S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    """One row (decode at batch 1) on the K-major layout. Each program reduces a (BLOCK_N, CHUNK_K)
    tile in one pass, with no loop: every load of the tile is issued before the first is used, so
    a program keeps BLOCK_N·CHUNK_K/2 bytes in flight and a few resident programs per SM cover the
    DRAM latency. H2 False: fp32 FMAs on ``_offset_code`` floats (4 shifts, 8 LOP3, 8 FFMA per word).
    H2 True: half2 products (``_dot8_h2``, 16 instructions per word), x scaled by a power of two
    per program so that its largest value is 2^10 (exact, and no product or partial sum overflows).
    PDL (programmatic dependent launch, sm_90): the weights, which no earlier kernel writes, are
    loaded before waiting for the previous kernel to finish, so their stream starts under its tail.
    GATED: x is [gate | up] (2K values) and the input is silu(gate)·up, computed as it is loaded
    (an MLP's down projection without a separate activation kernel)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    WG: tl.constexpr = GROUP // 8
    GROUPS: tl.constexpr = CHUNK_K // GROUP
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    g = pid_k * GROUPS + tl.arange(0, GROUPS)
    mask_g = g < K // GROUP
    offs_j = g[:, None] * WG + tl.arange(0, WG)[None, :]  # (GROUPS, WG) word index along the row
    w = tl.load(qk_ptr + offs_n[:, None, None] * k8 + offs_j[None, :, :],
                mask=mask_n[:, None, None] & mask_g[:, None][None, :, :], other=0, eviction_policy="evict_first")
    zshift = _shift_pattern(BLOCK_N, S0, S1, S2, S3, S4, S5, S6, S7)  # zeros stay in the GEMM layout
    mask = mask_n[:, None] & mask_g[None, :]
    zw = tl.load(qz_ptr + g[None, :] * (N // 8) + (offs_n // 8)[:, None], mask=mask, other=0)
    z = ((zw >> zshift[:, None]) & 0xF).to(tl.float32)  # (BN, GROUPS)
    s = tl.load(s_ptr + g[None, :] * N + offs_n[:, None], mask=mask, other=0.0).to(tl.float32)
    if PDL:
        tl.extra.cuda.gdc_wait()  # x is the previous kernel's output
        tl.extra.cuda.gdc_launch_dependents()
    xp = x_ptr + _word_k(offs_j, MMA)
    mask_x = mask_g[:, None]
    x0 = _x_at(xp + _r_k(0, MMA), mask_x, K, GATED)
    x1 = _x_at(xp + _r_k(1, MMA), mask_x, K, GATED)
    x2 = _x_at(xp + _r_k(2, MMA), mask_x, K, GATED)
    x3 = _x_at(xp + _r_k(3, MMA), mask_x, K, GATED)
    x4 = _x_at(xp + _r_k(4, MMA), mask_x, K, GATED)
    x5 = _x_at(xp + _r_k(5, MMA), mask_x, K, GATED)
    x6 = _x_at(xp + _r_k(6, MMA), mask_x, K, GATED)
    x7 = _x_at(xp + _r_k(7, MMA), mask_x, K, GATED)
    if H2:
        amax = tl.max(tl.max(tl.maximum(tl.maximum(tl.maximum(tl.abs(x0), tl.abs(x1)),
                                                   tl.maximum(tl.abs(x2), tl.abs(x3))),
                                        tl.maximum(tl.maximum(tl.abs(x4), tl.abs(x5)),
                                                   tl.maximum(tl.abs(x6), tl.abs(x7)))), axis=1), axis=0)
        # 2^(10 − ⌈log2 amax⌉): the largest |x| lands in (512, 1024]; 4 products ≤ 60·1024 < 65504
        xscale = tl.where(amax > 0, tl.exp2(10.0 - tl.ceil(tl.log2(tl.maximum(amax, 1e-30)))), 1.0)
        nb1 = _half_pairs(-(1024.0 + z), -(1024.0 + z))[:, :, None]
        nb2 = _half_pairs(-(64.0 + z), -(64.0 + z))[:, :, None]
        part = tl.sum(_dot8_h2(w, nb1, nb2, _half_pairs(x0 * xscale, x1 * xscale)[None, :, :],
                               _half_pairs(x2 * xscale, x3 * xscale)[None, :, :],
                               _half_pairs(x4 * xscale, x5 * xscale)[None, :, :],
                               _half_pairs(x6 * xscale, x7 * xscale)[None, :, :], ASM), axis=2)  # (BN, GROUPS)
        y = tl.sum(s * part, axis=1) / xscale
    else:
        # nibble i (bits 4i) holds k = 8j + (0, 2, 4, 6, 1, 3, 5, 7)[i]; bring each to bit 12 or 16
        lo16 = w << 16
        lo8 = w << 8
        hi8 = w >> 8
        hi12 = w >> 12
        acc = _offset_code(lo16, 16, m16) * x0[None, :, :]  # nibble 0
        acc += _offset_code(lo8, 12, m12) * x2[None, :, :]  # 1
        acc += _offset_code(lo8, 16, m16) * x4[None, :, :]  # 2
        acc += _offset_code(w, 12, m12) * x6[None, :, :]  # 3
        acc += _offset_code(w, 16, m16) * x1[None, :, :]  # 4
        acc += _offset_code(hi8, 12, m12) * x3[None, :, :]  # 5
        acc += _offset_code(hi12, 12, m12) * x5[None, :, :]  # 6
        acc += _offset_code(hi12, 16, m16) * x7[None, :, :]  # 7
        # per group: Σ x (q − z) s = s (Σ x (q + off) − Σ x off − z Σ x), off = 2^(23−POS) per nibble
        xsum = tl.sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7, axis=1)  # (GROUPS,)
        xoff = tl.sum(128.0 * (x0 + x1 + x4 + x7) + 2048.0 * (x2 + x3 + x5 + x6), axis=1)
        part = tl.sum(acc, axis=2)  # (BN, GROUPS)
        y = tl.sum(s * (part - xoff[None, :] - z * xsum[None, :]), axis=1)  # (BN,)
    if SPLIT == 2:  # into a zeroed fp32 output: partial sums only, no arrival count
        if HAS_BIAS:
            y += tl.where(pid_k == 0, tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32), 0.0)
        tl.atomic_add(y_ptr + offs_n, y, mask=mask_n, sem="relaxed")
    elif SPLIT == 1:
        one = tl.arange(0, 1)
        tl.atomic_add(ws_ptr + offs_n, y, mask=mask_n)
        _finish_split(y_ptr, ws_ptr, cnt_ptr, b_ptr, pid_n, split_k, one, one < 1, N, N, 1, BLOCK_N, HAS_BIAS)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit(do_not_specialize=["M"])  # a prompt of any length up to 16 rows: one compile
def _gemv_dot_kernel(x_ptr, qk_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                     M, N, K, k8, stride_xm, stride_ym, groups_per_split, split_k, magic,
                     GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, ASM: tl.constexpr, MMA: tl.constexpr,
                     S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr,
                     S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    """Up to 16 rows on the K-major layout with tensor cores: yᵀ = W xᵀ, one group of K per step,
    the dequantized weight tile (``_codes16``) as the A operand, accumulated by the matrix unit
    itself, so that its products run asynchronously across steps."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    pos = tl.arange(0, GROUP)
    offs_k = _word_k(pos // 8, MMA) + _r_k(pos % 8, MMA)  # x's k at each decoded position
    offs_w = tl.arange(0, GROUP // 8)
    zshift = _shift_pattern(BLOCK_N, S0, S1, S2, S3, S4, S5, S6, S7)  # zeros stay in the GEMM layout
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    g0 = pid_k * groups_per_split
    g1 = tl.minimum(g0 + groups_per_split, K // GROUP)
    for g in range(g0, g1):
        words = tl.load(qk_ptr + offs_n[:, None] * k8 + (g * (GROUP // 8) + offs_w)[None, :],
                        mask=mask_n[:, None], other=0, eviction_policy="evict_first")
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + (g * GROUP + offs_k)[:, None], mask=mask_m[None, :],
                     other=0.0)  # (G, BM): xᵀ
        zw = tl.load(qz_ptr + g * (N // 8) + offs_n // 8, mask=mask_n, other=0)
        z = ((zw >> zshift) & 0xF).to(tl.float32)
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0)
        acc = tl.dot(_codes16(words, magic, z, s, xt.dtype, GROUP, ASM), xt, acc)  # (BN, BM)
    if SPLIT == 2:  # into a zeroed fp32 output: partial sums only, no arrival count
        if HAS_BIAS:
            acc += tl.where(pid_k == 0, tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32), 0.0)[:, None]
        tl.atomic_add(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], acc,
                      mask=mask_n[:, None] & mask_m[None, :], sem="relaxed")
    elif SPLIT == 1:
        tl.atomic_add(ws_ptr + offs_m[None, :] * N + offs_n[:, None], acc, mask=mask_n[:, None] & mask_m[None, :])
        _finish_split(y_ptr, ws_ptr, cnt_ptr, b_ptr, pid_n, split_k, offs_m, mask_m, N, stride_ym,
                      BLOCK_M, BLOCK_N, HAS_BIAS)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], acc.to(y_ptr.dtype.element_ty),
                 mask=mask_n[:, None] & mask_m[None, :])


@triton.jit
def _finish_split(y_ptr, ws_ptr, cnt_ptr, b_ptr, pid_n, split_k, offs_m, mask_m, N, stride_ym,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Count this program's arrival at its column tile; the last to arrive writes y from the
    workspace and leaves workspace and counter at zero for the next launch."""
    arrived = tl.atomic_add(cnt_ptr + pid_n, 1)  # acq_rel: the partial sums above are visible first
    if arrived == split_k - 1:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask = mask_m[:, None] & mask_n[None, :]
        ws = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        zero = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        acc = tl.atomic_add(ws, zero, mask=mask)  # an atomic read: coherent with the other programs' adds
        acc = tl.where(mask, acc, 0.0)  # masked lanes return nothing defined
        tl.store(ws, zero, mask=mask)  # no other program of this launch touches the tile any more
        tl.store(cnt_ptr + pid_n, 0)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_kmajor_kernel(qk_ptr, qz_ptr, s_ptr, w_ptr, N, K, k8, stride_g, magic,
                           GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr,
                           MMA: tl.constexpr,
                           S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr,
                           S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    """K-major words → W (N, K) = (q − z)·s in the output dtype, row n contiguous along K (what
    ``x @ W.T`` reads); the same values as the torch reference. BLOCK_K divides the group.
    ``stride_g``: row stride (columns) of the scales, whose columns may be a slice of a wider layer.
    MMA: the words are in the ``mma`` order (BLOCK_K = 128): the decoded tile is permuted back to
    natural k in registers, so the stores stay contiguous."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_w = pid_k * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
    words = tl.load(qk_ptr + offs_n[:, None] * k8 + offs_w[None, :], mask=mask_n[:, None], other=0,
                    eviction_policy="evict_first")
    dt = w_ptr.dtype.element_ty
    g = (pid_k * BLOCK_K) // GROUP
    zshift = _shift_pattern(BLOCK_N, S0, S1, S2, S3, S4, S5, S6, S7)
    zw = tl.load(qz_ptr + g * (stride_g // 8) + offs_n // 8, mask=mask_n, other=0)
    z = ((zw >> zshift) & 0xF).to(tl.float32)
    s = tl.load(s_ptr + g * stride_g + offs_n, mask=mask_n, other=0.0)
    codes = _codes16(words, magic, z, s, dt, BLOCK_K, ASM)
    if MMA:  # position 8(4t + j) + 4r₂ + 2r₁ + r₀ holds k = 32j + 16r₂ + 8r₁ + 2t + r₀
        codes = tl.reshape(tl.permute(tl.reshape(codes, (BLOCK_N, 4, 4, 2, 2, 2)), (0, 2, 3, 4, 1, 5)),
                           (BLOCK_N, BLOCK_K))
    tl.store(w_ptr + offs_n[:, None] * K + ks[None, :], codes, mask=mask_n[:, None])


# ---------------------------------------------------------------- launchers


def _split_grid(n: int, k: int, block_n: int, block_k: int, split_k: int | None, target_programs: int
                ) -> tuple[int, int, int]:
    """(column tiles, K-splits, K-steps per split): ``split_k`` as asked, or enough splits for
    ``target_programs`` programs; never an empty split."""
    tiles = triton.cdiv(n, block_n)
    k_iters = triton.cdiv(k, block_k)
    if split_k is None:
        split_k = max(1, min(k_iters, triton.cdiv(target_programs, tiles))) if target_programs else 1
    per_split = triton.cdiv(k_iters, split_k)
    return tiles, triton.cdiv(k_iters, per_split), per_split


def gemv_row(x: torch.Tensor, qweight_k: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
             bias: torch.Tensor | None, group_size: int, workspace: torch.Tensor, counters: torch.Tensor,
             block_n: int = 32, chunk_k: int = 512, num_warps: int = 2, h2: bool = False,
             max_registers: int | None = None, out: torch.Tensor | None = None, accumulate: bool = False,
             pdl: bool = False, gated: bool = False, mma: bool = False) -> torch.Tensor:
    """x (1, K) → (1, N) from the K-major layout (``mma``: in the mma order, layout.py), one pass
    per (block_n, chunk_k) tile; K-splits meet in ``workspace`` (fp32 ≥ N) and ``counters``
    (int32 ≥ N/block_n), both zero and left at zero.
    ``chunk_k`` is rounded up to a multiple of the group; ``h2``: products in half2 (see the kernel);
    ``max_registers`` caps registers per thread (more resident warps, maybe spills). ``accumulate``:
    ``out`` is a zeroed fp32 (1, N) that the K-splits add into directly (no workspace, no arrival
    count; whoever reads it zeroes it for the next call). ``pdl``: launch as a programmatic dependent
    of the previous kernel (sm_90+; see the kernel). ``gated``: x is (1, 2K) [gate | up] and the
    input is silu(gate)·up."""
    m, k = x.shape[0], x.shape[1] // (2 if gated else 1)
    n = scales.shape[1]
    assert m == 1 and x.stride(1) == 1 and qweight_k.shape == (n, k // 8)
    chunk_k = -(-chunk_k // group_size) * group_size
    tiles, split_k = triton.cdiv(n, block_n), triton.cdiv(k, chunk_k)
    y = torch.empty(1, n, dtype=x.dtype, device=x.device) if out is None else out
    _gemv_row_kernel[(tiles, split_k)](
        x, qweight_k, qzeros, scales, bias if bias is not None else scales, y, workspace, counters, n, k, k // 8,
        split_k, _MAGIC12, _MAGIC16, GROUP=group_size, BLOCK_N=block_n, CHUNK_K=chunk_k, H2=h2,
        SPLIT=2 if accumulate else int(split_k > 1), HAS_BIAS=bias is not None, ASM=not _interpreted(), PDL=pdl,
        GATED=gated, MMA=int(mma),
        **{f"S{j}": _SHIFTS[j] for j in range(8)}, num_warps=num_warps, num_stages=1,
        **({} if max_registers is None else {"maxnreg": max_registers}), **({"launch_pdl": True} if pdl else {}))
    return y


def gemv_dot(x: torch.Tensor, qweight_k: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
             bias: torch.Tensor | None, group_size: int, workspace: torch.Tensor, counters: torch.Tensor,
             block_n: int = 64, split_k: int | None = None, num_warps: int = 4, num_stages: int = 3,
             target_programs: int = 0, out: torch.Tensor | None = None, accumulate: bool = False,
             mma: bool = False) -> torch.Tensor:
    """x (≤ 16, K) fp16/bf16 → (M, N) from the K-major layout (``mma``: the mma order) with tensor cores; workspace as
    ``gemv_row`` (≥ M·N); ``split_k`` None: enough K-splits for ``target_programs`` programs;
    ``accumulate`` as ``gemv_row`` (``out`` a zeroed fp32 (M, N))."""
    m, k = x.shape
    n = scales.shape[1]
    assert m <= 16 and x.stride(1) == 1 and qweight_k.shape == (n, k // 8) and x.dtype in _MAGIC16BIT
    tiles, split_k, per_split = _split_grid(n, k, block_n, group_size, split_k, target_programs)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    _gemv_dot_kernel[(tiles, split_k)](
        x, qweight_k, qzeros, scales, bias if bias is not None else scales, y, workspace, counters,
        m, n, k, k // 8, x.stride(0), y.stride(0), per_split, split_k, _MAGIC16BIT[x.dtype],
        GROUP=group_size, BLOCK_M=16, BLOCK_N=block_n, SPLIT=2 if accumulate else int(split_k > 1),
        HAS_BIAS=bias is not None, ASM=not _interpreted(), MMA=int(mma), **{f"S{j}": _SHIFTS[j] for j in range(8)},
        num_warps=num_warps, num_stages=num_stages)
    return y

def dequantize_kmajor(qweight_k: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                      dtype: torch.dtype, rows: tuple[int, int] | None = None, block_n: int = 64, block_k: int = 128,
                      out: torch.Tensor | None = None, mma: bool = False) -> torch.Tensor:
    """K-major tensors (``mma``: in the mma order) → W (N, K) in ``dtype`` (fp16/bf16): the
    reference's values, transposed.
    ``rows`` (n0, n1), n0 a multiple of 8: only output columns n0..n1 of the layer, as (n1 − n0, K)
    (a chunk of the weight that fits in L2 while cuBLAS reads it)."""
    n0, n1 = rows if rows is not None else (0, qweight_k.shape[0])
    assert n0 % 8 == 0
    n, k = n1 - n0, qweight_k.shape[1] * 8
    block_k = 128 if mma else min(block_k, group_size)
    assert not mma or group_size == 128
    w = torch.empty(n, k, dtype=dtype, device=qweight_k.device) if out is None else out
    grid = (triton.cdiv(n, block_n), k // block_k)
    _dequant_kmajor_kernel[grid](qweight_k[n0:n1], qzeros[:, n0 // 8:], scales[:, n0:], w, n, k, k // 8,
                                 scales.shape[1], _MAGIC16BIT[dtype], GROUP=group_size, BLOCK_N=block_n,
                                 BLOCK_K=block_k, ASM=not _interpreted(), MMA=int(mma),
                                 **{f"S{j}": _SHIFTS[j] for j in range(8)})
    return w
