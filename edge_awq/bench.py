"""``edge-awq bench``: time to first token and decode speed at several prompt and generation
lengths, against the memory-bandwidth roofline.

A decode step reads every weight once (the linears' 4-bit codes with their scales and zeros,
the norms, the 16-bit head) plus the KV cache so far, so tokens/s cannot exceed bandwidth ÷ those
bytes. The bandwidth is the profile's (a Jetson's DRAM) or, where the profile has none, a
device-to-device copy measured here (bytes read + written). Prompts are random token ids with a
fixed seed; EOS is ignored so every run generates the tokens asked for.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from .engine import SHORT_CONTEXT
from .footprint import Footprint
from .generate import SamplingParams
from .runtime import Runtime


@dataclass(frozen=True)
class BenchRow:
    prompt_tokens: int
    new_tokens: int
    ttft_seconds: float  # prefill of the prompt + the first sampled token
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    bytes_per_token: int  # weights + KV cache read per decode step, at the middle of the generation
    roofline_tokens_per_s: float
    roofline_fraction: float


def measure_bandwidth(device: torch.device) -> float:
    """Device-to-device copy of 1 GiB (or 64 MiB on the CPU): bytes read + written per second."""
    n = (1 << 30) if device.type == "cuda" else (64 << 20)
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    times = []
    for _ in range(6):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        b.copy_(a)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n / sorted(times)[len(times) // 2]


def decode_bytes(fp: Footprint, context: int, kv_bytes_per_value: int) -> int:
    """Bytes one decode step reads: every weight but the embedding table (one row of it), plus the
    KV cache of ``context`` tokens. A tied head reads the embedding table as the head."""
    head = fp.embed_bytes if fp.tied_embeddings else fp.head_bytes
    return sum(fp.layer_bytes) + head + fp.kv_bytes(context, kv_bytes_per_value)


def run_bench(rt: Runtime, fp: Footprint, prompt_lengths: list[int], new_tokens: list[int],
              bandwidth: float, seed: int = 0) -> list[BenchRow]:
    engine = rt.engine
    gen = torch.Generator().manual_seed(seed)
    kv_value = torch.finfo(rt.dtype).bits // 8
    rows = []
    # warm-up outside the timings: compile the kernels, capture the decode graphs (both context
    # buckets), and run each timed prompt length once (its first prefill loads library kernels)
    for n in sorted({8, SHORT_CONTEXT + 8, *prompt_lengths}):
        if n + 4 <= engine.max_context:
            engine.reset()
            list(engine.generate(torch.randint(0, fp.vocab_size, (n,), generator=gen).tolist(),
                                 SamplingParams(max_new_tokens=4), set()))
    for p in prompt_lengths:
        for g in new_tokens:
            if p + g > engine.max_context:
                continue
            engine.reset()
            ids = torch.randint(0, fp.vocab_size, (p,), generator=gen).tolist()
            sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            out = []
            t_first = None
            for tok in engine.generate(ids, SamplingParams(max_new_tokens=g), set()):
                if t_first is None:
                    t_first = time.perf_counter()
                out.append(tok)
            sync()
            t_end = time.perf_counter()
            decode = (len(out) - 1) / (t_end - t_first) if len(out) > 1 else 0.0
            nbytes = decode_bytes(fp, p + g // 2, kv_value)
            roof = bandwidth / nbytes
            rows.append(BenchRow(p, len(out), t_first - t0, p / engine.last.prefill_seconds, decode, nbytes, roof,
                                 decode / roof))
    engine.reset()
    return rows


def to_json(rt: Runtime, rows: list[BenchRow], bandwidth: float, bandwidth_source: str) -> dict:
    r = rt.load
    return {"model": str(rt.engine.loaded.folder), "profile": rt.profile.name, "device": str(rt.device),
            "device_name": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "cpu",
            "dtype": str(rt.dtype).removeprefix("torch."), "kernels": r.backend,
            "cuda_graph": rt.engine.use_graph, "context": rt.engine.max_context,
            "load": asdict(r), "ready_seconds": rt.open_seconds,
            "ready_phases": rt.phases, "kv_cache_bytes": rt.engine.kv_bytes(),
            "bandwidth_bytes_per_s": bandwidth, "bandwidth_source": bandwidth_source,
            "memory_plan": asdict(rt.plan), "stream_source_bytes_per_s": rt.source_bandwidth,
            "rows": [asdict(x) for x in rows]}


def plot(rows: list[BenchRow], path) -> bool:
    """Decode tok/s and roofline against prompt length, one line per generation length; False
    when matplotlib is not installed (it is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in sorted({r.new_tokens for r in rows}):
        sel = [r for r in rows if r.new_tokens == g]
        ax.plot([r.prompt_tokens for r in sel], [r.decode_tokens_per_s for r in sel], "o-", label=f"decode, {g} new")
        ax.plot([r.prompt_tokens for r in sel], [r.roofline_tokens_per_s for r in sel], "--", label=f"roofline, {g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("tokens/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True
