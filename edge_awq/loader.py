"""Load a shard folder onto the device that will run it, one shard at a time.

Each shard streams through bounded pinned staging (``shards.Staging``) into its tensors' final
device allocations, its sha256 checked in the same pass and its page cache dropped behind it, so
host memory never holds the model (on a Jetson, host and GPU share DRAM: two copies would not
fit). Quantized linears are then laid out for the kernels that will run them (K-major for Triton)
and q/k/v and gate/up fused, one layer at a time, so the device holds the weights once plus one
tensor in flight. Every byte is accounted for in the ``LoadReport``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from edge_awq.kernels.dispatch import KernelSettings, Scratch, select_backend
from edge_awq.kernels.quant_linear import QuantLinear

from .config import ModelConfig, QuantConfig
from .errors import EdgeAwqError
from .memory import peak_rss_bytes, rss_bytes
from .model import Block, CausalLM, assemble
from .shards import MANIFEST, ShardTensors, Staging, open_folder, read_shard

log = logging.getLogger(__name__)

PREFILL_SCRATCH_BYTES = 64 << 20  # prefill dequantizes at most this much of a layer at a time
WORKERS = 4  # shards streaming at once on a GPU


@dataclass(frozen=True)
class LoadReport:
    seconds: float
    files: int
    bytes_read: int
    staging_bytes: int
    backend: str  # the W4A16 kernels the linears were laid out for
    rss_bytes: int  # host resident set after loading
    peak_rss_bytes: int  # host high-water mark of the process so far
    device_bytes: int | None  # allocated on the GPU after loading (weights + scratch), None on the CPU
    peak_device_bytes: int | None


@dataclass
class LoadedModel:
    model: CausalLM
    cfg: ModelConfig
    qcfg: QuantConfig | None
    folder: Path
    scratch: Scratch | None
    settings: KernelSettings
    report: LoadReport


def load_shards(folder: Path, device: torch.device | str, dtype: torch.dtype,
                settings: KernelSettings | None = None, staging_bytes: int = 64 << 20,
                progress: Callable[[int, int, str], None] | None = None, unified_memory: bool = False
                ) -> LoadedModel:
    """A shard folder (``edge-awq split``) as a ready-to-run model on ``device``, activations in
    ``dtype``. Raises on the first shard that fails its checks, before any of its bytes are used.
    ``unified_memory`` (Jetson): drop each file's page cache once read — it takes the same DRAM."""
    folder = Path(folder)
    device = torch.device(device)
    settings = settings or KernelSettings()
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0):
        settings = replace(settings, pdl=True)  # programmatic dependent launch: sm_90 and newer
    if not (folder / MANIFEST).exists():
        raise EdgeAwqError(f"{folder}: no {MANIFEST}; make a shard folder with `edge-awq split`")
    m, cfg, qcfg = open_folder(folder)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Up to WORKERS shards stream at once, each through its own share of the staging: sha256 runs at
    # well under 1 GB/s on one core, so the hashing is spread over several (it releases the GIL).
    workers = WORKERS if device.type == "cuda" else 1
    stagings = [Staging(staging_bytes // workers, device) for _ in range(workers)] if device.type == "cuda" else []
    backend, _ = select_backend(device, settings)
    scratch = None
    if qcfg is not None and backend == "triton":
        i, h = cfg.intermediate_size, cfg.hidden_size
        widest = max(2 * i, h, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim)
        scratch = Scratch(device, widest, dequant_elems=PREFILL_SCRATCH_BYTES // dtype.itemsize, dtype=dtype)
    done, total = 0, len(m.files)
    order = [(f.role, f.layer) for f in m.files]
    pool = ThreadPoolExecutor(workers, thread_name_prefix="shard")
    free = list(stagings)
    jobs: dict[tuple[str, int | None], Future] = {}

    def start(key) -> None:
        entry = m.part(*key)
        st = free.pop() if free else None

        def job():
            try:
                return read_shard(folder, entry, device, st, drop_cache=unified_memory)
            finally:
                if st is not None:
                    free.append(st)
        jobs[key] = pool.submit(job)

    def part(role: str, layer: int | None) -> ShardTensors:
        nonlocal done
        key = (role, layer)
        entry = m.part(role, layer)
        if progress:
            progress(done, total, entry.name)
        if key not in jobs:
            start(key)
        tensors = jobs.pop(key).result()  # raises the shard's error, if any
        done += 1
        nxt = [k for k in order[order.index(key) + 1:] if k not in jobs][: max(0, workers - len(jobs))]
        for k in nxt:  # keep the next shards streaming
            start(k)
        return ShardTensors(folder / entry.name, tensors)

    def ready(block: Block) -> None:  # per layer, so the device holds one layer's repacking at a time
        block.self_attn.fuse()
        block.mlp.fuse()
        for mod in block.modules():
            if isinstance(mod, QuantLinear):
                mod.prepare(settings, scratch)

    for key in order[:workers]:
        start(key)
    try:
        model = assemble(cfg, qcfg, dtype, part, ready)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    model.inv_freq = model.inv_freq.to(device)
    if progress:
        progress(total, total, "done")
    staging_nbytes = sum(st.nbytes for st in stagings)
    stagings = free = []  # the pinned buffers go back before the first token
    on_gpu = device.type == "cuda"
    report = LoadReport(
        seconds=time.perf_counter() - t0, files=total, bytes_read=sum(f.bytes for f in m.files),
        staging_bytes=staging_nbytes, backend=backend if qcfg is not None else "dense", rss_bytes=rss_bytes(),
        peak_rss_bytes=peak_rss_bytes(),
        device_bytes=torch.cuda.memory_allocated(device) if on_gpu else None,
        peak_device_bytes=torch.cuda.max_memory_allocated(device) if on_gpu else None)
    log.info("loaded %s: %d files, %.1f s", folder, total, report.seconds)
    return LoadedModel(model, cfg, qcfg, folder, scratch, settings, report)
