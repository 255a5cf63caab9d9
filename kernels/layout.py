"""Runtime weight layouts: what the kernels read, made from the AutoAWQ GEMM layout at load (or split) time.

``kmajor`` (profile ``weight_layout = "w4-kmajor"``): ``qweight`` becomes int32 (N, K/8), word
[n, j] holding the codes of k = 8j … 8j+7 of output column n, in AWQ's nibble order along k:
nibble i (bits 4i…4i+3) holds k = 8j + AWQ_ORDER[i]. A thread's 16-byte load is then 32
consecutive k of one column, so a decode kernel reduces over K in registers, and the codes of
k and k+1 sit 16 bits apart, so one LOP3 makes a half2 of them (kernels/triton_w4a16.py).
``qzeros`` and ``scales`` keep their GEMM layout (they are per group, a few percent of the
bytes). See docs/format.md.
"""

from __future__ import annotations

import torch

from edge_awq.pack import pack_int4, unpack_int4


def to_kmajor(qweight: torch.Tensor) -> torch.Tensor:
    """GEMM ``qweight`` (K, N/8) → K-major (N, K/8)."""
    return pack_int4(unpack_int4(qweight).t())  # the GEMM packer, applied along K


def from_kmajor(qweight_k: torch.Tensor) -> torch.Tensor:
    """K-major (N, K/8) → codes (K, N) uint8 (for tests and the reference path)."""
    return unpack_int4(qweight_k).t()


def to_gemm(qweight_k: torch.Tensor) -> torch.Tensor:
    """K-major (N, K/8) → GEMM ``qweight`` (K, N/8), for kernels that read only the GEMM layout."""
    return pack_int4(from_kmajor(qweight_k))
