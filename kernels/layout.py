"""Runtime weight layouts: what the kernels read, made from the AutoAWQ GEMM layout at load (or split) time.

``kmajor`` (profile ``weight_layout = "w4-kmajor"``): ``qweight`` becomes int32 (N, K/8), word
[n, j] holding the codes of k = 8j … 8j+7 of output column n, in AWQ's nibble order along k:
nibble i (bits 4i…4i+3) holds k = 8j + AWQ_ORDER[i]. A thread's 16-byte load is then 32
consecutive k of one column, so a decode kernel reduces over K in registers, and the codes of
k and k+1 sit 16 bits apart, so one LOP3 makes a half2 of them (kernels/triton_w4a16.py).
``qzeros`` and ``scales`` keep their GEMM layout (they are per group, a few percent of the
bytes). See docs/format.md.

``mma`` (for group 128): the K-major words of codes reordered within each span of 128 k, so that
one thread's 16-byte load (four consecutive words) is exactly its B-operand fragment of
``mma.m16n8k16`` for the span (the 2–16-row kernel, kernels/gluon_w4a16.py). Position p = 8w + r
of a span (word w, natural offset r of the K-major nibble order) holds k = ``MMA_PERM[p]`` =
32(w mod 4) + 2⌊w/4⌋ + 16⌊r/4⌋ + 8(⌊r/2⌋ mod 2) + (r mod 2). The one-row kernels and the
dequantizer read x at, or write W to, the permuted k; nothing else changes.
"""

from __future__ import annotations

import torch

from edge_awq.pack import pack_int4, unpack_int4

MMA_SPAN = 128


def _mma_k(p: int) -> int:
    w, r = divmod(p, 8)
    return 32 * (w % 4) + 2 * (w // 4) + 16 * (r // 4) + 8 * ((r // 2) % 2) + r % 2


MMA_PERM = tuple(_mma_k(p) for p in range(MMA_SPAN))


def mma_perm(k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(K,) natural k held at each position of the ``mma`` order (K a multiple of 128)."""
    if k % MMA_SPAN:
        raise ValueError(f"K={k} is not a multiple of {MMA_SPAN}: no mma order")
    span = torch.tensor(MMA_PERM, device=device)
    return (torch.arange(0, k, MMA_SPAN, device=device)[:, None] + span[None, :]).reshape(-1)


def to_mma(qweight: torch.Tensor) -> torch.Tensor:
    """GEMM ``qweight`` (K, N/8) → ``mma`` order (N, K/8): K-major words of the permuted codes."""
    codes = unpack_int4(qweight).t()
    return pack_int4(codes[:, mma_perm(codes.shape[1], codes.device)])


def from_mma(qweight_m: torch.Tensor) -> torch.Tensor:
    """``mma`` order (N, K/8) → codes (K, N) uint8 (for tests)."""
    codes = unpack_int4(qweight_m)
    out = torch.empty_like(codes)
    out[:, mma_perm(codes.shape[1], codes.device)] = codes
    return out.t()


def to_kmajor(qweight: torch.Tensor) -> torch.Tensor:
    """GEMM ``qweight`` (K, N/8) → K-major (N, K/8)."""
    return pack_int4(unpack_int4(qweight).t())  # the GEMM packer, applied along K


def from_kmajor(qweight_k: torch.Tensor) -> torch.Tensor:
    """K-major (N, K/8) → codes (K, N) uint8 (for tests and the reference path)."""
    return unpack_int4(qweight_k).t()


def to_gemm(qweight_k: torch.Tensor, mma: bool = False) -> torch.Tensor:
    """K-major (N, K/8; ``mma``: in the mma order) → GEMM ``qweight`` (K, N/8), for kernels that
    read only the GEMM layout."""
    return pack_int4(from_mma(qweight_k) if mma else from_kmajor(qweight_k))
