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
from .plan import StreamPlan
from .shards import MANIFEST, ShardTensors, Staging, check_shard, open_folder, read_shard, read_tensor_at
from .stream import FileSource, PinnedSource, Ring, StreamedEmbedding, StreamedHead
from .weights import DTYPES

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
    held_bytes: int = 0  # weights held where they compute: resident parts plus the streaming ring
    source_bytes: int = 0  # streamed units kept in their source (pinned host memory or a spill file)


@dataclass
class LoadedModel:
    model: CausalLM
    cfg: ModelConfig
    qcfg: QuantConfig | None
    folder: Path
    scratch: Scratch | None
    settings: KernelSettings
    report: LoadReport
    ring: Ring | None = None  # layer streaming, when the plan chose it
    stream: StreamPlan | None = None

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()


def load_shards(folder: Path, device: torch.device | str, dtype: torch.dtype,
                settings: KernelSettings | None = None, staging_bytes: int = 64 << 20,
                progress: Callable[[int, int, str], None] | None = None, unified_memory: bool = False,
                stream: StreamPlan | None = None, stream_dir: Path | None = None) -> LoadedModel:
    """A shard folder (``edge-awq split``) as a ready-to-run model on ``device``, activations in
    ``dtype``. Raises on the first shard that fails its checks, before any of its bytes are used.
    ``unified_memory`` (Jetson): drop each file's page cache once read — it takes the same DRAM.
    ``stream``: layers from ``stream.resident_layers`` on are laid out once into the stream source
    (pinned host memory, or a spill file under ``stream_dir``) and run through a ring of slots."""
    folder = Path(folder)
    device = torch.device(device)
    settings = settings or KernelSettings()
    # programmatic dependent launch where the GPU has it (sm_90 and newer), unless the settings say no
    has_pdl = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
    settings = replace(settings, pdl=has_pdl and settings.pdl is not False)
    if not (folder / MANIFEST).exists():
        raise EdgeAwqError(f"{folder}: no {MANIFEST}; make a shard folder with `edge-awq split`")
    m, cfg, qcfg = open_folder(folder)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Up to WORKERS shards stream at once, each through its own share of the staging: sha256 runs at
    # well under 1 GB/s on one core, so the hashing is spread over several (it releases the GIL).
    # While streaming, one shard at a time: shards in flight take device memory the budget does not have.
    workers = WORKERS if device.type == "cuda" and stream is None else 1
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

    ring = None
    if stream is not None:
        source = (PinnedSource() if stream.source == PinnedSource.kind
                  else FileSource(stream_dir, drop_cache=unified_memory))
        ring = Ring(source, device, stream.slots, stream.prefetch)

    def ready(i: int, block: Block):  # per layer, so the device holds one layer's repacking at a time
        block.self_attn.fuse()
        block.mlp.fuse()
        for mod in block.modules():
            if isinstance(mod, QuantLinear):
                mod.prepare(settings, scratch)
        if ring is not None and i >= stream.resident_layers:
            return ring.add_block(block)
        return None

    embed = head = None
    if stream is not None and stream.head_streamed:
        embed, head, part = _streamed_head(folder, m, cfg, ring, stream, part)
        order = [k for k in order if k[0] == "layer"]
        total = len(order)
    for key in order[:workers]:
        start(key)
    try:
        model = assemble(cfg, qcfg, dtype, part, ready, embed, head)
    except BaseException:
        if ring is not None:
            ring.close()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if ring is not None:
        ring.start()
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
        peak_device_bytes=torch.cuda.max_memory_allocated(device) if on_gpu else None,
        held_bytes=held_weight_bytes(model, ring), source_bytes=_source_bytes(ring))
    log.info("loaded %s: %d files, %.1f s", folder, total, report.seconds)
    return LoadedModel(model, cfg, qcfg, folder, scratch, settings, report, ring, stream)


def held_weight_bytes(model: CausalLM, ring: Ring | None) -> int:
    """Bytes of the weights where they compute: every resident tensor once, plus the ring."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta" and t.data_ptr() not in seen and t is not model.inv_freq:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total + (ring.slot_bytes if ring is not None and ring.streamer is not None else 0)


def _source_bytes(ring: Ring | None) -> int:
    return 0 if ring is None else sum(ring.source.unit_bytes(u) for u in range(len(ring.source.units)))


def _streamed_head(folder: Path, m, cfg: ModelConfig, ring: Ring, stream: StreamPlan, part):
    """Embedding rows read from the embedding shard as tokens need them, the head's rows as ring
    units from the shard that holds them (after a full hash check of both); the final norm read
    alone. Returns (embedding, head, part function without the embedding and head shards)."""
    emb_entry, head_entry = m.part("embed"), m.part("head")
    emb_path = check_shard(folder, emb_entry)
    spec = emb_entry.tensors["model.embed_tokens.weight"]
    wdtype = DTYPES[spec["dtype"]]
    vocab, hidden = spec["shape"]
    embed = StreamedEmbedding(emb_path, spec["offset"], vocab, hidden, wdtype)
    head_path = check_shard(folder, head_entry)
    if not cfg.tie_word_embeddings:
        spec = head_entry.tensors["lm_head.weight"]
        if DTYPES[spec["dtype"]] != wdtype or spec["shape"] != [vocab, hidden]:
            raise EdgeAwqError(f"{head_path}: lm_head.weight is {spec['dtype']} {spec['shape']}, "
                               f"the embedding {wdtype} {[vocab, hidden]}")
    rows_path = emb_path if cfg.tie_word_embeddings else head_path
    first = stream.streamed_layers
    norm = ShardTensors(head_path, {"model.norm.weight": read_tensor_at(head_path,
                                                                          head_entry.tensors["model.norm.weight"])})
    row = hidden * wdtype.itemsize

    def add_head_units() -> None:  # after the layers, so units stay in pass order
        for r0 in range(0, vocab, stream.head_rows_per_unit):
            r1 = min(vocab, r0 + stream.head_rows_per_unit)
            ring.source.add_range(rows_path, spec["offset"] + r0 * row, (r1 - r0) * row)

    def part_(role: str, layer: int | None):
        if role == "head":
            add_head_units()
            return norm
        return part(role, layer)

    head = StreamedHead(ring, first, stream.head_rows_per_unit, vocab, hidden, wdtype)
    return embed, head, part_
