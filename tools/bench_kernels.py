# ruff: noqa: B023 (each lambda is timed at once, inside the loop that binds it)
"""W4A16 kernel benchmark (GPU): ours vs fp16 torch.matmul vs torch's _weight_int4pack_mm, in one run.

    python tools/bench_kernels.py --out results.json [--quick]

Llama-2-7B and Llama-3-8B linear shapes, M in {1, 2, 4, 8, 16, 32, 128, 512, 2048}. Configs are
tuned with ``triton.testing.do_bench`` medians (device events, L2 flushed before each call); the
decode rows (M ≤ 16) of the table are then timed as the runtime runs them: CUDA-graph replays
over copies of the weights (≥ 256 MB, so L2 serves none), the median µs per call of 20 replays;
prefill rows keep the do_bench medians. Bandwidth counts the
4-bit weights + scales + zeros (+ activations in and out); the device-to-device copy bandwidth is
measured in the same run. Correctness against an fp64 reference on fresh random inputs comes
first; a config that fails it is not timed. Prints a markdown table last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_awq.kernels import triton_w4a16 as tw  # noqa: E402
from edge_awq.kernels.dispatch import Scratch  # noqa: E402
from edge_awq.kernels.layout import to_kmajor  # noqa: E402
from edge_awq.kernels.reference import dequantize_gemm  # noqa: E402
from edge_awq.kernels.torch_int4 import int4pack_linear, to_int4pack  # noqa: E402
from edge_awq.pack import pack_linear  # noqa: E402
from edge_awq.quant import quantize  # noqa: E402

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
# decode kernels and the configs each is tuned over (at the M of the key)
KCFG = [dict(block_n=bn, block_k=bk, num_warps=w, num_stages=3, target_programs=pps * 132)
        for bn in (32, 64, 128, 256) for bk in (64, 128) for w in (4, 8) for pps in (2, 4)]
DECODE = {  # kind: (launcher, weight layout, M it is tuned at, configs); --kinds picks (default: not *-wide)
    "fma": (tw.splitk_gemv, "gemm", 1, [dict(block_n=256, block_k=bk, num_warps=w, num_stages=3,
                                             target_programs=pps * 132, mode=0)
                                        for bk in (32, 64) for w in (4, 8) for pps in (2, 4)]),
    "dot": (tw.splitk_gemv, "gemm", 16, [dict(block_n=bn, block_k=64, num_warps=4, num_stages=3,
                                              target_programs=pps * 132, mode=1)
                                         for bn in (128, 256) for pps in (2, 4)]),
    "k-dot": (tw.kmajor_gemv, "kmajor", 16, [dict(c, mode=1) for c in KCFG if c["block_n"] <= 128]),
    "k-fma": (tw.kmajor_gemv, "kmajor", 1, [dict(block_n=bn, block_k=128, num_warps=w, num_stages=st,
                                                 target_programs=pps * 132, mode=0)
                                            for bn in (64, 128, 256) for w in (2, 4, 8) for st in (2, 4)
                                            for pps in (4, 8)]),
    # a wider search for one row: more, smaller programs (more bytes in flight per SM)
    "k-fma-wide": (tw.kmajor_gemv, "kmajor", 1, [dict(block_n=bn, block_k=128, num_warps=w, num_stages=st,
                                                      target_programs=pps * 132, mode=0)
                                                 for bn in (32, 64, 128) for w in (1, 2) for st in (2, 3, 5)
                                                 for pps in (16, 32)]),
}
GEMM_CONFIGS = [dict(block_m=bm, block_n=bn, block_k=bk, num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in ((128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4),
                                         (128, 128, 128, 8, 3), (64, 64, 128, 4, 4), (256, 128, 64, 8, 3))]


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


def compiled_stats(fn) -> list[str]:
    """Registers and spills of every compiled variant of a Triton kernel (best effort across versions)."""
    out = []
    try:
        for cache in fn.device_caches.values():
            for key, kernel in cache[0].items():
                out.append(f"{fn.__name__}: regs {kernel.n_regs}, spills {kernel.n_spills}, "
                           f"warps {kernel.metadata.num_warps}, key {str(key)[-160:]}")
    except Exception as e:  # the cache layout is Triton-internal
        out.append(f"{getattr(fn, '__name__', fn)}: no compile stats ({type(e).__name__}: {e})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="fewer configs and M values")
    ap.add_argument("--decode-only", action="store_true", help="M ≤ 16 only, no prefill paths")
    ap.add_argument("--kinds", default=",".join(k for k in DECODE if not k.endswith("-wide")),
                    help="decode kernels to tune and time")
    ap.add_argument("--ms", default=None, help="comma-separated M values (default: all)")
    a = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    sms = props.multi_processor_count
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    info = {"device": props.name, "sms": sms, "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit, "group": GROUP}
    print(json.dumps(info), flush=True)

    buf = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(buf)
    copy_us = median_us(lambda: dst.copy_(buf))
    copy_gbs = 2 * buf.numel() / copy_us / 1e3
    buf = dst = None
    info["copy_GBps"] = copy_gbs
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write)", flush=True)

    ms = MS if not a.quick else (1, 16, 2048)
    if a.decode_only:
        ms = tuple(m for m in ms if m <= 16)
    if a.ms:
        ms = tuple(int(v) for v in a.ms.split(","))
    decode = {kind: DECODE[kind] for kind in a.kinds.split(",")}
    rows, tuned = [], {}
    for name, (k, n) in SHAPES.items():
        torch.manual_seed(0)
        w = torch.randn(n, k, device=dev) * 0.02
        t = pack_linear(*quantize(w, GROUP))
        qw, qz, sc = t["qweight"], t["qzeros"], t["scales"]
        w16 = dequantize_gemm(qw, qz, sc, GROUP, torch.float16).t().contiguous()  # (N, K) for F.linear
        w64 = dequantize_gemm(qw, qz, sc, GROUP, torch.float64)
        i4 = to_int4pack(qw, qz, sc)
        qk = to_kmajor(qw)
        scratch = Scratch(dev, n, 64)
        wbytes = qw.numel() * 4 + qz.numel() * 4 + sc.numel() * 2
        # weight copies for graph timing: at least 256 MB of 4-bit weights, so L2 (50 MB) serves none
        n_copies = max(4, -(-(256 << 20) // wbytes))
        copies = [dict(qw=qw.clone(), qk=qk.clone(), qz=qz.clone(), sc=sc.clone(),
                       i4=(i4[0].clone(), i4[1].clone())) for _ in range(n_copies)]
        w16_copies = [w16.clone() for _ in range(max(2, -(-(512 << 20) // (w16.numel() * 2))))]
        del w

        # --- decode kernels: tune each over its configs at one M, correctness first
        best = {}
        for kind, (fn, layout, m, configs) in decode.items():
            qw_ = qk if layout == "kmajor" else qw
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            ref = x.double() @ w64
            results = []
            for cfg in configs[:: 4 if a.quick else 1]:
                out = torch.full((m, n), float("nan"), device=dev, dtype=torch.float16)
                y = fn(x, qw_, qz, sc, None, GROUP, scratch.workspace, scratch.counters, out=out, **cfg)
                err = rel_err(y, ref)
                if err > 5e-3 or scratch.workspace.any() or scratch.counters.any():
                    print(f"  FAIL {name} {kind} M={m} {cfg}: rel err {err:.2e}", flush=True)
                    continue
                us = median_us(lambda: fn(x, qw_, qz, sc, None, GROUP, scratch.workspace, scratch.counters, **cfg))
                results.append((us, cfg, err))
            results.sort(key=lambda r: r[0])
            best[kind] = results[0][1]
            print(f"{name} {kind} M={m}: best {results[0][0]:.1f} us {results[0][1]} (worst {results[-1][0]:.1f})",
                  flush=True)
        tuned[name] = dict(best)

        if not a.decode_only:
            # --- prefill: fused GEMM configs vs dequantize + cuBLAS at a large M
            x = torch.randn(2048, k, device=dev, dtype=torch.float16)
            ref = x.double() @ w64
            gres = []
            for cfg in GEMM_CONFIGS:
                try:
                    y = tw.gemm(x, qw, qz, sc, None, GROUP, out=torch.full((2048, n), float("nan"), device=dev,
                                                                             dtype=torch.float16), **cfg)
                except Exception as e:  # e.g. out of shared memory for a tile
                    print(f"  skip gemm {cfg}: {type(e).__name__}", flush=True)
                    continue
                err = rel_err(y, ref)
                if err > 5e-3:
                    print(f"  FAIL gemm {name} {cfg}: {err:.2e}", flush=True)
                    continue
                gres.append((median_us(lambda: tw.gemm(x, qw, qz, sc, None, GROUP, **cfg)), cfg))
            gres.sort(key=lambda r: r[0])
            tuned[name]["gemm"] = gres[0][1]
            del ref

        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            xb = x.bfloat16()
            ref = x.double() @ w64
            fp16_us = median_us(lambda: F.linear(x, w16))
            i4_us = median_us(lambda: int4pack_linear(xb, i4[0], i4[1], GROUP, None))
            cands, errs = {}, {}
            for kind, (fn, layout, _, _) in decode.items():
                if m > 16 or (kind == "fma" and m > 4) or (kind.startswith("k-fma") and m > 1):
                    continue
                cfg = best[kind]
                qw_ = qk if layout == "kmajor" else qw
                y = fn(x, qw_, qz, sc, None, GROUP, scratch.workspace, scratch.counters, **cfg)
                errs[kind] = rel_err(y, ref)
                cands[kind] = median_us(lambda: fn(x, qw_, qz, sc, None, GROUP, scratch.workspace,
                                                   scratch.counters, **cfg))
            if m >= 16 and "gemm" in tuned[name]:
                cfg = tuned[name]["gemm"]
                errs["gemm"] = rel_err(tw.gemm(x, qw, qz, sc, None, GROUP, **cfg), ref)
                errs["dequant+mm"] = rel_err(x @ tw.dequantize(qw, qz, sc, GROUP, torch.float16), ref)
                cands["gemm"] = median_us(lambda: tw.gemm(x, qw, qz, sc, None, GROUP, **cfg))
                cands["dequant+mm"] = median_us(lambda: x @ tw.dequantize(qw, qz, sc, GROUP, torch.float16))
            if m <= 16:  # decode rows: time as the runtime will run them, CUDA-graph replays
                graph = {"fp16": graph_us([lambda w=w: F.linear(x, w) for w in w16_copies]),
                         "int4mm": graph_us([lambda c=c: int4pack_linear(xb, *c["i4"], GROUP, None) for c in copies])}
                for kind in [kd for kd in cands if kd in decode]:  # (at 16 rows gemm and dequant+mm never won)
                    fn, layout = decode[kind][0], decode[kind][1]
                    graph[kind] = graph_us([lambda c=c, fn=fn, layout=layout, cfg=best[kind]: fn(
                        x, c["qk" if layout == "kmajor" else "qw"], c["qz"], c["sc"], None, GROUP, scratch.workspace,
                        scratch.counters, **cfg) for c in copies])
                fp16_us, i4_us = graph.pop("fp16"), graph.pop("int4mm")
                cands = graph
            path = min(cands, key=cands.get)
            us = cands[path]
            io = (m * k + m * n) * 2
            row = {"shape": name, "K": k, "N": n, "M": m, "fp16_us": fp16_us, "int4mm_us": i4_us, "ours_us": us,
                   "path": path, "candidates": cands,
                   "ours_GBps": (wbytes + io) / us / 1e3, "pct_copy": (wbytes + io) / us / 1e3 / copy_gbs * 100,
                   "vs_int4mm": i4_us / us, "vs_fp16": fp16_us / us, "ours_TFLOPs": 2 * m * k * n / us / 1e6,
                   "fp16_TFLOPs": 2 * m * k * n / fp16_us / 1e6, "rel_err": errs,
                   "int4mm_rel_err": rel_err(int4pack_linear(xb, i4[0], i4[1], GROUP, None), ref)}
            assert max(errs.values()) < 5e-3, (name, m, errs)
            rows.append(row)
            print(f"  M={m:5d} fp16 {fp16_us:8.1f}  int4mm {i4_us:8.1f}  ours {us:8.1f} ({path})  "
                  f"{row['pct_copy']:5.1f}% copy BW  x{row['vs_int4mm']:.2f} int4mm  x{row['vs_fp16']:.2f} fp16  "
                  f"err {max(errs.values()):.1e}",
                  flush=True)
        w16 = w64 = i4 = qk = scratch = copies = w16_copies = None
        torch.cuda.empty_cache()

    spills = [ln for fn in (tw._splitk_gemv_kernel, tw._kmajor_gemv_kernel, tw._gemm_kernel)
              for ln in compiled_stats(fn) if "spills 0" not in ln]
    for line in spills:
        print(line)
    a.out.write_text(json.dumps({"info": info, "tuned": tuned, "rows": rows, "compiled": spills}, indent=1))
    print()
    print(f"{info['device']}, torch {info['torch']}, triton {info['triton']}, commit {commit}, "
          f"copy {copy_gbs:.0f} GB/s, g{GROUP}, fp16 activations")
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
