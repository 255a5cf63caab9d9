"""Our model definition against transformers on the same weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from edge_awq.model import load_model
from helpers import make_tiny_model


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_smollm2_logits_match_transformers(smollm2):
    tokens = torch.randint(0, 49152, (2, 96), generator=torch.Generator().manual_seed(1))
    ours = load_model(smollm2)
    theirs = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    with torch.no_grad():
        a = ours(tokens)
        b = theirs(tokens).logits
    assert _rel_err(a, b) < 1e-5
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.99


@pytest.mark.parametrize("model_type,overrides", [
    ("llama", {}),
    ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
               "rope_theta": 500000.0}),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
    ("mistral", {"head_dim": 48}),
])
def test_tiny_random_models_match_transformers(tmp_path, model_type, overrides):
    folder = make_tiny_model(tmp_path / "m", model_type, seed=3, **overrides)
    tokens = torch.randint(0, 49152, (2, 200), generator=torch.Generator().manual_seed(2))
    ours = load_model(folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        err = _rel_err(ours(tokens), theirs(tokens).logits)
    assert err < 1e-5, f"{model_type} {overrides}: relative error {err}"


def test_bf16_weights_match_within_bf16_tolerance(tmp_path):
    folder = make_tiny_model(tmp_path / "m", "qwen2", seed=4, dtype=torch.bfloat16)
    tokens = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(5))
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    ours = load_model(folder)
    with torch.no_grad():
        err = _rel_err(ours(tokens, dtype=torch.bfloat16), theirs(tokens).logits.float())
    assert err < 2e-2
