"""One entry point for every W4A16 linear: ``w4a16_linear(x, layer)`` picks the kernel.

- CPU: the torch reference (unpack + matmul).
- CUDA with Triton: the split-K GEMV for M ≤ ``decode_max_m`` rows (FMAs for one row, tensor
  cores above), else dequantize + cuBLAS (or the fused Triton GEMM below
  ``prefill_dequant_min_m`` rows; see docs/benchmarks.md for which measured faster).
- CUDA without Triton (some Jetson images): torch's int4 kernel ``_weight_int4pack_mm`` where the
  GPU (sm80+) and shape allow, else the reference.

The choice is logged once per process and backend, never silently.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from .layout import to_gemm
from .reference import w4a16_linear_reference
from .torch_int4 import inner_k_tiles, int4pack_linear, to_int4pack

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch-int4", "reference")


class PackedLinear(Protocol):
    """What the kernels read: the checkpoint's GEMM tensors (see ``QuantLinear``); ``qweight`` may
    instead be held K-major as ``qweight_k`` (``QuantLinear.use_kmajor``)."""

    qweight: torch.Tensor | None
    qzeros: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    group_size: int


@dataclass(frozen=True)
class KernelSettings:
    """Kernel choice and tiles; platform profiles override these."""

    backend: str = "auto"
    decode_max_m: int = 16
    # rows from which dequantize + cuBLAS runs instead of the fused GEMM: on the H100 it was faster
    # from 17 rows on every Llama shape but gate_up 4096→28672 at 32–128 rows (docs/benchmarks.md)
    prefill_dequant_min_m: int = 17
    gemv_block_n: int = 256
    gemv_block_k: int = 64
    gemv_warps: int = 4
    gemv_stages: int = 3
    gemv_programs_per_sm: int = 4
    # K-major decode (used when a layer holds qweight_k): FMAs for one row, tensor cores for more
    kfma_block_n: int = 64
    kfma_warps: int = 2
    kfma_stages: int = 3
    kfma_programs_per_sm: int = 16
    kdot_block_n: int = 64
    kdot_warps: int = 4
    kdot_stages: int = 3
    kdot_programs_per_sm: int = 2
    gemm_block_m: int = 128
    gemm_block_n: int = 128
    gemm_block_k: int = 64
    gemm_warps: int = 8
    gemm_stages: int = 3

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"kernel backend {self.backend!r} is not one of {', '.join(BACKENDS)}")


class Scratch:
    """Zeroed fp32 workspace and arrival counters for the split-K kernel, shared by one model's
    linears on one device. Every launch leaves them zero again, so they are allocated once."""

    def __init__(self, device: torch.device | str, max_n: int, block_n: int = 256):
        self.workspace = torch.zeros(16 * max_n, dtype=torch.float32, device=device)
        self.counters = torch.zeros(-(-max_n // min(block_n, 64)), dtype=torch.int32, device=device)
        self.max_n = max_n

    def fits(self, n: int) -> bool:
        return n <= self.max_n


@functools.cache
def _triton_module():
    try:
        from . import triton_w4a16
    except Exception as e:  # ImportError, or a Triton that cannot find its compiler
        log.debug("Triton kernels unavailable: %s", e)
        return None
    return triton_w4a16


@functools.cache
def _announce(backend: str, reason: str) -> None:
    log.info("W4A16 kernels: %s (%s)", backend, reason)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def select_backend(device: torch.device, settings: KernelSettings) -> tuple[str, str]:
    """(backend, reason) for a device under the settings."""
    if device.type != "cuda":
        return "reference", f"{device.type}: torch reference"
    want = settings.backend
    if want in ("auto", "triton"):
        if _triton_module() is not None:
            return "triton", "CUDA with Triton"
        if want == "triton":
            raise RuntimeError("kernel backend 'triton' was asked for, but Triton cannot be imported")
    if want in ("auto", "torch-int4"):
        if torch.cuda.get_device_capability(device) >= (8, 0):
            return "torch-int4", "CUDA without Triton: torch's _weight_int4pack_mm (bf16)"
        if want == "torch-int4":
            raise RuntimeError("kernel backend 'torch-int4' needs a GPU of compute capability 8.0 or newer")
    return "reference", "CUDA without Triton or int4 support: torch reference"


def w4a16_linear(x: torch.Tensor, layer: PackedLinear, settings: KernelSettings = KernelSettings(),
                 scratch: Scratch | None = None) -> torch.Tensor:
    """x (..., K) fp16/bf16/fp32 → (..., N) in x's dtype."""
    backend, reason = select_backend(x.device, settings)
    _announce(backend, reason)
    if backend == "triton":
        return _triton_linear(x, layer, settings, scratch)
    if layer.qweight is None:  # held K-major, which only the Triton kernels read
        _announce(backend, "a K-major layer is repacked to the GEMM layout on every call (slow)")
        layer = _GemmView(to_gemm(layer.qweight_k), layer.qzeros, layer.scales, layer.bias, layer.group_size)
    if backend == "torch-int4":
        n, k = layer.scales.shape[1], layer.qweight.shape[0]
        if inner_k_tiles(n, k, layer.group_size) is not None:
            packed = getattr(layer, "int4pack", None)
            if packed is None:  # not prepared ahead (QuantLinear.prepare): convert per call, slowly but right
                packed = to_int4pack(layer.qweight, layer.qzeros, layer.scales)
            return int4pack_linear(x, packed[0], packed[1], layer.group_size, layer.bias)
        _announce("reference", f"shape N={n}, K={k} is outside _weight_int4pack_mm")
    return w4a16_linear_reference(x, layer.qweight, layer.qzeros, layer.scales, layer.bias, layer.group_size)


@dataclass(frozen=True)
class _GemmView:
    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    group_size: int


def _triton_linear(x: torch.Tensor, layer: PackedLinear, s: KernelSettings, scratch: Scratch | None) -> torch.Tensor:
    tw = _triton_module()
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], layer.scales.shape[1]
    if x2.dtype == torch.float32:  # tensor cores want 16-bit operands; fp32 callers get fp32 back
        return _triton_linear(x.to(torch.float16), layer, s, scratch).float()
    qk = getattr(layer, "qweight_k", None)
    if m <= s.decode_max_m:
        if scratch is None or not scratch.fits(n) or scratch.workspace.device != x2.device:
            scratch = Scratch(x2.device, n, s.gemv_block_n)  # correct, but allocates: callers pass one
        sms = _sm_count(x2.device)
        if qk is not None and m == 1:
            y = tw.kmajor_gemv(x2, qk, layer.qzeros, layer.scales, layer.bias, layer.group_size, scratch.workspace,
                               scratch.counters, block_n=s.kfma_block_n, num_warps=s.kfma_warps,
                               num_stages=s.kfma_stages, target_programs=s.kfma_programs_per_sm * sms, mode=0)
        elif qk is not None:
            y = tw.kmajor_gemv(x2, qk, layer.qzeros, layer.scales, layer.bias, layer.group_size, scratch.workspace,
                               scratch.counters, block_n=s.kdot_block_n, num_warps=s.kdot_warps,
                               num_stages=s.kdot_stages, target_programs=s.kdot_programs_per_sm * sms, mode=1)
        else:
            y = tw.splitk_gemv(x2, layer.qweight, layer.qzeros, layer.scales, layer.bias, layer.group_size,
                               scratch.workspace, scratch.counters, block_n=s.gemv_block_n, block_k=s.gemv_block_k,
                               num_warps=s.gemv_warps, num_stages=s.gemv_stages,
                               target_programs=s.gemv_programs_per_sm * sms)
    elif qk is not None or m >= s.prefill_dequant_min_m:
        if qk is not None:
            y = x2 @ tw.dequantize_kmajor(qk, layer.qzeros, layer.scales, layer.group_size, x2.dtype).t()
        else:
            y = x2 @ tw.dequantize(layer.qweight, layer.qzeros, layer.scales, layer.group_size, x2.dtype)
        if layer.bias is not None:
            y += layer.bias.to(y.dtype)
    else:
        y = tw.gemm(x2, layer.qweight, layer.qzeros, layer.scales, layer.bias, layer.group_size,
                    block_m=s.gemm_block_m, block_n=s.gemm_block_n, block_k=s.gemm_block_k,
                    num_warps=s.gemm_warps, num_stages=s.gemm_stages)
    return y.reshape(*shape[:-1], n)
