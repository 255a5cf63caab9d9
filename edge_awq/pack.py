"""AutoAWQ "GEMM" packing: the interchange layout on disk. The single source of truth for nibble order.

For a linear with in_features K, out_features N and group size g (see docs/format.md):

- ``qweight`` int32 (K, N/8): nibble i (bits 4i..4i+3) of word [k, c] holds output column
  8c + AWQ_ORDER[i] of input row k;
- ``qzeros`` int32 (K/g, N/8): zero points packed the same way;
- ``scales`` fp16 (K/g, N).
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# AWQ_REVERSE[j] = nibble index that holds column 8c + j.
AWQ_REVERSE = tuple(AWQ_ORDER.index(j) for j in range(8))


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """(R, N) integers in [0, 15] → (R, N/8) int32 in AWQ nibble order."""
    r, n = values.shape
    if n % 8:
        raise ValueError(f"N={n} is not a multiple of 8")
    v = values.to(torch.int32).reshape(r, n // 8, 8)[:, :, list(AWQ_ORDER)]
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=values.device)
    # Nibbles occupy disjoint bits, so summing the shifted values is a bitwise OR; int32 wraps
    # the top nibble into the sign bit exactly as the reference packer does.
    return (v << shifts).sum(dim=-1, dtype=torch.int32)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(R, N/8) int32 in AWQ nibble order → (R, N) uint8 in [0, 15], columns in natural order."""
    shifts = torch.tensor([4 * i for i in AWQ_REVERSE], dtype=torch.int32, device=packed.device)
    nib = (packed.unsqueeze(-1) >> shifts) & 0xF
    return nib.reshape(packed.shape[0], -1).to(torch.uint8)


def pack_linear(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """From ``quant.quantize`` output ((N, K) q, (N, K/g) scale and zero) to the GEMM tensors."""
    return {
        "qweight": pack_int4(q.t()),
        "qzeros": pack_int4(zero.t()),
        "scales": scale.t().contiguous().half(),
    }


def unpack_linear(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GEMM tensors → (q (N, K) uint8, scale (N, K/g) fp32, zero (N, K/g) uint8)."""
    return unpack_int4(qweight).t(), scales.float().t(), unpack_int4(qzeros).t()
