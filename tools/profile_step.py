"""Where a decode step's time goes (GPU): the CUDA-graph step timed by events, and its kernels
by torch.profiler, for one or more kernel-setting variants of the same shard folder in one process.

    python tools/profile_step.py SHARD_DIR [--variant ''] [--variant row_chunk_k=512] [--context 128]

A variant is a comma-separated list of ``KernelSettings`` overrides ('' = the defaults). Per
variant: milliseconds per step (median of 5 runs of 64 replays, at ``--context`` cached tokens),
then per kernel name the µs per step and launches per step, largest first.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path

import torch

from edge_awq.engine import Engine
from edge_awq.kernels.dispatch import KernelSettings
from edge_awq.loader import load_shards


def parse_variant(text: str) -> dict:
    types = {f.name: f.type for f in fields(KernelSettings)}
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, value = item.split("=", 1)
        kind = types[key]
        out[key] = (value.lower() in ("1", "true", "yes")) if "bool" in str(kind) else (
            int(value) if kind in ("int", int) else value)
    return out


def _step_graph(engine: Engine) -> torch.cuda.CUDAGraph:
    return next(g for key, g in engine._graphs.items() if not key[-1])  # the one decode() captured


def step_ms(engine: Engine, replays: int = 64) -> float:
    graph = _step_graph(engine)
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / replays)
    return statistics.median(times)


def kernel_table(engine: Engine, replays: int = 16) -> list[tuple[str, float, float]]:
    from torch.profiler import ProfilerActivity, profile
    graph = _step_graph(engine)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    total, count = defaultdict(float), defaultdict(int)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            total[ev.name] += ev.device_time
            count[ev.name] += 1
    rows = [(name, total[name] / replays, count[name] / replays) for name in total]
    return sorted(rows, key=lambda r: -r[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards", type=Path)
    ap.add_argument("--variant", action="append", default=None)
    ap.add_argument("--context", type=int, default=128)
    a = ap.parse_args()
    summary = []
    for text in a.variant or [""]:
        settings = replace(KernelSettings(), **parse_variant(text))
        engine = Engine(load_shards(a.shards, "cuda", torch.float16, settings), max(1024, a.context + 8),
                        torch.float16)
        engine.prefill(list(range(1, a.context + 1)))
        engine.decode(7)  # captures the step's graph; replays recompute this position
        ms = step_ms(engine)
        rows = kernel_table(engine)
        print(f"\n## variant {text or 'defaults'}: {ms:.3f} ms per step ({1000 / ms:.1f} steps/s)")
        print("| kernel | µs per step | launches per step |\n|---|---|---|")
        for name, us, n in rows[:14]:
            print(f"| {name[:70]} | {us:.1f} | {n:.0f} |")
        summary.append((text or "defaults", ms, sum(r[1] for r in rows) / 1000, sum(r[2] for r in rows)))
        del engine
        torch.cuda.empty_cache()
    print("\n| variant | ms per step | kernel time ms | launches |\n|---|---|---|---|")
    for name, ms, kt, n in summary:
        print(f"| {name} | {ms:.3f} | {kt:.3f} | {n:.0f} |")


if __name__ == "__main__":
    main()
