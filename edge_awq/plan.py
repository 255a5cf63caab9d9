"""The memory plan: what a model needs on a device, against the budget, before a byte is loaded.

The budget is memory for the model: the weights held on the device (in the kernels' layout:
float tensors in the activation dtype, quantized linears as the backend lays them out) and the
KV cache at the context asked for. It is ``--memory-budget`` when given; else the profile's memory
(or what the device reports) less what the profile reserves for the OS and less the runtime's own
overhead (activations, scratch, CUDA graphs, allocator slack, the loader's staging), which comes
on top of a ``--memory-budget``.

When the whole model does not fit, the plan streams: embeddings, head and KV cache first, then as
many decoder layers resident as fit beside a ring of slots, and the other layers pass through the
ring on every forward pass (``stream.py``). On the CPU, where even the embeddings may not fit,
the head streams too, in row chunks, and embedding rows are read as tokens need them. When not
even that fits, the plan says so with what would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edge_awq.kernels.torch_int4 import inner_k_tiles

from .errors import EdgeAwqError
from .memory import fmt_bytes
from .shards import Manifest
from .stream import align
from .weights import DTYPES


@dataclass(frozen=True)
class PartBytes:
    """Bytes each part holds on the device once laid out for its kernels."""

    embed: int
    layers: tuple[int, ...]
    head: int  # the lm_head weight; 0 when the head is the embedding (tied)
    norm: int  # the final norm (resident always)
    row: int  # one embedding (or head) row as stored: the unit of a streamed head
    vocab: int

    @property
    def total(self) -> int:
        return self.embed + sum(self.layers) + self.head + self.norm


def _quant_prefixes(tensors: dict) -> set[str]:
    return {n.removesuffix(".qweight") for n in tensors if n.endswith(".qweight")}


def held_bytes(m: Manifest, backend: str, dtype: torch.dtype) -> PartBytes:
    """Per part, the bytes the loader will hold: packed 4-bit codes as stored (GEMM or K-major: the
    same bytes), their fp16 scales, zeros and bias as stored, or torch's int4 layout (a bf16
    scale-and-offset pair per group and column, no zeros) where that backend takes the shape;
    every other float tensor in the activation dtype. Each tensor rounded up to ``stream.ALIGN``,
    as a streamed layer is laid out."""
    sizes: dict[tuple[str, int | None], int] = {}
    for f in m.files:
        quant = _quant_prefixes(f.tensors)
        total = 0
        for name, t in f.tensors.items():
            prefix, _, leaf = name.rpartition(".")
            n = 1
            for s in t["shape"]:
                n *= s
            if prefix in quant:
                b = t["bytes"]
                q = f.tensors[prefix + ".qweight"]["shape"]
                k, cols = q[0], q[1] * 8
                group = k // f.tensors[prefix + ".scales"]["shape"][0]
                if backend == "torch-int4" and inner_k_tiles(cols, k, group):
                    b = {"qweight": b, "qzeros": 0, "scales": 2 * b}.get(leaf, b)
            else:
                b = n * (dtype.itemsize if DTYPES[t["dtype"]].is_floating_point else DTYPES[t["dtype"]].itemsize)
            total += align(b)
        sizes[(f.role, f.layer)] = total
    (emb,) = m.part("embed").tensors.values()
    layers = tuple(sizes[("layer", i)] for i in range(sum(f.role == "layer" for f in m.files)))
    head = m.part("head").tensors.get("lm_head.weight")
    head_w = 0 if head is None else align(head["shape"][0] * head["shape"][1] * dtype.itemsize)
    return PartBytes(sizes[("embed", None)], layers, head_w, sizes[("head", None)] - head_w,
                     emb["shape"][1] * DTYPES[emb["dtype"]].itemsize, emb["shape"][0])


@dataclass(frozen=True)
class StreamOptions:
    source: str  # "pinned host memory" or "file"
    prefetch: bool = True
    slots: int = 2  # ring slots with prefetch (one computing, the next arriving)
    head_can_stream: bool = False  # the CPU path: head chunks and embedding rows from the files


@dataclass(frozen=True)
class StreamPlan:
    resident_layers: int  # layers 0 .. resident_layers-1 stay; the rest stream
    streamed_layers: int
    head_streamed: bool
    head_units: int
    head_rows_per_unit: int
    slots: int
    slot_bytes: int
    streamed_bytes: int  # per forward pass (per decoded token)
    source: str
    prefetch: bool

    @property
    def units(self) -> int:
        return self.streamed_layers + self.head_units

    def describe(self) -> str:
        head = ", head and embeddings stream too" if self.head_streamed else ""
        return (f"layer streaming: {self.resident_layers} of {self.resident_layers + self.streamed_layers} layers "
                f"resident, {self.streamed_layers} stream from {self.source}{head}, through {self.slots} "
                f"slot{'s' if self.slots > 1 else ''} of {fmt_bytes(self.slot_bytes)}; "
                f"{fmt_bytes(self.streamed_bytes)} per token, prefetch {'on' if self.prefetch else 'off'}")


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    budget_source: str
    context: int
    weight_bytes: int  # held on the device: resident parts plus the ring
    kv_bytes: int
    overhead_bytes: int  # runtime overhead + loader staging, outside the budget
    stream: StreamPlan | None = None

    @property
    def need_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    def summary(self) -> str:
        return (f"memory plan: weights {fmt_bytes(self.weight_bytes)} + KV cache {fmt_bytes(self.kv_bytes)} "
                f"({self.context} tokens) = {fmt_bytes(self.need_bytes)} of {fmt_bytes(self.budget_bytes)} "
                f"({self.budget_source}); runtime overhead about {fmt_bytes(self.overhead_bytes)} on top")


def parse_bytes(text: str) -> int:
    """'2GB', '1.5 GiB', '800MB', '123456789' → bytes (binary units, as the reports count)."""
    t = text.strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise EdgeAwqError(f"--memory-budget {text!r}: not a size (e.g. 2GB, 800MB)") from None
    if value <= 0:
        raise EdgeAwqError(f"--memory-budget {text!r}: must be more than zero")
    return int(value * scale)


def model_budget(profile, device_bytes: int, device_source: str, budget_override: int | None,
                 overhead_bytes: int) -> tuple[int, str]:
    if budget_override is not None:
        return budget_override, "--memory-budget"
    if profile.budget_bytes is not None:
        return profile.budget_bytes - overhead_bytes, f"profile {profile.name}, less runtime overhead"
    reserved = int(profile.reserved_gb * 2**30)
    return (device_bytes - reserved - overhead_bytes,
            f"{device_source}, less {profile.reserved_gb:g} GB reserved and runtime overhead")


def plan_memory(parts: PartBytes, kv_per_token: int, profile, context: int, device_bytes: int,
                device_source: str, budget_override: int | None = None, staging_bytes: int = 0,
                stream: StreamOptions | None = None, path: str = "the model") -> MemoryPlan:
    """The whole model and a ``context``-token KV cache if they fit; else, with ``stream``, the
    streaming plan that keeps the most layers resident; else an error naming what would fit."""
    overhead = (profile.runtime_overhead_mb << 20) + staging_bytes
    budget, source = model_budget(profile, device_bytes, device_source, budget_override, overhead)
    kv = kv_per_token * context
    if parts.total + kv <= budget:
        return MemoryPlan(budget, source, context, parts.total, kv, overhead)
    if stream is not None:
        plan = _stream_plan(parts, budget - kv, stream)
        if plan is not None:
            return MemoryPlan(budget, source, context, plan[1], kv, overhead, plan[0])
    room = budget - parts.total
    if room >= 64 * kv_per_token:
        hint = f"a context of at most {room // kv_per_token} tokens fits (--context)"
    elif stream is not None:
        hint = ("not even with layer streaming: the embeddings, the head, a ring of "
                f"{stream.slots} layers and the KV cache need more; a shorter context, or more memory")
    else:
        hint = "the weights alone do not fit: a smaller model, or a device with more memory"
    raise EdgeAwqError(f"{path} does not fit: needs {fmt_bytes(parts.total + kv)} (weights "
                       f"{fmt_bytes(parts.total)}, KV cache {fmt_bytes(kv)} for {context} tokens), budget "
                       f"{fmt_bytes(budget)} ({source}); {hint}")


def _stream_plan(parts: PartBytes, avail: int, opt: StreamOptions) -> tuple[StreamPlan, int] | None:
    """(plan, weight bytes it holds), or None when nothing fits. Layers 0..r-1 stay resident
    (their compute overlaps the first copies of each pass); r is the largest that fits with the
    slots asked for, and fewer slots are tried (down to one) before the head is streamed."""
    n = len(parts.layers)
    slot = max(parts.layers)
    want = opt.slots if opt.prefetch else 1
    for head_streamed in (False, True):
        if head_streamed and not opt.head_can_stream:
            break
        fixed = parts.norm + (0 if head_streamed else parts.embed + parts.head)
        rows = slot // parts.row
        head_units = -(-parts.vocab // rows) if head_streamed else 0
        head_bytes = parts.vocab * parts.row if head_streamed else 0
        for ring in range(want, 0, -1):
            for r in range(n - 1, -1, -1):
                slots = min(ring, n - r + head_units)
                used = fixed + sum(parts.layers[:r]) + slots * slot
                if used <= avail:
                    plan = StreamPlan(r, n - r, head_streamed, head_units, rows if head_streamed else 0, slots,
                                      slot, sum(parts.layers[r:]) + head_bytes, opt.source, opt.prefetch)
                    return plan, used
    return None
