"""Experiment (GPU, not yet in the dispatch): a Marlin-style W4A16 kernel for 2–16 rows in Gluon.

    python tools/bench_gluon_m16.py bench [16,8,4,2]     # on the GPU: correctness + timing table
    python tools/bench_gluon_m16.py compile              # no GPU: compile for sm_90, count PTX ops

The weights are repacked (``to_mma``) so that each thread's 16-byte load holds exactly its
mma.m16n8k16 B-fragment codes for a group of 128 k; the codes become half2 by one shift + LOP3 +
HADD2 + HMUL2 per pair and reach the MMA with no layout conversion (``convert_layout(...,
assert_trivial=True)`` proves it at compile time). x goes through shared memory once per program
(16-byte loads, ldmatrix) instead of once per warp. Timed as tools/bench_kernels.py times decode
rows (CUDA graph over weight copies), against ``gemv_dot`` and fp16 matmul in the same run;
results in docs/kernel-notes.md (version 18). Needs Gluon (Triton ≥ 3.5; written against 3.6).
"""
# ruff: noqa: B023 (each lambda is timed at once, inside the loop that binds it)
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

GROUP = gl.constexpr(128)
# named thread_barrier in Triton 3.6, barrier later
_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier


def to_mma(codes: torch.Tensor) -> torch.Tensor:
    """codes (N, K) uint8 → (N, K/8) int32: per (n, group g), word 4t + j, nibble at bit 4P + 16·d0
    (P = 2·P1 + P0) holds k = 128g + 32j + 16P1 + 8P0 + 2t + d0."""
    n, k = codes.shape
    c = codes.to(torch.int64).reshape(n, k // 128, 4, 2, 2, 4, 2)  # (n, g, j, P1, P0, t, d0) = k order
    c = c.permute(0, 1, 5, 2, 3, 4, 6)  # (n, g, t, j, P1, P0, d0)
    c = c.reshape(n, k // 128, 4, 4, 4, 2)  # P = 2 P1 + P0
    shifts = (4 * torch.arange(4)).view(4, 1) + 16 * torch.arange(2).view(1, 2)
    w = (c << shifts.to(c.device)).sum((-1, -2))  # (n, g, t, j)
    w = torch.where(w >= 2 ** 31, w - 2 ** 32, w)
    return w.reshape(n, k // 8).to(torch.int32)


@gluon.jit
def _pair(words, P: gl.constexpr, magic, base, scale):
    v = gl.inline_asm_elementwise(
        "{.reg .b32 t; shr.u32 t, $1, $5; lop3.b32 t, t, 0x000F000F, $4, 0xEA; "
        "add.f16x2 t, t, $2; mul.f16x2 $0, t, $3;}",
        "=r,r,r,r,r,r", [words, base, scale, magic, gl.full(words.shape, 4 * P, gl.int32, words.type.layout)],
        dtype=gl.int32, is_pure=True, pack=1)
    lo = v.to(gl.int16).to(gl.float16, bitcast=True)
    hi = (v >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    return gl.join(lo, hi)  # (..., d0)


@gluon.jit
def _m16_kernel(x_ptr, qm_ptr, qz_ptr, s_ptr, y_ptr, M, N, K, k8, stride_xm, stride_ym, groups_per_split,
                BLOCK_N: gl.constexpr, W: gl.constexpr, WORD_L: gl.constexpr, XS: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, W], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    n_l: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, WORD_L))
    t_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(2, WORD_L))
    j_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, WORD_L))
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=n_l)
    offs_t = gl.arange(0, 4, layout=t_l)
    offs_j = gl.arange(0, 4, layout=j_l)
    wofs = (offs_n[:, None, None] * k8 + (offs_t * 4)[None, :, None] + offs_j[None, None, :])
    wofs = gl.max_contiguous(gl.multiple_of(wofs, [1, 1, 4]), [1, 1, 4])
    zsh = (((offs_n & 7) >> 1) << 2) | ((offs_n & 1) << 4)
    if XS:  # x once per program through shared memory (16-byte loads, ldmatrix), not once per warp
        x_l: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [W, 1], [1, 0])
        am = gl.arange(0, 16, layout=gl.SliceLayout(1, x_l))
        ak = gl.arange(0, GROUP, layout=gl.SliceLayout(0, x_l))
        x_smem = gl.allocate_shared_memory(gl.float16, [16, GROUP], gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
    else:
        am = gl.arange(0, 16, layout=gl.SliceLayout(1, a_l))
        ak = gl.arange(0, GROUP, layout=gl.SliceLayout(0, a_l))
    xofs = am[:, None] * stride_xm + ak[None, :]
    xmask = (am < M)[:, None]
    magic = gl.full([BLOCK_N, 4, 4], 0x64006400, gl.int32, WORD_L)
    zero3 = gl.zeros([BLOCK_N, 4, 4], gl.int32, WORD_L)
    acc = gl.zeros([16, BLOCK_N], gl.float32, mma)
    g0 = pid_k * groups_per_split
    g1 = gl.minimum(g0 + groups_per_split, K // GROUP)
    # software pipeline: the next group's words, zeros, scales and x are loaded before this group's math
    words = gl.load(qm_ptr + wofs + g0 * (GROUP // 8), eviction_policy="evict_first")
    zw = gl.load(qz_ptr + g0 * (N // 8) + offs_n // 8)
    s = gl.load(s_ptr + g0 * N + offs_n)
    a = gl.load(x_ptr + xofs + g0 * GROUP, mask=xmask, other=0.0)
    for g in range(g0, g1):
        gn = gl.minimum(g + 1, g1 - 1)
        words_n = gl.load(qm_ptr + wofs + gn * (GROUP // 8), eviction_policy="evict_first")
        zw_n = gl.load(qz_ptr + gn * (N // 8) + offs_n // 8)
        s_n = gl.load(s_ptr + gn * N + offs_n)
        a_n = gl.load(x_ptr + xofs + gn * GROUP, mask=xmask, other=0.0)
        z = ((zw >> zsh) & 0xF).to(gl.float32)
        hb = (-(1024.0 + z)).to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        hs = s.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        base = (hb | (hb << 16))[:, None, None] + zero3
        scale = (hs | (hs << 16))[:, None, None] + zero3
        p0 = gl.join(_pair(words, 0, magic, base, scale), _pair(words, 1, magic, base, scale))  # (n,t,j,d0,P0)
        p1 = gl.join(_pair(words, 2, magic, base, scale), _pair(words, 3, magic, base, scale))
        codes = gl.join(p0, p1)  # (n, t, j, d0, P0, P1)
        codes = gl.permute(codes, [0, 2, 5, 4, 1, 3])  # (n, j, P1, P0, t, d0): k order
        codes = gl.reshape(codes, [BLOCK_N, GROUP])
        b = gl.convert_layout(gl.permute(codes, [1, 0]), b_l, assert_trivial=True)
        if XS:
            _barrier()  # every warp has read the previous group's x
            x_smem.store(a)
            _barrier()
            acc = mma_v2(x_smem.load(a_l), b, acc)
        else:
            acc = mma_v2(a, b, acc)
        words, zw, s, a = words_n, zw_n, s_n, a_n
    ym = gl.arange(0, 16, layout=gl.SliceLayout(1, mma))
    yn = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
    gl.atomic_add(y_ptr + ym[:, None] * stride_ym + yn[None, :], acc, mask=(ym < M)[:, None] & (yn < N)[None, :],
                  sem="relaxed")


def word_layout(block_n, w):
    reps = block_n // (8 * w)
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1], [0, 0, 2]] + [[8 * w * (1 << i), 0, 0] for i in range(reps.bit_length() - 1)],
        lane_bases=[[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[[8 * (1 << i), 0, 0] for i in range(w.bit_length() - 1)],
        block_bases=[], shape=[block_n, 4, 4])


def m16(x, qm, qz, sc, out, block_n=64, warps=4, programs=528, xs=False):
    m, k = x.shape
    n = sc.shape[1]
    tiles = triton.cdiv(n, block_n)
    groups = k // GROUP
    split = max(1, min(groups, triton.cdiv(programs, tiles)))
    per = triton.cdiv(groups, split)
    split = triton.cdiv(groups, per)
    _m16_kernel[(tiles, split)](x, qm, qz, sc, out, m, n, k, k // 8, x.stride(0), out.stride(0), per,
                                BLOCK_N=block_n, W=warps, WORD_L=word_layout(block_n, warps), XS=xs,
                                num_warps=warps)
    return out


if __name__ == "__main__" and sys.argv[1:] == ["compile"]:
    from triton.backends.compiler import GPUTarget
    src = gluon._runtime.GluonASTSource(
        fn=_m16_kernel, signature={"x_ptr": "*fp16", "qm_ptr": "*i32", "qz_ptr": "*i32", "s_ptr": "*fp16",
                                   "y_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "k8": "i32",
                                   "stride_xm": "i32", "stride_ym": "i32", "groups_per_split": "i32"},
        constexprs={"BLOCK_N": 64, "W": 4, "WORD_L": word_layout(64, 4), "XS": True},
        attrs={(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 10)})
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    sass = c.asm.get("ptx", "")
    print("compiled; ptx lines", len(sass.splitlines()), "ld.global.v4", sass.count("ld.global.v4"),
          "st.shared", sass.count("st.shared"), "mma", sass.count("mma.sync"), "shfl", sass.count("shfl"))


if __name__ == "__main__" and sys.argv[1:2] == ["bench"]:
    import json
    sys.path.insert(0, "tools")
    from bench_kernels import SHAPES, graph_us, rel_err

    from edge_awq.kernels import triton_w4a16 as tw
    from edge_awq.kernels.dispatch import Scratch
    from edge_awq.kernels.layout import to_kmajor
    from edge_awq.kernels.reference import dequantize_gemm
    from edge_awq.pack import pack_linear
    from edge_awq.quant import quantize
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    ms = [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [16]
    rows = []
    for name, (k, n) in SHAPES.items():
        torch.manual_seed(0)
        w = torch.randn(n, k, device=dev) * 0.02
        q, scale, zero = quantize(w, 128)
        t = pack_linear(q, scale, zero)
        qw, qz, sc = t["qweight"], t["qzeros"], t["scales"]
        w64 = dequantize_gemm(qw, qz, sc, 128, torch.float64)
        w16 = w64.t().contiguous().half()
        qk = to_kmajor(qw)
        qm = to_mma(q)
        wbytes = qk.numel() * 4 + qz.numel() * 4 + sc.numel() * 2
        ncp = max(4, -(-(256 << 20) // wbytes))
        copies = [(qk.clone(), qz.clone(), sc.clone(), qm.clone()) for _ in range(ncp)]
        w16c = [w16.clone() for _ in range(max(2, -(-(512 << 20) // (w16.numel() * 2))))]
        scratch = Scratch(dev, 16 * n, 16)
        for m in ms:
            x = torch.randn(m, k, device=dev, dtype=torch.float16)
            ref = x.double() @ w64
            out = torch.zeros(m, n, device=dev, dtype=torch.float32)
            row = {"shape": name, "M": m,
                   "fp16": graph_us([lambda c=c: torch.nn.functional.linear(x, c) for c in w16c])}
            best = None
            for p in (4, 8):
                for bn in (64, 128):
                    def dcall(c, p=p, bn=bn):
                        return tw.gemv_dot(x, c[0], c[1], c[2], None, 128, scratch.workspace, scratch.counters,
                                           block_n=bn, num_warps=4, num_stages=3, target_programs=p * sms,
                                           out=out, accumulate=True)
                    out.zero_()
                    dcall(copies[0])
                    err = rel_err(out, ref)
                    us = graph_us([lambda c=c: (out.zero_(), dcall(c)) for c in copies])
                    if err < 5e-3 and (best is None or us < best[0]):
                        best = (round(us, 1), bn, p)
            row["dot"] = best
            gb = None
            for bn, wp in ((64, 4), (128, 4), (64, 2), (128, 2), (128, 8), (256, 8), (256, 4)):
                for p in (1, 2, 3, 4, 6, 8, 16):
                    def gcall(c, bn=bn, wp=wp, p=p):
                        return m16(x, c[3], c[1], c[2], out, block_n=bn, warps=wp, programs=p * sms, xs=True)
                    try:
                        out.zero_()
                        gcall(copies[0])
                        torch.cuda.synchronize()
                        err = rel_err(out, ref)
                        us = graph_us([lambda c=c: (out.zero_(), gcall(c)) for c in copies])
                    except Exception as e:
                        print("fail", bn, wp, p, str(e)[:300], flush=True)
                        continue
                    if err >= 5e-3:
                        print("wrong", name, m, bn, wp, p, err, flush=True)
                    elif gb is None or us < gb[0]:
                        gb = (round(us, 1), bn, wp, p)
            row["gluon"] = gb
            rows.append(row)
            print(json.dumps(row), flush=True)
        del copies, w16c
        torch.cuda.empty_cache()
    print("| shape | M | fp16 µs | gemv_dot µs | gluon µs (bn, warps, pps) | dot × fp16 | gluon × fp16 |")
    for r in rows:
        g = r["gluon"]
        cells = (f"{g[0]} ({g[1]}, {g[2]}, {g[3]}) | {r['fp16'] / r['dot'][0]:.2f} | {r['fp16'] / g[0]:.2f} |"
                 if g else "- | | |")
        print(f"| {r['shape']} | {r['M']} | {r['fp16']:.1f} | {r['dot'][0]} | " + cells)
