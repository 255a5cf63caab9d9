"""W4A16 kernels against the fp64 torch reference on fresh random inputs.

On a machine without a GPU the Triton kernels run in Triton's interpreter (see conftest.py) on
small shapes; with a GPU the same tests run the compiled kernels. Outputs are poisoned with NaN
before each run so an unwritten element cannot pass.
"""

import logging

import pytest
import torch

from edge_awq.kernels import dispatch
from edge_awq.kernels.dispatch import KernelSettings, Scratch, select_backend, w4a16_linear
from edge_awq.kernels.layout import MMA_PERM, from_kmajor, from_mma, to_kmajor, to_mma
from edge_awq.kernels.quant_linear import QuantLinear
from edge_awq.kernels.reference import dequantize_gemm, w4a16_linear_reference
from edge_awq.kernels.torch_int4 import inner_k_tiles, int4pack_linear, to_int4pack
from edge_awq.pack import pack_linear
from edge_awq.quant import quantize

tw = pytest.importorskip("edge_awq.kernels.triton_w4a16", reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float16: 4e-3, torch.bfloat16: 2e-2}
# Triton's interpreter (3.9) miscomputes int→bf16 conversions and bf16 dots (numpy has no bf16);
# bf16 is checked where the kernels really run, on the GPU.
DTYPES = [torch.float16] if DEVICE == "cpu" else [torch.float16, torch.bfloat16]

# (M, K, N, group): K not a multiple of 128 (320, 576), N not a multiple of 64 (72, 200, 136), M = 1, 3, 16, 33
CASES = [(1, 256, 72, 128), (3, 320, 200, 64), (16, 576, 136, 64), (1, 256, 256, 32), (16, 512, 64, 128),
         (33, 320, 72, 32), (5, 256, 200, 128)]


def _layer(k, n, group, seed, bias):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, : k // 4] *= 4  # uneven columns, as real weights have
    t = pack_linear(*quantize(w, group))
    lin = QuantLinear(k, n, group, bias, device=DEVICE)
    lin.qweight.copy_(t["qweight"])
    lin.qzeros.copy_(t["qzeros"])
    lin.scales.copy_(t["scales"])
    if bias:
        lin.bias.copy_(torch.randn(n, generator=g).half())
    return lin


def _x(m, k, dtype, seed):
    return (torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 2).to(DEVICE, dtype)


def _ref(x, lin):
    return w4a16_linear_reference(x.double(), lin.qweight, lin.qzeros, lin.scales, lin.bias, lin.group_size)


def _rel(y, ref):
    assert not torch.isnan(y).any(), "unwritten or NaN output"
    return ((y.double() - ref).norm() / ref.norm()).item()


def _poison(m, n, dtype):
    return torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n,group", CASES)
def test_triton_kernels_match_reference(m, k, n, group, dtype):
    seed = m * 7919 + k * 31 + n
    lin = _layer(k, n, group, seed, bias=bool(seed % 2))
    x = _x(m, k, dtype, seed + 1)
    ref = _ref(x, lin)
    qk = to_kmajor(lin.qweight)
    if m <= 16:
        scratch = Scratch(DEVICE, n, 16)
        if m == 1:  # fp32 or half2 products; whole K in one program, or chunks of one or two groups (K-splits)
            for h2, block_n, chunk in ((h2, bn, ck) for h2 in (False, True) for bn, ck in
                                       ((16, 4096), (32, group), (64, 2 * group))):
                y = tw.gemv_row(x, qk, lin.qzeros, lin.scales, lin.bias, group, scratch.workspace, scratch.counters,
                                block_n=block_n, chunk_k=chunk, h2=h2, out=_poison(m, n, dtype))
                assert _rel(y, ref) < TOL[dtype], f"row, h2 {h2}, block_n {block_n}, chunk {chunk}"
                # the workspace and counters are left at zero for the next call
                assert not scratch.workspace.any() and not scratch.counters.any()
        # tensor cores: whole K per program, three K-splits, as many as the grid wants
        for block_n, split in ((64, 1), (32, 3), (64, None)):
            y = tw.gemv_dot(x, qk, lin.qzeros, lin.scales, lin.bias, group, scratch.workspace, scratch.counters,
                            block_n=block_n, split_k=split, target_programs=64, out=_poison(m, n, dtype))
            assert _rel(y, ref) < TOL[dtype], f"dot, block_n {block_n}, split {split}"
            assert not scratch.workspace.any() and not scratch.counters.any()
    w = dequantize_gemm(lin.qweight, lin.qzeros, lin.scales, group, dtype).t()
    wk = tw.dequantize_kmajor(qk, lin.qzeros, lin.scales, group, dtype, block_n=32, block_k=64,
                              out=_poison(n, k, dtype))
    assert torch.equal(wk, w)  # the reference's values, bit for bit
    part = tw.dequantize_kmajor(qk, lin.qzeros, lin.scales, group, dtype, rows=(8, 56), block_n=32)
    assert torch.equal(part, w[8:56])


@pytest.mark.parametrize("m,k,n", [(1, 256, 72), (5, 384, 200), (16, 512, 64)])
def test_triton_kernels_on_the_mma_order(m, k, n):
    """Group 128 in the mma order (layout.py): the one-row kernel (fp32 and half2, K-splits, the
    gated input), the tensor-core kernel and the dequantizer read the permuted words and give the
    reference's results."""
    group, dtype = 128, torch.float16
    lin = _layer(k, n, group, 500 + m, bias=True)
    x = _x(m, k, dtype, 501 + m)
    ref = _ref(x, lin)
    qm = to_mma(lin.qweight)
    scratch = Scratch(DEVICE, n, 16)
    if m == 1:
        for h2, block_n, chunk in ((False, 32, 128), (True, 16, 4096), (True, 64, 256)):
            y = tw.gemv_row(x, qm, lin.qzeros, lin.scales, lin.bias, group, scratch.workspace, scratch.counters,
                            block_n=block_n, chunk_k=chunk, h2=h2, out=_poison(m, n, dtype), mma=True)
            assert _rel(y, ref) < TOL[dtype], f"row, h2 {h2}, block_n {block_n}, chunk {chunk}"
        gate_up = _x(1, 2 * k, dtype, 502)
        xg = torch.nn.functional.silu(gate_up[:, :k].double()) * gate_up[:, k:].double()
        y = torch.zeros(1, n, dtype=torch.float32, device=DEVICE)
        tw.gemv_row(gate_up, qm, lin.qzeros, lin.scales, None, group, scratch.workspace, scratch.counters,
                    block_n=32, chunk_k=128, h2=True, out=y, accumulate=True, gated=True, mma=True)
        assert _rel(y, w4a16_linear_reference(xg, lin.qweight, lin.qzeros, lin.scales, None, group)) < 2e-3
    for block_n, split in ((64, 1), (32, 3)):
        y = tw.gemv_dot(x, qm, lin.qzeros, lin.scales, lin.bias, group, scratch.workspace, scratch.counters,
                        block_n=block_n, split_k=split, out=_poison(m, n, dtype), mma=True)
        assert _rel(y, ref) < TOL[dtype], f"dot, block_n {block_n}, split {split}"
        assert not scratch.workspace.any() and not scratch.counters.any()
    w = dequantize_gemm(lin.qweight, lin.qzeros, lin.scales, group, dtype).t()
    wm = tw.dequantize_kmajor(qm, lin.qzeros, lin.scales, group, dtype, block_n=32, out=_poison(n, k, dtype),
                              mma=True)
    assert torch.equal(wm, w)
    assert torch.equal(tw.dequantize_kmajor(qm, lin.qzeros, lin.scales, group, dtype, rows=(8, 56), mma=True),
                       w[8:56])


@pytest.mark.parametrize("m", [1, 5])
def test_accumulate_into_zeroed_fp32_output(m):
    """K-splits add straight into a zeroed fp32 output (the runtime zeroes all of a step's outputs
    at once); the bias is added once, by the first split."""
    k, n, group = 512, 136, 64
    lin = _layer(k, n, group, 31 + m, bias=True)
    x = _x(m, k, torch.float16, 32 + m)
    qk = to_kmajor(lin.qweight)
    scratch = Scratch(DEVICE, n, 16)
    y = torch.zeros(m, n, dtype=torch.float32, device=DEVICE)
    if m == 1:
        tw.gemv_row(x, qk, lin.qzeros, lin.scales, lin.bias, group, scratch.workspace, scratch.counters,
                    block_n=32, chunk_k=group, h2=True, out=y, accumulate=True)
    else:
        tw.gemv_dot(x, qk, lin.qzeros, lin.scales, lin.bias, group, scratch.workspace, scratch.counters,
                    block_n=32, split_k=3, out=y, accumulate=True)
    assert _rel(y, _ref(x, lin)) < 1e-3  # fp32 output: only the products' rounding
    assert not scratch.workspace.any() and not scratch.counters.any()  # untouched


@pytest.mark.parametrize("h2", [False, True])
def test_gated_input_is_silu_gate_times_up(h2):
    """The down projection's kernel computes silu(gate)·up from [gate | up] as it loads x."""
    k, n, group = 512, 72, 64
    lin = _layer(k, n, group, 41, bias=False)
    gate_up = torch.randn(1, 2 * k, generator=torch.Generator().manual_seed(42)).to(DEVICE) * 3
    x = torch.nn.functional.silu(gate_up[:, :k].double()) * gate_up[:, k:].double()
    ref = w4a16_linear_reference(x, lin.qweight, lin.qzeros, lin.scales, None, group)
    scratch = Scratch(DEVICE, n, 16)
    y = torch.zeros(1, n, dtype=torch.float32, device=DEVICE)
    tw.gemv_row(gate_up, to_kmajor(lin.qweight), lin.qzeros, lin.scales, None, group, scratch.workspace,
                scratch.counters, block_n=32, chunk_k=128, h2=h2, out=y, accumulate=True, gated=True)
    assert _rel(y, ref) < 2e-3
    lin.prepare(KernelSettings())  # and through the dispatch, on any device (other paths apply silu first)
    assert _rel(lin(gate_up, gated=True), ref) < 2e-3


@pytest.mark.parametrize("peak", [6e4, 3e3, 1e-2])
def test_row_kernel_half2_keeps_extreme_activations(peak):
    """Half2 products scale x per program: an fp16 activation near its limit (or a row of tiny
    ones) must neither overflow nor lose precision."""
    k, n, group = 1024, 128, 128
    lin = _layer(k, n, group, 77, bias=False)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(78)) * peak / 100
    x[0, ::97] = peak  # a few massive channels, as LLM activations have
    x = x.to(DEVICE, torch.float16)
    qk = to_kmajor(lin.qweight)
    scratch = Scratch(DEVICE, n, 16)
    y = tw.gemv_row(x, qk, lin.qzeros, lin.scales, None, group, scratch.workspace, scratch.counters,
                    block_n=32, chunk_k=256, h2=True, out=_poison(1, n, torch.float32))
    assert _rel(y, _ref(x, lin)) < 2e-3


@pytest.mark.parametrize("k,n", [(256, 72), (576, 200)])
def test_kmajor_layout_round_trip(k, n):
    from edge_awq.pack import pack_int4, unpack_int4
    codes = torch.randint(0, 16, (k, n), generator=torch.Generator().manual_seed(k + n))
    qweight = pack_int4(codes)
    qk = to_kmajor(qweight)
    assert qk.shape == (n, k // 8) and qk.dtype == torch.int32
    assert torch.equal(from_kmajor(qk), codes.to(torch.uint8))
    # word [n, j], nibble i holds k = 8j + (0, 2, 4, 6, 1, 3, 5, 7)[i]: spot-check against the definition
    assert ((qk[3, 2] >> 20) & 0xF).item() == codes[8 * 2 + 3, 3].item()
    assert ((qk[3, 2] >> 4) & 0xF).item() == codes[8 * 2 + 2, 3].item()
    assert torch.equal(unpack_int4(qweight), codes.to(torch.uint8))


def test_mma_layout_round_trip_and_definition():
    from edge_awq.pack import pack_int4
    k, n = 256, 24
    codes = torch.randint(0, 16, (k, n), generator=torch.Generator().manual_seed(7))
    qm = to_mma(pack_int4(codes))
    assert qm.shape == (n, k // 8) and torch.equal(from_mma(qm), codes.to(torch.uint8))
    assert sorted(MMA_PERM) == list(range(128))
    # span s, word 4t + j, nibble P + 4·d0 (bits 4P + 16·d0) holds k = 128s + 32j + 16⌊P/2⌋ + 8(P mod 2) + 2t + d0:
    # thread t's B fragment of mma.m16n8k16 for k-step j
    for s_, t, j, p, d0 in ((0, 0, 0, 0, 0), (1, 3, 2, 1, 1), (0, 2, 3, 3, 0), (1, 1, 1, 2, 1)):
        word = qm[5, 16 * s_ + 4 * t + j].item()
        got = (word >> (4 * p + 16 * d0)) & 0xF
        assert got == codes[128 * s_ + 32 * j + 16 * (p // 2) + 8 * (p % 2) + 2 * t + d0, 5].item()


def test_reused_scratch_across_shapes_and_calls():
    scratch = Scratch(DEVICE, 256, 16)
    for i, (k, n, group) in enumerate([(256, 256, 64), (320, 72, 32), (256, 256, 64)]):
        lin = _layer(k, n, group, 100 + i, bias=False)
        qk = to_kmajor(lin.qweight)
        x = _x(2, k, torch.float16, 200 + i)
        y = tw.gemv_dot(x, qk, lin.qzeros, lin.scales, None, group, scratch.workspace, scratch.counters,
                        block_n=32, split_k=2)
        assert _rel(y, _ref(x, lin)) < TOL[torch.float16]
        y = tw.gemv_row(x[:1], qk, lin.qzeros, lin.scales, None, group, scratch.workspace, scratch.counters,
                        block_n=32, chunk_k=group)
        assert _rel(y, _ref(x[:1], lin)) < TOL[torch.float16]


@pytest.mark.skipif(DEVICE != "cuda", reason="dispatch picks Triton on CUDA only (CPU case below)")
@pytest.mark.parametrize("m", [1, 2, 16, 17, 40, 300, 600])
def test_dispatch_on_gpu(m):
    lin = _layer(512, 200, 128, m, bias=True)
    x = _x(m, 512, torch.float16, m + 1)
    ref = _ref(x, lin)
    assert _rel(lin(x), ref) < TOL[torch.float16]  # a GEMM-layout layer: repacked per call
    assert lin.prepare(KernelSettings()) == "triton"  # K-major, and the weights still held once
    assert lin.qweight is None and lin.qweight_k.shape == (200, 512 // 8)
    assert lin.mma_order == (dispatch._gluon_module() is not None)  # group 128: the mma order where Gluon runs
    for settings in (KernelSettings(), KernelSettings(row_int_dot=False), KernelSettings(row_x_shared=False),
                     KernelSettings(row_k_first=False), KernelSettings(row_words_per_thread=8),
                     KernelSettings(row_gluon=False),
                     KernelSettings(row_h2=False, row_gluon=False),
                     KernelSettings(row_kernel="dot"),
                     KernelSettings(prefill_chunk_n=64), KernelSettings(gemm_max_m=0)):
        lin.kernel_settings = settings
        assert _rel(lin(x), ref) < TOL[torch.float16]
        assert _rel(lin(x.float()), ref) < TOL[torch.float16]


@pytest.mark.skipif(DEVICE != "cuda", reason="Gluon kernels run on a GPU only (compile test below)")
@pytest.mark.parametrize("int_dot", [False, True])
@pytest.mark.parametrize("k,n,group,mma", [(512, 200, 128, True), (640, 136, 128, True), (384, 72, 32, False),
                                           (1024, 256, 64, False)])
def test_gluon_row_kernel_on_gpu(k, n, group, mma, int_dot):
    """The one-row Gluon kernel, K-major or mma order, half2 or integer products: K not a multiple of
    the program's chunk, N not a multiple of its columns, bias added once, x with large and tiny
    entries (the per-thread power of two), every column of the zeroed fp32 output gets its sum, with
    the sum over k by shuffles or through shared memory."""
    gk = pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    lin = _layer(k, n, group, 700 + k, bias=True)
    x = _x(1, k, torch.float16, 701 + n)
    x[0, ::7] *= 300.0  # entries near fp16's range and far below it in the same chunk
    x[0, 3::11] *= 1e-4
    ref = _ref(x, lin)
    qk = to_mma(lin.qweight) if mma else to_kmajor(lin.qweight)
    tiles = ((8, 8, 1, 4, False, False), (4, 4, 2, 4, False, False), (16, 8, 1, 4, True, False),
             (8, 4, 4, 4, False, False), (4, 8, 1, 8, True, False), (8, 4, 2, 8, False, False),
             (8, 32, 1, 4, True, False))  # rpt, tk, warps, wpt, tsum, x_shared
    if int_dot:  # x rounded once per warp: 4 words × 8 threads along k only
        tiles += ((8, 8, 1, 4, False, True), (4, 8, 2, 4, False, True), (16, 8, 1, 4, True, True),
                  (8, 8, 4, 4, False, True))
    for i, (rpt, tk, warps, wpt, tsum, xs) in enumerate(tiles):
        if wpt * 8 > group:
            continue
        y = torch.zeros(1, n, dtype=torch.float32, device=DEVICE)
        kf = i % 2 == 1  # every other tile with the grid walking K chunks first
        gk.row_gemv(x, qk, lin.qzeros, lin.scales, lin.bias, y, group, mma=mma, rpt=rpt, tk=tk, warps=warps, wpt=wpt,
                    pdl=torch.cuda.get_device_capability()[0] >= 9, int_dot=int_dot, tsum=tsum, x_shared=xs, k_first=kf)
        assert _rel(y, ref) < 2e-3, (rpt, tk, warps, wpt, tsum, xs, kf)
        col_err = (y.double() - ref).abs()[0] / ref.abs().amax()
        assert (col_err < 1e-2).all(), f"columns {torch.nonzero(col_err >= 1e-2).flatten()[:8].tolist()} wrong"
    for bad in (float("nan"), float("inf")):  # every output depends on every x: none may stay finite
        xb = x.clone()
        xb[0, k // 3] = bad
        for xs in (False, True) if int_dot else (False,):
            y = torch.zeros(1, n, dtype=torch.float32, device=DEVICE)
            gk.row_gemv(xb, qk, lin.qzeros, lin.scales, lin.bias, y, group, mma=mma, int_dot=int_dot, x_shared=xs)
            assert not y.isfinite().any(), (bad, xs, int(y.isfinite().sum()))


@pytest.mark.skipif(DEVICE != "cuda", reason="Gluon kernels run on a GPU only (compile test below)")
@pytest.mark.parametrize("m,k,n", [(2, 512, 200), (16, 384, 136), (7, 1024, 512)])
def test_gluon_rows_kernel_on_gpu(m, k, n):
    """The 2–16-row Gluon kernel on the mma order: N not a multiple of the tile, one program for all
    the work up to one per (tile, span) unit, runs that start and end inside tiles (5 programs),
    bias added once; every column of the zeroed fp32 output gets its sum."""
    gk = pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    lin = _layer(k, n, 128, 600 + m, bias=True)
    x = _x(m, k, torch.float16, 601 + m)
    ref = _ref(x, lin)
    qm = to_mma(lin.qweight)
    for block_n, warps, programs, stages in ((128, 4, 1, 0), (64, 4, 64, 0), (32, 1, 1000, 0), (256, 8, 3, 0),
                                             (64, 2, 5, 0), (128, 4, 1, 4), (64, 4, 64, 2), (32, 1, 1000, 8),
                                             (64, 2, 5, 4)):
        out = torch.zeros(m, n, dtype=torch.float32, device=DEVICE)
        gk.mma_rows(x, qm, lin.qzeros, lin.scales, lin.bias, out, block_n=block_n, warps=warps,
                    target_programs=programs, stages=stages)
        assert _rel(out, ref) < 1e-3, (block_n, warps, programs, stages)
        col_err = (out.double() - ref).abs().amax(0) / ref.abs().amax()
        assert (col_err < 1e-2).all(), f"columns {torch.nonzero(col_err >= 1e-2).flatten()[:8].tolist()} wrong"


@pytest.mark.skipif(DEVICE != "cuda" or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warpgroup-MMA GEMM runs on Hopper only (compile test below)")
@pytest.mark.parametrize("m,k,n", [(300, 512, 200), (17, 256, 136), (1000, 1024, 520)])
def test_gluon_gemm_on_gpu(m, k, n):
    """The prefill GEMMs: M and N not multiples of the tiles, bias, every tile configuration and the
    warp-specialized kernel; every element of the poisoned output written."""
    gk = pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    lin = _layer(k, n, 128, 700 + m, bias=True)
    x = _x(m, k, torch.float16, 701 + m)
    ref = _ref(x, lin)
    qm = to_mma(lin.qweight)
    calls = {"64x64": lambda out: gk.mma_gemm(x, qm, lin.qzeros, lin.scales, lin.bias, out=out, **gk.gemm_config(1)),
             "128x64": lambda out: gk.mma_gemm(x, qm, lin.qzeros, lin.scales, lin.bias, out=out,
                                               **gk.gemm_config(512)),
             "256x128 two warpgroups": lambda out: gk.mma_gemm(x, qm, lin.qzeros, lin.scales, lin.bias, out=out,
                                                               block_m=256, block_n=128, warps=8, stages=2),
             "warp-specialized": lambda out: gk.mma_gemm_ws(x, qm, lin.qzeros, lin.scales, lin.bias, out=out),
             "warp-specialized 128/4": lambda out: gk.mma_gemm_ws(x, qm, lin.qzeros, lin.scales, lin.bias, out=out,
                                                                  block_m=128, stages=4, regs=200),
             "warp-specialized, no ping-pong": lambda out: gk.mma_gemm_ws(x, qm, lin.qzeros, lin.scales, lin.bias,
                                                                          out=out, pingpong=False),
             # fewer programs than tiles: each walks several (ring, phases and turns carried across tiles)
             "warp-specialized, 3 programs": lambda out: gk.mma_gemm_ws(x, qm, lin.qzeros, lin.scales, lin.bias,
                                                                        out=out, programs=3),
             "warp-specialized 128/4, 2 programs": lambda out: gk.mma_gemm_ws(
                 x, qm, lin.qzeros, lin.scales, lin.bias, out=out, block_m=128, stages=4, regs=200, programs=2),
             "warp-specialized, TMA stores": lambda out: gk.mma_gemm_ws(x, qm, lin.qzeros, lin.scales, lin.bias,
                                                                        out=out, tma_store=True),
             "warp-specialized, TMA stores, 3 programs": lambda out: gk.mma_gemm_ws(
                 x, qm, lin.qzeros, lin.scales, lin.bias, out=out, tma_store=True, programs=3)}
    for cfg, call in calls.items():
        out = torch.full((m, n), float("nan"), dtype=torch.float16, device=DEVICE)
        call(out)
        assert not out.isnan().any(), cfg
        assert _rel(out, ref) < 1e-3, cfg
        col_err = (out.double() - ref).abs().amax(0) / ref.abs().amax()
        assert (col_err < 1e-2).all(), f"columns {torch.nonzero(col_err >= 1e-2).flatten()[:8].tolist()} wrong"


@pytest.mark.skipif(DEVICE != "cuda" or torch.cuda.get_device_capability() != (9, 0),
                    reason="the warpgroup-MMA GEMMs run on Hopper only")
@pytest.mark.parametrize("m", [40, 200, 300])
def test_prefill_gemm_on_a_wide_layer(m):
    """``prefill_gemm`` on a layer wide enough (100 row tiles) that 40 rows take ``mma_gemm``, 200 the
    warp-specialized kernel on 128-token tiles and 300 on 256-token tiles (on a 132-SM H100)."""
    gk = pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    lin = _layer(256, 12800, 128, 900 + m, bias=True)
    x = _x(m, 256, torch.float16, 901 + m)
    out = gk.prefill_gemm(x, to_mma(lin.qweight), lin.qzeros, lin.scales, lin.bias)
    ref = _ref(x, lin)
    assert not out.isnan().any() and _rel(out, ref) < 1e-3


def _gluon_ptx(compile_fn: str, *args, **kw) -> str:
    """PTX of ``gluon_w4a16.<compile_fn>(*args, **kw)``, compiled in a fresh process: after the
    interpreter ran kernels in this one, Triton's tensor methods can stay bound to it, and the
    warp-specialized kernel's partitions then failed to compile (seen in CI, depending on test order)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, sys; from edge_awq.kernels import gluon_w4a16 as gk; a, kw = json.loads(sys.argv[1]); "
            f"sys.stdout.write(gk.{compile_fn}(*a, **kw).asm['ptx'])")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # cwd: tests/, not the checkout's root, whose edge_awq/ folder lacks the kernels/ mapping of an install
    run = subprocess.run([sys.executable, "-c", code, json.dumps([args, kw])], capture_output=True, text=True,
                         env=env, cwd=os.path.dirname(__file__))
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.mark.parametrize("kind", ["64x64", "128x64", "warp-specialized"])
def test_gluon_gemm_compiles_for_hopper(kind):
    """Compiled for sm_90, no GPU needed: x by TMA, the weights by 8-byte loads straight into the
    warpgroup MMA's A operand (``assert_trivial``), one MMA per 16 k of each warpgroup."""
    gk = pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    kw = {"64x64": gk.gemm_config(1), "128x64": gk.gemm_config(512), "warp-specialized": dict(block_m=256, stages=2,
                                                                                             ws=True)}[kind]
    ptx = _gluon_ptx("compile_gemm_for", 90, **kw)
    assert ptx.count("cp.async.bulk.tensor.2d") >= 2
    assert ptx.count("ld.global.L1::evict_last.L2::cache_hint.v2.b32") >= 2
    assert ptx.count("wgmma.mma_async.sync.aligned.m64n") >= 8
    # no shuffles of data; the warp-specialized kernel reads its partition's warp id by one shfl
    assert ptx.count("shfl") == (1 if kind == "warp-specialized" else 0)
    if kind == "warp-specialized":  # x's ready/empty waits, and the consumers' turn waits of the ping-pong
        nopp = _gluon_ptx("compile_gemm_for", 90, **kw, pingpong=False)
        assert ptx.count("mbarrier.try_wait") == nopp.count("mbarrier.try_wait") + 2
        # the output by TMA: one bulk store per consumer warpgroup, fenced after the shared-memory writes,
        # instead of the plain 16-byte stores of the shared-memory round trip
        tma = _gluon_ptx("compile_gemm_for", 90, **kw, tma_store=True)
        assert tma.count("cp.async.bulk.tensor.2d.global.shared::cta") == 2 and "fence.proxy.async" in tma
        assert "st.global.v4" in ptx and "st.global.v4" not in tma


@pytest.mark.parametrize("capability,wpt", [(90, 4), (87, 4), (90, 8)])
def test_gluon_row_kernel_compiles_for_hopper_and_orin(capability, wpt):
    """The one-row kernel compiled for sm_90 (with programmatic dependent launch) and sm_87, no GPU
    needed: one 16-byte load per column and thread, the half2 chains of 16 products (four HFMA2 per
    word), the weights loaded before the wait for the previous kernel, the sum across the k threads
    by shuffles only (no shared memory)."""
    pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    pdl = capability >= 90
    ptx = _gluon_ptx("compile_row_for", capability, rpt=4, wpt=wpt, pdl=pdl)
    import re

    assert len(re.findall(r"ld\.global\S*\.v4\.b32", ptx)) == 4 * wpt // 4  # 4 columns × wpt words
    # per column and word: two for the high nibbles' q − z and four products, but the first product
    # of each four-word chain is a mul
    assert ptx.count("fma.rn.f16x2") == 4 * (6 * wpt - wpt // 4)
    if pdl:
        assert ptx.index("griddepcontrol.wait") > ptx.rindex(".v4.b32")
    assert "st.shared" not in ptx and "shfl" in ptx


@pytest.mark.parametrize("capability,wpt", [(90, 4), (87, 4), (90, 8)])
def test_gluon_row_kernel_integer_products_compile(capability, wpt):
    """The one-row kernel with integer products, compiled for sm_90 and sm_87 without a GPU: four
    ``dp2a`` per word and column (16-bit x times the weight bytes), four more per word for the sum of
    x (the zero point's term), no half2 products left."""
    pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    ptx = _gluon_ptx("compile_row_for", capability, rpt=4, wpt=wpt, int_dot=True)
    assert ptx.count("dp2a.lo.s32.u32") + ptx.count("dp2a.hi.s32.u32") == 4 * 4 * wpt + 4 * wpt
    assert "fma.rn.f16x2" not in ptx and "st.shared" not in ptx


@pytest.mark.parametrize("capability", [90, 87])
def test_gluon_row_kernel_shared_x_compiles(capability):
    """x rounded once per warp (``x_shared``): a lane rounds one of its four words (four ``dp2a`` for
    its Σx instead of sixteen), the packed pairs gathered through shared memory, the products as before."""
    pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    ptx = _gluon_ptx("compile_row_for", capability, rpt=4, wpt=4, int_dot=True, x_shared=True)
    assert ptx.count("dp2a.lo.s32.u32") + ptx.count("dp2a.hi.s32.u32") == 4 * 4 * 4 + 4
    assert ptx.count("0f4B400000") == 8  # the FMAs that round x: one word's 8 pairs' halves (32 without)
    assert "stmatrix" in ptx or "st.shared" in ptx


@pytest.mark.parametrize("capability,stages", [(90, 0), (87, 0), (90, 4), (87, 4)])
def test_gluon_kernel_compiles_for_hopper_and_orin(capability, stages):
    """Compiled for sm_90 (the H100) and sm_87 (Jetson Orin), no GPU needed: the words arrive by
    16-byte loads and reach the tensor cores without a shuffle (``assert_trivial`` would fail the
    compile if a layout conversion were needed). The register pipeline counts its units' spans and
    tiles on: one integer division in all (the run's first unit), two barriers a unit. The codes:
    one HADD2 (nibbles 0, 2) or HFMA2 (nibbles 1, 3, by 1/16) per pair, then the HMUL2 by the scale;
    the zero points' half2 built by bit operations, no conversion to fp16."""
    pytest.importorskip("edge_awq.kernels.gluon_w4a16", reason="this Triton has no Gluon")
    ptx = _gluon_ptx("compile_for", capability, stages=stages)
    loads = "cp.async.cg.shared.global" if stages else "ld.global.v4"  # 16-byte copies, 16-byte loads
    assert ptx.count(loads) >= 4 and ptx.count("mma.sync.aligned.m16n8k16") >= 32
    assert "shfl" not in ptx
    assert ptx.count("fma.rn.f16x2") == ptx.count("add.f16x2") == ptx.count("mul.f16x2") // 2 > 0
    assert "cvt.rn.f16" not in ptx
    if not stages:
        assert ptx.count("div.s32") + ptx.count("rem.s32") == 1 and ptx.count("bar.sync") == 2


def test_dispatch_on_cpu_is_the_reference_and_is_logged(caplog):
    lin = _layer(256, 72, 64, 5, bias=True).to("cpu")
    x = _x(3, 256, torch.float32, 6).cpu()
    dispatch._announce.cache_clear()
    with caplog.at_level(logging.INFO, logger="edge_awq.kernels.dispatch"):
        y1, y2 = lin(x), lin(x)
    assert torch.equal(y1, w4a16_linear_reference(x, lin.qweight, lin.qzeros, lin.scales, lin.bias, 64))
    assert torch.equal(y1, y2)
    assert [r.getMessage() for r in caplog.records] == ["W4A16 kernels: reference (cpu: torch reference)"]
    assert select_backend(torch.device("cpu"), KernelSettings(backend="triton"))[0] == "reference"
    with pytest.raises(ValueError, match="kernel backend 'cuda-magic'"):
        KernelSettings(backend="cuda-magic")


@pytest.mark.parametrize("k,n,group", [(256, 64, 32), (576, 144, 64), (1024, 128, 128)])
def test_torch_int4_layout_conversion(k, n, group):
    lin = _layer(k, n, group, k + n, bias=True).to("cpu")
    packed = to_int4pack(lin.qweight, lin.qzeros, lin.scales)
    x = _x(4, k, torch.bfloat16, 9).cpu()
    y = int4pack_linear(x, *packed, group, lin.bias)
    assert _rel(y, _ref(x, lin)) < TOL[torch.bfloat16]
    assert inner_k_tiles(72, 256, 64) is None and inner_k_tiles(144, 576, 64) == 4


def test_kmajor_layer_on_cpu_falls_back_to_the_reference():
    lin = _layer(256, 72, 64, 12, bias=True).to("cpu")
    x = torch.randn(3, 256)
    ref = lin(x)
    assert lin.prepare(KernelSettings()) == "reference" and lin.qweight is not None  # CPU: kept as stored
    lin.use_kmajor()
    assert lin.qweight is None
    assert torch.equal(lin(x), ref)


def test_w4a16_linear_accepts_batched_input():
    lin = _layer(256, 72, 64, 11, bias=False).to("cpu")
    x = torch.randn(2, 5, 256)
    y = w4a16_linear(x, lin)
    assert y.shape == (2, 5, 72)
    assert torch.allclose(y, lin(x.reshape(10, 256)).reshape(2, 5, 72))
