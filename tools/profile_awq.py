"""Where AWQ search time goes, for one decoder block of a real model (CPU or CUDA).

    python tools/profile_awq.py MODEL_DIR [--block 0] [--blocks 8] [--device cpu]

Prints seconds per stage, the matmul FLOPs each stage must do (from the shapes) and the achieved
GFLOP/s, then times the clip search two ways on the same inputs: the reference formulation
(materialising every sampled token's per-group partial output) and ours (per-group Gram
matrices, the same objective).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoTokenizer

from edge_awq.awq import group_gram, sample_tokens, search_clip
from edge_awq.calibration import CalibConfig, calibration_blocks
from edge_awq.config import ModelConfig
from edge_awq.model import load_block, rope_cos_sin, rope_inv_freq
from edge_awq.quant import fake_quantize
from edge_awq.quantize import QuantizeOptions, awq_block
from edge_awq.weights import WeightReader


def clip_reference_style(w, x, g, n_grid=20, max_shrink=0.5, oc_batch=256):
    """The reference formulation: (oc, tokens, groups, g) products per candidate, batched over oc."""
    n, k = w.shape
    xg = x.reshape(1, x.shape[0], k // g, g)
    out = []
    for wb in w.split(oc_batch):
        wg = wb.reshape(wb.shape[0], 1, k // g, g)
        org = (xg * wg).sum(-1)
        org_max = wg.abs().amax(-1, keepdim=True)
        best, best_err = org_max.clone(), torch.full_like(org_max, float("inf"))
        for i in range(int(max_shrink * n_grid)):
            m = org_max * (1 - i / n_grid)
            q = fake_quantize(torch.clamp(wg, -m, m).reshape(wb.shape), g).reshape(wg.shape)
            err = ((xg * q).sum(-1) - org).pow(2).mean(1, keepdim=True).unsqueeze(-1)
            better = err < best_err
            best_err, best = torch.where(better, err, best_err), torch.where(better, m, best)
        out.append(best.reshape(wb.shape[0], -1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--block", type=int, default=0)
    ap.add_argument("--blocks", type=int, default=8, help="calibration blocks of 512 tokens")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    cfg = ModelConfig.from_folder(a.model)
    reader = WeightReader(a.model)
    calib = calibration_blocks(AutoTokenizer.from_pretrained(a.model), CalibConfig(max_blocks=a.blocks))
    x = torch.nn.functional.embedding(calib, reader.get("model.embed_tokens.weight")).float().to(dev)
    rope = tuple(t.to(dev) for t in rope_cos_sin(rope_inv_freq(cfg), torch.arange(calib.shape[1]), torch.float32))
    opts = QuantizeOptions(group_size=a.group_size, device=a.device)
    with torch.no_grad():
        for i in range(a.block + 1):
            block = load_block(reader, cfg, i, torch.float32).to(dev)
            if i < a.block:
                x = torch.cat([block(xc, *rope) for xc in x.split(4)])
        fresh = load_block(reader, cfg, a.block, torch.float32).to(dev)
        record, *_ = awq_block(block, x, rope, a.group_size, opts, cfg.family.scale_groups, cfg.family.no_clip)

    t, h, i_, q, kv = calib.numel(), cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, \
        cfg.num_kv_heads * cfg.head_dim
    seq = calib.shape[1]
    attn = 2 * h * (q + 2 * kv) + 2 * q * h + 2 * 2 * q * seq  # qkv, o, scores+values (full T×T on CPU)
    mlp = 3 * 2 * h * i_
    per_tok = {"capture": attn + mlp, "scale.attn_in": 21 * attn, "scale.mlp_in": 21 * mlp,
               "scale.mlp_out": 21 * 2 * h * i_, "scale.attn_out": 21 * 2 * q * h}
    print(f"block {a.block} of {cfg.model_type} (hidden {h}, ffn {i_}), {t} calibration tokens, {a.device}")
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}{'GFLOP':>9}{'GFLOP/s':>9}")
    total = sum(record["seconds"].values())
    for stage, sec in record["seconds"].items():
        flops = per_tok.get(stage, 0) * t / 1e9
        rate = f"{flops / sec:9.0f}" if flops else f"{'':>9}"
        print(f"{stage:<16}{sec:9.2f}{100 * sec / total:7.0f}%{flops:9.0f}{rate}")

    with torch.no_grad():
        w = fresh.mlp.down_proj.weight
        xs = sample_tokens(torch.randn(t, w.shape[1], device=dev))
        t0 = time.perf_counter()
        ref = clip_reference_style(w, xs, a.group_size)
        t1 = time.perf_counter()
        ours = search_clip(w, group_gram(xs, a.group_size), a.group_size)
        t2 = time.perf_counter()
    agree = (ref == ours).float().mean().item()
    print(f"clip down_proj {tuple(w.shape)}: reference-style {t1 - t0:.2f} s, Gram {t2 - t1:.2f} s "
          f"({(t1 - t0) / (t2 - t1):.1f}x), same threshold for {100 * agree:.2f} % of (channel, group)")


if __name__ == "__main__":
    main()
