"""Gluon W4A16 kernels, fp16 activations: one for 2–16 rows on the ``mma`` order (layout.py, group
128; any GPU with mma.m16n8k16, sm_80+), one for a single row (``row_gemv``, below: K-major or mma
order, half2 or integer math, sm_80+) and a prefill GEMM for Hopper (``mma_gemm``, below).

Each thread's 16-byte load is exactly its B-operand fragment of ``mma.m16n8k16`` for a span of
128 k (four k-steps), so the codes become half2 in the registers that loaded them — per pair one
LOP3, one HADD2 or HFMA2 (to q − z, exact) and one HMUL2 (the scale), one shift per word — and
reach the tensor cores with no layout conversion (``convert_layout(..., assert_trivial=True)``
fails the compile if one were needed). x (16 × 128 per step) goes through shared memory once per
program. The (column tile, span) units are shared out stream-K style, equal runs per program
(the last one shorter); partial sums are added into a zeroed fp32 output with atomics. The next
unit's words, zeros, scales and x are loaded before this unit's math (a software pipeline in
registers). Plain Triton cannot express this: it picks the register layout of a dequantized tile
itself and converts it to the dot operand through shared memory (docs/kernel-notes.md, versions 17
and 18).
"""

from __future__ import annotations

import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mma_v2
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

SPAN = gl.constexpr(128)
# named thread_barrier in Triton 3.5–3.6, barrier later
_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier
# cp.async: async_copy_global_to_shared in Triton 3.5–3.6, async_load later (same leading arguments)
_cp_async = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
# TMA: async_copy_global_to_shared in Triton 3.5–3.6, async_load later
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
# TMA store: async_copy_shared_to_global in Triton 3.5–3.6, async_store later
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global


@gluon.jit
def _zero_shift(cols):
    """Bit offset of column ``cols``' zero point in its packed word: the zeros keep the GEMM layout's
    AWQ nibble order (column 8w + j at nibble (0, 4, 1, 5, 2, 6, 3, 7)[j])."""
    return (((cols & 7) >> 1) << 2) | ((cols & 1) << 4)


@gluon.jit
def _pair(words, ODD: gl.constexpr, magic, base, scale):
    """Nibbles P and P + 4 (bits 4P and 4P + 16: k and k + 1 of a fragment) as (q − z)·s in half2;
    ``words`` holds nibble P at bit 0 (P even) or 4 (``ODD``): the caller shifts once for P = 2, 3. The
    LOP3 puts the nibble under the bit pattern of 1024: 1024 + q, or 1024 + 16q for an odd one; one
    HADD2 with ``base`` = −(1024 + z), or one HFMA2 by 1/16 with ``base`` = −(64 + z), leaves q − z
    exactly, and the HMUL2 rounds the product with the scale once, as the torch reference does."""
    if ODD:
        v = gl.inline_asm_elementwise(
            "{.reg .b32 t, h; mov.b32 h, 0x2C002C00; lop3.b32 t, $1, 0x00F000F0, $4, 0xEA; "
            "fma.rn.f16x2 t, t, h, $2; mul.f16x2 $0, t, $3;}",
            "=r,r,r,r,r", [words, base, scale, magic], dtype=gl.int32, is_pure=True, pack=1)
    else:
        v = gl.inline_asm_elementwise(
            "{.reg .b32 t; lop3.b32 t, $1, 0x000F000F, $4, 0xEA; add.f16x2 t, t, $2; mul.f16x2 $0, t, $3;}",
            "=r,r,r,r,r", [words, base, scale, magic], dtype=gl.int32, is_pure=True, pack=1)
    lo = v.to(gl.int16).to(gl.float16, bitcast=True)
    hi = (v >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    return gl.join(lo, hi)


@gluon.jit
def _tile_cols(tile, ar_n, N, BLOCK_N: gl.constexpr):
    """The tile's columns; those past N read column N − 1, never stored, so the loads need no mask
    and stay 16-byte vectors."""
    return gl.minimum(tile * BLOCK_N + ar_n, N - 1)


@gluon.jit
def _tile_span(u, spans):
    """Unit u's column tile and its span in that tile (units in tile-major order)."""
    tile = u // spans
    return tile, u - tile * spans


@gluon.jit
def _unit(u, spans, ar_n, N, BLOCK_N: gl.constexpr):
    """Unit u's span and its tile's columns."""
    tile, sp = _tile_span(u, spans)
    return sp, _tile_cols(tile, ar_n, N, BLOCK_N)


@gluon.jit
def _zeros_scales(qz_ptr, s_ptr, sp, N, cols):
    """Span sp's packed zero points and scales of columns ``cols`` (never negative: the zero words'
    index by a shift, not a signed division)."""
    return gl.load(qz_ptr + sp * (N // 8) + (cols >> 3)), gl.load(s_ptr + sp * N + cols)


@gluon.jit
def _word_offsets(cols, k8, tj):
    """Offsets of the columns' words 4t … 4t + 3 of span 0: one 16-byte vector per thread."""
    return gl.max_contiguous(gl.multiple_of(cols[:, None, None] * k8 + tj, [1, 1, 4]), [1, 1, 4])


@gluon.jit
def _codes(words, zw, s, zsh, magic, zero3):
    """(n, t, j) words, packed zero points and scales → (q − z)·s as (n, j, P1, P0, t, d0): the k
    of a fragment in natural order, in the registers that loaded the words."""
    z = (zw >> zsh) & 0xF
    zz = z | (z << 16)
    # half2 −(1024 + z) and −(64 + z), sign and exponent ORed onto the mantissa: fp16 steps by 1
    # at 1024 and by 1/16 at 64
    even = (zz | -0x1BFF1C00)[:, None, None] + zero3  # 0xE400E400
    odd = ((zz << 4) | -0x2BFF2C00)[:, None, None] + zero3  # 0xD400D400
    hs = s.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    scale = (hs | (hs << 16))[:, None, None] + zero3
    hi = words >> 8  # nibbles 2, 3 (6, 7) where nibbles 0, 1 (4, 5) were: one shift for both pairs
    p0 = gl.join(_pair(words, False, magic, even, scale), _pair(words, True, magic, odd, scale))  # (n,t,j,d0,P0)
    p1 = gl.join(_pair(hi, False, magic, even, scale), _pair(hi, True, magic, odd, scale))
    codes = gl.join(p0, p1)  # (n, t, j, d0, P0, P1)
    return gl.permute(codes, [0, 2, 5, 4, 1, 3])


@gluon.jit
def _b_operand(words, zw, s, zsh, magic, zero3, BLOCK_N: gl.constexpr, b_l: gl.constexpr):
    """A span's (n, t, j) words → the (128, BLOCK_N) B operand of mma.m16n8k16, no data moved
    between threads (``assert_trivial``)."""
    codes = gl.reshape(_codes(words, zw, s, zsh, magic, zero3), [BLOCK_N, SPAN])
    return gl.convert_layout(gl.permute(codes, [1, 0]), b_l, assert_trivial=True)


@gluon.jit
def _flush(acc, tile, sp, u, u0, u1, spans, b_ptr, y_ptr, M, N, stride_ym, ym, ar_yn, HAS_BIAS: gl.constexpr,
           BLOCK_N: gl.constexpr):
    """After unit u (span sp of ``tile``): if the run leaves its tile (or ends), add the sum into the
    output and restart it at zero. The bias is added once, by the run that holds the tile's first span."""
    if (sp == spans - 1) | (u == u1 - 1):
        yn = tile * BLOCK_N + ar_yn
        if HAS_BIAS:
            bias = gl.load(b_ptr + yn, mask=yn < N, other=0.0).to(gl.float32)
            acc += bias[None, :] * (u0 <= tile * spans).to(gl.float32)
        gl.atomic_add(y_ptr + ym[:, None] * stride_ym + yn[None, :], acc,
                      mask=(ym < M)[:, None] & (yn < N)[None, :], sem="relaxed")
        acc = gl.zeros_like(acc)
    return acc


@gluon.jit
def _mma_rows_kernel(x_ptr, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, M, N, K, k8, stride_xm, stride_ym,
                     units_per_program, HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr, W: gl.constexpr,
                     WORD_L: gl.constexpr):
    """Stream-K: the work is (column tile, span) units in tile-major order, and each program takes
    an equal run of consecutive units, flushing its sum into the output whenever its run leaves a
    tile (and at its end). Every program but the last streams the same number of bytes (the last
    may stream fewer): no tail wave, whatever the shape and the number of SMs. The unit's span and
    tile are counted on from the run's first unit, not divided out of each."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, W], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    n_l: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, WORD_L))
    t_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, WORD_L))
    j_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, WORD_L))
    spans = K // SPAN
    u0 = gl.program_id(0) * units_per_program
    u1 = gl.minimum(u0 + units_per_program, gl.cdiv(N, BLOCK_N) * spans)
    tile, sp = _tile_span(u0, spans)
    ar_n = gl.arange(0, BLOCK_N, layout=n_l)
    offs_t = gl.arange(0, 4, layout=t_l)
    offs_j = gl.arange(0, 4, layout=j_l)
    # thread t of a quad loads words 4t … 4t + 3 of the span: its fragments for k-steps j = 0 … 3
    tj = (offs_t * 4)[None, :, None] + offs_j[None, None, :]
    zsh = _zero_shift(ar_n)
    x_l: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [W, 1], [1, 0])
    am = gl.arange(0, 16, layout=gl.SliceLayout(1, x_l))
    ak = gl.arange(0, SPAN, layout=gl.SliceLayout(0, x_l))
    x_smem = gl.allocate_shared_memory(gl.float16, [16, SPAN], gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
    xofs = am[:, None] * stride_xm + ak[None, :]
    xmask = (am < M)[:, None] & (ak < SPAN)[None, :]
    magic = gl.full([BLOCK_N, 4, 4], 0x64006400, gl.int32, WORD_L)
    zero3 = gl.zeros([BLOCK_N, 4, 4], gl.int32, WORD_L)
    ym = gl.arange(0, 16, layout=gl.SliceLayout(1, mma))
    ar_yn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
    acc = gl.zeros([16, BLOCK_N], gl.float32, mma)
    # software pipeline: the next unit's words, zeros, scales and x are loaded before this unit's math
    cols = _tile_cols(tile, ar_n, N, BLOCK_N)
    words = gl.load(qm_ptr + _word_offsets(cols, k8, tj) + sp * (SPAN // 8), eviction_policy="evict_first")
    zw, s = _zeros_scales(qz_ptr, s_ptr, sp, N, cols)
    a = gl.load(x_ptr + xofs + sp * SPAN, mask=xmask, other=0.0)
    for u in range(u0, u1):
        wrap = (sp + 1 == spans).to(gl.int32)  # the next unit; past the run it reads column N − 1 or span 0
        sp_n = sp + 1 - wrap * spans
        tile_n = tile + wrap
        cols = _tile_cols(tile_n, ar_n, N, BLOCK_N)
        words_n = gl.load(qm_ptr + _word_offsets(cols, k8, tj) + sp_n * (SPAN // 8), eviction_policy="evict_first")
        zw_n, s_n = _zeros_scales(qz_ptr, s_ptr, sp_n, N, cols)
        b = _b_operand(words, zw, s, zsh, magic, zero3, BLOCK_N, b_l)
        a_n = gl.load(x_ptr + xofs + sp_n * SPAN, mask=xmask, other=0.0)
        _barrier()  # every warp has read the previous step's x
        x_smem.store(a)
        _barrier()
        acc = mma_v2(x_smem.load(a_l), b, acc)
        acc = _flush(acc, tile, sp, u, u0, u1, spans, b_ptr, y_ptr, M, N, stride_ym, ym, ar_yn, HAS_BIAS, BLOCK_N)
        words, zw, s, a, sp, tile = words_n, zw_n, s_n, a_n, sp_n, tile_n


@gluon.jit
def _mma_rows_cp_kernel(x_ptr, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, M, N, K, k8, stride_xm, stride_ym,
                        units_per_program, HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr, W: gl.constexpr,
                        WORD_L: gl.constexpr, STAGES: gl.constexpr):
    """``_mma_rows_kernel`` with the words and x of the next STAGES − 1 units in flight by cp.async
    into a ring of shared memory (no registers held for them); each thread then reads its
    fragment words back with one 16-byte shared load."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, W], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    n_l: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, WORD_L))
    cw_l: gl.constexpr = gl.BlockedLayout([1, 1, 4], [8, 4, 1], [W, 1, 1], [2, 1, 0])
    cn_l: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, cw_l))
    x_l: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [W, 1], [1, 0])
    spans = K // SPAN
    u0 = gl.program_id(0) * units_per_program
    u1 = gl.minimum(u0 + units_per_program, gl.cdiv(N, BLOCK_N) * spans)
    ar_n = gl.arange(0, BLOCK_N, layout=n_l)
    ar_cn = gl.arange(0, BLOCK_N, layout=cn_l)
    ct = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, cw_l)))
    cj = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, cw_l)))
    ctj = (ct * 4)[None, :, None] + cj[None, None, :]
    zsh = _zero_shift(ar_n)
    am = gl.arange(0, 16, layout=gl.SliceLayout(1, x_l))
    ak = gl.arange(0, SPAN, layout=gl.SliceLayout(0, x_l))
    xofs = am[:, None] * stride_xm + ak[None, :]
    xmask = (am < M)[:, None] & (ak < SPAN)[None, :]
    w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, 4, 4],
                                       gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0]))
    x_smem = gl.allocate_shared_memory(gl.float16, [STAGES, 16, SPAN], gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
    magic = gl.full([BLOCK_N, 4, 4], 0x64006400, gl.int32, WORD_L)
    zero3 = gl.zeros([BLOCK_N, 4, 4], gl.int32, WORD_L)
    ym = gl.arange(0, 16, layout=gl.SliceLayout(1, mma))
    ar_yn = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
    acc = gl.zeros([16, BLOCK_N], gl.float32, mma)
    for i in gl.static_range(STAGES - 1):  # prologue: the first STAGES − 1 units in flight
        sp, cols = _unit(gl.minimum(u0 + i, u1 - 1), spans, ar_cn, N, BLOCK_N)
        _cp_async(w_smem.index(i), qm_ptr + cols[:, None, None] * k8 + ctj + sp * (SPAN // 8))
        _cp_async(x_smem.index(i), x_ptr + xofs + sp * SPAN, xmask)
        async_copy.commit_group()
    sp, cols = _unit(u0, spans, ar_n, N, BLOCK_N)
    zw, s = _zeros_scales(qz_ptr, s_ptr, sp, N, cols)
    for u in range(u0, u1):
        it = u - u0
        async_copy.wait_group(STAGES - 2)  # this thread's copies of unit u have landed
        _barrier()  # everyone's have, and no warp still reads the slot refilled below
        sp, cols = _unit(gl.minimum(u + STAGES - 1, u1 - 1), spans, ar_cn, N, BLOCK_N)
        slot = (it + STAGES - 1) % STAGES
        _cp_async(w_smem.index(slot), qm_ptr + cols[:, None, None] * k8 + ctj + sp * (SPAN // 8))
        _cp_async(x_smem.index(slot), x_ptr + xofs + sp * SPAN, xmask)
        async_copy.commit_group()
        sp, cols = _unit(gl.minimum(u + 1, u1 - 1), spans, ar_n, N, BLOCK_N)
        zw_n, s_n = _zeros_scales(qz_ptr, s_ptr, sp, N, cols)
        b = _b_operand(w_smem.index(it % STAGES).load(WORD_L), zw, s, zsh, magic, zero3, BLOCK_N, b_l)
        acc = mma_v2(x_smem.index(it % STAGES).load(a_l), b, acc)
        tile, sp = _tile_span(u, spans)
        acc = _flush(acc, tile, sp, u, u0, u1, spans, b_ptr, y_ptr, M, N, stride_ym, ym, ar_yn, HAS_BIAS, BLOCK_N)
        zw, s = zw_n, s_n
    async_copy.wait_group(0)


@functools.cache  # built once: the launcher hashes constexpr layouts on every call
def word_layout(block_n: int, warps: int) -> gl.DistributedLinearLayout:
    """Register layout of the (BLOCK_N, t, j) words: lane = 4·(n mod 8) + t, as the B fragment
    wants; a thread's four j in its registers (one 16-byte load); warps and repeats along n."""
    reps = block_n // (8 * warps)
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1], [0, 0, 2]] + [[8 * warps * (1 << i), 0, 0] for i in range(reps.bit_length() - 1)],
        lane_bases=[[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[8 * (1 << i), 0, 0] for i in range(warps.bit_length() - 1)],
        block_bases=[], shape=[block_n, 4, 4])


def mma_rows(x: torch.Tensor, qweight_m: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
             bias: torch.Tensor | None, out: torch.Tensor, block_n: int = 128, warps: int = 4,
             target_programs: int = 396, stages: int = 0) -> torch.Tensor:
    """x (M ≤ 16, K) fp16 → adds x·W (+ bias) into ``out``, a zeroed fp32 (M, N); group 128,
    ``qweight_m`` in the mma order (N, K/8). ``target_programs``: how many programs share the
    (column tile, span) units (at most one per unit). ``stages`` ≥ 2: the cp.async kernel with
    that many slots of shared memory (a power of two); 0: the register pipeline."""
    m, k = x.shape
    n = scales.shape[1]
    assert m <= 16 and k % 128 == 0 and x.dtype == torch.float16 and x.stride(1) == 1
    assert qweight_m.shape == (n, k // 8) and scales.shape[0] == k // 128 and out.dtype == torch.float32
    assert block_n % (8 * warps) == 0
    units = triton.cdiv(n, block_n) * (k // 128)
    per = triton.cdiv(units, max(1, min(units, target_programs)))
    args = (x, qweight_m, qzeros, scales, bias if bias is not None else scales, out, m, n, k, k // 8, x.stride(0),
            out.stride(0), per)
    meta = dict(HAS_BIAS=bias is not None, BLOCK_N=block_n, W=warps, WORD_L=word_layout(block_n, warps),
                num_warps=warps)
    if stages:
        _mma_rows_cp_kernel[(triton.cdiv(units, per),)](*args, STAGES=stages, **meta)
    else:
        _mma_rows_kernel[(triton.cdiv(units, per),)](*args, **meta)
    return out


def compile_for(capability: int, block_n: int = 128, warps: int = 4, stages: int = 0):
    """Compile the kernel for a GPU that need not be here (CI: sm_90 and Jetson Orin's sm_87)."""
    from triton.backends.compiler import GPUTarget
    src = gluon._runtime.GluonASTSource(
        fn=_mma_rows_cp_kernel if stages else _mma_rows_kernel,
        signature={"x_ptr": "*fp16", "qm_ptr": "*i32", "qz_ptr": "*i32", "s_ptr": "*fp16", "b_ptr": "*fp16",
                   "y_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "k8": "i32", "stride_xm": "i32",
                   "stride_ym": "i32", "units_per_program": "i32"},
        constexprs={"HAS_BIAS": True, "BLOCK_N": block_n, "W": warps, "WORD_L": word_layout(block_n, warps),
                    **({"STAGES": stages} if stages else {})},
        attrs={(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11)})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})


# ---------------------------------------------------------------- one row (decode at batch 1)

def _dot32_asm() -> str:
    """PTX for Σ of four words' 32 products (q − z)·x: per word two LOP3s per pair put the codes of k,
    k + 1 under 1024 (low nibbles) or 1024 + 16q (high, scaled back by 1/16), an HADD2 or HFMA2 makes
    them q − z exactly, and four HFMA2 add the products to one half2 chain for all four words;
    converted to fp32 once (13 instructions per word, 3 per four). Operands: $1–$4 the words, $5/$6
    −(1024 + z) / −(64 + z) twice, $7 + 4i + P the half2 of x for pair P of word i, $23 1024 twice
    (0x64006400), $24 1/16 twice (0x2C002C00)."""
    body = ""
    for i in range(4):
        w = f"${1 + i}"
        body += (f"lop3.b32 p0, {w}, 0x000F000F, $23, 0xEA; lop3.b32 p1, {w}, 0x00F000F0, $23, 0xEA;"
                 f"shr.u32 t, {w}, 8; lop3.b32 p2, t, 0x000F000F, $23, 0xEA; lop3.b32 p3, t, 0x00F000F0, $23, 0xEA;"
                 "add.f16x2 p0, p0, $5; fma.rn.f16x2 p1, p1, $24, $6;"
                 "add.f16x2 p2, p2, $5; fma.rn.f16x2 p3, p3, $24, $6;")
        x = [f"${7 + 4 * i + p}" for p in range(4)]
        first = "mul.f16x2 c, p0, " + x[0] if i == 0 else f"fma.rn.f16x2 c, p0, {x[0]}, c"
        body += f"{first}; fma.rn.f16x2 c, p1, {x[1]}, c; fma.rn.f16x2 c, p2, {x[2]}, c; fma.rn.f16x2 c, p3, {x[3]}, c;"
    return ("{.reg .b32 t, c, p0, p1, p2, p3; .reg .b16 lo, hi; .reg .f32 flo, fhi;" + body
            + "mov.b32 {lo, hi}, c; cvt.f32.f16 flo, lo; cvt.f32.f16 fhi, hi; add.f32 $0, flo, fhi;}")


_DOT32_H2 = gl.constexpr(_dot32_asm())


def _fixed_x_asm() -> str:
    """PTX: one word's four half2 of x (pair P: nibbles P and P + 4) → 16-bit fixed point, round(x·2^sc),
    by an fp32 FMA that adds 1.5·2^23 (the integer lands in the low mantissa bits), packed in the pairs
    that ``dp2a`` multiplies with the word's bytes: (n0, n2), (n4, n6), (n1, n3), (n5, n7); and their sum.
    Operands: $5–$8 the half2, $9 2^sc (fp32)."""
    body = "".join(f"mov.b32 {{l{p}, h{p}}}, ${5 + p}; cvt.f32.f16 a{p}, l{p}; cvt.f32.f16 b{p}, h{p};"
                   f"fma.rn.f32 a{p}, a{p}, $9, 0f4B400000; fma.rn.f32 b{p}, b{p}, $9, 0f4B400000;"
                   for p in range(4))
    body += ("prmt.b32 $0, a0, a2, 0x5410; prmt.b32 $1, b0, b2, 0x5410; prmt.b32 $2, a1, a3, 0x5410;"
             "prmt.b32 $3, b1, b3, 0x5410; mov.b32 one, 0x01010101; mov.b32 s, 0;"
             "dp2a.lo.s32.u32 s, $0, one, s; dp2a.lo.s32.u32 s, $1, one, s; dp2a.lo.s32.u32 s, $2, one, s;"
             "dp2a.lo.s32.u32 s, $3, one, s; mov.b32 $4, s;")
    return ("{.reg .b16 l0, l1, l2, l3, h0, h1, h2, h3; .reg .f32 a0, a1, a2, a3, b0, b1, b2, b3;"
            ".reg .b32 one, s;" + body + "}")


def _dot32_int_asm() -> str:
    """PTX: Σ of four words' 32 products q·x in integers, times 16, plus $21: per word one LOP3 for the
    low nibbles of its bytes (q) and one for the high (16q, still a byte), and four ``dp2a`` (two
    16-bit x times two bytes, added to an int32) — 6 instructions per 8 weights, all exact. Operands:
    $1–$4 the words, $5 + 4i … $8 + 4i word i's fixed-point x pairs (``_fixed_x_asm``), $21 the
    start of the sum (−16·z·Σx: the zero point)."""
    body = ""
    for i in range(4):
        w, x = f"${1 + i}", [f"${5 + 4 * i + j}" for j in range(4)]
        body += (f"and.b32 lo, {w}, 0x0F0F0F0F; and.b32 hi, {w}, 0xF0F0F0F0;"
                 f"dp2a.lo.s32.u32 a, {x[0]}, lo, a; dp2a.hi.s32.u32 a, {x[1]}, lo, a;"
                 f"dp2a.lo.s32.u32 b, {x[2]}, hi, b; dp2a.hi.s32.u32 b, {x[3]}, hi, b;")
    return ("{.reg .b32 lo, hi, a, b; mov.b32 a, 0; mov.b32 b, $21;" + body
            + "shl.b32 a, a, 4; add.s32 a, a, b; cvt.rn.f32.s32 $0, a;}")


_FIXED_X = gl.constexpr(_fixed_x_asm())
_DOT32_INT = gl.constexpr(_dot32_int_asm())


@gluon.jit
def _x_fixed(x0, x1, x2, x3, mul):
    return gl.inline_asm_elementwise(_FIXED_X, "=r,=r,=r,=r,=r,r,r,r,r,f", [x0, x1, x2, x3, mul],
                                     dtype=(gl.int32, gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)


@gluon.jit
def _dot_int(wq, xf, start, zero2, nt_l: gl.constexpr):
    """Σ q·x·2^sc·16 + ``start`` over a thread's four consecutive words ``wq`` (BN, TK, 4) per column,
    exact in int32, as fp32 (BN, TK); ``xf`` the 16 fixed-point x pairs (four per word, ``_x_fixed``)."""
    w0, w1, w2, w3 = _quad_words(wq, nt_l)
    f00, f01, f02, f03, f10, f11, f12, f13, f20, f21, f22, f23, f30, f31, f32, f33 = xf
    return gl.inline_asm_elementwise(
        _DOT32_INT, "=f" + ",r" * 21,
        [w0, w1, w2, w3,
         f00[None, :] + zero2, f01[None, :] + zero2, f02[None, :] + zero2, f03[None, :] + zero2,
         f10[None, :] + zero2, f11[None, :] + zero2, f12[None, :] + zero2, f13[None, :] + zero2,
         f20[None, :] + zero2, f21[None, :] + zero2, f22[None, :] + zero2, f23[None, :] + zero2,
         f30[None, :] + zero2, f31[None, :] + zero2, f32[None, :] + zero2, f33[None, :] + zero2, start],
        dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _quad_dot_int(wq, xq, mul, zero16, zero2, nt_l: gl.constexpr):
    """Σ (q − z)·x·2^sc·16 over a thread's four consecutive words ``wq`` (BN, TK, 4) per column, exact
    in int32, as fp32 (BN, TK); ``zero16`` is −16·z per column."""
    x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33 = xq
    f00, f01, f02, f03, s0 = _x_fixed(x00, x01, x02, x03, mul)
    f10, f11, f12, f13, s1 = _x_fixed(x10, x11, x12, x13, mul)
    f20, f21, f22, f23, s2 = _x_fixed(x20, x21, x22, x23, mul)
    f30, f31, f32, f33, s3 = _x_fixed(x30, x31, x32, x33, mul)
    sx = (s0 + s1) + (s2 + s3)
    return _dot_int(wq, (f00, f01, f02, f03, f10, f11, f12, f13, f20, f21, f22, f23, f30, f31, f32, f33),
                    zero16 * sx[None, :], zero2, nt_l)


@gluon.jit
def _fixed_scale(hb):
    """From the largest |x| as fp16 bits: 2^sc, which puts it in [2^13, 2^14) (rounded, x then fits 16
    bits and the products' int32 sum is exact, < 2^31), and 2^−sc/16 to undo it — NaN where x holds an
    inf or NaN, which have no fixed-point form (the sums turn NaN, as the half2 products would)."""
    sc = 28 - (hb >> 10)
    mul = ((127 + sc) << 23).to(gl.float32, bitcast=True)
    inv = ((123 - sc) << 23).to(gl.float32, bitcast=True)
    return mul, gl.where(hb >= 0x7C00, float("nan"), inv)


@gluon.jit
def _rows4(v):
    """(4, TK) with dim 0 in a thread's registers → its four rows, (TK,) each."""
    a, b = gl.split(gl.reshape(v.permute(1, 0), [v.shape[1], 2, 2]))  # row 2h + l: a has l = 0, b l = 1
    r0, r2 = gl.split(a)
    r1, r3 = gl.split(b)
    return r0, r1, r2, r3


@gluon.jit
def _x_fixed_shared(x32_ptr, kc, k8, MMA: gl.constexpr, TK: gl.constexpr, W: gl.constexpr, nt_l: gl.constexpr):
    """x of a thread's four words in fixed point, rounded once per warp: the four lane groups that hold
    the same K slice (and different columns) round one word each, then gather the packed pairs
    (a layout conversion: ldmatrix/stmatrix through 128 bytes of shared memory). Returns the 16 pairs
    (word-major), Σx and max|x| as fp16 bits, in the layout of ``nt_l``'s K slice."""
    XL: gl.constexpr = gl.BlockedLayout([1, 1], [4, TK], [W, 1], [1, 0])  # lane group g: word g
    XB: gl.constexpr = gl.BlockedLayout([4, 1], [4, TK], [W, 1], [1, 0])  # every lane: all four words
    jw = (kc * (4 * TK) + 4 * gl.arange(0, TK, layout=gl.SliceLayout(0, XL))[None, :]
          + gl.arange(0, 4, layout=gl.SliceLayout(1, XL))[:, None])
    x0, x1, x2, x3 = _x_word(x32_ptr, jw, jw < k8, MMA)
    m = _abs_max4(x0, x1, x2, x3)
    hb = gl.max(gl.maximum(m & 0x7FFF, (m >> 16) & 0x7FFF), axis=0)  # an inf or NaN: ≥ 0x7C00
    mul, _ = _fixed_scale(hb)
    f0, f1, f2, f3, s = _x_fixed(x0, x1, x2, x3, mul[None, :] + gl.zeros([4, TK], gl.float32, XL))
    a0, a1, a2, a3 = _rows4(gl.convert_layout(f0, XB))
    b0, b1, b2, b3 = _rows4(gl.convert_layout(f1, XB))
    c0, c1, c2, c3 = _rows4(gl.convert_layout(f2, XB))
    d0, d1, d2, d3 = _rows4(gl.convert_layout(f3, XB))
    k_l: gl.constexpr = gl.SliceLayout(0, nt_l)
    xf = (gl.convert_layout(a0, k_l), gl.convert_layout(b0, k_l), gl.convert_layout(c0, k_l),
          gl.convert_layout(d0, k_l), gl.convert_layout(a1, k_l), gl.convert_layout(b1, k_l),
          gl.convert_layout(c1, k_l), gl.convert_layout(d1, k_l), gl.convert_layout(a2, k_l),
          gl.convert_layout(b2, k_l), gl.convert_layout(c2, k_l), gl.convert_layout(d2, k_l),
          gl.convert_layout(a3, k_l), gl.convert_layout(b3, k_l), gl.convert_layout(c3, k_l),
          gl.convert_layout(d3, k_l))
    return xf, gl.convert_layout(gl.sum(s, axis=0), k_l), gl.convert_layout(hb, k_l)


@gluon.jit
def _max_h2(a, b):
    """Elementwise max of two half2 (as int32); NaN if either is (the integer products need to see it)."""
    return gl.inline_asm_elementwise("max.NaN.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=gl.int32, is_pure=True,
                                     pack=1)


@gluon.jit
def _abs_max4(x0, x1, x2, x3):
    """Elementwise max of |x| over four half2 (as int32), NaN if any is."""
    return gl.inline_asm_elementwise(
        "{.reg .b32 a, b, c, d; abs.f16x2 a, $1; abs.f16x2 b, $2; abs.f16x2 c, $3; abs.f16x2 d, $4;"
        "max.NaN.f16x2 a, a, b; max.NaN.f16x2 c, c, d; max.NaN.f16x2 $0, a, c;}",
        "=r,r,r,r,r", [x0, x1, x2, x3], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _mul_h2(a, b):
    return gl.inline_asm_elementwise("mul.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=gl.int32, is_pure=True,
                                     pack=1)


@gluon.jit
def _x_word(x32_ptr, jw, mask, MMA: gl.constexpr):
    """The four half2 of x that word jw's pairs P = 0 … 3 (nibbles P and P + 4) multiply: k = 8jw + 2P,
    or in the mma order 128⌊jw/16⌋ + 32(jw mod 4) + 2(⌊jw/4⌋ mod 4) + 16⌊P/2⌋ + 8(P mod 2), and k + 1."""
    if MMA:
        base = (jw // 16) * 64 + (jw % 4) * 16 + (jw // 4) % 4
        return (gl.load(x32_ptr + base, mask=mask, other=0), gl.load(x32_ptr + base + 4, mask=mask, other=0),
                gl.load(x32_ptr + base + 8, mask=mask, other=0), gl.load(x32_ptr + base + 12, mask=mask, other=0))
    base = jw * 4
    return (gl.load(x32_ptr + base, mask=mask, other=0), gl.load(x32_ptr + base + 1, mask=mask, other=0),
            gl.load(x32_ptr + base + 2, mask=mask, other=0), gl.load(x32_ptr + base + 3, mask=mask, other=0))


@gluon.jit
def _x_quad(x32_ptr, jx, mask, MMA: gl.constexpr):
    """x for four consecutive words jx … jx + 3: 16 half2, and their largest |x| as half2."""
    x00, x01, x02, x03 = _x_word(x32_ptr, jx, mask, MMA)
    x10, x11, x12, x13 = _x_word(x32_ptr, jx + 1, mask, MMA)
    x20, x21, x22, x23 = _x_word(x32_ptr, jx + 2, mask, MMA)
    x30, x31, x32, x33 = _x_word(x32_ptr, jx + 3, mask, MMA)
    m = _max_h2(_max_h2(_abs_max4(x00, x01, x02, x03), _abs_max4(x10, x11, x12, x13)),
                _max_h2(_abs_max4(x20, x21, x22, x23), _abs_max4(x30, x31, x32, x33)))
    return (x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33), m


@gluon.jit
def _bx(xp, sh, zero2):
    """A thread's x pair, scaled by its power of two, broadcast over its columns."""
    return _mul_h2(xp, sh)[None, :] + zero2


@gluon.jit
def _quad_words(wq, nt_l: gl.constexpr):
    """A thread's four consecutive words ``wq`` (BN, TK, 4) as four (BN, TK) tensors in its registers."""
    wa, wb = gl.split(gl.reshape(wq, [wq.shape[0], wq.shape[1], 2, 2]))  # word 2a + b
    w0, w2 = gl.split(wa)
    w1, w3 = gl.split(wb)
    return (gl.convert_layout(w0, nt_l, assert_trivial=True), gl.convert_layout(w1, nt_l, assert_trivial=True),
            gl.convert_layout(w2, nt_l, assert_trivial=True), gl.convert_layout(w3, nt_l, assert_trivial=True))


@gluon.jit
def _quad_dot(wq, nb1, nb2, xq, sh, zero2, nt_l: gl.constexpr):
    """Σ (q − z)·x over a thread's four consecutive words ``wq`` (BN, TK, 4) per column, fp32 (BN, TK)."""
    w0, w1, w2, w3 = _quad_words(wq, nt_l)
    x00, x01, x02, x03, x10, x11, x12, x13, x20, x21, x22, x23, x30, x31, x32, x33 = xq
    return gl.inline_asm_elementwise(
        _DOT32_H2, "=f" + ",r" * 24,
        [w0, w1, w2, w3, nb1, nb2,
         _bx(x00, sh, zero2), _bx(x01, sh, zero2), _bx(x02, sh, zero2), _bx(x03, sh, zero2),
         _bx(x10, sh, zero2), _bx(x11, sh, zero2), _bx(x12, sh, zero2), _bx(x13, sh, zero2),
         _bx(x20, sh, zero2), _bx(x21, sh, zero2), _bx(x22, sh, zero2), _bx(x23, sh, zero2),
         _bx(x30, sh, zero2), _bx(x31, sh, zero2), _bx(x32, sh, zero2), _bx(x33, sh, zero2),
         zero2 + 0x64006400, zero2 + 0x2C002C00],
        dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _row_rows(nt, N, BN: gl.constexpr, RPT: gl.constexpr, VEC: gl.constexpr, nt_l: gl.constexpr):
    """Column tile nt: its columns, the same clamped to N − 1 (loads need no mask, never stored),
    and the columns whose scales a thread reads (with VEC, N % RPT == 0: a thread's RPT columns are
    all in or all past N, so they are read as one vector)."""
    ar = gl.arange(0, BN, layout=gl.SliceLayout(1, nt_l))
    rows = nt * BN + ar
    rows_c = gl.minimum(rows, N - 1)
    if VEC:
        rows_s = gl.max_contiguous(gl.multiple_of(gl.minimum(nt * BN + (ar // RPT) * RPT, N - RPT) + ar % RPT,
                                                  [RPT]), [RPT])
    else:
        rows_s = rows_c
    return rows, rows_c, rows_s


@gluon.jit
def _row_load(q_ptr, qz_ptr, s_ptr, rows_c, rows_s, nt, kc, N, K, k8, GROUP: gl.constexpr, EVEN_K: gl.constexpr,
              RPT: gl.constexpr, WPT: gl.constexpr, TK: gl.constexpr, W: gl.constexpr, VEC: gl.constexpr,
              L3: gl.constexpr):
    """The words, scales and packed zero points of tile (column tile nt, K chunk kc), whose columns
    are ``rows_c`` and ``rows_s`` (``_row_rows``)."""
    nt_l: gl.constexpr = gl.SliceLayout(2, L3)
    tw_l: gl.constexpr = gl.SliceLayout(0, L3)
    BN: gl.constexpr = RPT * (32 // TK) * W
    j0 = kc * (WPT * TK)
    jw = j0 + gl.arange(0, TK, layout=gl.SliceLayout(1, tw_l))[:, None] * WPT + \
        gl.arange(0, WPT, layout=gl.SliceLayout(0, tw_l))[None, :]  # (TK, WPT) word index along the row
    wofs = gl.max_contiguous(gl.multiple_of(rows_c[:, None, None] * k8 + jw[None, :, :], [1, 1, 4]), [1, 1, 4])
    if EVEN_K:
        words = gl.load(q_ptr + wofs, eviction_policy="evict_first")
    else:
        words = gl.load(q_ptr + wofs, mask=(jw < k8)[None, :, :], other=0, eviction_policy="evict_first")
    g = gl.minimum((j0 + gl.arange(0, TK, layout=gl.SliceLayout(0, nt_l)) * WPT) // (GROUP // 8), K // GROUP - 1)
    s = gl.load(s_ptr + g[None, :] * N + rows_s[:, None])  # (BN, TK): a thread's words lie in one group
    if VEC and RPT % 8 == 0:  # a thread's columns share RPT/8 words of packed zeros: load each once
        lz: gl.constexpr = gl.BlockedLayout([RPT // 8, 8, 1], [32 // TK, 1, TK], [W, 1, 1], [2, 1, 0])
        zr = gl.minimum(nt * (BN // 8) + gl.arange(0, BN // 8, layout=gl.SliceLayout(1, gl.SliceLayout(1, lz))),
                        N // 8 - 1)
        gz = gl.minimum((j0 + gl.arange(0, TK, layout=gl.SliceLayout(0, gl.SliceLayout(1, lz))) * WPT)
                        // (GROUP // 8), K // GROUP - 1)
        zw = gl.load(qz_ptr + gz[None, :] * (N // 8) + zr[:, None])  # (BN/8, TK)
        zw = gl.reshape(zw[:, None, :] + gl.zeros([BN // 8, 8, TK], gl.int32, lz), [BN, TK])
        zw = gl.convert_layout(zw, nt_l, assert_trivial=True)
    else:
        zw = gl.load(qz_ptr + g[None, :] * (N // 8) + (rows_c // 8)[:, None])
    return words, s, zw


@gluon.jit
def _row_math(x32_ptr, b_ptr, y_ptr, words, s, zw, rows, rows_c, rows_s, nt, kc, N, k8, MMA: gl.constexpr,
              INT: gl.constexpr, XS: gl.constexpr, TSUM: gl.constexpr, HAS_BIAS: gl.constexpr, RPT: gl.constexpr,
              WPT: gl.constexpr, TK: gl.constexpr, W: gl.constexpr, L3: gl.constexpr):
    """The partial sums of K chunk kc for the columns ``rows`` (``_row_rows``), added into the zeroed
    fp32 output (the bias by K chunk 0)."""
    nt_l: gl.constexpr = gl.SliceLayout(2, L3)
    BN: gl.constexpr = RPT * (32 // TK) * W
    z = (zw >> _zero_shift(rows_c)[:, None]) & 0xF
    zero2 = gl.zeros([BN, TK], gl.int32, nt_l)
    if XS:
        xf, sx, hb = _x_fixed_shared(x32_ptr, kc, k8, MMA, TK, W, nt_l)
    else:
        jx = kc * (WPT * TK) + WPT * gl.arange(0, TK, layout=gl.SliceLayout(0, nt_l))
        xq, m = _x_quad(x32_ptr, jx, jx < k8, MMA)
        if WPT == 8:
            xq2, m2 = _x_quad(x32_ptr, jx + 4, (jx + 4) < k8, MMA)
            m = _max_h2(m, m2)
        hb = gl.maximum(m & 0x7FFF, (m >> 16) & 0x7FFF)  # largest |x| as fp16 bits (monotonic for |x|)
    if WPT == 4:
        wq1 = words
    else:
        wq1, wq2 = gl.split(gl.reshape(words, [BN, TK, 2, 4]).permute(0, 1, 3, 2))  # words 0-3, 4-7
    if INT:
        mul, inv = _fixed_scale(hb)
        zero16 = -16 * z
        if XS:
            part = _dot_int(wq1, xf, zero16 * sx[None, :], zero2, nt_l)
        else:
            part = _quad_dot_int(wq1, xq, mul, zero16, zero2, nt_l)
            if WPT == 8:
                part += _quad_dot_int(wq2, xq2, mul, zero16, zero2, nt_l)
    else:
        # −(1024 + z) and −(64 + z) as fp16 bit patterns, twice (exact): 0xE400 + z and 0xD400 + 16z
        nb1 = z * 0x10001 - 469703680  # + 0xE400E400
        nb2 = z * 0x100010 - 738143232  # + 0xD400D400
        sc = gl.minimum(22 - (hb >> 10), 15)  # 2^sc · max|x| in [128, 256); subnormal or zero: 2^15
        sh = (sc + 15) << 10
        sh = sh | (sh << 16)
        inv = ((127 - sc) << 23).to(gl.float32, bitcast=True)
        part = _quad_dot(wq1, nb1, nb2, xq, sh, zero2, nt_l)
        if WPT == 8:
            part += _quad_dot(wq2, nb1, nb2, xq2, sh, zero2, nt_l)
    part = part * (s.to(gl.float32) * inv[None, :])
    if TSUM:  # transposed through shared memory: a thread sums one column's TK partials, one atomic each
        sum_l: gl.constexpr = gl.BlockedLayout([1, TK], [32, 1], [W, 1], [1, 0])
        y = gl.sum(gl.convert_layout(part, sum_l), axis=1)
        rows, _, rows_s = _row_rows(nt, N, BN, RPT, False, sum_l)  # this layout's columns
    else:  # by shuffles
        y = gl.sum(part, axis=1)  # (BN,)
    if HAS_BIAS:
        y += gl.load(b_ptr + rows_s).to(gl.float32) * (kc == 0).to(gl.float32)
    gl.atomic_add(y_ptr + rows, y, mask=rows < N, sem="relaxed")


@gluon.jit
def _row_kernel(x32_ptr, q_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, N, K, k8,
                GROUP: gl.constexpr, MMA: gl.constexpr, INT: gl.constexpr, XS: gl.constexpr, TSUM: gl.constexpr,
                HAS_BIAS: gl.constexpr, EVEN_K: gl.constexpr,
                RPT: gl.constexpr, WPT: gl.constexpr, TK: gl.constexpr, W: gl.constexpr, VEC: gl.constexpr,
                PDL: gl.constexpr, K_FIRST: gl.constexpr):
    """One row: a program reduces RPT·(32/TK)·W columns × 8·WPT·TK k. A thread holds RPT consecutive
    columns × WPT (4 or 8) consecutive words (16-byte loads) — one group's zero point and scale per
    column, x for its own words only — so x is prepared once per thread for RPT columns and the only
    cross-thread step is the final sum over the TK threads along k. x is scaled per thread by a power
    of two (largest |x| into [128, 256): a half2 chain of 16 products of |q − z| ≤ 15 cannot
    overflow), undone with the scale in fp32. INT: the products in integers instead — x rounded to
    16-bit fixed point per thread (largest |x| into [2^13, 2^14), so an element's error is at most
    2^−14 of the thread's largest), times the weight bytes by ``dp2a``, summed exactly in int32 (6
    instructions per 8 weights against 13). XS (with INT, 4 words × 8 threads along k): the four lane
    groups of a warp that read the same x round a word each and gather the rest (``_x_fixed_shared``).
    Adds into a zeroed fp32 output (K-splits by atomics).
    All weight loads are issued before any math (a barrier; ptxas would otherwise interleave them
    with it to save registers). PDL: they are also issued before waiting for the previous kernel,
    whose output x is. K_FIRST: consecutive programs take consecutive K chunks of one column tile
    (their weights one contiguous block) rather than the same K chunk of consecutive tiles."""
    L3: gl.constexpr = gl.BlockedLayout([RPT, 1, WPT], [32 // TK, TK, 1], [W, 1, 1], [2, 1, 0])
    if K_FIRST:
        kc = gl.program_id(0)
        nt = gl.program_id(1)
    else:
        nt = gl.program_id(0)
        kc = gl.program_id(1)
    rows, rows_c, rows_s = _row_rows(nt, N, RPT * (32 // TK) * W, RPT, VEC, gl.SliceLayout(2, L3))
    words, s, zw = _row_load(q_ptr, qz_ptr, s_ptr, rows_c, rows_s, nt, kc, N, K, k8, GROUP, EVEN_K, RPT, WPT, TK, W,
                             VEC, L3)
    _barrier()
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    _row_math(x32_ptr, b_ptr, y_ptr, words, s, zw, rows, rows_c, rows_s, nt, kc, N, k8, MMA, INT, XS, TSUM, HAS_BIAS,
              RPT, WPT, TK, W, L3)


def row_tile(rpt: int, tk: int, warps: int, wpt: int) -> tuple[int, int]:
    """A one-row program's (columns, k): ``rpt``·(32/``tk``)·``warps`` columns × 8·``wpt``·``tk`` k."""
    return rpt * (32 // tk) * warps, 8 * wpt * tk


def can_share_x(int_dot: bool, wpt: int, tk: int) -> bool:
    """Whether a one-row tile can round x once per warp: integer products, four words per thread and
    8 threads along k (the four lane groups of a warp then read the same K slice, a word each)."""
    return int_dot and wpt == 4 and tk == 8


def row_gemv(x: torch.Tensor, qweight_k: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
             bias: torch.Tensor | None, out: torch.Tensor, group_size: int, mma: bool = False, rpt: int = 4,
             tk: int = 8, warps: int = 1, wpt: int = 4, pdl: bool = False, int_dot: bool = False,
             tsum: bool = False, x_shared: bool = False, k_first: bool = False) -> torch.Tensor:
    """x (1, K) fp16 → adds x·W (+ bias) into ``out``, a zeroed fp32 (1, N); ``qweight_k`` K-major
    (N, K/8), in the mma order if ``mma`` (group 128). A program: ``rpt``·(32/``tk``)·``warps``
    columns × 8·``wpt``·``tk`` k; ``wpt`` 8 needs groups of 64 or more. ``pdl``: launched as a
    programmatic dependent of the previous kernel (sm_90). ``x_shared`` (integer products, ``wpt`` 4,
    ``tk`` 8): x rounded once per warp instead of once per lane group. ``k_first``: the grid walks the
    K chunks of a column tile first."""
    m, k = x.shape
    n = scales.shape[1]
    assert m == 1 and x.dtype == torch.float16 and x.is_contiguous() and k % 32 == 0 and group_size >= 8 * wpt
    assert qweight_k.shape == (n, k // 8) and out.dtype == torch.float32 and (not mma or group_size == 128)
    assert not x_shared or can_share_x(int_dot, wpt, tk), "x_shared needs int_dot, wpt 4 and tk 8"
    bn, ck = row_tile(rpt, tk, warps, wpt)
    grid = (triton.cdiv(n, bn), triton.cdiv(k, ck))
    _row_kernel[grid[::-1] if k_first else grid](
        x.view(torch.int32), qweight_k, qzeros, scales, bias if bias is not None else scales, out, n, k, k // 8,
        GROUP=group_size, MMA=mma, INT=int_dot, XS=x_shared, TSUM=tsum, HAS_BIAS=bias is not None,
        EVEN_K=k % ck == 0, RPT=rpt, WPT=wpt, TK=tk, W=warps, VEC=n % rpt == 0, PDL=pdl, K_FIRST=k_first,
        num_warps=warps,
        **({"launch_pdl": True} if pdl else {}))
    return out


def compile_row_for(capability: int, rpt: int = 4, tk: int = 8, warps: int = 1, wpt: int = 4, mma: bool = True,
                    pdl: bool = False, int_dot: bool = False, tsum: bool = False, x_shared: bool = False,
                    k_first: bool = False):
    """Compile the one-row kernel for a GPU that need not be here (CI: sm_90 and sm_87)."""
    from triton.backends.compiler import GPUTarget
    src = gluon._runtime.GluonASTSource(
        fn=_row_kernel,
        signature={"x32_ptr": "*i32", "q_ptr": "*i32", "qz_ptr": "*i32", "s_ptr": "*fp16", "b_ptr": "*fp16",
                   "y_ptr": "*fp32", "N": "i32", "K": "i32", "k8": "i32"},
        constexprs={"GROUP": 128, "MMA": mma, "INT": int_dot, "XS": x_shared, "TSUM": tsum, "HAS_BIAS": True,
                    "EVEN_K": True, "RPT": rpt, "WPT": wpt, "TK": tk, "W": warps, "VEC": True, "PDL": pdl,
                    "K_FIRST": k_first},
        attrs={(i,): [["tt.divisibility", 16]] for i in range(9)})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})


# ---------------------------------------------------------------- prefill: warpgroup MMA, weights from registers

HALF = gl.constexpr(64)  # k per TMA box: 128-byte swizzle rows hold 64 fp16


@gluon.jit
def _a_half(words, zw, s, zsh, magic, zero3, BLOCK_N: gl.constexpr, a_l: gl.constexpr):
    """Half a span's (n, t, 2) words (j = 0, 1 or 2, 3) → the (BLOCK_N, 64) A operand of warpgroup
    MMA, no data moved between threads (``assert_trivial``)."""
    codes = gl.reshape(_codes(words, zw, s, zsh, magic, zero3), [BLOCK_N, HALF])
    return gl.convert_layout(codes, a_l, assert_trivial=True)


@gluon.jit
def _tile_bias(acc, b_ptr, N, n0, HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr):
    """The Yᵀ tile's fp32 sums plus the bias of its weight rows n0 … n0 + BLOCK_N − 1 (if any)."""
    if HAS_BIAS:
        bn = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, acc.type.layout))
        acc += gl.load(b_ptr + bn, mask=bn < N, other=0.0).to(gl.float32)[:, None]
    return acc


@gluon.jit
def _gemm_epilogue(acc, b_ptr, y_ptr, M, N, m0, n0, stride_ym, HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, W: gl.constexpr):
    """Yᵀ tile (+ bias, in fp32) → y (M, N) fp16, through shared memory so that the stores are 16
    bytes along n (4-byte stores along m straight from the MMA layout: 15 % slower at M = 2048)."""
    acc = _tile_bias(acc, b_ptr, N, n0, HAS_BIAS, BLOCK_N)
    out_l: gl.constexpr = gl.BlockedLayout([8, 1], [BLOCK_N // 8, 256 // BLOCK_N], [1, W], [0, 1])
    y = gl.convert_layout(acc.to(gl.float16), out_l)
    yn = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, out_l))
    ym = m0 + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, out_l))
    gl.store(y_ptr + ym[None, :] * stride_ym + yn[:, None], y, mask=(yn < N)[:, None] & (ym < M)[None, :])


@gluon.jit
def _tma_epilogue(acc, b_ptr, y_desc, y_smem, N, m0, n0, HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr):
    """Yᵀ tile (+ bias, in fp32) → fp16 into ``y_smem`` as y's (tokens, columns) box → one TMA store
    (edges clipped by the descriptor). The warpgroup goes on at once; the next tile's epilogue first
    waits until this store has read the buffer. Against ``_gemm_epilogue``: no rounds of shared-memory
    scratch with two barriers each (16 per 64 × 256 tile)."""
    acc = _tile_bias(acc, b_ptr, N, n0, HAS_BIAS, BLOCK_N)
    tma.store_wait(0)
    _barrier()  # the previous store has read the buffer: every warp may overwrite it
    y_smem.permute((1, 0)).store(acc.to(gl.float16))
    fence_async_shared()
    _barrier()  # every warp's part written before the store reads it
    _tma_store(y_desc, [m0, n0], y_smem)


@gluon.jit
def _gemm_rows(n0, N, k8, BLOCK_N: gl.constexpr, WORD_L: gl.constexpr):
    """The tile's weight rows (past N: row N − 1, never stored, so loads need no mask), their word
    offsets in span 0 (words 4t, 4t + 1: half a span's fragment, one 8-byte load), the zero points'
    nibble shifts, and the constants ``_codes`` takes."""
    n_l: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, WORD_L))
    t_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, WORD_L))
    j_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, WORD_L))
    rows = gl.minimum(n0 + gl.arange(0, BLOCK_N, layout=n_l), N - 1)
    tj = (gl.arange(0, 4, layout=t_l) * 4)[None, :, None] + gl.arange(0, 2, layout=j_l)[None, None, :]
    wofs = gl.max_contiguous(gl.multiple_of(rows[:, None, None] * k8 + tj, [1, 1, 2]), [1, 1, 2])
    zsh = _zero_shift(rows)
    magic = gl.full([BLOCK_N, 4, 2], 0x64006400, gl.int32, WORD_L)
    zero3 = gl.zeros([BLOCK_N, 4, 2], gl.int32, WORD_L)
    return rows, wofs, zsh, magic, zero3


@gluon.jit
def _span_words(qm_ptr, qz_ptr, s_ptr, wofs, rows, N, sp):
    """Span sp of the tile's rows: both halves' words, packed zero points and scales."""
    w0 = gl.load(qm_ptr + wofs + sp * (SPAN // 8), eviction_policy="evict_last")
    w1 = gl.load(qm_ptr + wofs + sp * (SPAN // 8) + 2, eviction_policy="evict_last")
    zw, s = _zeros_scales(qz_ptr, s_ptr, sp, N, rows)
    return w0, w1, zw, s


@gluon.jit
def _load_x_span(x_desc, bar, x_smem, slot, m0, sp):
    """Span sp of x (two 64-k boxes) into ring slot ``slot``, signalling ``bar``."""
    mbarrier.expect(bar, 2 * x_desc.block_type.nbytes)
    _tma_load(x_desc, [m0, sp * SPAN], bar, x_smem.index(2 * slot))
    _tma_load(x_desc, [m0, sp * SPAN + HALF], bar, x_smem.index(2 * slot + 1))


@gluon.jit
def _span_mma(acc, w0, w1, zw, s, zsh, magic, zero3, x_smem, ready, slot, phase, BLOCK_N: gl.constexpr,
              a_l: gl.constexpr, turns=None, wg=0, sp=0):
    """One span: its A operands from the words in registers, x's slot awaited, the two MMAs issued and
    waited for. They must be waited for before the next span's operands are made: the MMAs read the A
    registers after they are issued, and the compiler would reuse them (wrong results on the H100
    with the wait one span later). The tensor cores stay busy with the other warpgroup's and the other
    programs' MMAs meanwhile. ``turns`` (the warp-specialized kernel's ping-pong, consumer ``wg`` at
    span ``sp``): the MMAs are issued only once the other consumer has issued its own for the span
    before, and this consumer's issue passes the turn on, so the two alternate on the tensor cores
    instead of sharing them."""
    a0 = _a_half(w0, zw, s, zsh, magic, zero3, BLOCK_N, a_l)
    a1 = _a_half(w1, zw, s, zsh, magic, zero3, BLOCK_N, a_l)
    mbarrier.wait(ready, phase)
    if turns is not None:
        mbarrier.wait(turns.index(wg), (sp - 1 + wg) & 1, pred=sp + wg >= 1)
    acc = warpgroup_mma(a0, x_smem.index(2 * slot).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma(a1, x_smem.index(2 * slot + 1).permute((1, 0)), acc, is_async=True)
    if turns is not None:
        mbarrier.arrive(turns.index(1 - wg), count=1)
    return warpgroup_mma_wait(num_outstanding=0, deps=[acc])


@gluon.jit
def _gemm_tile(t, M, BLOCK_M: gl.constexpr, TILE_N: gl.constexpr):
    """Tile t's first token and first weight row: consecutive tiles share a weight tile, so it is read
    from HBM once while the programs that use it run side by side."""
    m_tiles = gl.cdiv(M, BLOCK_M)
    return (t % m_tiles) * BLOCK_M, (t // m_tiles) * TILE_N


@gluon.jit
def _gemm_kernel(x_desc, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, M, N, K, k8, stride_ym,
                 HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, W: gl.constexpr,
                 WORD_L: gl.constexpr, STAGES: gl.constexpr):
    """Yᵀ tile (BLOCK_N weight rows × BLOCK_M tokens) = W · Xᵀ by warpgroup MMA: the weights are the
    A operand straight from the registers that loaded and dequantized them, x the B operand from
    shared memory, brought span by span (two 64-k TMA boxes) through a ring of STAGES slots."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    m0, n0 = _gemm_tile(gl.program_id(0), M, BLOCK_M, BLOCK_N)
    spans = K // SPAN
    rows, wofs, zsh, magic, zero3 = _gemm_rows(n0, N, k8, BLOCK_N, WORD_L)

    x_smem = gl.allocate_shared_memory(gl.float16, [2 * STAGES, BLOCK_M, HALF], x_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(STAGES):  # prologue: the first STAGES spans of x in flight
        if i < spans:
            _load_x_span(x_desc, bars.index(i), x_smem, i, m0, i)

    w0, w1, zw, s = _span_words(qm_ptr, qz_ptr, s_ptr, wofs, rows, N, 0)
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
    for sp in range(spans):
        # the next span's words, zeros and scales, loaded ahead
        w0_n, w1_n, zw_n, s_n = _span_words(qm_ptr, qz_ptr, s_ptr, wofs, rows, N, gl.minimum(sp + 1, spans - 1))
        slot = sp % STAGES
        acc = _span_mma(acc, w0, w1, zw, s, zsh, magic, zero3, x_smem, bars.index(slot), slot, (sp // STAGES) & 1,
                        BLOCK_N, a_l)
        if sp + STAGES < spans:  # the slot's MMAs are done: it takes the span STAGES ahead
            _load_x_span(x_desc, bars.index(slot), x_smem, slot, m0, sp + STAGES)
        w0, w1, zw, s = w0_n, w1_n, zw_n, s_n
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))

    _gemm_epilogue(acc, b_ptr, y_ptr, M, N, m0, n0, stride_ym, HAS_BIAS, BLOCK_M, BLOCK_N, W)


@gluon.jit
def _ws_consumer(x_smem, ready, empty, turn, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, y_desc, y_smem, M, N, K, k8,
                 stride_ym, HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, HALF_N: gl.constexpr, WORD_L: gl.constexpr,
                 STAGES: gl.constexpr, CONSUMERS: gl.constexpr, WG: gl.constexpr, PINGPONG: gl.constexpr,
                 TMA_STORE: gl.constexpr):
    """Warpgroup WG's HALF_N weight rows of each of the program's tiles × BLOCK_M tokens: the span loop
    of ``_gemm_kernel`` with x from the producer's ring; each span's slot is released (one arrival of
    CONSUMERS) once this warpgroup's MMAs on it are done. ``g`` counts spans over all the program's
    tiles (ring slots, phases and turns run on across tiles). With fewer programs than tiles (the
    persistent launch) the next tile's first words are loaded before this tile's epilogue, and the
    other consumer's last MMAs run while this one stores."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, CONSUMERS * HALF_N)
    step = gl.num_programs(0)
    spans = K // SPAN
    m0, n0 = _gemm_tile(gl.program_id(0), M, BLOCK_M, CONSUMERS * HALF_N)
    rows, wofs, zsh, magic, zero3 = _gemm_rows(n0 + WG * HALF_N, N, k8, HALF_N, WORD_L)
    w0, w1, zw, s = _span_words(qm_ptr, qz_ptr, s_ptr, wofs, rows, N, 0)
    g = 0
    for t in range(gl.program_id(0), tiles, step):
        acc = gl.zeros([HALF_N, BLOCK_M], gl.float32, mma)
        for sp in range(spans):
            w0_n, w1_n, zw_n, s_n = _span_words(qm_ptr, qz_ptr, s_ptr, wofs, rows, N, gl.minimum(sp + 1, spans - 1))
            slot = g % STAGES
            acc = _span_mma(acc, w0, w1, zw, s, zsh, magic, zero3, x_smem, ready.index(slot), slot,
                            (g // STAGES) & 1, HALF_N, a_l, turn if PINGPONG else None, WG, g)
            mbarrier.arrive(empty.index(slot), count=1)
            w0, w1, zw, s = w0_n, w1_n, zw_n, s_n
            g += 1
        m1, n1 = _gemm_tile(gl.minimum(t + step, tiles - 1), M, BLOCK_M, CONSUMERS * HALF_N)
        if step < tiles:  # persistent: the next tile's first span in flight during the epilogue
            rows, wofs, zsh, magic, zero3 = _gemm_rows(n1 + WG * HALF_N, N, k8, HALF_N, WORD_L)
            w0, w1, zw, s = _span_words(qm_ptr, qz_ptr, s_ptr, wofs, rows, N, 0)
        if TMA_STORE:
            _tma_epilogue(acc, b_ptr, y_desc, y_smem.index(WG), N, m0, n0 + WG * HALF_N, HAS_BIAS, HALF_N)
        else:
            _gemm_epilogue(acc, b_ptr, y_ptr, M, N, m0, n0 + WG * HALF_N, stride_ym, HAS_BIAS, BLOCK_M, HALF_N, 4)
        m0, n0 = m1, n1
    if TMA_STORE:
        tma.store_wait(0)


@gluon.jit
def _ws_producer(x_desc, x_smem, ready, empty, M, N, K, BLOCK_M: gl.constexpr, TILE_N: gl.constexpr,
                 STAGES: gl.constexpr):
    """One warp: x span by span into the ring for each of the program's tiles, each slot refilled once
    every consumer released it (so it runs up to STAGES spans ahead, into the next tile too)."""
    tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, TILE_N)
    spans = K // SPAN
    g = 0
    for t in range(gl.program_id(0), tiles, gl.num_programs(0)):
        m0, _ = _gemm_tile(t, M, BLOCK_M, TILE_N)
        for sp in range(spans):
            slot = g % STAGES
            mbarrier.wait(empty.index(slot), ((g // STAGES) & 1) ^ 1)
            _load_x_span(x_desc, ready.index(slot), x_smem, slot, m0, sp)
            g += 1


@gluon.jit
def _ws_partition(x_desc, x_smem, ready, empty, turn, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, y_desc, y_smem, M, N, K,
                  k8, stride_ym, HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, HALF_N: gl.constexpr,
                  WORD_L: gl.constexpr, STAGES: gl.constexpr, CONSUMERS: gl.constexpr, ROLE: gl.constexpr,
                  PINGPONG: gl.constexpr, TMA_STORE: gl.constexpr):
    """ROLE ≥ 0: consumer warpgroup ROLE; −1: the producer warp."""
    if ROLE < 0:
        _ws_producer(x_desc, x_smem, ready, empty, M, N, K, BLOCK_M, CONSUMERS * HALF_N, STAGES)
    else:
        _ws_consumer(x_smem, ready, empty, turn, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, y_desc, y_smem, M, N, K, k8,
                     stride_ym, HAS_BIAS, BLOCK_M, HALF_N, WORD_L, STAGES, CONSUMERS, ROLE, PINGPONG, TMA_STORE)


@gluon.jit
def _gemm_ws_kernel(x_desc, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, y_desc, M, N, K, k8, stride_ym,
                    HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, HALF_N: gl.constexpr, WORD_L: gl.constexpr,
                    STAGES: gl.constexpr, REGS: gl.constexpr, PINGPONG: gl.constexpr, TMA_STORE: gl.constexpr):
    """``_gemm_kernel`` warp-specialized: a producer warp brings x by TMA; two consumer warpgroups,
    each on HALF_N of the program's weight rows, dequantize and multiply, so one dequantizes while
    the other's MMAs run (in ``_gemm_kernel`` the CTA-wide barriers around the slot refills kept
    them in step, dequantize and MMA taking turns). PINGPONG: they also take turns issuing their
    MMAs (``_span_mma``); left to themselves they shared the tensor cores, finished their spans
    together and dequantized together while the tensor cores idled (84 % busy, ping-pong 0.94–0.98×
    fp16 at 2048 rows instead of 0.71–0.88×: docs/kernel-notes.md, 35). Three consumers of 128
    tokens did worse at 1024–2048 rows (30). TMA_STORE: each consumer stores its tile through its
    own (BLOCK_M, HALF_N) buffer and one TMA store (``_tma_epilogue``)."""
    CONSUMERS: gl.constexpr = 2
    x_smem = gl.allocate_shared_memory(gl.float16, [2 * STAGES, BLOCK_M, HALF], x_desc.layout)
    if TMA_STORE:
        y_smem = gl.allocate_shared_memory(gl.float16, [CONSUMERS, BLOCK_M, HALF_N], y_desc.layout)
    else:
        y_smem = x_smem  # not used
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(turn.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=CONSUMERS)  # one arrival per consumer warpgroup
    gl.warp_specialize([
        (_ws_partition, (x_desc, x_smem, ready, empty, turn, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, y_desc, y_smem, M, N,
                         K, k8, stride_ym, HAS_BIAS, BLOCK_M, HALF_N, WORD_L, STAGES, CONSUMERS, 0, PINGPONG,
                         TMA_STORE)),
        (_ws_partition, (x_desc, x_smem, ready, empty, turn, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, y_desc, y_smem, M, N,
                         K, k8, stride_ym, HAS_BIAS, BLOCK_M, HALF_N, WORD_L, STAGES, CONSUMERS, 1, PINGPONG,
                         TMA_STORE)),
        (_ws_partition, (x_desc, x_smem, ready, empty, turn, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, y_desc, y_smem, M, N,
                         K, k8, stride_ym, HAS_BIAS, BLOCK_M, HALF_N, WORD_L, STAGES, CONSUMERS, -1, PINGPONG,
                         TMA_STORE)),
    ], [4, 1], [REGS, 24])


@functools.cache
def gemm_word_layout(block_n: int, warps: int) -> gl.DistributedLinearLayout:
    """Register layout of the (BLOCK_N, t, 2) words of half a span: each warp holds 16 weight rows,
    lane = 4·(row mod 8) + t and a register bit for row + 8, as warpgroup MMA's A fragment wants;
    a thread's two j in its registers (one 8-byte load)."""
    reps = block_n // (16 * warps)
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1], [8, 0, 0]] + [[16 * warps * (1 << i), 0, 0] for i in range(reps.bit_length() - 1)],
        lane_bases=[[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[16 * (1 << i), 0, 0] for i in range(warps.bit_length() - 1)],
        block_bases=[], shape=[block_n, 4, 2])


def gemm_config(m: int) -> dict:
    """Tiles of ``mma_gemm`` for M rows, the best measured on the H100 (docs/benchmarks.md): one
    warpgroup on 64 weight rows × 64 (M ≤ 64) or 128 tokens."""
    if m <= 64:
        return dict(block_m=64, block_n=64, warps=4, stages=4)
    return dict(block_m=128, block_n=64, warps=4, stages=3)


def prefill_gemm(x: torch.Tensor, qweight_m: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """x·W (+ bias) for 17+ rows on sm_90: the warp-specialized ``mma_gemm_ws`` on tiles of 256
    tokens (one program per SM walking them, the output by TMA stores), or of 128, when that still
    makes programs for most of the SMs (70 %), else ``mma_gemm``'s smaller tiles — the best of them
    at 128–2048 rows on Llama-7B/8B shapes (H100, docs/benchmarks.md)."""
    m, n = x.shape[0], scales.shape[1]
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    enough = 0.7 * sms
    row_tiles = triton.cdiv(n, 128)
    if m >= 256 and triton.cdiv(m, 256) * row_tiles >= enough:  # persistent, TMA stores: 3-5 % at 2048 rows
        return mma_gemm_ws(x, qweight_m, qzeros, scales, bias, programs=sms, tma_store=n % 8 == 0)
    if triton.cdiv(m, 128) * row_tiles >= enough:
        return mma_gemm_ws(x, qweight_m, qzeros, scales, bias, block_m=128, stages=4, regs=200)
    return mma_gemm(x, qweight_m, qzeros, scales, bias, **gemm_config(m))


@functools.cache
def _x_layout() -> gl.NVMMASharedLayout:
    """x's boxes in shared memory: rows of 64 fp16 (128 bytes) swizzled, as TMA writes and the MMA reads them."""
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)


def _gemm_args(x: torch.Tensor, qweight_m: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None,
               block_m: int):
    """Checks shared by both GEMMs; returns (M, N, K, the output, x's TMA descriptor)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    m, k = x.shape
    n = scales.shape[1]
    assert k % 128 == 0 and x.dtype == torch.float16 and x.is_contiguous()
    assert qweight_m.shape == (n, k // 8) and scales.shape[0] == k // 128
    y = torch.empty(m, n, dtype=torch.float16, device=x.device) if out is None else out
    assert y.shape == (m, n) and y.dtype == torch.float16 and y.stride(1) == 1
    return m, n, k, y, TensorDescriptor.from_tensor(x, [block_m, 64], _x_layout())


def mma_gemm(x: torch.Tensor, qweight_m: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
             bias: torch.Tensor | None, out: torch.Tensor | None = None, block_m: int = 256,
             block_n: int = 128, warps: int = 8, stages: int = 3) -> torch.Tensor:
    """x (M, K) fp16 → x·W (+ bias) in fp16 (M, N), into ``out`` if given; group 128, ``qweight_m``
    in the mma order."""
    assert block_n % (16 * warps) == 0
    m, n, k, y, desc = _gemm_args(x, qweight_m, scales, out, block_m)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _gemm_kernel[grid](desc, qweight_m, qzeros, scales, bias if bias is not None else scales, y, m, n, k, k // 8,
                       y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, W=warps,
                       WORD_L=gemm_word_layout(block_n, warps), STAGES=stages, num_warps=warps)
    return y


def mma_gemm_ws(x: torch.Tensor, qweight_m: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None, out: torch.Tensor | None = None, block_m: int = 256, stages: int = 2,
                regs: int = 240, maxnreg: int = 168, pingpong: bool = True, programs: int = 0,
                tma_store: bool = False) -> torch.Tensor:
    """``mma_gemm`` by the warp-specialized kernel: 128 weight rows × ``block_m`` tokens per tile,
    ``regs`` registers per consumer thread (the producer warp gets 24; ``maxnreg`` is the budget the
    compiler shares out); ``pingpong``: the two consumers take turns on the tensor cores (``_span_mma``);
    ``programs``: 0 for one program per tile, else that many programs walk the tiles (persistent: the
    next tile's x and first words arrive while this one's epilogue runs); ``tma_store``: the output
    tiles leave by TMA stores (2 × 32 KB more shared memory at 256 tokens)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    m, n, k, y, desc = _gemm_args(x, qweight_m, scales, out, block_m)
    assert not tma_store or (n * 2) % 16 == 0, "TMA stores need 16-byte aligned rows"
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, 128)
    grid = (min(tiles, programs) if programs else tiles,)
    y_desc = TensorDescriptor.from_tensor(y, [block_m, 64], _x_layout()) if tma_store else desc  # else unused
    _gemm_ws_kernel[grid](desc, qweight_m, qzeros, scales, bias if bias is not None else scales, y, y_desc, m, n, k,
                          k // 8, y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=block_m, HALF_N=64,
                          WORD_L=gemm_word_layout(64, 4), STAGES=stages, REGS=regs, PINGPONG=pingpong,
                          TMA_STORE=tma_store, num_warps=4, maxnreg=maxnreg)
    return y


def compile_gemm_for(capability: int = 90, block_m: int = 128, block_n: int = 64, warps: int = 4, stages: int = 3,
                     ws: bool = False, pingpong: bool = True, tma_store: bool = False):
    """Compile a prefill kernel for a GPU that need not be here (CI: sm_90): ``mma_gemm``'s with these
    tiles, or (``ws``) ``mma_gemm_ws``'s with its defaults and ``block_m``/``stages``/``tma_store``."""
    from triton.backends.compiler import GPUTarget
    lay = _x_layout()
    signature = {"x_desc": f"tensordesc<fp16[{block_m},64],{lay!r}>", "qm_ptr": "*i32", "qz_ptr": "*i32",
                 "s_ptr": "*fp16", "b_ptr": "*fp16", "y_ptr": "*fp16", "M": "i32", "N": "i32", "K": "i32",
                 "k8": "i32", "stride_ym": "i32"}
    if ws:
        signature = {**dict(list(signature.items())[:6]), "y_desc": f"tensordesc<fp16[{block_m},64],{lay!r}>",
                     **dict(list(signature.items())[6:])}
        src = gluon._runtime.GluonASTSource(
            fn=_gemm_ws_kernel, signature=signature, attrs={(i,): [["tt.divisibility", 16]] for i in
                                                            (1, 2, 3, 4, 5, 8, 9, 10, 11)},
            constexprs={"HAS_BIAS": True, "BLOCK_M": block_m, "HALF_N": 64, "WORD_L": gemm_word_layout(64, 4),
                        "STAGES": stages, "REGS": 240, "PINGPONG": pingpong, "TMA_STORE": tma_store})
        return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4, "maxnreg": 168})
    src = gluon._runtime.GluonASTSource(
        fn=_gemm_kernel, signature=signature,
        attrs={(i,): [["tt.divisibility", 16]] for i in (1, 2, 3, 4, 5, 7, 8, 9, 10)},
        constexprs={"HAS_BIAS": True, "BLOCK_M": block_m, "BLOCK_N": block_n, "W": warps,
                    "WORD_L": gemm_word_layout(block_n, warps), "STAGES": stages})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})
