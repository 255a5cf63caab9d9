"""torch's own int4 kernel (``aten._weight_int4pack_mm``, "tinygemm"): the fallback on CUDA without Triton.

It wants its own layout: 4-bit codes (N, K) in a tiled int4pack made by
``_convert_weight_to_int4pack`` (CUDA: from uint8 (N, K/2), even k in the high nibble; CPU: from
int32 (N, K)), and per group a bf16 (scale, offset) pair with w = (q − 8)·scale + offset. AWQ's
w = (q − z)·s is the same with offset = (8 − z)·s. bf16 activations only; CUDA needs sm80+.
"""

from __future__ import annotations

import torch

from edge_awq.pack import unpack_int4


def inner_k_tiles(n: int, k: int, group_size: int) -> int | None:
    """The kernel's K-tiling for this shape (8, 4 or 2: K must be a multiple of 16× it), or None
    when the shape is outside what the kernel takes (N a multiple of 16, g in 32…256)."""
    if n % 16 or group_size not in (32, 64, 128, 256):
        return None
    return next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)


def to_int4pack(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """GEMM tensors → (int4pack weight, (K/g, N, 2) bf16 scale-and-offset)."""
    q = unpack_int4(qweight).t().to(torch.int32)  # (N, K)
    tiles = inner_k_tiles(q.shape[0], q.shape[1], q.shape[1] // scales.shape[0])
    if tiles is None:
        raise ValueError(f"shape N={q.shape[0]}, K={q.shape[1]} is outside what _weight_int4pack_mm takes")
    z = unpack_int4(qzeros).float()  # (K/g, N)
    s = scales.float()
    scale_offset = torch.stack([s, (8 - z) * s], dim=-1).to(torch.bfloat16).contiguous()
    if q.is_cuda:
        pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous()
        packed = torch.ops.aten._convert_weight_to_int4pack(pairs, tiles)
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), tiles)
    return packed, scale_offset


def int4pack_linear(x: torch.Tensor, packed: torch.Tensor, scale_offset: torch.Tensor, group_size: int,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., K) any float dtype → (..., N) in x's dtype, computed in bf16."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
    if x2.is_cuda:
        y = torch.ops.aten._weight_int4pack_mm(x2, packed, group_size, scale_offset)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, group_size, scale_offset)
    y = y.to(x.dtype).reshape(*shape[:-1], -1)
    return y if bias is None else y + bias.to(x.dtype)
