"""Write an HF model folder with a real architecture config and random bf16 weights, fast.

    python tools/make_random_model.py llama-2-7b OUT_DIR [--vocab N] [--layers N] [--tokenizer DIR]

Speed work needs real shapes, not trained weights. Weights are N(0, 0.02) (norms 1), written
straight to safetensors one tensor at a time, so memory stays at one tensor. ``--tokenizer``
copies a tokenizer folder in (then ``--vocab`` should cover its ids, e.g. 49152 for SmolLM2's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from edge_awq.config import ModelConfig
from edge_awq.quantize import MAX_SHARD_BYTES, expected_tensors
from edge_awq.weights import write_json, write_sharded

PRESETS = {
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, rope_theta=10000.0,
                       max_position_embeddings=4096, rms_norm_eps=1e-5),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                       max_position_embeddings=8192, rms_norm_eps=1e-5),
    "qwen2-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0,
                     max_position_embeddings=32768, rms_norm_eps=1e-6),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--tokenizer", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    raw = dict(PRESETS[a.preset], hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
               dtype="bfloat16")
    if a.vocab:
        raw["vocab_size"] = a.vocab
    if a.layers:
        raw["num_hidden_layers"] = a.layers
    cfg = ModelConfig.from_dict(raw)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    gen = torch.Generator().manual_seed(a.seed)
    shapes = list(expected_tensors(cfg).items())

    def tensor(name, shape):
        if name.endswith("norm.weight"):
            return torch.ones(shape, dtype=torch.bfloat16)
        return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)

    write_sharded(a.out, [(n, torch.bfloat16, tuple(s), lambda n=n, s=s: tensor(n, s)) for n, s in shapes],
                  MAX_SHARD_BYTES)
    write_json(a.out / "config.json", raw)
    if a.tokenizer:
        for p in a.tokenizer.iterdir():
            if p.suffix in (".json", ".jinja", ".model", ".txt") and p.name != "config.json":
                shutil.copy(p, a.out / p.name)
    print(json.dumps({"out": str(a.out), "params": sum(int(torch.Size(s).numel()) for _, s in shapes),
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
