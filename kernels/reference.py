"""Torch reference W4A16 linear on the AutoAWQ GEMM layout: unpack, dequantize, matmul.

Runs on any device and dtype; it is the oracle every fast kernel is tested against.
"""

from __future__ import annotations

import torch

from edge_awq.pack import unpack_int4


def dequantize_gemm(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                    group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """qweight (K, N/8) int32, qzeros (K/g, N/8) int32, scales (K/g, N) → W^T (K, N) in ``dtype``."""
    k = qweight.shape[0]
    q = unpack_int4(qweight).to(dtype).view(k // group_size, group_size, -1)
    z = unpack_int4(qzeros).to(dtype)[:, None]
    s = scales.to(dtype)[:, None]
    return ((q - z) * s).view(k, -1)


def w4a16_linear_reference(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
                           scales: torch.Tensor, bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """x (..., K) → (..., N) in x's dtype."""
    w = dequantize_gemm(qweight, qzeros, scales, group_size, x.dtype)
    y = x @ w
    return y if bias is None else y + bias.to(x.dtype)
