"""AWQ search math against direct computation."""

import torch

from edge_awq.awq import (
    apply_clip,
    channel_mean_abs,
    gptq_quantize,
    grid_scales,
    group_gram,
    input_hessian,
    refit_gains,
    sample_tokens,
    search_clip,
    search_scale,
    weight_mean,
)
from edge_awq.quant import dequantize, fake_quantize, quantize


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_clip_search_matches_brute_force():
    n, k, g = 16, 256, 64
    w = torch.randn(n, k, generator=_gen(0)) * 0.05
    x = torch.randn(300, k, generator=_gen(1)) * torch.linspace(0.1, 3, k)
    got = search_clip(w, group_gram(x, g), g)
    # Brute force: materialise every token's per-group partial output, as the reference does.
    wg = w.reshape(n, k // g, g)
    xg = x.reshape(-1, k // g, g)
    org_max = wg.abs().amax(-1)
    best_err = torch.full((n, k // g), float("inf"), dtype=torch.float64)
    best = org_max.clone()
    for i in range(10):
        m = org_max * (1 - i / 20)
        cw = fake_quantize(torch.clamp(wg, -m[..., None], m[..., None]).reshape(n, k), g).reshape(wg.shape)
        out_q = torch.einsum("tgj,ngj->ntg", xg.double(), cw.double())
        out_o = torch.einsum("tgj,ngj->ntg", xg.double(), wg.double())
        err = (out_q - out_o).pow(2).mean(1)
        better = err < best_err * (1 - 1e-9)
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, m, best)
    assert (got - best).abs().max() < 1e-6
    assert (got < org_max).any(), "some groups should clip on heavy-tailed weights"


def test_apply_clip_bounds_each_group():
    w = torch.randn(4, 128, generator=_gen(2))
    m = torch.rand(4, 2, generator=_gen(3))
    c = apply_clip(w, m, 64).reshape(4, 2, 64)
    assert (c.abs() <= m[..., None] + 1e-7).all()


def test_scale_search_picks_least_loss_and_beats_rtn():
    k, n, g = 128, 64, 32
    x = torch.randn(512, k, generator=_gen(4))
    x[:, :4] *= 20  # a few salient channels, as in real activations
    w = torch.randn(n, k, generator=_gen(5)) * 0.05
    ref = x @ w.t()

    def loss(cand):
        return (x @ cand["w"].t() - ref).pow(2).mean().item()

    res = search_scale(channel_mean_abs(x), {"w": w}, loss, g)
    assert res.losses[0] == loss({"w": fake_quantize(w, g)})  # ratio 0 is plain RTN
    assert min(res.losses) == loss({"w": fake_quantize(w * res.scales, g) / res.scales})
    assert min(res.losses) < res.losses[0]
    assert res.ratio > 0


def test_grid_scales_normalised_and_statistics():
    x = torch.rand(1000, 64, generator=_gen(6)) * 5
    mean = channel_mean_abs(x)
    assert torch.allclose(mean, x.abs().mean(0), rtol=1e-5)
    s = grid_scales(mean, 0.5)
    assert abs((s.max() * s.min()).item() - 1) < 1e-5
    assert sample_tokens(x.reshape(10, 100, 64), 100).shape == (100, 64)


def test_duo_scaling_uses_weight_magnitudes():
    g = 32
    w = torch.randn(16, 64, generator=_gen(7))
    w[:, 5] *= 8  # one column large within its groups
    wm = weight_mean([w[:8], w[8:]], g)
    ref = (w.abs().reshape(-1, g) / w.abs().reshape(-1, g).amax(1, keepdim=True)).reshape(16, 64).mean(0)
    assert torch.allclose(wm, ref, atol=1e-5)
    assert wm.argmax() == 5
    x_mean = torch.rand(64, generator=_gen(8)) + 0.5
    s0 = grid_scales(x_mean, 0.0, wm)  # ratio 0: weights only, s ∝ 1 / w_mean
    assert torch.allclose(s0 * (wm + 1e-4), (s0 * (wm + 1e-4)).mean().expand(64), rtol=1e-4)
    assert abs((s0.max() * s0.min()).item() - 1) < 1e-5
    x = torch.randn(256, 64, generator=_gen(9))
    ref_out = x @ w.t()
    res = search_scale(channel_mean_abs(x), {"w": w}, lambda c: (x @ c["w"].t() - ref_out).pow(2).mean().item(),
                       g, duo=True)
    assert min(res.losses) == res.losses[round(res.ratio * 20)]
    assert not torch.equal(grid_scales(x_mean, 0.5, wm), grid_scales(x_mean, 0.5))


def test_refit_gains_minimise_each_groups_output_error():
    n, k, g = 32, 256, 64
    w = torch.randn(n, k, generator=_gen(8)) * 0.05
    x = torch.randn(400, k, generator=_gen(9)) * torch.linspace(0.2, 4, k)
    gram = group_gram(x, g)
    alpha = refit_gains(w, gram, g)
    assert alpha.shape == (n, k // g) and (alpha >= 0.5).all() and (alpha <= 2).all()
    q, scale, zero = quantize(w, g)

    def group_err(s):  # per (row, group) mean squared partial output error over the tokens
        d = (dequantize(q, s, zero, g) - w).reshape(n, k // g, g)
        return torch.einsum("tgj,ngj->ntg", x.reshape(-1, k // g, g), d).pow(2).mean(1)

    rtn, refit = group_err(scale), group_err(scale * alpha)
    assert (refit <= rtn * (1 + 1e-5)).all()
    assert refit.sum() < 0.99 * rtn.sum()
    for step in (0.99, 1.01):  # a least-squares optimum: moving the gain either way is worse
        assert (group_err(scale * alpha * step) >= refit * (1 - 1e-5)).all()


def _correlated(t, k, seed):
    mix = torch.randn(k, k, generator=_gen(seed)) * 0.15 + torch.eye(k)
    return (torch.randn(t, k, generator=_gen(seed + 1)) * torch.linspace(0.2, 3, k)) @ mix


def test_input_hessian_is_the_token_mean_of_xxt():
    x = torch.randn(2, 300, 48, generator=_gen(20))
    flat = x.reshape(-1, 48).double()
    torch.testing.assert_close(input_hessian(x).double(), flat.T @ flat / 600, rtol=1e-5, atol=1e-6)


def test_gptq_is_round_to_nearest_for_uncorrelated_channels():
    """With a diagonal Hessian no error can be compensated: GPTQ must give RTN's exact codes."""
    w = torch.randn(24, 256, generator=_gen(10)) * 0.05
    h = torch.diag(torch.rand(256, generator=_gen(11)) + 0.5)
    for got, want in zip(gptq_quantize(w, h, 64), quantize(w, 64), strict=True):
        assert torch.equal(got, want)


def test_gptq_lowers_the_output_error_on_correlated_inputs():
    n, k, g = 64, 256, 64
    w = torch.randn(n, k, generator=_gen(12)) * 0.05
    both = _correlated(3000, k, 13)
    x, held = both[:2000], both[2000:]  # held: same distribution, tokens not in the Hessian
    q, scale, zero = gptq_quantize(w, input_hessian(x), g)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and zero.dtype == torch.uint8
    assert torch.equal(scale, scale.half().float())  # what the fp16 checkpoint stores

    def out_err(x_, codes):
        return (x_ @ (dequantize(*codes, g) - w).T).pow(2).mean().item()

    rtn = quantize(w, g)
    assert out_err(x, (q, scale, zero)) < 0.7 * out_err(x, rtn)
    assert out_err(held, (q, scale, zero)) < 0.8 * out_err(held, rtn)


def test_gptq_survives_dead_channels():
    """An input channel that is always zero has no Hessian entry: no NaN, and its weights are free."""
    n, k, g = 16, 128, 32
    w = torch.randn(n, k, generator=_gen(16)) * 0.05
    x = _correlated(500, k, 17)
    x[:, 5] = 0
    q, scale, zero = gptq_quantize(w, input_hessian(x), g)
    deq = dequantize(q, scale, zero, g)
    assert torch.isfinite(deq).all() and torch.isfinite(scale).all()
    assert (x @ (deq - w).T).pow(2).mean() < (x @ (fake_quantize(w, g) - w).T).pow(2).mean()
