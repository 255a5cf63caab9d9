"""Triton W4A16 kernels on the AutoAWQ GEMM layout (see docs/format.md and ``edge_awq.pack``).

- ``splitk_gemv`` for decode (M ≤ 16). Memory-bound: every weight byte is read once, in 16-byte
  loads of whole (BK, BN/8) word tiles. Words are unpacked in registers (``tl.interleave``, then
  per-column shifts that undo AWQ's nibble order), and codes become floats by the 2^23 trick
  (OR into a float's mantissa, subtract) instead of an int→float conversion. Scale and zero are
  factored out of the inner product per group, Σ_k x (q − z) s = s (Σ_k x q − z Σ_k x), so per
  weight the work is shift, mask, subtract, and one FMA (one row) or a tensor-core dot.
  K is split across programs to fill the GPU; partial sums meet in an fp32 workspace through
  atomics, and the program that finishes a column tile last (a per-tile counter) writes the
  output and leaves workspace and counter at zero: one launch, no memset.
- ``kmajor_gemv``: decode on the K-major runtime layout (``layout.py``): a thread's load is 32
  consecutive k of one column, the weight tile is the tensor cores' A operand.
- ``gemm`` for prefill (large M): the same unpacking, dequantized in the activation dtype, one
  tensor-core dot per K step.
- ``dequantize`` writes the 16-bit weight, for the dequantize-then-cuBLAS prefill path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from edge_awq.pack import AWQ_REVERSE

# shift of natural column j within its word: 4 × (nibble index holding column j)
_SHIFTS = tuple(4 * i for i in AWQ_REVERSE)


@triton.jit
def _shift_pattern(BLOCK_N: tl.constexpr, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                   S3: tl.constexpr, S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    """(BLOCK_N,) shift of each natural column within its word, repeating every 8 columns."""
    j = tl.arange(0, 8)
    pattern = tl.where(j == 0, S0, tl.where(j == 1, S1, tl.where(j == 2, S2, tl.where(j == 3, S3, tl.where(
        j == 4, S4, tl.where(j == 5, S5, tl.where(j == 6, S6, S7)))))))
    return tl.reshape(tl.broadcast_to(pattern[None, :], (BLOCK_N // 8, 8)), (BLOCK_N,))


@triton.jit
def _unpack_tile(words, shifts):
    """(R, C/8) int32 words → (R, C) int32 codes in natural column order."""
    w = tl.interleave(words, words)
    w = tl.interleave(w, w)
    w = tl.interleave(w, w)
    return (w >> shifts[None, :]) & 0xF


@triton.jit
def _splitk_gemv_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                        M, N, K, stride_xm, stride_ym, iters_per_split, split_k,
                        GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, MODE: tl.constexpr,
                        S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr,
                        S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    n8 = N // 8
    offs_n, offs_c, mask_n, mask_c = _column_tile(pid_n, N, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    shifts = _shift_pattern(BLOCK_N, S0, S1, S2, S3, S4, S5, S6, S7)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    k_iters = tl.cdiv(K, BLOCK_K)
    it0 = pid_k * iters_per_split
    it1 = tl.minimum(it0 + iters_per_split, k_iters)
    for it in range(it0, it1):
        ks = it * BLOCK_K + offs_k
        mask_k = ks < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :], mask=mask_m[:, None] & mask_k[None, :],
                    other=0.0)
        qw = tl.load(qw_ptr + ks[:, None] * n8 + offs_c[None, :], mask=mask_k[:, None] & mask_c[None, :], other=0)
        codes = _unpack_tile(qw, shifts)
        g = (it * BLOCK_K) // GROUP  # BLOCK_K divides GROUP: one group per step
        zw = tl.load(qz_ptr + g * n8 + offs_n // 8, mask=mask_n, other=0)
        z = ((zw >> shifts) & 0xF).to(tl.float32)
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        xf = x.to(tl.float32)
        if MODE == 1:
            part = tl.dot(x, codes.to(x.dtype), out_dtype=tl.float32)
        else:
            q = (codes | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            part = tl.sum(xf[:, :, None] * q[None, :, :], axis=1)
        # Σ_k x (q − z) s = s (Σ_k x q − z Σ_k x): scale and zero once per group and column
        acc += (part - tl.sum(xf, axis=1)[:, None] * z[None, :]) * s[None, :]
    if SPLIT:
        mask = mask_m[:, None] & mask_n[None, :]
        tl.atomic_add(ws_ptr + offs_m[:, None] * N + offs_n[None, :], acc, mask=mask)
        _finish_split(y_ptr, ws_ptr, cnt_ptr, b_ptr, pid_n, split_k, offs_m, mask_m, N, stride_ym,
                      BLOCK_M, BLOCK_N, HAS_BIAS)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _unpack_kmajor(words, BLOCK_K: tl.constexpr):
    """(R, BK/8) K-major words → (R, BK) int32 codes, k in natural order."""
    w = tl.interleave(words, words)
    w = tl.interleave(w, w)
    w = tl.interleave(w, w)
    return (w >> ((tl.arange(0, BLOCK_K) % 8) * 4)[None, :]) & 0xF


@triton.jit
def _kmajor_gemv_kernel(x_ptr, qk_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                        M, N, K, stride_xm, stride_ym, iters_per_split, split_k,
                        GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, MODE: tl.constexpr,
                        S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr,
                        S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    """Decode on the K-major runtime layout (``layout.to_kmajor``): a word holds 8 consecutive k of
    one output column, so each thread's 16-byte load is 32 consecutive k of one column and the
    K-reduction stays inside a thread (plus a few warp shuffles) — no shared memory, no barrier per
    step. MODE 0 (one row): FMAs reduced in registers. MODE 1: tensor cores on yᵀ = W xᵀ, the weight
    tile as the A operand. Accumulators are (BN, BM)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    k8 = K // 8
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    offs_w = tl.arange(0, BLOCK_K // 8)
    zshift = _shift_pattern(BLOCK_N, S0, S1, S2, S3, S4, S5, S6, S7)  # zeros stay in the GEMM layout
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    k_iters = tl.cdiv(K, BLOCK_K)
    it0 = pid_k * iters_per_split
    it1 = tl.minimum(it0 + iters_per_split, k_iters)
    for it in range(it0, it1):
        k0 = it * BLOCK_K
        ks = k0 + offs_k
        mask_k = ks < K
        words = tl.load(qk_ptr + offs_n[:, None] * k8 + (k0 // 8 + offs_w)[None, :],
                        mask=mask_n[:, None] & ((k0 // 8 + offs_w) < k8)[None, :], other=0)
        codes = _unpack_kmajor(words, BLOCK_K)  # (BN, BK)
        g = k0 // GROUP
        zw = tl.load(qz_ptr + g * (N // 8) + offs_n // 8, mask=mask_n, other=0)
        z = ((zw >> zshift) & 0xF).to(tl.float32)
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if MODE == 0:  # one row, FMAs: each thread sums its own 32 k, then a few warp shuffles
            xv = tl.load(x_ptr + ks, mask=mask_k, other=0.0).to(tl.float32)
            q = (codes | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # 2^23 trick, as above
            part = tl.sum(q * xv[None, :], axis=1)
            acc += ((part - z * tl.sum(xv, axis=0)) * s)[:, None]
        else:
            xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + ks[:, None],
                         mask=mask_k[:, None] & mask_m[None, :], other=0.0)  # (BK, BM): xᵀ
            part = tl.dot(codes.to(xt.dtype), xt, out_dtype=tl.float32)  # (BN, BM): weights are the A operand
            acc += (part - z[:, None] * tl.sum(xt.to(tl.float32), axis=0)[None, :]) * s[:, None]
    if SPLIT:
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
        tl.store(ws, zero, mask=mask)  # no other program of this launch touches the tile any more
        tl.store(cnt_ptr + pid_n, 0)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _column_tile(pid_n, N, BLOCK_N: tl.constexpr):
    """Columns of tile ``pid_n`` and their words in a GEMM-layout row, with bounds masks."""
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = pid_n * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    return offs_n, offs_c, offs_n < N, offs_c < N // 8


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_ym,
                 GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr,
                 S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr,
                 S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: programs sharing weight columns run together, so weight tiles hit L2
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_n, offs_c, mask_n, mask_c = _column_tile(pid_n, N, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    shifts = _shift_pattern(BLOCK_N, S0, S1, S2, S3, S4, S5, S6, S7)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :], mask=mask_m[:, None] & mask_k[None, :],
                    other=0.0)
        qw = tl.load(qw_ptr + ks[:, None] * (N // 8) + offs_c[None, :], mask=mask_k[:, None] & mask_c[None, :],
                     other=0)
        g = k0 // GROUP
        zw = tl.load(qz_ptr + g * (N // 8) + offs_c, mask=mask_c, other=0)
        s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(x.dtype)
        q = _unpack_tile(qw, shifts).to(x.dtype)
        z = tl.reshape(_unpack_tile(zw[None, :], shifts), (BLOCK_N,)).to(x.dtype)
        w = (q - z[None, :]) * s[None, :]
        acc = tl.dot(x, w, acc, out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _dequant_kernel(qw_ptr, qz_ptr, s_ptr, w_ptr, N, K,
                    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr,
                    S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = ks < K
    offs_n, offs_c, mask_n, mask_c = _column_tile(pid_n, N, BLOCK_N)
    shifts = _shift_pattern(BLOCK_N, S0, S1, S2, S3, S4, S5, S6, S7)
    qw = tl.load(qw_ptr + ks[:, None] * (N // 8) + offs_c[None, :], mask=mask_k[:, None] & mask_c[None, :], other=0)
    g = ks // GROUP
    zw = tl.load(qz_ptr + g[:, None] * (N // 8) + offs_c[None, :], mask=mask_k[:, None] & mask_c[None, :], other=0)
    s = tl.load(s_ptr + g[:, None] * N + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
    dt = w_ptr.dtype.element_ty
    w = (_unpack_tile(qw, shifts).to(dt) - _unpack_tile(zw, shifts).to(dt)) * s.to(dt)
    tl.store(w_ptr + ks[:, None] * N + offs_n[None, :], w, mask=mask_k[:, None] & mask_n[None, :])


@triton.jit
def _dequant_kmajor_kernel(qk_ptr, qz_ptr, s_ptr, w_ptr, N, K,
                           GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr,
                           S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr):
    """K-major words → W (N, K), row n contiguous along K (what ``x @ W.T`` reads)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = ks < K
    offs_w = pid_k * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)
    words = tl.load(qk_ptr + offs_n[:, None] * (K // 8) + offs_w[None, :],
                    mask=mask_n[:, None] & (offs_w < K // 8)[None, :], other=0)
    codes = _unpack_kmajor(words, BLOCK_K)  # (BN, BK)
    g = ks // GROUP
    zshift = _shift_pattern(BLOCK_N, S0, S1, S2, S3, S4, S5, S6, S7)
    zw = tl.load(qz_ptr + g[None, :] * (N // 8) + (offs_n // 8)[:, None], mask=mask_n[:, None] & mask_k[None, :],
                 other=0)
    z = (zw >> zshift[:, None]) & 0xF
    s = tl.load(s_ptr + g[None, :] * N + offs_n[:, None], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
    dt = w_ptr.dtype.element_ty
    tl.store(w_ptr + offs_n[:, None] * K + ks[None, :], (codes.to(dt) - z.to(dt)) * s.to(dt),
             mask=mask_n[:, None] & mask_k[None, :])


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


def splitk_gemv(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None, group_size: int, workspace: torch.Tensor, counters: torch.Tensor,
                block_n: int = 256, block_k: int = 128, split_k: int | None = None, num_warps: int = 4,
                num_stages: int = 3, target_programs: int = 0, mode: int | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """x (M ≤ 16, K) → (M, N). ``workspace`` fp32 ≥ M·N and ``counters`` int32 ≥ N/block_n, both zero
    (they are left at zero). ``split_k`` None: enough K-splits for ``target_programs`` programs.
    ``mode``: 0 fp32 FMAs, 1 tensor-core dot (rows padded to 16). None: 0 for one row, 1 otherwise."""
    m, k = x.shape
    n = scales.shape[1]
    assert m <= 16 and x.stride(1) == 1
    block_k = min(block_k, group_size)
    tiles, split_k, per_split = _split_grid(n, k, block_n, block_k, split_k, target_programs)
    if mode is None:
        mode = 0 if m == 1 else 1
    block_m = 16 if mode == 1 else triton.next_power_of_2(m)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    _splitk_gemv_kernel[(tiles, split_k)](
        x, qweight, qzeros, scales, bias if bias is not None else scales, y, workspace, counters,
        m, n, k, x.stride(0), y.stride(0), per_split, split_k,
        GROUP=group_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split_k > 1,
        HAS_BIAS=bias is not None, MODE=mode, **{f"S{j}": _SHIFTS[j] for j in range(8)},
        num_warps=num_warps, num_stages=num_stages)
    return y


def kmajor_gemv(x: torch.Tensor, qweight_k: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                bias: torch.Tensor | None, group_size: int, workspace: torch.Tensor, counters: torch.Tensor,
                block_n: int = 128, block_k: int = 128, split_k: int | None = None, num_warps: int = 4,
                num_stages: int = 3, target_programs: int = 0, mode: int | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """x (M ≤ 16, K) → (M, N) from the K-major runtime layout (``layout.to_kmajor``); other
    arguments as ``splitk_gemv`` (mode 0, FMAs, takes one row only; None: 0 for one row)."""
    m, k = x.shape
    n = scales.shape[1]
    assert m <= 16 and x.stride(1) == 1 and qweight_k.shape == (n, k // 8)
    block_k = min(block_k, group_size)
    tiles, split_k, per_split = _split_grid(n, k, block_n, block_k, split_k, target_programs)
    if mode is None:
        mode = 0 if m == 1 else 1
    assert mode == 1 or m == 1
    y = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    _kmajor_gemv_kernel[(tiles, split_k)](
        x, qweight_k, qzeros, scales, bias if bias is not None else scales, y, workspace, counters,
        m, n, k, x.stride(0), y.stride(0), per_split, split_k,
        GROUP=group_size, BLOCK_M=16 if mode == 1 else 1, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split_k > 1,
        HAS_BIAS=bias is not None, MODE=mode, **{f"S{j}": _SHIFTS[j] for j in range(8)},
        num_warps=num_warps, num_stages=num_stages)
    return y


def gemm(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
         bias: torch.Tensor | None, group_size: int, block_m: int = 128, block_n: int = 128, block_k: int = 64,
         group_m: int = 8, num_warps: int = 8, num_stages: int = 3, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) → (M, N), fused dequantize + tensor-core GEMM."""
    m, k = x.shape
    n = scales.shape[1]
    assert x.stride(1) == 1
    block_k = min(block_k, group_size)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _gemm_kernel[grid](x, qweight, qzeros, scales, bias if bias is not None else scales, y, m, n, k,
                       x.stride(0), y.stride(0), GROUP=group_size, BLOCK_M=block_m, BLOCK_N=block_n,
                       BLOCK_K=block_k, GROUP_M=group_m, HAS_BIAS=bias is not None,
                       **{f"S{j}": _SHIFTS[j] for j in range(8)}, num_warps=num_warps, num_stages=num_stages)
    return y


def dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
               dtype: torch.dtype, block_n: int = 128, block_k: int = 32, out: torch.Tensor | None = None
               ) -> torch.Tensor:
    """GEMM tensors → W^T (K, N) in ``dtype`` (the same values as the torch reference)."""
    k = qweight.shape[0]
    n = scales.shape[1]
    w = torch.empty(k, n, dtype=dtype, device=qweight.device) if out is None else out
    grid = (triton.cdiv(k, block_k), triton.cdiv(n, block_n))
    _dequant_kernel[grid](qweight, qzeros, scales, w, n, k, GROUP=group_size, BLOCK_N=block_n, BLOCK_K=block_k,
                          **{f"S{j}": _SHIFTS[j] for j in range(8)})
    return w


def dequantize_kmajor(qweight_k: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                      dtype: torch.dtype, block_n: int = 64, block_k: int = 128, out: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """K-major tensors → W (N, K) in ``dtype``: the reference's values, transposed."""
    n, k = qweight_k.shape[0], qweight_k.shape[1] * 8
    w = torch.empty(n, k, dtype=dtype, device=qweight_k.device) if out is None else out
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    _dequant_kmajor_kernel[grid](qweight_k, qzeros, scales, w, n, k, GROUP=group_size, BLOCK_N=block_n,
                                 BLOCK_K=block_k, **{f"S{j}": _SHIFTS[j] for j in range(8)})
    return w
