"""Runtime weight layouts: what the kernels read, made from the AutoAWQ GEMM layout at load (or split) time.

``kmajor`` (profile ``weight_layout = "w4-kmajor"``): ``qweight`` becomes int32 (N, K/8), word
[n, j] holding the codes of k = 8j … 8j+7 of output column n, code of k = 8j + i in bits 4i…4i+3
(natural order). A thread's 16-byte load is then 32 consecutive k of one column, so a decode
kernel reduces over K in registers. ``qzeros`` and ``scales`` keep their GEMM layout (they are
per group, a few percent of the bytes). See docs/format.md.
"""

from __future__ import annotations

import torch

from edge_awq.pack import pack_int4, unpack_int4

_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def to_kmajor(qweight: torch.Tensor) -> torch.Tensor:
    """GEMM ``qweight`` (K, N/8) → K-major (N, K/8)."""
    codes = unpack_int4(qweight).t().to(torch.int32)  # (N, K), natural order
    n, k = codes.shape
    return (codes.reshape(n, k // 8, 8) << _SHIFTS.to(codes.device)).sum(dim=-1, dtype=torch.int32)


def from_kmajor(qweight_k: torch.Tensor) -> torch.Tensor:
    """K-major (N, K/8) → codes (K, N) uint8 (for tests and the reference path)."""
    nib = (qweight_k.unsqueeze(-1) >> _SHIFTS.to(qweight_k.device)) & 0xF
    return nib.reshape(qweight_k.shape[0], -1).t().to(torch.uint8)


def to_gemm(qweight_k: torch.Tensor) -> torch.Tensor:
    """K-major (N, K/8) → GEMM ``qweight`` (K, N/8), for kernels that read only the GEMM layout."""
    return pack_int4(from_kmajor(qweight_k))
