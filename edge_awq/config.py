"""Model and quantization configs: small validated dataclasses read from HF ``config.json``.

Both the transformers 4.x spelling (``rope_theta`` + ``rope_scaling``) and the 5.x one
(``rope_parameters``) are accepted; families are dispatched on ``model_type`` because
GGUF-converted configs carry no ``architectures``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgeAwqError
from .families import FAMILIES, Family

ROPE_TYPES = ("default", "linear", "llama3")


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise EdgeAwqError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeAwqError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise EdgeAwqError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    max_position_embeddings: int
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    def linear_bias(self, name: str) -> bool:
        if name == "self_attn.o_proj":
            return self.o_bias
        return self.qkv_bias if name.startswith("self_attn.") else self.mlp_bias

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each quantized linear in a block, by name."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "self_attn.q_proj": (h, q), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (q, h), "mlp.gate_proj": (h, i), "mlp.up_proj": (h, i),
            "mlp.down_proj": (i, h),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelConfig:
        model_type = d.get("model_type")
        if model_type not in FAMILIES:
            raise EdgeAwqError(
                f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(sorted(FAMILIES))}")
        family = FAMILIES[model_type]

        def need(key: str) -> Any:
            if key not in d or d[key] is None:
                raise EdgeAwqError(f"{source}: missing required field '{key}'")
            return d[key]

        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise EdgeAwqError(f"{source}: hidden_act {act!r} is not supported (only 'silu')")
        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise EdgeAwqError(
                f"{source}: rope type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        try:
            return cls(
                model_type=model_type,
                hidden_size=hidden,
                intermediate_size=int(need("intermediate_size")),
                num_layers=int(need("num_hidden_layers")),
                num_heads=heads,
                num_kv_heads=int(d.get("num_key_value_heads") or heads),
                head_dim=int(d.get("head_dim") or hidden // heads),
                vocab_size=int(need("vocab_size")),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                qkv_bias=family.qkv_bias(d),
                o_bias=family.o_bias(d),
                mlp_bias=bool(d.get("mlp_bias", False)),
                max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
                bos_token_id=d.get("bos_token_id"),
                eos_token_ids=eos_ids,
                raw=d,
            )
        except (TypeError, ValueError) as e:
            raise EdgeAwqError(f"{source}: malformed field value ({e})") from None

    @classmethod
    def from_folder(cls, folder: Path) -> ModelConfig:
        path = Path(folder) / "config.json"
        return cls.from_dict(read_json(path), str(path))


@dataclass(frozen=True)
class QuantConfig:
    """AWQ INT4 settings, as written to ``quantization_config`` (AutoAWQ GEMM layout)."""

    group_size: int = 128
    bits: int = 4
    zero_point: bool = True
    version: str = "gemm"

    def __post_init__(self):
        if self.bits != 4:
            raise EdgeAwqError(f"bits={self.bits} is not supported (only 4)")
        if self.group_size not in (32, 64, 128):
            raise EdgeAwqError(f"group size {self.group_size} is not supported (32, 64 or 128)")
        if not self.zero_point:
            raise EdgeAwqError("zero_point=false is not supported (AWQ GEMM checkpoints are asymmetric)")
        if self.version != "gemm":
            raise EdgeAwqError(f"AWQ version {self.version!r} is not supported (only 'gemm')")

    def to_hf(self) -> dict[str, Any]:
        return {"quant_method": "awq", "bits": self.bits, "group_size": self.group_size,
                "zero_point": self.zero_point, "version": self.version, "modules_to_not_convert": None}

    @classmethod
    def from_hf(cls, d: dict[str, Any], source: str) -> QuantConfig:
        method = d.get("quant_method", "awq")
        if str(method).lower() != "awq":
            raise EdgeAwqError(f"{source}: quant_method {method!r} is not supported (only 'awq')")
        bits = d.get("bits", d.get("w_bit"))
        group = d.get("group_size", d.get("q_group_size"))
        if bits is None or group is None:
            raise EdgeAwqError(f"{source}: quantization config lacks bits/group_size")
        try:
            return cls(group_size=int(group), bits=int(bits), zero_point=bool(d.get("zero_point", True)),
                       version=str(d.get("version", "gemm")).lower())
        except EdgeAwqError as e:
            raise EdgeAwqError(f"{source}: {e}") from None

    @classmethod
    def from_folder(cls, folder: Path) -> QuantConfig | None:
        """The checkpoint's quantization config, or None for a dense model."""
        cfg = read_json(Path(folder) / "config.json")
        if "quantization_config" in cfg:
            return cls.from_hf(cfg["quantization_config"], str(Path(folder) / "config.json"))
        legacy = Path(folder) / "quant_config.json"
        if legacy.exists():
            return cls.from_hf(read_json(legacy), str(legacy))
        return None
