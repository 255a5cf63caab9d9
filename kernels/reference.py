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


# ------------------------------------------------------------- decode-step ops (kernels/triton_ops.py)


def add_rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype,
                           residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(RMSNorm(x + residual)·weight in ``dtype``, the fp32 sum)."""
    h = x.float() if residual is None else x.float() + residual
    y = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(dtype) * weight.to(dtype)
    return y, h


def rope_kv_reference(qkv: torch.Tensor, inv_freq: torch.Tensor, pos: int, heads: int, kv_heads: int,
                      head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token's (q, k, v), (heads, D) / (kv_heads, D) fp32, q and k rotated to ``pos``."""
    x = qkv.float().view(heads + 2 * kv_heads, head_dim)
    ang = pos * inv_freq.float()
    c, s = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
    x1, x2 = x[:, : head_dim // 2], x[:, head_dim // 2:]
    rot = x * c + torch.cat([-x2, x1], dim=-1) * s
    return rot[:heads], rot[heads:heads + kv_heads], x[heads + kv_heads:]


def decode_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q (H, D), k and v (HKV, T, D) → (H, D) fp32: softmax(q·kᵀ·scale)·v, query heads grouped."""
    rep = q.shape[0] // k.shape[0]
    k, v = k.float().repeat_interleave(rep, 0), v.float().repeat_interleave(rep, 0)
    p = torch.softmax(torch.einsum("hd,htd->ht", q.float(), k) * scale, dim=-1)
    return torch.einsum("ht,htd->hd", p, v)


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    g, u = gate_up.float().chunk(2, dim=-1)
    return torch.nn.functional.silu(g) * u
