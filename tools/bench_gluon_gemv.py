"""Experiment (kernel-notes 51–52), not in the dispatch: a one-shot tensor-core GEMV for 1–16 rows on
the mma order. Codes become 1024 + q by one shift and one LOP3 per pair; the zero point and the scale
are applied to each 128-k span's fp32 MMA sums, Σ(q − z)·s·x = s·(Σ(1024 + q)·x − (1024 + z)·Σx).
Four spans per program, every load issued and x staged for all four before one barrier (52; the
per-span-barrier version of 51 is in the tree at commit 0633e03). A third fewer instructions per
weight than ``mma_rows`` but slower on the H100 (gate_up 22016 M=16 28.0 against 25.2 µs): see the
notes.

    python tools/bench_gluon_gemv.py sass 128 4        # SASS count per weight (columns, warps), no GPU
    python tools/bench_gluon_gemv.py bench             # GPU: errors vs fp64, graph-replay µs against
                                                       # mma_rows, the one-row kernel and fp16 matmul
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from edge_awq.kernels.gluon_w4a16 import SPAN, _barrier, _zero_shift, word_layout


@gluon.jit
def _pair_raw(words, P: gl.constexpr, magic):
    v = gl.inline_asm_elementwise(
        "{.reg .b32 t; shr.u32 t, $1, $3; lop3.b32 $0, t, 0x000F000F, $2, 0xEA;}",
        "=r,r,r,r", [words, magic, gl.full(words.shape, 4 * P, gl.int32, words.type.layout)],
        dtype=gl.int32, is_pure=True, pack=1)
    lo = v.to(gl.int16).to(gl.float16, bitcast=True)
    hi = (v >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    return gl.join(lo, hi)


@gluon.jit
def _b_raw(words, magic, BLOCK_N: gl.constexpr, b_l: gl.constexpr):
    p0 = gl.join(_pair_raw(words, 0, magic), _pair_raw(words, 1, magic))
    p1 = gl.join(_pair_raw(words, 2, magic), _pair_raw(words, 3, magic))
    codes = gl.permute(gl.join(p0, p1), [0, 2, 5, 4, 1, 3])
    codes = gl.reshape(codes, [BLOCK_N, SPAN])
    return gl.convert_layout(gl.permute(codes, [1, 0]), b_l, assert_trivial=True)


@gluon.jit
def _span_sum(words, zw, s, xsum, xs, magic, zsh, BLOCK_N: gl.constexpr, a_l: gl.constexpr,
              b_l: gl.constexpr, mma: gl.constexpr):
    acc = mma_v2(xs.load(a_l), _b_raw(words, magic, BLOCK_N, b_l), gl.zeros([16, BLOCK_N], gl.float32, mma))
    z = ((zw >> zsh) & 0xF).to(gl.float32)
    return (acc - (1024.0 + z)[None, :] * xsum[:, None]) * s.to(gl.float32)[None, :]


@gluon.jit
def _mma_gemv4_kernel(x_ptr, qm_ptr, qz_ptr, s_ptr, b_ptr, y_ptr, M, N, K, k8, stride_xm, stride_ym,
                      HAS_BIAS: gl.constexpr, BLOCK_N: gl.constexpr, W: gl.constexpr, WORD_L: gl.constexpr):
    """Four spans of BLOCK_N columns: every load first, x staged for all spans, one barrier, then the
    spans' MMAs (kernel-notes 51 had a barrier per span, which serialised the spans' loads)."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, W], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    n_l: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, WORD_L))
    t_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, WORD_L))
    j_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, WORD_L))
    x_l: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [W, 1], [1, 0])
    sp0 = gl.program_id(1) * 4
    n0 = gl.program_id(0) * BLOCK_N
    cols = gl.minimum(n0 + gl.arange(0, BLOCK_N, layout=n_l), N - 1)
    tj = (gl.arange(0, 4, layout=t_l) * 4)[None, :, None] + gl.arange(0, 4, layout=j_l)[None, None, :]
    ofs = gl.max_contiguous(gl.multiple_of(cols[:, None, None] * k8 + tj, [1, 1, 4]), [1, 1, 4])
    ofs = ofs + sp0 * (SPAN // 8)
    w0 = gl.load(qm_ptr + ofs, eviction_policy="evict_first")
    w1 = gl.load(qm_ptr + ofs + SPAN // 8, eviction_policy="evict_first")
    w2 = gl.load(qm_ptr + ofs + 2 * (SPAN // 8), eviction_policy="evict_first")
    w3 = gl.load(qm_ptr + ofs + 3 * (SPAN // 8), eviction_policy="evict_first")
    am = gl.arange(0, 16, layout=gl.SliceLayout(1, x_l))
    ak = gl.arange(0, SPAN, layout=gl.SliceLayout(0, x_l))
    xofs = am[:, None] * stride_xm + ak[None, :] + sp0 * SPAN
    xmask = (am < M)[:, None] & (ak < SPAN)[None, :]
    x0 = gl.load(x_ptr + xofs, mask=xmask, other=0.0)
    x1 = gl.load(x_ptr + xofs + SPAN, mask=xmask, other=0.0)
    x2 = gl.load(x_ptr + xofs + 2 * SPAN, mask=xmask, other=0.0)
    x3 = gl.load(x_ptr + xofs + 3 * SPAN, mask=xmask, other=0.0)
    yn = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
    ync = gl.minimum(yn, N - 1)
    zsh = _zero_shift(ync)
    zofs = sp0 * (N // 8) + ync // 8
    z0 = gl.load(qz_ptr + zofs)
    z1 = gl.load(qz_ptr + zofs + N // 8)
    z2 = gl.load(qz_ptr + zofs + 2 * (N // 8))
    z3 = gl.load(qz_ptr + zofs + 3 * (N // 8))
    sofs = sp0 * N + ync
    s0 = gl.load(s_ptr + sofs)
    s1 = gl.load(s_ptr + sofs + N)
    s2 = gl.load(s_ptr + sofs + 2 * N)
    s3 = gl.load(s_ptr + sofs + 3 * N)
    x_smem = gl.allocate_shared_memory(gl.float16, [4, 16, SPAN], gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
    x_smem.index(0).store(x0)
    x_smem.index(1).store(x1)
    x_smem.index(2).store(x2)
    x_smem.index(3).store(x3)
    xs_l: gl.constexpr = gl.SliceLayout(1, mma)
    xsum0 = gl.convert_layout(gl.sum(x0.to(gl.float32), axis=1), xs_l)
    xsum1 = gl.convert_layout(gl.sum(x1.to(gl.float32), axis=1), xs_l)
    xsum2 = gl.convert_layout(gl.sum(x2.to(gl.float32), axis=1), xs_l)
    xsum3 = gl.convert_layout(gl.sum(x3.to(gl.float32), axis=1), xs_l)
    magic = gl.full([BLOCK_N, 4, 4], 0x64006400, gl.int32, WORD_L)
    _barrier()
    total = _span_sum(w0, z0, s0, xsum0, x_smem.index(0), magic, zsh, BLOCK_N, a_l, b_l, mma)
    total += _span_sum(w1, z1, s1, xsum1, x_smem.index(1), magic, zsh, BLOCK_N, a_l, b_l, mma)
    total += _span_sum(w2, z2, s2, xsum2, x_smem.index(2), magic, zsh, BLOCK_N, a_l, b_l, mma)
    total += _span_sum(w3, z3, s3, xsum3, x_smem.index(3), magic, zsh, BLOCK_N, a_l, b_l, mma)
    if HAS_BIAS:
        bias = gl.load(b_ptr + ync).to(gl.float32)
        total += bias[None, :] * (sp0 == 0).to(gl.float32)
    ym = gl.arange(0, 16, layout=gl.SliceLayout(1, mma))
    gl.atomic_add(y_ptr + ym[:, None] * stride_ym + yn[None, :], total,
                  mask=(ym < M)[:, None] & (yn < N)[None, :], sem="relaxed")


def mma_gemv4(x, qweight_m, qzeros, scales, bias, out, block_n=128, warps=4):
    m, k = x.shape
    n = scales.shape[1]
    grid = (triton.cdiv(n, block_n), k // 128 // 4)
    _mma_gemv4_kernel[grid](x, qweight_m, qzeros, scales, bias if bias is not None else scales, out, m, n, k,
                            k // 8, x.stride(0), out.stride(0), HAS_BIAS=bias is not None, BLOCK_N=block_n, W=warps,
                            WORD_L=word_layout(block_n, warps), num_warps=warps)
    return out


def compile_for(capability, block_n=128, warps=4):
    from triton.backends.compiler import GPUTarget
    src = gluon._runtime.GluonASTSource(
        fn=_mma_gemv4_kernel,
        signature={"x_ptr": "*fp16", "qm_ptr": "*i32", "qz_ptr": "*i32", "s_ptr": "*fp16", "b_ptr": "*fp16",
                   "y_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "k8": "i32", "stride_xm": "i32",
                   "stride_ym": "i32"},
        constexprs={"HAS_BIAS": True, "BLOCK_N": block_n, "W": warps, "WORD_L": word_layout(block_n, warps)},
        attrs={(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11)})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})


def sass(block_n: int, warps: int) -> None:
    k = compile_for(90, block_n, warps)
    ops = collections.Counter()
    for line in k.asm["sass"].splitlines():
        m = re.match(r"\s*(?:/\*[0-9a-f]+\*/)?\s*(?:[-0-9a-fY:]+\t)?\s*(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[.\s;]", line)
        if m:
            ops[m.group(1)] += 1
    per = 32 * warps / (block_n * SPAN.value * 4)
    print(f"block_n {block_n} warps {warps}: {sum(ops.values()) * per:.2f} instructions per weight, "
          f"shared {k.metadata.shared} B")
    for op, c in ops.most_common(12):
        print(f"  {op:8s} {c * per:.3f}")


def bench() -> None:
    """Errors vs fp64, then graph-replay µs over weight copies (≥ 256 MB, so L2 serves none), outputs
    zeroed by one memset per replay (accumulate mode, as the runtime runs decode rows)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from functools import partial

    from bench_kernels import graph_us, rel_err

    from edge_awq.kernels import gluon_w4a16 as gk
    from edge_awq.kernels.layout import to_mma
    from edge_awq.kernels.reference import dequantize_gemm
    from edge_awq.pack import pack_linear
    from edge_awq.quant import quantize

    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = {"qkv": (4096, 12288), "gate_up": (4096, 22016), "down": (11008, 4096)}
    for name, (k, n) in shapes.items():
        t = pack_linear(*quantize(torch.randn(n, k, device="cuda") * 0.02, 128))
        qz, sc = t["qzeros"], t["scales"]
        qm = to_mma(t["qweight"])
        wdeq = dequantize_gemm(t["qweight"], qz, sc, 128, torch.float64)  # (K, N)
        qms = [qm.clone() for _ in range(max(2, (256 << 20) // (qm.numel() * 4)))]
        w16 = wdeq.half().t().contiguous()
        w16s = [w16.clone() for _ in range(max(2, (256 << 20) // (w16.numel() * 2)))]
        for m in (1, 4, 16):
            x = torch.randn(m, k, device="cuda").half()
            ref = x.double() @ wdeq
            kernels = {f"gemv {bn}/{wp}": partial(mma_gemv4, block_n=bn, warps=wp)
                       for bn, wp in ((128, 4), (64, 2), (32, 1)) if (k // 128) % 4 == 0}
            kernels["mma_rows"] = partial(gk.mma_rows, target_programs=3 * sms)
            if m == 1:
                kernels["row_gemv"] = partial(gk.row_gemv, group_size=128, mma=True, rpt=8, wpt=4, tk=8, warps=1)
            fp16 = graph_us([partial(torch.matmul, x, w.t()) for w in w16s])
            for label, fn in kernels.items():
                out = torch.full((m, n), float("nan"), device="cuda").zero_()
                fn(x, qm, qz, sc, None, out)
                torch.cuda.synchronize()
                err = rel_err(out, ref)
                big = torch.zeros(len(qms), m, n, device="cuda")
                calls = [big.zero_] + [partial(fn, x, w, qz, sc, None, big[i]) for i, w in enumerate(qms)]
                us = graph_us(calls) * len(calls) / len(qms)
                print(f"{name:8s} M={m:2d} {label:16s} {us:7.1f} us  x fp16 {fp16 / us:5.2f}  err {err:.1e}",
                      flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "sass":
        sass(*(int(a) for a in sys.argv[2:4]))
    else:
        bench()
