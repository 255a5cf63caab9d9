"""Run one decode-kernel configuration a few times, for Nsight Compute (ncu) to profile.

    ncu --kernel-name regex:gemv --launch-skip 3 --launch-count 1 --section SpeedOfLight \\
        python tools/profile_gemv.py --k 4096 --n 22016 --m 1 --kind fma
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_awq.kernels import triton_w4a16 as tw  # noqa: E402
from edge_awq.kernels.dispatch import Scratch  # noqa: E402
from edge_awq.kernels.layout import to_kmajor  # noqa: E402
from edge_awq.pack import pack_linear  # noqa: E402
from edge_awq.quant import quantize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=22016)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--kind", choices=["fma", "dot", "k-fma", "k-dot"], default="fma")
    ap.add_argument("--block-n", type=int, default=256)
    ap.add_argument("--block-k", type=int, default=64)
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--programs", type=int, default=528)
    a = ap.parse_args()
    t = pack_linear(*quantize(torch.randn(a.n, a.k, device="cuda") * 0.02, 128))
    kmajor = a.kind.startswith("k-")
    qw = to_kmajor(t["qweight"]) if kmajor else t["qweight"]
    scratch = Scratch("cuda", a.n, 32)
    x = torch.randn(a.m, a.k, device="cuda", dtype=torch.float16)
    fn = tw.kmajor_gemv if kmajor else tw.splitk_gemv
    cfg = dict(block_n=a.block_n, block_k=a.block_k, num_warps=a.warps, num_stages=a.stages,
               target_programs=a.programs, mode=0 if a.kind.endswith("fma") else 1)
    for _ in range(5):
        fn(x, qw, t["qzeros"], t["scales"], None, 128, scratch.workspace, scratch.counters, **cfg)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
