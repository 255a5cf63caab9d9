# ruff: noqa: B023 (each lambda is timed at once, inside the loop that binds it)
"""W4A16 kernel benchmark (GPU): ours vs fp16 torch.matmul vs torch's _weight_int4pack_mm, in one run.

    python tools/bench_kernels.py --out results.json [--quick] [--ms 1,16,2048] [--layout kmajor]

Needs edge-awq installed (it imports ``edge_awq.kernels``); tools/device_kernels.sh runs it on the
lent GPU.

Llama-2-7B and Llama-3-8B linear shapes, M in {1, 2, 4, 8, 16, 32, 128, 512, 2048}, group 128,
fp16 activations (bf16 for torch's int4 kernel, which takes nothing else). Decode rows (M ≤ 16)
are timed as the runtime runs them: one CUDA graph of calls over copies of the weights (≥ 256 MB,
so L2 serves none), median µs per call of 20 replays, for every path including the peers; each
decode kernel's configuration is tuned that way in the same run. Prefill rows are CUDA-graph
medians too, over 4 weight copies. Then the three fastest paths, fp16 and int4mm are timed again
in 8 rounds (int4mm first, the others in rotated order) and the medians are reported, the path
chosen by them: at M=2048 a GEMM timed right after another runs up to 20 % slower than one timed
right after the slow int4mm (clocks under the power draw), enough to move a ratio across a bar.
Bandwidth counts the 4-bit weights + scales + zeros + activations in and out; the device-to-device
copy bandwidth and a read-only probe (the decode tiling with no arithmetic: what its loads alone
reach) are measured in the same run. Every configuration is checked against an fp64 reference
on fresh random inputs, output poisoned with NaN first; one that fails is not timed. Prints a
markdown table last.

The weights are in the layout the runtime picks (``--layout auto``: the mma order where the Gluon
kernel runs, which then serves 2–16 rows; ``kmajor`` to compare).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.testing import do_bench

from edge_awq.kernels import triton_w4a16 as tw
from edge_awq.kernels.dispatch import KernelSettings, Scratch, _gluon_module, use_mma_order
from edge_awq.kernels.layout import to_kmajor, to_mma
from edge_awq.kernels.reference import dequantize_gemm
from edge_awq.kernels.torch_int4 import int4pack_linear, to_int4pack
from edge_awq.pack import pack_linear
from edge_awq.quant import quantize

SHAPES = {  # name: (K, N)
    "qkv 4096→12288": (4096, 12288),
    "o 4096→4096": (4096, 4096),
    "gate_up 4096→22016": (4096, 22016),
    "gate_up 4096→28672": (4096, 28672),
    "down 11008→4096": (11008, 4096),
    "down 14336→4096": (14336, 4096),
}
MS = (1, 2, 4, 8, 16, 32, 128, 512, 2048)
GROUP = 128
ROUNDS = 8  # the best FINALISTS, fp16 and int4mm each timed this many more times, in turns; medians reported
FINALISTS = 3
ROW_CFGS = [dict(block_n=bn, chunk_k=ck, num_warps=w, h2=True) for bn in (16, 32, 64) for ck in (128, 256, 512, 1024)
            for w in (1, 2)] + [dict(block_n=32, chunk_k=256, num_warps=1, h2=False)]
DOT_CFGS = [dict(block_n=bn, num_warps=w, num_stages=st, programs_per_sm=pps)
            for bn, w in ((64, 4), (128, 4), (128, 8)) for st in (3, 5) for pps in (2, 4, 8)]
MMA_CFGS = [dict(block_n=bn, warps=w, programs_per_sm=pps, stages=st)
            for bn, w in ((64, 4), (128, 4), (256, 8)) for pps in (1, 2, 3, 4, 6) for st in (0, 2, 4, 8)]
PROBE_CFGS = [dict(block_n=bn, chunk_k=ck, num_warps=w) for bn in (16, 32, 64) for ck in (256, 512, 1024)
              for w in (1, 2)]
GEMM_CFGS = [dict(block_m=bm, block_n=bn, warps=w, stages=st) for bm, bn, w, st in
             ((256, 128, 8, 3), (256, 128, 8, 2), (128, 128, 8, 4), (128, 64, 4, 3), (64, 64, 4, 4))]
WS_CFGS = [dict(c, pingpong=pp) for pp in (True, False)  # without ping-pong too: docs/kernel-notes.md, 35
           for c in (dict(block_m=256, stages=2), dict(block_m=256, stages=3), dict(block_m=128, stages=4, regs=200))]
WS_CFGS += [dict(block_m=256, stages=st, programs=-1) for st in (2, 3)]  # persistent: one program per SM
WS_CFGS += [dict(block_m=256, stages=2, tma_store=True, programs=p) for p in (0, -1)]  # output by TMA stores
_GROW_TILES = ((4, 8, 1, 4), (8, 8, 1, 4), (8, 8, 2, 4), (4, 8, 2, 8), (4, 8, 1, 8), (4, 4, 1, 8))
_GROW_INT_TILES = _GROW_TILES + ((16, 8, 1, 4), (8, 8, 1, 8), (8, 8, 4, 4), (4, 8, 4, 4), (4, 8, 4, 8))
_GROW_TSUM_TILES = ((8, 8, 1, 4), (16, 8, 1, 4), (4, 8, 2, 8), (8, 32, 1, 4))
_GROW_XS_TILES = ((8, 8, 1, 4), (16, 8, 1, 4), (4, 8, 1, 4), (8, 8, 2, 4), (4, 8, 4, 4))  # x_shared: wpt 4, tk 8
GROW_CFGS = [dict(rpt=r, tk=t, warps=w, wpt=p, int_dot=i, tsum=ts, x_shared=xs, k_first=kf) for i, ts, xs, kf, tiles in
             ((False, False, False, False, _GROW_TILES), (True, False, False, False, _GROW_INT_TILES),
              (True, True, False, False, _GROW_TSUM_TILES), (True, False, True, False, _GROW_XS_TILES),
              (True, True, True, False, _GROW_XS_TILES[:2]), (True, False, False, True, _GROW_INT_TILES[:2]),
              (True, False, True, True, _GROW_XS_TILES), (True, True, True, True, _GROW_XS_TILES[:3]))
             for r, t, w, p in tiles]
CHUNKS = (None, 2048, 4096, 8192)  # prefill: dequantize the whole layer, or this many columns at a time


@triton.jit
def _read_probe_kernel(qk_ptr, out_ptr, N, k8, BLOCK_N: tl.constexpr, CHUNK_K: tl.constexpr):
    """The row kernel's loads with no arithmetic: what its tiling alone reaches."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = pid_k * (CHUNK_K // 8) + tl.arange(0, CHUNK_K // 8)
    w = tl.load(qk_ptr + offs_n[:, None] * k8 + offs_j[None, :], mask=(offs_n < N)[:, None] & (offs_j < k8)[None, :],
                other=0, eviction_policy="evict_first")
    tl.store(out_ptr + pid_n * tl.num_programs(1) + pid_k, tl.xor_sum(tl.xor_sum(w, axis=1), axis=0))


def read_probe(qk: torch.Tensor, out: torch.Tensor, block_n: int, chunk_k: int, num_warps: int) -> None:
    n, k8 = qk.shape
    _read_probe_kernel[(triton.cdiv(n, block_n), triton.cdiv(k8 * 8, chunk_k))](
        qk, out, n, k8, BLOCK_N=block_n, CHUNK_K=chunk_k, num_warps=num_warps)


def median_us(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def graph_us(calls, reps: int = 20) -> float:
    """Median µs per call of ``calls`` captured once in a CUDA graph and replayed, as a decode step
    runs. Each call should use its own copy of the weights so that none is served from L2."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (and compile) outside the capture
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / len(calls))
    del g
    return sorted(times)[len(times) // 2]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    if torch.isnan(y).any():
        return float("inf")
    return ((y.double() - ref).norm() / ref.norm()).item()


def prefill(x, qk, qz, sc, scratch16, n_chunk, mma=False):
    """Dequantize (all at once, or ``n_chunk`` columns at a time into an L2-sized scratch) + cuBLAS."""
    n, k = sc.shape[1], x.shape[1]
    if n_chunk is None or n_chunk >= n:
        return F.linear(x, tw.dequantize_kmajor(qk, qz, sc, GROUP, x.dtype, out=scratch16[: n * k].view(n, k),
                                                mma=mma))
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    for n0 in range(0, n, n_chunk):
        n1 = min(n, n0 + n_chunk)
        w = tw.dequantize_kmajor(qk, qz, sc, GROUP, x.dtype, rows=(n0, n1),
                                 out=scratch16[: (n1 - n0) * qk.shape[1] * 8].view(n1 - n0, -1), mma=mma)
        torch.mm(x, w.t(), out=y[:, n0:n1])
    return y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="fewer configs and M values")
    ap.add_argument("--ms", default=None, help="comma-separated M values (default: all)")
    ap.add_argument("--shapes", default=None, help="comma-separated shape name prefixes (default: all)")
    ap.add_argument("--layout", choices=("auto", "kmajor"), default="auto",
                    help="auto: the runtime's choice (the mma order where Gluon runs)")
    a = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    sms = props.multi_processor_count
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    mma = a.layout == "auto" and use_mma_order(dev, KernelSettings(), GROUP, 4096)
    gk = _gluon_module() if mma else None
    info = {"device": props.name, "sms": sms, "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit or "?", "group": GROUP, "layout": "mma" if mma else "kmajor"}
    print(json.dumps(info), flush=True)

    buf = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(buf)
    copy_us = median_us(lambda: dst.copy_(buf))
    copy_gbs = 2 * buf.numel() / copy_us / 1e3
    buf = dst = None
    info["copy_GBps"] = copy_gbs
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write)", flush=True)

    ms = MS if not a.quick else (1, 16, 2048)
    if a.ms:
        ms = tuple(int(v) for v in a.ms.split(","))
    row_cfgs = ROW_CFGS[::3] if a.quick else ROW_CFGS
    dot_cfgs = DOT_CFGS[::3] if a.quick else DOT_CFGS
    shapes = {k: v for k, v in SHAPES.items() if not a.shapes or any(k.startswith(p) for p in a.shapes.split(","))}
    scratch16 = torch.empty(8192 * 14336, dtype=torch.float16, device=dev)
    rows, tuned = [], {}
    for name, (k, n) in shapes.items():
        torch.manual_seed(0)
        w = torch.randn(n, k, device=dev) * 0.02
        t = pack_linear(*quantize(w, GROUP))
        qw, qz, sc = t["qweight"], t["qzeros"], t["scales"]
        del w, t
        w16 = dequantize_gemm(qw, qz, sc, GROUP, torch.float16).t().contiguous()  # (N, K) for F.linear
        w64 = dequantize_gemm(qw, qz, sc, GROUP, torch.float64)
        i4 = to_int4pack(qw, qz, sc)
        qk = to_mma(qw) if mma else to_kmajor(qw)
        del qw
        scratch = Scratch(dev, 16 * n, 16)
        wbytes = qk.numel() * 4 + qz.numel() * 4 + sc.numel() * 2
        n_copies = max(4, -(-(256 << 20) // wbytes))
        copies = [dict(qk=qk.clone(), qz=qz.clone(), sc=sc.clone(), i4=(i4[0].clone(), i4[1].clone()))
                  for _ in range(n_copies)]
        w16_copies = [w16.clone() for _ in range(max(2, -(-(512 << 20) // (w16.numel() * 2))))]
        probe_out = torch.empty(1 << 16, dtype=torch.int32, device=dev)

        def ok(y, ref):
            err = rel_err(y, ref)
            clean = not scratch.workspace.any() and not scratch.counters.any()
            return err, err < 5e-3 and clean

        def row_call(x, c, cfg):
            return tw.gemv_row(x, c["qk"], c["qz"], c["sc"], None, GROUP, scratch.workspace, scratch.counters,
                               mma=mma, **cfg)

        def dot_call(x, c, cfg):
            cfg = dict(cfg)
            pps = cfg.pop("programs_per_sm")
            return tw.gemv_dot(x, c["qk"], c["qz"], c["sc"], None, GROUP, scratch.workspace, scratch.counters,
                               target_programs=pps * sms, mma=mma, **cfg)

        def row_acc_call(x, c, cfg, out):
            return tw.gemv_row(x, c["qk"], c["qz"], c["sc"], None, GROUP, scratch.workspace, scratch.counters,
                               out=out, accumulate=True, mma=mma, **cfg)

        def grow_acc_call(x, c, cfg, out):  # the Gluon one-row kernel: always adds into a zeroed fp32 output
            return gk.row_gemv(x, c["qk"], c["qz"], c["sc"], None, out, GROUP, mma=mma, **cfg)

        def dot_acc_call(x, c, cfg, out):
            cfg = dict(cfg)
            pps = cfg.pop("programs_per_sm")
            return tw.gemv_dot(x, c["qk"], c["qz"], c["sc"], None, GROUP, scratch.workspace, scratch.counters,
                               target_programs=pps * sms, out=out, accumulate=True, mma=mma, **cfg)

        def mma_acc_call(x, c, cfg, out):  # the Gluon kernel: always adds into a zeroed fp32 output
            return gk.mma_rows(x, c["qk"], c["qz"], c["sc"], None, out, block_n=cfg["block_n"], warps=cfg["warps"],
                               target_programs=cfg["programs_per_sm"] * sms, stages=cfg["stages"])

        # K-splits added straight into zeroed fp32 outputs: one memset for all calls of the graph, as
        # a decode step zeroes every layer's outputs at once — of the rows they write only (up to stop
        # 23 the memset covered 16 rows at every M, which added 0.3-0.7 µs to each one-row call)
        arena = torch.zeros(len(copies), 16, n, dtype=torch.float32, device=dev)  # error checks

        def acc_graph_us(x, call, cfg):
            m = x.shape[0]
            outs = torch.zeros(len(copies), m, n, dtype=torch.float32, device=dev)
            calls = [lambda: outs.zero_()] + [lambda i=i, c=c: call(x, c, cfg, outs[i])
                                              for i, c in enumerate(copies)]
            return graph_us(calls) * len(calls) / len(copies)

        def acc_tune(kind, m, cfgs, call):
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            ref = x.double() @ w64
            res = []
            for cfg in cfgs:
                arena.zero_()
                err = rel_err(call(x, dict(qk=qk, qz=qz, sc=sc), cfg, arena[0, :m]), ref)
                if err > 5e-3:
                    print(f"  FAIL {name} {kind} M={m} {cfg}: rel err {err:.2e}", flush=True)
                    continue
                res.append((acc_graph_us(x, call, cfg), cfg))
            res.sort(key=lambda r: r[0])
            best[(kind, m)] = res[0][1]
            print(f"{name} {kind} M={m}: best {res[0][0]:.1f} us {res[0][1]} (worst {res[-1][0]:.1f}); all: "
                  + ", ".join(f"{us:.1f} {tuple(c.values())}" for us, c in res), flush=True)

        best = {}

        def tune(kind, m, cfgs, call):
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            ref = x.double() @ w64
            res = []
            for cfg in cfgs:
                y = call(x, dict(qk=qk, qz=qz, sc=sc), cfg)
                err, good = ok(y, ref)
                if not good:
                    print(f"  FAIL {name} {kind} M={m} {cfg}: rel err {err:.2e}", flush=True)
                    continue
                res.append((graph_us([lambda c=c: call(x, c, cfg) for c in copies]), cfg, err))
            res.sort(key=lambda r: r[0])
            best[(kind, m)] = res[0][1]
            print(f"{name} {kind} M={m}: best {res[0][0]:.1f} us {res[0][1]} (worst {res[-1][0]:.1f}, "
                  f"{len(res)} configs)", flush=True)
            return res[0][0]

        probe = {}
        if 1 in ms:
            tune("row", 1, row_cfgs, row_call)
            acc_tune("row-acc", 1, row_cfgs, row_acc_call)
            if gk is not None:
                acc_tune("gluon-row", 1, GROW_CFGS, grow_acc_call)
            for cfg in PROBE_CFGS[:: 2]:
                probe[str(cfg)] = graph_us([lambda c=c: read_probe(c["qk"], probe_out, **cfg) for c in copies])
            pbest = min(probe, key=probe.get)
            print(f"{name} read probe: best {probe[pbest]:.1f} us ({pbest}) = "
                  f"{wbytes / probe[pbest] / 1e3 / copy_gbs * 100:.0f}% of copy BW", flush=True)
        if any(m <= 16 for m in ms):
            for m in sorted({m for m in ms if m <= 16} & {1, 16}):
                tune("dot", m, dot_cfgs, dot_call)
            if any(1 < m <= 16 for m in ms):
                acc_tune("dot-acc", 16, dot_cfgs, dot_acc_call)
                if gk is not None:
                    acc_tune("gluon", 16, MMA_CFGS if not a.quick else MMA_CFGS[::2], mma_acc_call)
        tuned[name] = {f"{kd}@{m}": cfg for (kd, m), cfg in best.items()}

        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            xb = x.bfloat16()
            ref = x.double() @ w64
            errs, apart = {}, {}
            timers = {}  # label → a function that times it (µs), called again for the alternated rounds
            if m <= 16:
                fp16_timer = lambda: graph_us([lambda w=w: F.linear(x, w) for w in w16_copies])  # noqa: E731
                i4_timer = lambda: graph_us([lambda c=c: int4pack_linear(xb, *c["i4"], GROUP, None)  # noqa: E731
                                             for c in copies])
                base = dict(qk=qk, qz=qz, sc=sc)
                if m == 1:
                    cfg = best[("row", 1)]
                    errs["row"] = ok(row_call(x, base, cfg), ref)[0]
                    timers["row"] = lambda cfg=cfg: graph_us([lambda c=c: row_call(x, c, cfg) for c in copies])
                    cfg = best[("row-acc", 1)]
                    arena.zero_()
                    errs["row-acc"] = rel_err(row_acc_call(x, base, cfg, arena[0, :1]), ref)
                    timers["row-acc"] = lambda cfg=cfg: acc_graph_us(x, row_acc_call, cfg)
                    if gk is not None:
                        gcfg = best[("gluon-row", 1)]
                        arena.zero_()
                        errs["gluon-row"] = rel_err(grow_acc_call(x, base, gcfg, arena[0, :1]), ref)
                        timers["gluon-row"] = lambda: acc_graph_us(x, grow_acc_call, gcfg)
                    if torch.cuda.get_device_capability(dev) >= (9, 0):
                        # as the runtime launches it: a programmatic dependent of the previous kernel,
                        # its weights streaming under that kernel's tail. Reported apart, not a candidate:
                        # the kernel's own time is the measure
                        apart["row-acc-pdl"] = acc_graph_us(x, row_acc_call, {**cfg, "pdl": True})
                cfg = best[("dot", 1 if m == 1 else 16)]
                errs["dot"] = ok(dot_call(x, base, cfg), ref)[0]
                timers["dot"] = lambda cfg=cfg: graph_us([lambda c=c: dot_call(x, c, cfg) for c in copies])
                if m > 1:
                    cfg = best[("dot-acc", 16)]
                    arena.zero_()
                    errs["dot-acc"] = rel_err(dot_acc_call(x, base, cfg, arena[0, :m]), ref)
                    timers["dot-acc"] = lambda cfg=cfg: acc_graph_us(x, dot_acc_call, cfg)
                    if gk is not None:
                        cfg = best[("gluon", 16)]
                        arena.zero_()
                        errs["gluon"] = rel_err(mma_acc_call(x, base, cfg, arena[0, :m]), ref)
                        timers["gluon"] = lambda cfg=cfg: acc_graph_us(x, mma_acc_call, cfg)
            else:  # CUDA graphs here too: the kernel's time, not Python's launch cost (up to 170 µs a call)
                pre = copies[:4]
                fp16_timer = lambda: graph_us([lambda w=w: F.linear(x, w) for w in w16_copies[:4]])  # noqa: E731
                i4_timer = lambda: graph_us([lambda c=c: int4pack_linear(xb, *c["i4"], GROUP, None)  # noqa: E731
                                             for c in copies[:2]], reps=5)
                for nc in CHUNKS:
                    label = "dequant+mm" if nc is None else f"dequant+mm/{nc}"
                    errs[label] = rel_err(prefill(x, qk, qz, sc, scratch16, nc, mma), ref)
                    timers[label] = lambda nc=nc: graph_us([lambda c=c: prefill(x, c["qk"], c["qz"], c["sc"],
                                                                                  scratch16, nc, mma) for c in pre])
                if gk is not None and torch.cuda.get_device_capability(dev) == (9, 0):
                    y = torch.empty(m, n, dtype=torch.float16, device=dev)
                    gemms = [(f"gluon-gemm {c['block_m']}x{c['block_n']}/{c['stages']}", gk.mma_gemm, c)
                             for c in GEMM_CFGS]  # the warpgroup-MMA GEMM, then the warp-specialized one
                    gemms += [(f"gluon-ws {c['block_m']}x128/{c['stages']}{' pp' if c.get('pingpong', True) else ''}"
                               f"{' persistent' if c.get('programs') else ''}"
                               f"{' tma-store' if c.get('tma_store') else ''}",
                               gk.mma_gemm_ws, {**c, 'programs': sms} if c.get('programs') else c) for c in WS_CFGS]
                    for label, gemm, cfg in gemms:
                        y.fill_(float("nan"))
                        errs[label] = rel_err(gemm(x, qk, qz, sc, None, out=y, **cfg), ref)
                        if errs[label] < 5e-3:
                            timers[label] = lambda gemm=gemm, cfg=cfg: graph_us([lambda c=c: gemm(
                                x, c["qk"], c["qz"], c["sc"], None, out=y, **cfg) for c in pre])
                        else:
                            print(f"  FAIL {name} {label} M={m}: rel err {errs[label]:.2e}", flush=True)
            cands = {label: t() for label, t in timers.items()}
            # The best FINALISTS and fp16 timed again in ROUNDS rounds, medians reported, the path chosen by
            # them: at M=2048 a kernel timed just after another big GEMM runs up to 20 % slower than one timed
            # just after int4mm (clocks under the power draw), so one timing of each can decide a ratio near
            # a bar. Each round: int4mm (slow and cool at M=2048) first, then the others in a rotated order,
            # so that each stands at every position equally often.
            finalists = sorted(cands, key=cands.get)[:FINALISTS]
            order = ["fp16"] + finalists
            rounds = {kd: [] for kd in ["int4mm"] + order}
            for r in range(ROUNDS):
                rounds["int4mm"].append(i4_timer())
                for kd in order[r % len(order):] + order[:r % len(order)]:
                    rounds[kd].append(fp16_timer() if kd == "fp16" else timers[kd]())
            med = {kd: statistics.median(v) for kd, v in rounds.items()}
            fp16_us, i4_us = med.pop("fp16"), med.pop("int4mm")
            cands.update(med)
            path = min(finalists, key=cands.get)
            us = cands[path]
            io = (m * k + m * n) * 2
            row = {"shape": name, "K": k, "N": n, "M": m, "fp16_us": fp16_us, "int4mm_us": i4_us, "ours_us": us,
                   "path": path, "candidates": cands,
                   "ours_GBps": (wbytes + io) / us / 1e3, "pct_copy": (wbytes + io) / us / 1e3 / copy_gbs * 100,
                   "vs_int4mm": i4_us / us, "vs_fp16": fp16_us / us, "ours_TFLOPs": 2 * m * k * n / us / 1e6,
                   "fp16_TFLOPs": 2 * m * k * n / fp16_us / 1e6, "rel_err": errs,
                   "int4mm_rel_err": rel_err(int4pack_linear(xb, i4[0], i4[1], GROUP, None), ref)}
            row["rounds_us"] = rounds
            if m == 1 and probe:
                row["read_probe_us"] = min(probe.values())
            for kd, v in apart.items():
                row[f"{kd}_us"] = v
                print(f"  M={m:5d} {kd} {v:.1f} us: {(wbytes + io) / v / 1e3 / copy_gbs * 100:.1f}% copy BW, "
                      f"x{i4_us / v:.2f} int4mm", flush=True)
            assert max(errs.values()) < 5e-3, (name, m, errs)
            rows.append(row)
            print(f"  M={m:5d} fp16 {fp16_us:8.1f}  int4mm {i4_us:8.1f}  ours {us:8.1f} ({path})  "
                  f"{row['pct_copy']:5.1f}% copy BW  x{row['vs_int4mm']:.2f} int4mm  x{row['vs_fp16']:.2f} fp16  "
                  f"err {max(errs.values()):.1e}  " + " ".join(f"{kd}={v:.1f}" for kd, v in cands.items()),
                  flush=True)
        w16 = w64 = i4 = qk = scratch = copies = w16_copies = None
        torch.cuda.empty_cache()

    a.out.write_text(json.dumps({"info": info, "tuned": tuned, "rows": rows}, indent=1))
    print()
    print(f"{info['device']}, torch {info['torch']}, triton {info['triton']}, commit {info['commit']}, "
          f"copy {copy_gbs:.0f} GB/s, g{GROUP}, fp16 activations, layout {info['layout']}")
    print("| shape | M | fp16 µs | int4mm µs | ours µs | path | % copy BW | × int4mm | × fp16 | TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['M']} | {r['fp16_us']:.1f} | {r['int4mm_us']:.1f} | {r['ours_us']:.1f} | "
              f"{r['path']} | {r['pct_copy']:.0f} | {r['vs_int4mm']:.2f} | {r['vs_fp16']:.2f} | "
              f"{r['ours_TFLOPs']:.1f} |")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f} s")
