"""Test helpers: tiny random-weight HF models of each family."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

# AutoAWQ's GEMM nibble order, written out again on purpose: layout tests must not import edge_awq's constant.
ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of ``path`` (negative offsets count from the end): a corruption the file's
    size does not show, only its sha256."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def corrupted_copy(src: Path, dst: Path, name: str, offset: int) -> Path:
    """A copy of the shard folder ``src`` at ``dst`` with one byte of file ``name`` flipped."""
    shutil.copytree(src, dst)
    flip_byte(dst / name, offset)
    return dst


def pack_by_spec(values: torch.Tensor) -> torch.Tensor:
    """Word [r, c] = OR over i of values[r, 8c + ORDER[i]] << 4i, as a signed 32-bit integer."""
    rows, cols = values.shape
    out = torch.zeros(rows, cols // 8, dtype=torch.int32)
    for r in range(rows):
        for c in range(cols // 8):
            word = 0
            for i in range(8):
                word |= int(values[r, 8 * c + ORDER[i]]) << (4 * i)
            out[r, c] = word - (1 << 32) if word >= 1 << 31 else word
    return out


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def tiny_config(model_type: str, **overrides):
    from transformers import AutoConfig

    base = dict(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rms_norm_eps=1e-6, tie_word_embeddings=False)
    base.update(overrides)
    return AutoConfig.for_model(model_type, **base)


def make_tiny_model(folder: Path, model_type: str, tokenizer_from: Path | None = None, seed: int = 0,
                    dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """Save a random-weight HF model of the given family (safetensors) into ``folder``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():  # trained-like spread: norms near 1, other weights ~0.05
            if p.dim() == 1 and p.shape[0] == model.config.hidden_size:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.05)
    model.to(dtype).save_pretrained(folder)
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_from / name).exists():
                shutil.copy(tokenizer_from / name, folder / name)
    return folder
