"""One entry point for every W4A16 linear: ``w4a16_linear(x, layer)`` picks the kernel.

- CPU: the torch reference (unpack + matmul), or, when the settings ask for "torch-int4" (the
  CPU profile of the runtime), torch's CPU int4 kernel (bf16 inside the linear, ~8× faster).
- CUDA with Triton, on the K-major runtime layout (``QuantLinear.prepare``; for group 128 where
  Gluon is there, in the mma order): one row → the Gluon one-row kernel (fp16, ``row_gemv``),
  ``gemv_row`` (FMAs; bf16/fp32, or a gated input) or ``gemv_dot`` (tensor cores), as the settings say;
  2..``decode_max_m`` rows → the Gluon kernel (mma order, fp16) or ``gemv_dot``; more on sm_90 (up
  to ``gemm_max_m``) → the Gluon warpgroup-MMA GEMMs (mma order, fp16;
  ``gluon_w4a16.prefill_gemm``); else → dequantize to 16 bits (the whole layer, or
  ``prefill_chunk_n`` columns at a time into a scratch that stays in L2) + cuBLAS.
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

from .layout import to_gemm, to_kmajor
from .reference import w4a16_linear_reference
from .torch_int4 import inner_k_tiles, int4pack_linear, to_int4pack

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch-int4", "reference")


class PackedLinear(Protocol):
    """What the kernels read: the checkpoint's GEMM tensors (see ``QuantLinear``); ``qweight`` may
    instead be held K-major as ``qweight_k`` (``QuantLinear.use_kmajor``), in the mma order where
    the layer's ``mma_order`` is true."""

    qweight: torch.Tensor | None
    qzeros: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    group_size: int


@dataclass(frozen=True)
class KernelSettings:
    """Kernel choice and tiles; platform profiles override these (defaults: measured on the H100,
    docs/benchmarks.md)."""

    backend: str = "auto"
    decode_max_m: int = 16
    row_kernel: str = "row"  # one row: "row" (gemv_row) or "dot" (gemv_dot, tensor cores)
    row_block_n: int = 32
    row_chunk_k: int = 256
    row_warps: int = 1
    row_h2: bool = True  # gemv_row's half2 products (fp16 on the GPU); False: fp32 FMAs
    row_gluon: bool = True  # one fp16 row (not a gated input) on the Gluon kernel where Gluon imports
    # its tile (gluon_w4a16.row_gemv: rpt, wpt, tk, warps). 8 columns per thread, not the 4 that time
    # best alone: with 4 (16-column programs) and programmatic dependent launch the 7B decode step took
    # 2.47 ms against 2.00 (H100, tools/profile_step.py; docs/kernel-notes.md, 43, 47, 50)
    row_columns_per_thread: int = 8
    row_words_per_thread: int = 4
    row_k_threads: int = 8
    row_gluon_warps: int = 1
    # its products in integers (dp2a: x as 16-bit fixed point per thread) instead of half2 chains:
    # 3-7 % faster alone, about 1 % on the 7B decode step (H100; docs/kernel-notes.md, 53)
    row_int_dot: bool = True
    row_sum_shared: bool = False  # its sum over k through shared memory instead of shuffles
    # x rounded to fixed point once per warp, not once per lane group (with row_int_dot, 4 words × 8
    # threads along k; other tiles round per lane group), and the grid walking a column tile's K chunks
    # first: together 1-5 % faster alone at this tile, 1.3 % on the 7B decode step (H100;
    # docs/kernel-notes.md, 55-59)
    row_x_shared: bool = True
    row_k_first: bool = True
    dot_block_n: int = 64
    dot_warps: int = 4
    dot_stages: int = 3
    dot_programs_per_sm: int = 4
    prefill_chunk_n: int = 0  # 0: dequantize the whole layer before the matmul
    # one-row kernels launch as programmatic dependents: None or True = where the GPU has it (sm_90+;
    # load_shards decides), False = never (a profile's [kernels] can say so)
    pdl: bool | None = None
    mma_order: str = "auto"  # "auto": group-128 layers in the mma order where Gluon runs; "off": K-major
    mma_block_n: int = 128
    mma_warps: int = 4
    mma_programs_per_sm: int = 3
    mma_stages: int = 0  # Gluon kernel: 0 = register pipeline, 2/4/8 = cp.async ring of that many slots
    gemm_max_m: int = 2048  # rows up to which the Gluon GEMMs (sm_90) serve prefill (at 4096 rows dequantize
    # + cuBLAS measured faster); 0: never

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"kernel backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.row_kernel not in ("row", "dot"):
            raise ValueError(f"row_kernel {self.row_kernel!r} is not 'row' or 'dot'")
        if self.mma_order not in ("auto", "off"):
            raise ValueError(f"mma_order {self.mma_order!r} is not 'auto' or 'off'")


class Scratch:
    """Workspaces shared by one model's linears on one device, allocated once: the split-K fp32
    partial sums and arrival counters (every launch leaves them zero again), and the 16-bit
    buffer prefill dequantizes into (``dequant_elems`` elements; 0: allocated per call)."""

    def __init__(self, device: torch.device | str, max_n: int, min_block_n: int = 16, dequant_elems: int = 0,
                 dtype: torch.dtype = torch.float16):
        self.workspace = torch.zeros(16 * max_n, dtype=torch.float32, device=device)
        self.counters = torch.zeros(-(-max_n // min_block_n), dtype=torch.int32, device=device)
        self.dequant = torch.empty(dequant_elems, dtype=dtype, device=device) if dequant_elems else None
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
def _gluon_module():
    try:
        from . import gluon_w4a16
    except Exception as e:  # a Triton without Gluon (before 3.5), or without its compiler
        log.debug("Gluon kernel unavailable: %s", e)
        return None
    return gluon_w4a16


def use_mma_order(device: torch.device, settings: KernelSettings, group_size: int, in_features: int) -> bool:
    """Whether a Triton layer is laid out in the mma order: group 128, the Gluon kernel importable,
    tensor cores with mma.m16n8k16 (sm_80+), and the settings allow it."""
    return (settings.mma_order == "auto" and device.type == "cuda" and group_size == 128
            and in_features % 128 == 0 and torch.cuda.get_device_capability(device) >= (8, 0)
            and _gluon_module() is not None)


@functools.cache
def _announce(backend: str, reason: str) -> None:
    log.info("W4A16 kernels: %s (%s)", backend, reason)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def select_backend(device: torch.device, settings: KernelSettings) -> tuple[str, str]:
    """(backend, reason) for a device under the settings."""
    want = settings.backend
    if device.type != "cuda":
        if want == "torch-int4" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return "torch-int4", f"{device.type}: torch's _weight_int4pack_mm_for_cpu (bf16 inside the linear)"
        return "reference", f"{device.type}: torch reference"
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
                 scratch: Scratch | None = None, accumulate_into: torch.Tensor | None = None,
                 gated: bool = False) -> torch.Tensor:
    """x (..., K) fp16/bf16/fp32 → (..., N) in x's dtype.

    ``gated``: x is (..., 2K) [gate | up] and the input is silu(gate)·up (an MLP's down
    projection); the one-row Triton kernel computes it as it loads x, other paths first.

    ``accumulate_into``: a zeroed fp32 (rows, N) that decode kernels add their K-splits into (no
    arrival count: see ``gemv_row``); it is returned. The caller zeroes it before the next call.
    Paths that cannot accumulate write it instead."""
    backend, reason = select_backend(x.device, settings)
    _announce(backend, reason)
    rows = x.numel() // x.shape[-1]
    if gated and not (backend == "triton" and rows == 1 and settings.row_kernel == "row"):
        gate, up = x.chunk(2, dim=-1)
        x, gated = (torch.nn.functional.silu(gate.float()) * up.float()).to(x.dtype), False
    if gated:
        return _triton_linear(x, layer, settings, scratch, accumulate_into, gated=True)
    if accumulate_into is not None:
        if backend == "triton" and rows <= settings.decode_max_m:
            return _triton_linear(x, layer, settings, scratch, accumulate_into)
        accumulate_into.copy_(w4a16_linear(x, layer, settings, scratch).reshape(accumulate_into.shape))
        return accumulate_into
    if backend == "triton":
        return _triton_linear(x, layer, settings, scratch)
    packed = getattr(layer, "int4pack", None)  # prepared for torch's int4 kernel (QuantLinear.prepare)
    if backend == "torch-int4" and packed is not None:
        return int4pack_linear(x, packed[0], packed[1], layer.group_size, layer.bias)
    if layer.qweight is None:  # held K-major, which only the Triton kernels read
        _announce(backend, "a K-major layer is repacked to the GEMM layout on every call (slow)")
        layer = _GemmView(to_gemm(layer.qweight_k, getattr(layer, "mma_order", False)), layer.qzeros, layer.scales,
                          layer.bias, layer.group_size)
    if backend == "torch-int4":
        n, k = layer.scales.shape[1], layer.qweight.shape[0]
        if inner_k_tiles(n, k, layer.group_size) is not None:  # not prepared: convert per call, slowly but right
            _announce(backend, "a GEMM-layout layer is converted to int4pack on every call (slow)")
            return int4pack_linear(x, *to_int4pack(layer.qweight, layer.qzeros, layer.scales), layer.group_size,
                                   layer.bias)
        _announce("reference", f"shape N={n}, K={k} is outside _weight_int4pack_mm")
    return w4a16_linear_reference(x, layer.qweight, layer.qzeros, layer.scales, layer.bias, layer.group_size)


@dataclass(frozen=True)
class _GemmView:
    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    group_size: int


def _triton_linear(x: torch.Tensor, layer: PackedLinear, s: KernelSettings, scratch: Scratch | None,
                   acc: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    tw = _triton_module()
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], layer.scales.shape[1]
    qk = getattr(layer, "qweight_k", None)
    mma = qk is not None and getattr(layer, "mma_order", False)
    if qk is None:
        _announce("triton", "a GEMM-layout layer is repacked to K-major on every call (slow; QuantLinear.prepare)")
        qk = to_kmajor(layer.qweight)
    g = layer.group_size
    if m <= s.decode_max_m:
        if scratch is None or not scratch.fits(n) or scratch.workspace.device != x2.device:
            scratch = Scratch(x2.device, n)  # correct, but allocates: callers pass one
        out = None if acc is None else acc.view(m, n)
        if (m == 1 and s.row_kernel == "row" and s.row_gluon and not gated and x2.dtype == torch.float16
                and g >= 8 * s.row_words_per_thread and shape[-1] % 32 == 0 and _gluon_module() is not None):
            _announce("triton", "one row: the Gluon kernel")
            y = out if out is not None else torch.zeros(1, n, dtype=torch.float32, device=x2.device)
            _gluon_module().row_gemv(x2, qk, layer.qzeros, layer.scales, layer.bias, y, g, mma=mma,
                                     rpt=s.row_columns_per_thread, wpt=s.row_words_per_thread, tk=s.row_k_threads,
                                     warps=s.row_gluon_warps, pdl=bool(s.pdl), int_dot=s.row_int_dot,
                                     tsum=s.row_sum_shared, k_first=s.row_k_first,
                                     x_shared=s.row_x_shared and _gluon_module().can_share_x(
                                         s.row_int_dot, s.row_words_per_thread, s.row_k_threads))
            if acc is None:
                y = y.to(x2.dtype)
        elif m == 1 and s.row_kernel == "row":
            y = tw.gemv_row(x2, qk, layer.qzeros, layer.scales, layer.bias, g, scratch.workspace, scratch.counters,
                            block_n=s.row_block_n, chunk_k=s.row_chunk_k, num_warps=s.row_warps, h2=s.row_h2, out=out,
                            accumulate=acc is not None, pdl=bool(s.pdl), gated=gated, mma=mma)
        elif mma and m > 1 and x2.dtype != torch.bfloat16:
            _announce("triton", "2-16 rows: the Gluon kernel on the mma order")
            xd = x2 if x2.dtype == torch.float16 else x2.to(torch.float16)
            y = out if out is not None else torch.zeros(m, n, dtype=torch.float32, device=x2.device)
            _gluon_module().mma_rows(xd, qk, layer.qzeros, layer.scales, layer.bias, y, block_n=s.mma_block_n,
                                     warps=s.mma_warps, target_programs=s.mma_programs_per_sm * _sm_count(x2.device),
                                     stages=s.mma_stages)
            if acc is None:
                y = y.to(x2.dtype)
        else:
            xd = x2 if x2.dtype != torch.float32 else x2.to(torch.float16)  # tensor cores take 16-bit operands
            y = tw.gemv_dot(xd, qk, layer.qzeros, layer.scales, layer.bias, g, scratch.workspace, scratch.counters,
                            block_n=s.dot_block_n, num_warps=s.dot_warps, num_stages=s.dot_stages,
                            target_programs=s.dot_programs_per_sm * _sm_count(x2.device), out=out,
                            accumulate=acc is not None, mma=mma)
            if acc is None:
                y = y.to(x2.dtype)
        if acc is not None:
            return acc
    elif (mma and x2.dtype != torch.bfloat16 and m <= s.gemm_max_m
          and torch.cuda.get_device_capability(x2.device) == (9, 0)):
        _announce("triton", f"17-{s.gemm_max_m} rows: the Gluon warpgroup-MMA GEMMs on the mma order")
        xd = x2.to(torch.float16).contiguous()
        if xd.data_ptr() % 16:  # the TMA descriptor wants 16-byte aligned rows
            xd = xd.clone()
        y = _gluon_module().prefill_gemm(xd, qk, layer.qzeros, layer.scales, layer.bias).to(x2.dtype)
    else:
        y = _prefill(tw, x2, qk, layer, s, scratch, mma)
    return y.reshape(*shape[:-1], n)


def _prefill(tw, x: torch.Tensor, qk: torch.Tensor, layer: PackedLinear, s: KernelSettings,
             scratch: Scratch | None, mma: bool = False) -> torch.Tensor:
    """Dequantize to x's 16-bit dtype + cuBLAS, in column chunks: as many as the settings ask and
    the scratch's dequantize buffer holds (so its size bounds the memory prefill takes)."""
    xd = x if x.dtype != torch.float32 else x.to(torch.float16)
    n, k = layer.scales.shape[1], x.shape[1]
    chunk = s.prefill_chunk_n if 0 < s.prefill_chunk_n < n else n
    buf = scratch.dequant if scratch is not None else None
    if buf is not None and buf.dtype == xd.dtype:
        chunk = min(chunk, max(8, buf.numel() // k // 8 * 8))
    else:
        buf = torch.empty(chunk * k, dtype=xd.dtype, device=x.device)
    y = torch.empty(x.shape[0], n, dtype=xd.dtype, device=x.device)
    for n0 in range(0, n, chunk):
        n1 = min(n, n0 + chunk)
        w = tw.dequantize_kmajor(qk, layer.qzeros, layer.scales, layer.group_size, xd.dtype, rows=(n0, n1),
                                 out=buf[: (n1 - n0) * k].view(n1 - n0, k), mma=mma)
        torch.mm(xd, w.t(), out=y[:, n0:n1])
    if layer.bias is not None:
        y += layer.bias.to(y.dtype)
    return y.to(x.dtype)
