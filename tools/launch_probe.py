"""CPU cost per launch of each kernel path (small shapes, no sync in the loop)."""
import time

import torch

from edge_awq.kernels import gluon_w4a16 as G
from edge_awq.kernels import triton_w4a16 as tw
from edge_awq.kernels.layout import to_mma
from edge_awq.pack import pack_linear
from edge_awq.quant import quantize

dev = "cuda"
k, n = 1024, 1024
w = torch.randn(n, k, device=dev) * 0.02
t = pack_linear(*quantize(w, 128))
qm, qz, sc = to_mma(t["qweight"]), t["qzeros"], t["scales"]
x16 = torch.randn(16, k, device=dev, dtype=torch.float16)
x64 = torch.randn(64, k, device=dev, dtype=torch.float16)
out = torch.zeros(16, n, device=dev)
buf = torch.empty(n * k, dtype=torch.float16, device=dev)
paths = {
    "torch.mm": lambda: torch.mm(x64, buf.view(n, k).t()),
    "dequantize_kmajor": lambda: tw.dequantize_kmajor(qm, qz, sc, 128, torch.float16, out=buf.view(n, k), mma=True),
    "mma_rows": lambda: G.mma_rows(x16, qm, qz, sc, None, out, target_programs=64),
    "mma_gemm": lambda: G.mma_gemm(x64, qm, qz, sc, None, **G.gemm_config(64)),
}
for name, fn in paths.items():
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"{name:20s} launch {1e6 * (t1 - t0) / 200:7.1f} us/call, with GPU {1e6 * (t2 - t0) / 200:7.1f} us/call")
