"""QuantLinear: the module that holds one W4A16 linear, in the checkpoint's GEMM layout until
``prepare`` lays it out for the kernels that will run it."""

from __future__ import annotations

import torch
from torch import nn

from .dispatch import KernelSettings, Scratch, select_backend, use_mma_order, w4a16_linear
from .layout import to_kmajor, to_mma
from .torch_int4 import inner_k_tiles, to_int4pack


class QuantLinear(nn.Module):
    """Drop-in for a dense linear; buffers keep the checkpoint's names (qweight, qzeros, scales, bias)."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.empty(in_features, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("qzeros", torch.empty(groups, out_features // 8, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=torch.float16, device=device) if bias else None)
        # set by the runtime: kernel choice and tiles, and the scratch its linears share
        self.kernel_settings = KernelSettings()
        self.scratch: Scratch | None = None
        self.mma_order = False  # qweight_k's words in the mma order (layout.py)

    def use_kmajor(self, mma: bool = False) -> None:
        """Repack for the Triton kernels (docs/format.md): ``qweight`` is replaced by ``qweight_k``
        (N, K/8), K-major or (``mma``) in the mma order, so the weights are still held once."""
        if self.qweight is None:
            return
        self.register_buffer("qweight_k", to_mma(self.qweight) if mma else to_kmajor(self.qweight))
        self.qweight = None
        self.mma_order = mma

    def prepare(self, settings: KernelSettings, scratch: Scratch | None = None) -> str:
        """Lay the weights out for the backend these settings pick on this module's device
        (K-major for Triton, int4pack for torch's int4 kernel, as stored for the reference), once,
        holding one copy. Returns the backend."""
        self.kernel_settings, self.scratch = settings, scratch
        device = next(t.device for t in self._buffers.values() if t is not None)
        backend, _ = select_backend(device, settings)
        if self.int4pack is not None:
            return backend
        if backend == "triton":
            self.use_kmajor(use_mma_order(device, settings, self.group_size, self.in_features))
        elif backend == "torch-int4" and inner_k_tiles(self.out_features, self.in_features, self.group_size):
            packed, scale_offset = to_int4pack(self.qweight, self.qzeros, self.scales)
            # buffers, so the layer's tensors are all in named_buffers (layer streaming flattens them)
            self.register_buffer("int4pack_weight", packed)
            self.register_buffer("int4pack_scale_offset", scale_offset)
            self.qweight = self.qzeros = self.scales = None  # held once, in the kernel's layout
        return backend

    @property
    def int4pack(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(weight, scale-and-offset) for torch's int4 kernel, once ``prepare`` has made them."""
        w = self._buffers.get("int4pack_weight")
        return None if w is None else (w, self._buffers["int4pack_scale_offset"])

    @classmethod
    def concat(cls, parts: list[QuantLinear]) -> QuantLinear:
        """One linear computing ``parts`` side by side (outputs concatenated): q, k and v (or gate and
        up) in one launch. Parts share in_features and group and are all in one layout; their
        buffers are freed as the result is built, so the weights stay held once (plus one part)."""
        first = parts[0]
        fused = cls(first.in_features, sum(p.out_features for p in parts), first.group_size,
                    bias=any(p.bias is not None for p in parts), device="meta")
        kmajor = first.qweight is None
        names = ("qweight_k" if kmajor else "qweight", "qzeros", "scales", "bias")
        dims = {"qweight_k": 0, "qweight": 1, "qzeros": 1, "scales": 1, "bias": 0}
        for name in names:
            if name == "bias" and fused.bias is None:
                continue
            pieces = []
            for p in parts:
                t = getattr(p, name)
                pieces.append(t if t is not None else torch.zeros(p.out_features, dtype=torch.float16,
                                                                  device=first.qzeros.device))
            fused.register_buffer(name, torch.cat(pieces, dim=dims[name]))
            for p in parts:
                setattr(p, name, None)
        if kmajor:
            fused.qweight = None
            fused.mma_order = first.mma_order
        fused.kernel_settings, fused.scratch = first.kernel_settings, first.scratch
        return fused

    def forward(self, x: torch.Tensor, accumulate_into: torch.Tensor | None = None, gated: bool = False
                ) -> torch.Tensor:
        return w4a16_linear(x, self, self.kernel_settings, self.scratch, accumulate_into, gated)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group={self.group_size}"
