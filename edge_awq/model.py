"""The one model definition: a lean llama-style decoder shared by the quantizer, eval and runtime.

Module and parameter names follow HF (``model.layers.3.self_attn.q_proj.weight``) so weights load
by name. Weights stay in their storage dtype (bf16 on disk) and are cast to the activation dtype
per call, so a CPU run computes in fp32 without holding an fp32 copy of the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edge_awq.kernels.quant_linear import QuantLinear

from .config import ModelConfig, QuantConfig
from .errors import EdgeAwqError
from .families import LINEAR_NAMES
from .shards import MANIFEST, ShardTensors, open_folder, read_shard
from .weights import WeightReader


class Linear(nn.Linear):
    """nn.Linear that casts its (storage-dtype) weight to the input's dtype."""

    def reset_parameters(self) -> None:
        # Weights always come from a checkpoint; random init on the meta device would only import
        # torch's meta kernels (sympy included: about 150 MB of RSS on a device that has little).
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), b)


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass  # loaded from a checkpoint (see Linear)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))  # loaded from a checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, then scale in the activation dtype, as the HF models do.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * h.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """(head_dim/2,) fp32 inverse frequencies, with the config's rope scaling applied."""
    d = cfg.head_dim
    # on the CPU explicitly: under a meta-device context this would import torch's meta kernels
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64, device="cpu").float() / d))
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    if rs["rope_type"] == "linear":
        return inv / float(rs["factor"])
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth blend in between.
    factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old_len = float(rs["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    smooth = (old_len / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelen > old_len / lo, inv / factor, inv)
    mid = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(mid, blended, out)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (T,) → cos, sin (T, head_dim) in ``dtype``."""
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D): rotate channel pairs (i, i + D/2), the HF "rotate_half" convention."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@dataclass
class KVCache:
    """Preallocated keys and values, one (B, kv_heads, max_len, head_dim) pair per layer.

    ``length`` tokens are filled; a forward pass with the cache appends its tokens after them.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @classmethod
    def allocate(cls, cfg: ModelConfig, max_len: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                 batch: int = 1) -> KVCache:
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)])

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def fuse_linears(parts: list[nn.Module]) -> nn.Module:
    """One linear whose output is the parts' outputs side by side (they share the input)."""
    if isinstance(parts[0], QuantLinear):
        return QuantLinear.concat(parts)
    fused = Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=parts[0].bias is not None,
                   device="meta")
    fused.weight = nn.Parameter(torch.cat([p.weight for p in parts]), requires_grad=False)
    if fused.bias is not None:
        fused.bias = nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=False)
    return fused


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, q, bias=cfg.qkv_bias)
        self.k_proj = Linear(cfg.hidden_size, kv, bias=cfg.qkv_bias)
        self.v_proj = Linear(cfg.hidden_size, kv, bias=cfg.qkv_bias)
        self.o_proj = Linear(q, cfg.hidden_size, bias=cfg.o_bias)
        self.qkv_proj: nn.Module | None = None  # set by fuse()
        self.split_sizes = (q, kv, kv)

    def fuse(self) -> None:
        """q, k and v as one linear (one launch at decode); the separate ones are dropped."""
        self.qkv_proj = fuse_linears([self.q_proj, self.k_proj, self.v_proj])
        del self.q_proj, self.k_proj, self.v_proj

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv_proj is not None:
            return self.qkv_proj(x).split(self.split_sizes, dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
        """x (B, T, hidden) at positions start.. → (B, T, hidden), causal.

        With ``kv`` (this layer's cache buffers) the new keys/values are written at
        [start, start + T) and attention runs over everything before them too.
        """
        b, t, _ = x.shape
        q, k, v = self.project(x)
        q = q.reshape(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.reshape(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if kv is not None:
            kv[0][:, :, start:start + t] = k
            kv[1][:, :, start:start + t] = v
            k, v = kv[0][:, :, :start + t], kv[1][:, :, :start + t]
            if t == 1:
                causal = False  # one query at the end sees every key
            elif start > 0:
                # SDPA's is_causal aligns the mask top-left; with a prefix the diagonal sits at `start`.
                pos = torch.arange(start + t, device=x.device)
                mask, causal = pos[None, :] <= pos[start:, None], False
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.gate_up_proj: nn.Module | None = None  # set by fuse()

    def fuse(self) -> None:
        """gate and up as one linear; the separate ones are dropped."""
        self.gate_up_proj = fuse_linears([self.gate_proj, self.up_proj])
        del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, kv, start)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def forward(self, tokens: torch.Tensor, dtype: torch.dtype = torch.float32, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """tokens (B, T) int64 → logits (B, T, vocab) fp32; activations computed in ``dtype``.

        With a cache the tokens continue the cached sequence and are appended to it;
        ``last_only`` computes logits for the last position only (prefill for generation).
        """
        t = tokens.shape[1]
        start = 0 if cache is None else cache.length
        if cache is not None and start + t > cache.max_len:
            raise EdgeAwqError(f"context full: {start} + {t} tokens exceed the KV cache of {cache.max_len}")
        positions = torch.arange(start, start + t, device=tokens.device)
        cos, sin = rope_cos_sin(self.inv_freq, positions, dtype)
        x = self.model.embed_tokens(tokens).to(dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None if cache is None else (cache.k[i], cache.v[i]), start)
        if cache is not None:
            cache.length = start + t
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.model.norm(x)).float()


def block_prefix(i: int) -> str:
    return f"model.layers.{i}."


def quantize_block_modules(block: Block, cfg: ModelConfig, qcfg: QuantConfig) -> None:
    """Swap a block's dense linears for empty QuantLinears (to be filled from a checkpoint)."""
    for name in LINEAR_NAMES:
        parent_name, attr = name.split(".")
        parent = getattr(block, parent_name)
        dense = getattr(parent, attr)
        setattr(parent, attr, QuantLinear(dense.in_features, dense.out_features, qcfg.group_size,
                                          bias=dense.bias is not None, device="meta"))


def load_state(module: nn.Module, reader: WeightReader, prefix: str, dtype: torch.dtype | None) -> None:
    """Fill ``module`` (built on the meta device) with tensors ``prefix + name`` from the reader.

    Float tensors are converted to ``dtype`` (None keeps the stored dtype); a QuantLinear's tensors
    (packed ints, fp16 scales and bias) stay as stored: its kernels read them so.
    """
    quant = tuple(f"{n}." for n, m in module.named_modules() if isinstance(m, QuantLinear))
    state = {}
    for name, ref in list(module.named_parameters()) + list(module.named_buffers()):
        if name == "inv_freq":
            continue
        full = prefix + name
        t = reader.get(full)
        if tuple(t.shape) != tuple(ref.shape):
            raise EdgeAwqError(f"{reader.folder}: tensor '{full}' has shape {tuple(t.shape)}, "
                               f"expected {tuple(ref.shape)}")
        if t.is_floating_point() and dtype is not None and not name.startswith(quant):
            t = t.to(dtype)
        elif t.dtype != ref.dtype and not t.is_floating_point():
            raise EdgeAwqError(f"{reader.folder}: tensor '{full}' has dtype {t.dtype}, expected {ref.dtype}")
        state[name] = t
    module.load_state_dict(state, strict=True, assign=True)


def build_block(cfg: ModelConfig, qcfg: QuantConfig | None = None) -> Block:
    with torch.device("meta"):
        block = Block(cfg)
    if qcfg is not None:
        quantize_block_modules(block, cfg, qcfg)
    return block


def load_block(reader: WeightReader, cfg: ModelConfig, i: int, dtype: torch.dtype | None,
               qcfg: QuantConfig | None = None) -> Block:
    block = build_block(cfg, qcfg)
    load_state(block, reader, block_prefix(i), dtype)
    return block


def checkpoint_tensors(cfg: ModelConfig, qcfg: QuantConfig | None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor a checkpoint of this config must hold: name → (shape, dtype).

    Float tensors report float32 and may be stored in any float dtype; packed ints are exact.
    """
    with torch.device("meta"):
        model = CausalLM(cfg)
        if qcfg is not None:
            for block in model.model.layers:
                quantize_block_modules(block, cfg, qcfg)
    out = {n: (tuple(t.shape), t.dtype) for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if n != "inv_freq"}
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight")
    return out


def assemble(cfg: ModelConfig, qcfg: QuantConfig | None, dtype: torch.dtype | None, part,
             on_block: Callable[[int, Block], nn.Module | None] | None = None,
             embed: nn.Module | None = None, head: nn.Module | None = None) -> CausalLM:
    """Build the model part by part; ``part(role, layer)`` returns the reader holding that part.
    ``on_block(i, block)`` (the runtime's repacking) runs on each block as soon as it is loaded and
    may return what stands in its place (a streamed layer). ``embed``/``head``: modules to use
    instead of loading those weights (a streamed head); the final norm is loaded either way."""
    with torch.device("meta"):
        model = CausalLM(cfg)
    model.inv_freq = rope_inv_freq(cfg)
    if embed is None:
        load_state(model.model.embed_tokens, part("embed", None), "model.embed_tokens.", dtype)
    else:
        model.model.embed_tokens = embed
    for i in range(cfg.num_layers):
        block = load_block(part("layer", i), cfg, i, dtype, qcfg)
        model.model.layers[i] = (on_block(i, block) if on_block is not None else None) or block
    head_part = part("head", None)
    load_state(model.model.norm, head_part, "model.norm.", dtype)
    if head is not None:
        model.lm_head = head
    elif cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        load_state(model.lm_head, head_part, "lm_head.", dtype)
    return model.eval()


def load_model(folder: Path, dtype: torch.dtype | None = None) -> CausalLM:
    """Load a dense or AWQ (GEMM layout) checkpoint, or a shard folder, from safetensors files.

    A shard folder (``manifest.json``) is read one shard at a time with its sha256 checked as it
    streams. ``dtype`` converts float weights (None keeps the stored dtype: bf16 stays bf16).
    """
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        m, cfg, qcfg = open_folder(folder)

        def shard(role: str, layer: int | None) -> ShardTensors:
            entry = m.part(role, layer)
            return ShardTensors(folder / entry.name, read_shard(folder, entry))

        return assemble(cfg, qcfg, dtype, shard)
    cfg = ModelConfig.from_folder(folder)
    qcfg = QuantConfig.from_folder(folder)
    reader = WeightReader(folder)
    return assemble(cfg, qcfg, dtype, lambda role, layer: reader)
