"""Write an HF model folder with a real architecture config and random bf16 weights, fast.

    python tools/make_random_model.py llama-2-7b OUT_DIR [--vocab N] [--layers N] [--tokenizer DIR] [--awq G]

Speed work needs real shapes, not trained weights. Weights are N(0, 0.02) (norms 1), written
straight to safetensors one tensor at a time, so memory stays at one tensor. ``--tokenizer``
copies a tokenizer folder in (then ``--vocab`` should cover its ids, e.g. 49152 for SmolLM2's).
``--awq G`` writes a 4-bit AWQ checkpoint (GEMM layout, group G) instead: random codes and zeros,
scales that give weights of about the same spread, fp16 elsewhere; a quarter of the bytes to
write and no quantize step, for runtime benchmarks that only need the shapes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from edge_awq.config import ModelConfig, QuantConfig
from edge_awq.model import checkpoint_tensors
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
    ap.add_argument("--awq", type=int, default=None, metavar="GROUP", help="Write a random 4-bit AWQ checkpoint.")
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

    if a.awq:
        qcfg = QuantConfig(group_size=a.awq)
        raw["quantization_config"] = qcfg.to_hf()
        raw["dtype"] = "float16"
        specs = checkpoint_tensors(cfg, qcfg)

        def awq_tensor(name, shape, dtype):
            if dtype == torch.int32:  # eight random 4-bit codes (or zeros) per int32
                return torch.randint(-2**31, 2**31 - 1, shape, generator=gen, dtype=torch.int64).to(torch.int32)
            if name.endswith(".scales"):  # (q − z)·s with q, z uniform in 0..15: spread about 6·s
                return torch.full(shape, 0.02 / 6, dtype=torch.float16)
            if name.endswith(".bias"):
                return torch.zeros(shape, dtype=torch.float16)
            return tensor(name, shape).to(torch.float16)

        sources = [(n, torch.int32 if d == torch.int32 else torch.float16, tuple(s),
                    lambda n=n, s=s, d=d: awq_tensor(n, s, d)) for n, (s, d) in specs.items()]
        write_sharded(a.out, sources, MAX_SHARD_BYTES)
        shapes = [(n, s) for n, (s, _) in specs.items()]
    else:
        write_sharded(a.out, [(n, torch.bfloat16, tuple(s), lambda n=n, s=s: tensor(n, s)) for n, s in shapes],
                      MAX_SHARD_BYTES)
    write_json(a.out / "config.json", raw)
    if a.tokenizer:
        for p in a.tokenizer.iterdir():
            if p.suffix in (".json", ".jinja", ".model", ".txt") and p.name != "config.json":
                shutil.copy(p, a.out / p.name)
    print(json.dumps({"out": str(a.out), "stored_elements": sum(int(torch.Size(s).numel()) for _, s in shapes),
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
