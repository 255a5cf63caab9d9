"""AutoAWQ GEMM packing: bit-exact against an independent, loop-based reading of the published layout."""

import pytest
import torch

from edge_awq.kernels.reference import dequantize_gemm
from edge_awq.pack import pack_int4, pack_linear, unpack_int4, unpack_linear
from edge_awq.quant import dequantize, quantize
from helpers import ORDER, pack_by_spec


def test_golden_word():
    # Columns 0..7 hold 1..8: nibble i holds column ORDER[i] → value ORDER[i] + 1.
    vals = torch.arange(1, 9, dtype=torch.int32)[None]
    expected = sum((ORDER[i] + 1) << (4 * i) for i in range(8))  # 0x86427531
    assert expected == 0x86427531
    assert pack_int4(vals).item() == expected - (1 << 32)
    assert torch.equal(unpack_int4(pack_int4(vals)), vals.to(torch.uint8))


@pytest.mark.parametrize("rows,cols", [(3, 8), (16, 72), (5, 200)])
def test_pack_matches_spec_both_ways(rows, cols):
    g = torch.Generator().manual_seed(rows * cols)
    vals = torch.randint(0, 16, (rows, cols), generator=g)
    spec = pack_by_spec(vals)
    assert torch.equal(pack_int4(vals), spec)
    assert torch.equal(unpack_int4(spec), vals.to(torch.uint8))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("n", [72, 256])
def test_linear_round_trip_and_reference_dequant(group, n):
    k = 256
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(group + n)) * 0.05
    q, scale, zero = quantize(w, group)
    t = pack_linear(q, scale, zero)
    assert t["qweight"].shape == (k, n // 8) and t["qweight"].dtype == torch.int32
    assert t["qzeros"].shape == (k // group, n // 8) and t["scales"].shape == (k // group, n)
    assert t["scales"].dtype == torch.float16
    # the whole tensors, both ways, against the loop-based reading of the layout
    assert torch.equal(t["qweight"], pack_by_spec(q.t())) and torch.equal(t["qzeros"], pack_by_spec(zero.t()))
    q2, s2, z2 = unpack_linear(pack_by_spec(q.t()), pack_by_spec(zero.t()), t["scales"])
    assert torch.equal(q2, q) and torch.equal(z2, zero) and torch.equal(s2, scale)
    w_hat = dequantize(q, scale, zero, group)
    ref = dequantize_gemm(t["qweight"], t["qzeros"], t["scales"], group, torch.float32)
    assert torch.equal(ref, w_hat.t())
