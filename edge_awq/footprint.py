"""What a model, checkpoint or shard folder is, what it weighs, and which platform profiles it fits.

Byte counts come from safetensors headers (or the manifest), never from loading tensors, so
inspecting a 7B model costs milliseconds. Memory needs are the weights as stored plus the KV
cache at a context length plus the profile's runtime overhead; the profiles' reserved memory and
overhead are planning estimates (see platforms/README.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .config import ModelConfig, QuantConfig
from .errors import EdgeAwqError
from .profiles import Profile
from .shards import MANIFEST, assign_parts, read_manifest
from .weights import WeightReader

PROJECTED_GROUP = 128  # group size assumed when projecting a dense model's AWQ size


@dataclass(frozen=True)
class Footprint:
    path: str
    kind: str  # "dense model", "AWQ checkpoint" or "shard folder"
    model_type: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    parameters: int  # logical weights (a packed int32 holds 8)
    bits: int | None
    group_size: int | None
    weight_layout: str | None
    profile: str | None
    embed_bytes: int
    layer_bytes: list[int]
    head_bytes: int
    awq_bytes: int  # as stored for a quantized model; projected W4 g128 for a dense one

    @property
    def weight_bytes(self) -> int:
        return self.embed_bytes + sum(self.layer_bytes) + self.head_bytes

    def kv_bytes(self, context: int, bytes_per_value: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * context * bytes_per_value


@dataclass(frozen=True)
class Fit:
    profile: str
    budget_bytes: int | None
    context: int
    need_bytes: int  # whole model resident
    stream_bytes: int  # embeddings + head + two layers resident (one computing, one arriving)
    verdict: str  # "fits", "streaming", "no", or "run-time" (budget read from the device)


def _params(name: str, shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    if name.endswith(".qweight"):
        return n * 8
    if name.endswith((".qzeros", ".scales")):
        return 0
    return n


def projected_layer_bytes(cfg: ModelConfig) -> int:
    """Bytes of one decoder layer as AWQ W4 g128: packed codes, fp16 scales, 4-bit zeros, fp16 bias
    and norms (the same in the GEMM and K-major layouts)."""
    g = PROJECTED_GROUP
    per_layer = 2 * 2 * cfg.hidden_size  # two norms
    for name, (k, n) in cfg.linear_shapes().items():
        per_layer += k * n // 2 + (k // g) * n * 2 + (k // g) * n // 2 + (2 * n if cfg.linear_bias(name) else 0)
    return per_layer


def _projected_awq(cfg: ModelConfig) -> int:
    """Bytes of this model as an AWQ W4 g128 checkpoint: packed linears, fp16 everything else."""
    emb = cfg.vocab_size * cfg.hidden_size * 2
    layers = cfg.num_layers * projected_layer_bytes(cfg)
    return emb * (1 if cfg.tie_word_embeddings else 2) + layers + 2 * cfg.hidden_size


def describe(path: Path) -> Footprint:
    path = Path(path)
    if not path.is_dir():
        raise EdgeAwqError(f"{path}: not a folder (a model, an AWQ checkpoint or a shard folder)")
    if (path / MANIFEST).exists():
        m = read_manifest(path)
        cfg = ModelConfig.from_dict(m.config, str(path / MANIFEST))
        qc = m.config.get("quantization_config")
        qcfg = None if qc is None else QuantConfig.from_hf(qc, str(path / MANIFEST))
        sizes = {(f.role, f.layer): sum(t["bytes"] for t in f.tensors.values()) for f in m.files}
        shapes = {n: tuple(t["shape"]) for f in m.files for n, t in f.tensors.items()}
        kind, layout, profile = "shard folder", m.weight_layout, m.profile
    else:
        cfg = ModelConfig.from_folder(path)
        qcfg = QuantConfig.from_folder(path)
        reader = WeightReader(path)
        parts = assign_parts(list(reader.tensors), cfg.num_layers, path)
        sizes = {key: sum(reader.info(n).nbytes for n in names) for key, names in parts.items()}
        shapes = {n: i.shape for n, i in reader.tensors.items()}
        kind = "dense model" if qcfg is None else "AWQ checkpoint"
        layout, profile = (None if qcfg is None else "awq-gemm"), None
    if cfg.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    layer_bytes = [sizes[("layer", i)] for i in range(cfg.num_layers)]
    stored = sizes[("embed", None)] + sum(layer_bytes) + sizes[("head", None)]
    return Footprint(
        str(path), kind, cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
        cfg.head_dim, cfg.vocab_size, cfg.tie_word_embeddings, sum(_params(n, s) for n, s in shapes.items()),
        None if qcfg is None else qcfg.bits, None if qcfg is None else qcfg.group_size, layout, profile,
        sizes[("embed", None)], layer_bytes, sizes[("head", None)],
        stored if qcfg is not None else _projected_awq(cfg))


def fit(fp: Footprint, profile: Profile, context: int) -> Fit:
    """Whether the (quantized) model and a KV cache of ``context`` tokens fit ``profile``'s budget."""
    ctx = min(context, profile.max_context)
    kv = fp.kv_bytes(ctx, profile.kv_bytes_per_value)
    overhead = profile.runtime_overhead_mb << 20
    scale = fp.awq_bytes / fp.weight_bytes  # dense models are judged as their AWQ projection
    need = fp.awq_bytes + kv + overhead
    stream = int((fp.embed_bytes + fp.head_bytes + 2 * max(fp.layer_bytes)) * scale) + kv + overhead
    budget = profile.budget_bytes
    if budget is None:
        verdict = "run-time"
    elif need <= budget:
        verdict = "fits"
    elif stream <= budget:
        verdict = "streaming"
    else:
        verdict = "no"
    return Fit(profile.name, budget, ctx, need, stream, verdict)


def to_json(fp: Footprint, fits: list[Fit], context: int) -> dict:
    return {**asdict(fp), "weight_bytes": fp.weight_bytes, "context": context,
            "kv_bytes": fp.kv_bytes(context), "fits": [asdict(f) for f in fits]}

