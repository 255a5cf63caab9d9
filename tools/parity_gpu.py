"""Greedy tokens of the GPU runtime (fused CUDA-graph decode, fp16 activations) against the CPU
reference (``edge-awq generate``'s code: fp32, torch reference kernels) on one shard folder.

    python tools/parity_gpu.py SHARD_DIR [--tokens 64]

Prints, per prompt, whether the token sequences agree and, where they do not, the first
divergence with the reference's top-2 logit gap there (a near tie that fp16 rounding can flip).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edge_awq.engine import Engine
from edge_awq.generate import SamplingParams, eos_ids, generate_tokens, load_tokenizer
from edge_awq.loader import load_shards
from edge_awq.model import KVCache, load_model

PROMPTS = ["The three most important inventions of the last century are",
           "def fibonacci(n):",
           "Here is a short story about a lighthouse keeper:"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards", type=Path)
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    tok = load_tokenizer(a.shards)
    ref_model = load_model(a.shards, torch.float32)
    eos = eos_ids(a.shards, ref_model, tok)
    engine = Engine(load_shards(a.shards, "cuda", torch.float16), 1024, torch.float16)
    params = SamplingParams(max_new_tokens=a.tokens)
    agree = 0
    for text in PROMPTS:
        ids = tok.encode(text)
        ref = list(generate_tokens(ref_model, ids, params, eos))
        engine.reset()
        gpu = list(engine.generate(ids, params, eos))
        if ref == gpu:
            agree += 1
            print(f"AGREE {len(ref)} tokens: {text!r}")
            continue
        i = next((j for j, (x, y) in enumerate(zip(ref, gpu, strict=False)) if x != y), min(len(ref), len(gpu)))
        with torch.no_grad():  # the reference's logits at the divergence
            cache = KVCache.allocate(ref_model.cfg, len(ids) + i + 1, torch.float32)
            logits = ref_model(torch.tensor([ids + ref[:i]]), cache=cache, last_only=True)[0, -1]
        top = logits.topk(2)
        print(f"DIVERGE at token {i} of {len(ref)}: reference {ref[i] if i < len(ref) else 'EOS'} vs GPU "
              f"{gpu[i] if i < len(gpu) else 'EOS'}; reference top-2 logits {top.values[0]:.3f} / "
              f"{top.values[1]:.3f} (gap {top.values[0] - top.values[1]:.3f}): {text!r}")
    print(f"greedy parity: {agree}/{len(PROMPTS)} prompts identical for {a.tokens} tokens")


if __name__ == "__main__":
    main()
