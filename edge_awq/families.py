"""Model families as data: what differs between llama, qwen2 and mistral, and the AWQ scaling groups.

Adding a family means adding one ``Family`` entry here; the model and the quantizer are generic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ScaleGroup:
    """Linears that share one input and so one AWQ per-channel scale s.

    ``prev`` absorbs 1/s (a norm weight or the rows of a linear), ``linears`` are multiplied by
    s along their input channels, and the search measures the output error of ``inspect``.
    """

    name: str
    prev: str
    linears: tuple[str, ...]
    inspect: str


# The four groups of DESIGN.md, shared by every llama-like family. Module paths are relative
# to a decoder layer.
LLAMA_GROUPS = (
    ScaleGroup("attn_in", "input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "self_attn"),
    ScaleGroup("attn_out", "self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    ScaleGroup("mlp_in", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ScaleGroup("mlp_out", "mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)

# Clipping q/k is skipped, as in the reference: their errors are amplified through softmax in ways
# the per-linear output error does not see.
NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")


@dataclass(frozen=True)
class Family:
    name: str
    qkv_bias: Callable[[dict[str, Any]], bool]
    o_bias: Callable[[dict[str, Any]], bool]
    scale_groups: tuple[ScaleGroup, ...] = LLAMA_GROUPS
    no_clip: tuple[str, ...] = NO_CLIP


FAMILIES = {
    "llama": Family("llama", lambda cfg: bool(cfg.get("attention_bias", False)),
                    lambda cfg: bool(cfg.get("attention_bias", False))),
    "qwen2": Family("qwen2", lambda cfg: True, lambda cfg: False),
    "mistral": Family("mistral", lambda cfg: False, lambda cfg: False),
}

LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
