"""Open a shard folder for inference: pick the platform profile, plan memory, load, build the engine.

Shared by ``edge-awq chat`` and ``edge-awq bench``; everything it decided is kept on the
``Runtime`` so the commands can print what was loaded and what it took.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from edge_awq.kernels.dispatch import select_backend

from .engine import Engine
from .errors import EdgeAwqError
from .footprint import describe
from .generate import eos_ids
from .loader import LoadReport, load_shards
from .memory import pin_mmap_threshold
from .plan import MemoryPlan, StreamOptions, held_bytes, plan_memory
from .profiles import Profile, detect_profile, load_profile
from .shards import read_manifest
from .stream import FileSource, PinnedSource, measure_source_bandwidth
from .tokenizer import load_runtime_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Runtime:
    engine: Engine
    tokenizer: object
    eos: set[int]
    profile: Profile
    profile_reason: str
    plan: MemoryPlan
    load: LoadReport
    device: torch.device
    dtype: torch.dtype
    open_seconds: float  # tokenizer + planning + loading + engine
    phases: dict[str, float]  # seconds of each, and of importing torch before (``import``)
    source_bandwidth: float | None = None  # bytes/s from the stream source, measured after loading

    def close(self) -> None:
        self.engine.loaded.close()

    def stream_summary(self) -> str | None:
        """The streaming plan with the source's measured bandwidth and the tok/s it allows."""
        s = self.plan.stream
        if s is None:
            return None
        bw = self.source_bandwidth or 0.0
        bound = bw / s.streamed_bytes if s.streamed_bytes else float("inf")
        return (f"{s.describe()}; source reads at {bw / 1e9:.2f} GB/s (measured): at most {bound:.1f} tok/s "
                f"from streaming")


def pick_device(device: str | None, profile: Profile | None) -> torch.device:
    if device:
        d = torch.device(device)
        if d.type == "cuda" and not torch.cuda.is_available():
            raise EdgeAwqError(f"--device {device}: no CUDA device is available")
        return d
    if profile is not None and profile.name == "cpu":
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def open_runtime(folder: Path, profile_name: str | None = None, device: str | None = None,
                 dtype_name: str = "auto", context: int | None = None, memory_budget: int | None = None,
                 cuda_graphs: bool = True, progress=None, prefetch: bool = True, stream_from: str = "auto",
                 stream_dir: Path | None = None) -> Runtime:
    """``stream_from``: where streamed layers wait — "auto" (pinned host memory on a GPU with its
    own memory, a spill file on the CPU and on unified memory), "host" or "file"."""
    t0 = time.perf_counter()
    pin_mmap_threshold()
    folder = Path(folder)
    host = psutil.virtual_memory().total
    if profile_name:
        profile, reason = load_profile(profile_name), "--profile"
    else:
        profile, reason = detect_profile(torch.cuda.is_available(), host)
    dev = pick_device(device, profile)
    if dev.type == "cpu" and profile.name != "cpu" and not profile_name:
        profile, reason = load_profile("cpu"), "--device cpu"
    if dtype_name == "auto":
        dtype = torch.float32 if dev.type == "cpu" else torch.float16
    else:
        dtype = DTYPES[dtype_name]
    fp = describe(folder)
    if fp.kind != "shard folder":
        raise EdgeAwqError(f"{folder}: not a shard folder; make one with `edge-awq split CKPT {folder}`")
    ctx = min(context or profile.max_context, profile.max_context if context is None else context)
    if dev.type == "cuda":
        total, source = torch.cuda.get_device_properties(dev).total_memory, torch.cuda.get_device_name(dev)
    else:
        total, source = host, "host memory"
    staging = (profile.staging_mb << 20) if dev.type == "cuda" else 0
    settings = profile.kernel_settings()
    backend, _ = select_backend(dev, settings)
    parts = held_bytes(read_manifest(folder), backend if fp.bits else "dense", dtype)
    unified = profile.unified_memory or dev.type == "cpu"
    if stream_from not in ("auto", "host", "file"):
        raise EdgeAwqError(f"--stream-from {stream_from!r}: auto, host or file")
    if stream_from == "host" and dev.type != "cuda":
        raise EdgeAwqError("--stream-from host: only for a GPU (the CPU streams from a file)")
    use_file = stream_from == "file" or (stream_from == "auto" and unified)
    options = StreamOptions(FileSource.kind if use_file else PinnedSource.kind, prefetch,
                            slots=3 if use_file else 2, head_can_stream=dev.type == "cpu")
    per_token = fp.kv_bytes(1, profile.kv_bytes_per_value)
    plan = plan_memory(parts, per_token, profile, ctx, total, source, memory_budget, staging, options, str(folder))
    log.info("%s", plan.summary())
    if plan.stream is not None:
        log.info("%s", plan.stream.describe())
    t1 = time.perf_counter()
    tokenizer = load_runtime_tokenizer(folder)
    t2 = time.perf_counter()
    loaded = load_shards(folder, dev, dtype, settings, staging or (64 << 20), progress,
                         unified_memory=profile.unified_memory and dev.type == "cuda", stream=plan.stream,
                         stream_dir=stream_dir)
    bandwidth = None
    if loaded.ring is not None:
        bandwidth = measure_source_bandwidth(loaded.ring.source, dev)
    t3 = time.perf_counter()
    try:
        engine = Engine(loaded, ctx, dtype, cuda_graphs=cuda_graphs and profile.cuda_graphs)
    except BaseException:
        loaded.close()
        raise
    eos = eos_ids(folder, loaded.model, tokenizer)
    t4 = time.perf_counter()
    phases = {"device and plan": t1 - t0, "tokenizer": t2 - t1, "load": t3 - t2, "engine": t4 - t3}
    return Runtime(engine, tokenizer, eos, profile, reason, plan, loaded.report, dev, dtype, t4 - t0, phases,
                   bandwidth)
