"""Run one decode-kernel configuration a few times, for Nsight Compute (ncu) to profile.

    ncu --kernel-name regex:gemv --launch-skip 3 --launch-count 1 --section SpeedOfLight \\
        python tools/profile_gemv.py --k 4096 --n 22016 --m 1 --kind row

Needs edge-awq installed (see tools/device_kernels.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from edge_awq.kernels import triton_w4a16 as tw
from edge_awq.kernels.dispatch import Scratch
from edge_awq.kernels.layout import to_kmajor
from edge_awq.pack import pack_linear
from edge_awq.quant import quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import read_probe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=22016)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--kind", choices=["row", "dot", "probe"], default="row")
    ap.add_argument("--h2", action="store_true", help="row kernel: half2 products")
    ap.add_argument("--block-n", type=int, default=32)
    ap.add_argument("--chunk-k", type=int, default=512, help="row kernel")
    ap.add_argument("--warps", type=int, default=2)
    ap.add_argument("--stages", type=int, default=4, help="dot kernel")
    ap.add_argument("--programs", type=int, default=528, help="dot kernel: target programs")
    a = ap.parse_args()
    t = pack_linear(*quantize(torch.randn(a.n, a.k, device="cuda") * 0.02, 128))
    qk = to_kmajor(t["qweight"])
    scratch = Scratch("cuda", a.n)
    x = torch.randn(a.m, a.k, device="cuda", dtype=torch.float16)
    probe_out = torch.empty(1 << 16, dtype=torch.int32, device="cuda")
    for _ in range(5):
        if a.kind == "row":
            tw.gemv_row(x, qk, t["qzeros"], t["scales"], None, 128, scratch.workspace, scratch.counters,
                        block_n=a.block_n, chunk_k=a.chunk_k, num_warps=a.warps, h2=a.h2)
        elif a.kind == "probe":
            read_probe(qk, probe_out, block_n=a.block_n, chunk_k=a.chunk_k, num_warps=a.warps)
        else:
            tw.gemv_dot(x, qk, t["qzeros"], t["scales"], None, 128, scratch.workspace, scratch.counters,
                        block_n=a.block_n, num_warps=a.warps, num_stages=a.stages, target_programs=a.programs)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
