"""AWQ search math: per-channel scale grid search and clip search. Pure tensor functions, no I/O.

Shapes: weights are (N, K) = (out_features, in_features); activations are (T, K) or
(..., K) with the channel last. All arithmetic is fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .quant import MAX_Q, dequantize, fake_quantize, quantize


@dataclass(frozen=True)
class ScaleResult:
    ratio: float
    scales: torch.Tensor  # (K,) fp32: divide the input (prev op) by it, multiply weight columns by it
    losses: tuple[float, ...]  # output MSE per grid point


def channel_mean_abs(x: torch.Tensor) -> torch.Tensor:
    """(..., K) → (K,) mean |x| per input channel, the AWQ activation statistic."""
    k = x.shape[-1]
    flat = x.reshape(-1, k)
    total = torch.zeros(k, dtype=torch.float64, device=x.device)
    for chunk in flat.split(8192):  # bounded temporaries; fp64 sum keeps long sums exact enough
        total += chunk.abs().sum(0, dtype=torch.float64)
    return (total / flat.shape[0]).float()


def grid_scales(x_mean: torch.Tensor, ratio: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """s = x_mean^ratio (llm-awq), or with ``w_mean`` x_mean^ratio / w_mean^(1 − ratio) (AutoAWQ's
    duo scaling); clamped at 1e-4 and normalised by sqrt(max · min)."""
    s = x_mean.pow(ratio) if w_mean is None else x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)
    s = s.clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def weight_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """(N, K) weights sharing one input → (K,) mean of |w| / max|w| of its group, per input channel."""
    w = torch.cat(weights, 0).float()
    wg = w.reshape(-1, group_size).abs()
    return (wg / (wg.amax(1, keepdim=True) + 1e-6)).reshape(w.shape).mean(0)


def search_scale(x_mean: torch.Tensor, weights: dict[str, torch.Tensor],
                 loss_fn: Callable[[dict[str, torch.Tensor]], float], group_size: int,
                 n_grid: int = 20, duo: bool = False) -> ScaleResult:
    """Grid-search the ratio whose scales give the least output error after quantization.

    ``weights`` are the FP weights of the linears that share this input; ``loss_fn`` gets the
    candidate weights Q(W·s)/s by name and returns the inspected module's output MSE. ``duo``
    divides the scales by the weights' relative magnitude too (``weight_mean``): on
    Qwen2.5-Coder-1.5B the plain grid barely moves the error of ordinary tokens (docs/benchmarks.md).
    """
    w_mean = weight_mean(list(weights.values()), group_size) if duo else None
    best, best_loss, losses = None, float("inf"), []
    for i in range(n_grid):
        ratio = i / n_grid
        s = grid_scales(x_mean, ratio, w_mean)
        cand = {name: fake_quantize(w * s, group_size) / s for name, w in weights.items()}
        loss = loss_fn(cand)
        losses.append(loss)
        if loss < best_loss:
            best, best_loss = (ratio, s), loss
    if best is None:  # every loss was NaN/inf: no scaling is the safe answer
        return ScaleResult(0.0, torch.ones_like(x_mean), tuple(losses))
    return ScaleResult(best[0], best[1], tuple(losses))


def sample_tokens(x: torch.Tensor, n: int = 512) -> torch.Tensor:
    """(..., K) → (≈n, K): every (T // n)-th token, the reference's strided sample."""
    flat = x.reshape(-1, x.shape[-1])
    return flat[:: max(flat.shape[0] // n, 1)]


def group_gram(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x (T, K) → (K/g, g, g): per input group, X_jᵀ X_j / T.

    The clip objective — mean over tokens of the squared per-group partial output error
    (x_j · d_j)² — equals d_jᵀ G_j d_j, so the tokens are folded in once instead of once per
    candidate (same objective, about T/g times less work per candidate).
    """
    t, k = x.shape
    xg = x.reshape(t, k // group_size, group_size).transpose(0, 1)  # (G, T, g)
    return xg.transpose(1, 2) @ xg / t


def search_clip(w: torch.Tensor, gram: torch.Tensor, group_size: int, n_grid: int = 20,
                max_shrink: float = 0.5) -> torch.Tensor:
    """Per (output channel, group) clip threshold: max|w|·(1 − i/n_grid), i < max_shrink·n_grid,
    minimising the group's output error. w (N, K), gram from ``group_gram`` → (N, K/g) fp32."""
    n, k = w.shape
    wg = w.reshape(n, k // group_size, group_size)
    org_max = wg.abs().amax(dim=-1, keepdim=True)
    best_max = org_max.clone()
    best_err = torch.full((n, k // group_size), float("inf"), device=w.device)
    for i in range(int(max_shrink * n_grid)):
        max_val = org_max * (1 - i / n_grid)
        cur = torch.maximum(torch.minimum(wg, max_val), -max_val)
        d = fake_quantize(cur.reshape(n, k), group_size).reshape(wg.shape) - wg
        err = (torch.einsum("ngi,gij->ngj", d, gram) * d).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better.unsqueeze(-1), max_val, best_max)
    return best_max.squeeze(-1)


def apply_clip(w: torch.Tensor, max_val: torch.Tensor, group_size: int) -> torch.Tensor:
    """Clamp each (output channel, group) of w (N, K) to ±max_val (N, K/g)."""
    n, k = w.shape
    m = max_val.unsqueeze(-1)
    wg = w.reshape(n, k // group_size, group_size)
    return torch.maximum(torch.minimum(wg, m), -m).reshape(n, k)


def refit_gains(w: torch.Tensor, gram: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per (output channel, group) least-squares gain for round-to-nearest's codes: the α that
    minimises (w − α·ŵ)ᵀ G (w − α·ŵ), i.e. (ŵᵀGw)/(ŵᵀGŵ), clamped to [0.5, 2]. Multiplying the
    group's scale by α keeps the codes and zero point and lowers the output error on the
    calibration inputs. w (N, K), gram from ``group_gram`` → (N, K/g) fp32."""
    n, k = w.shape
    wh = dequantize(*quantize(w, group_size), group_size).reshape(n, k // group_size, group_size)
    wg = w.float().reshape(wh.shape)
    gwh = torch.einsum("ngi,gij->ngj", wh, gram)
    num, den = (gwh * wg).sum(-1), (gwh * wh).sum(-1)
    return torch.where(den > 0, num / den, torch.ones_like(den)).clamp(0.5, 2.0)


def input_hessian(x: torch.Tensor) -> torch.Tensor:
    """x (..., K) → (K, K) XᵀX / T over every token: the second moment GPTQ's rounding minimises against."""
    flat = x.reshape(-1, x.shape[-1])
    h = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float32, device=x.device)
    for chunk in flat.split(4096):  # bounded temporaries
        h.addmm_(chunk.float().T, chunk.float())
    return h / flat.shape[0]


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, group_size: int, damp: float = 0.01,
                  block: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ's rounding (Frantar et al. 2022): the columns of w (N, K) are rounded in order and each
    rounding error is spread over the columns not yet rounded, weighted by the inverse Hessian, so
    the output error on inputs with second moment ``hessian`` (K, K) is what gets minimised rather
    than each weight's own error. Group scale and zero point as ``quant.quantize``, taken from the
    group's weights as they stand when its first column is reached (columns in their natural order:
    on Qwen2.5-Coder-1.5B, GPTQ's activation order with group scales fixed beforehand did worse,
    docs/benchmarks.md). Returns (q, scale, zero) like ``quant.quantize``. With a diagonal Hessian
    it is round-to-nearest.
    """
    n, k = w.shape
    if k % group_size or block % group_size:
        raise ValueError(f"in_features {k} and block {block} must be multiples of group size {group_size}")
    w = w.float().clone()
    h = hessian.float().clone()
    dead = torch.diag(h) == 0  # channels never active: any weight there is free, so zero it
    h[dead, dead] = 1
    w[:, dead] = 0
    h.diagonal().add_(damp * torch.diag(h).mean())  # in place: an identity matrix would be a third K×K
    # Upper Cholesky factor of H⁻¹: row i holds the error-propagation weights of column i. One step
    # at a time, so that at most two K×K matrices of ours are alive (K = 8960: 320 MB each).
    factor = torch.linalg.cholesky(h)
    del h
    inverse = torch.cholesky_inverse(factor)
    del factor
    hinv = torch.linalg.cholesky(inverse, upper=True)
    del inverse
    q = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    scale = torch.empty(n, k // group_size, device=w.device)
    zero = torch.empty(n, k // group_size, device=w.device)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb, hb = w[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        err = torch.empty_like(wb)
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:
                _, s, z = quantize(wb[:, i:i + group_size], group_size)
                scale[:, col // group_size], zero[:, col // group_size] = s[:, 0], z[:, 0].float()
                s, z = s[:, 0], z[:, 0].float()
            qi = (torch.round(wb[:, i] / s) + z).clamp(0, MAX_Q)
            q[:, col] = qi.to(torch.uint8)
            e = (wb[:, i] - (qi - z) * s) / hb[i, i]
            wb[:, i:].sub_(e[:, None] * hb[i, i:][None, :])
            err[:, i] = e
        w[:, b1:].sub_(err @ hinv[b0:b1, b1:])
    return q, scale, zero.to(torch.uint8)
