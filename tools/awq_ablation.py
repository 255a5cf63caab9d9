"""AWQ scale-search variants on a whole model, for finding why AWQ loses to RTN (issue 2).

    python tools/awq_ablation.py MODEL_DIR VARIANT [--calib-blocks 8] [--out results.json]

VARIANT: ``rtn`` (round to nearest), or the scale search (no clipping) with any of, joined by
``_``: ``x`` (llm-awq: s = x̄^r), ``duo`` (AutoAWQ's duo scaling: s = x̄^r / w̄^(1−r), w̄ the mean
per-group-normalised |w|), ``nosink`` (position 0 of each calibration block, the attention sink
with massive activations, left out of x̄ and of the loss). Every block is searched on its FP
input, scaled, then fake-quantized in place (g128); perplexity on the first 2 windows of 2048
bbc-tech tokens. Per block it also prints the block-output MSE against FP on held-out bbc-tech
tokens (512-token rows), for non-sink and sink positions, beside RTN's — whether the search
objective helps the tokens that matter.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

import edge_awq.quantize as Q
from edge_awq.awq import channel_mean_abs, search_scale
from edge_awq.calibration import CalibConfig, calibration_blocks
from edge_awq.eval import load_eval_text
from edge_awq.families import LINEAR_NAMES
from edge_awq.model import load_model, rope_cos_sin, rope_inv_freq
from edge_awq.quant import fake_quantize

G = 128
CHUNK = 4


def search(block, group, xin, rope, nosink: bool, duo: bool) -> tuple[float, torch.Tensor]:
    """The quantizer's grid search, with the sink optionally left out of x̄ and of the loss."""
    inspect = block.get_submodule(group.inspect)
    refs = [Q._call(inspect, xc, rope) for xc in xin.split(CHUNK)]
    weights = {n: block.get_submodule(n).weight for n in group.linears}
    rel = {n: (n[len(group.inspect) + 1:] + ".weight" if n != group.inspect else "weight") for n in group.linears}
    tokens = slice(1, None) if nosink else slice(None)

    def loss_fn(cand: dict[str, torch.Tensor]) -> float:
        params = {rel[n]: w for n, w in cand.items()}
        return sum((Q._call(inspect, xc, rope, params) - ref)[:, tokens].pow(2).sum(dtype=torch.float64).item()
                   for xc, ref in zip(xin.split(CHUNK), refs, strict=True))

    res = search_scale(channel_mean_abs(xin[:, tokens]), weights, loss_fn, G, duo=duo)
    return res.ratio, res.scales


def rtn_(block) -> None:
    for name in LINEAR_NAMES:
        lin = block.get_submodule(name)
        lin.weight.copy_(fake_quantize(lin.weight.float(), G))


def block_mse(fp, quantized, x, rope) -> tuple[float, float]:
    d = (fp(x, *rope) - quantized(x, *rope)).pow(2)
    return d[:, 1:].mean().item(), d[:, :1].mean().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("variant")
    ap.add_argument("--calib-blocks", type=int, default=8)
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    calib = calibration_blocks(tok, CalibConfig(source="bbc-news", max_blocks=a.calib_blocks))
    ids = tok(load_eval_text("bbc-tech"), return_tensors="pt").input_ids[0]
    windows = [ids[i * 2048:(i + 1) * 2048] for i in range(2)]
    held = ids[3 * 2048:3 * 2048 + 1024].reshape(2, 512)  # not in the perplexity windows
    model = load_model(a.model_dir, torch.float32)
    cfg = model.cfg
    rope = rope_cos_sin(rope_inv_freq(cfg), torch.arange(512), torch.float32)
    flags = set(a.variant.split("_"))
    x = F.embedding(calib, model.model.embed_tokens.weight).float()
    xh = F.embedding(held, model.model.embed_tokens.weight).float()
    res, t = {"variant": a.variant, "blocks": []}, time.time()
    for i in range(cfg.num_layers):
        fp = model.model.layers[i]
        x_next = torch.cat([fp(xc, *rope) for xc in x.split(CHUNK)])
        blk, rec = copy.deepcopy(fp), {}
        if a.variant != "rtn":
            feats, _ = Q._capture(blk, x, cfg.family.scale_groups, rope, CHUNK)
            chosen = []
            for group in cfg.family.scale_groups:
                if Q._group_applies(blk, group):
                    r, s = search(blk, group, feats[group.name], rope, "nosink" in flags, "duo" in flags)
                    chosen.append((group, s))
                    rec[group.name] = r
            for group, s in chosen:
                Q._apply_scale(blk, group, s)
        rtn_(blk)
        ref_rtn = copy.deepcopy(fp)
        rtn_(ref_rtn)
        rec["mse"], rec["mse_rtn"] = block_mse(fp, blk, xh, rope), block_mse(fp, ref_rtn, xh, rope)
        xh = fp(xh, *rope)
        model.model.layers[i] = blk
        res["blocks"].append(rec)
        print(i, round(time.time() - t), rec, flush=True)
        x = x_next
    nll, n = 0.0, 0
    for w in windows:
        logits = model(w[None])[0]
        nll += F.cross_entropy(logits[:-1].float(), w[1:], reduction="sum").item()
        n += len(w) - 1
    res["ppl"], res["seconds"] = math.exp(nll / n), time.time() - t
    print(a.variant, "ppl", res["ppl"], flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
