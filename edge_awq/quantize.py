"""The quantize stage: HF model folder → AWQ (or RTN) INT4 checkpoint in AutoAWQ GEMM layout.

Block by block: read the block's weights from safetensors, run it on the calibration inputs
capturing each scaling group's input, search scales and clips (``awq.py``), quantize and pack,
and write the block's result atomically to ``OUT/.edge-awq-state/``. Only one block, the
calibration activations and the embeddings are in memory at a time. A rerun of the same
command resumes after the last finished block; the last step streams the block results into
the output checkpoint and writes ``config.json`` last, so a folder with a ``config.json`` is
complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from .awq import (
    apply_clip,
    channel_mean_abs,
    gptq_quantize,
    group_gram,
    input_hessian,
    refit_gains,
    sample_tokens,
    search_clip,
    search_scale,
)
from .calibration import CalibConfig, blocks_digest, calibration_blocks
from .config import ModelConfig, QuantConfig, read_json
from .errors import EdgeAwqError
from .families import LINEAR_NAMES, ScaleGroup
from .memory import peak_device_bytes, peak_rss_bytes
from .model import Attention, Block, RMSNorm, block_prefix, load_block, rope_cos_sin, rope_inv_freq
from .pack import pack_linear, unpack_linear
from .quant import dequantize, fake_quantize, quantize
from .weights import (
    SIDE_FILES,
    WeightReader,
    copy_file,
    read_header,
    read_tensor,
    write_json,
    write_safetensors,
    write_sharded,
)

log = logging.getLogger(__name__)

# Bumped when the search changes its results, so a resumed run never mixes blocks of two versions.
# 2: a group's clip is kept only if it lowers the group's module output error.
ALGORITHM = 2
STATE = ".edge-awq-state"
REPORT = "quant_report.json"
MAX_SHARD_BYTES = 2 << 30

Progress = Callable[[int, int, str], None]  # (done, total, message)
Codes = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (q, scale, zero) as ``quant.quantize`` returns

# Which linears the clip search may clip (q and k never: ``families.NO_CLIP``). "attention" leaves
# the MLP unclipped: its clips minimise each linear's own output error, and on Qwen2.5-Coder-1.5B
# clipping gate/up or down cost perplexity while clipping v and o gained (docs/benchmarks.md).
CLIP_SCOPES = ("all", "attention", "attention+k", "none")


@dataclass(frozen=True)
class QuantizeOptions:
    method: str = "awq"  # "awq" or "rtn"
    group_size: int = 128
    calib: CalibConfig = field(default_factory=CalibConfig)
    device: str = "cpu"
    n_grid: int = 20
    clip: str = "all"  # "all" (every linear but q/k), "attention" (v, o), "attention+k" (k, v, o), "none"
    duo_scaling: bool = False
    refit: bool = False  # least-squares refit of every group scale for its codes (``awq.refit_gains``)
    rounding: str = "nearest"  # "nearest" or "gptq" (``awq.gptq_quantize``): how the final codes are chosen
    # The next block's calibration inputs: the FP block's outputs (the reference), or the quantized
    # block's, so each block's search sees the inputs the 4-bit model will give it.
    quantized_inputs: bool = False
    chunk_blocks: int = 4  # calibration blocks per forward pass: bounds temporaries

    def __post_init__(self):
        if self.method not in ("awq", "rtn"):
            raise EdgeAwqError(f"--method {self.method!r} is not supported (awq or rtn)")
        if self.clip not in CLIP_SCOPES:
            raise EdgeAwqError(f"--clip {self.clip!r} is not one of {', '.join(CLIP_SCOPES)}")
        if self.rounding not in ("nearest", "gptq"):
            raise EdgeAwqError(f"--rounding {self.rounding!r} is not supported (nearest or gptq)")
        if self.rounding == "gptq" and (self.method != "awq" or self.refit):
            raise EdgeAwqError("--rounding gptq needs --method awq and no --refit (it chooses the scales itself)")
        if self.quantized_inputs and self.method != "awq":
            raise EdgeAwqError("--quantized-inputs needs --method awq (round-to-nearest takes no calibration inputs)")
        QuantConfig(group_size=self.group_size)


@dataclass
class Plan:
    """Everything validated before the output folder is touched."""

    model_dir: Path
    cfg: ModelConfig
    qcfg: QuantConfig
    reader: WeightReader
    calib: torch.Tensor | None  # (n_blocks, block_tokens) token ids, AWQ only
    key: str


def resolve_group_size(cfg: ModelConfig, requested: int) -> int:
    """The requested group size, or the largest supported one dividing every in_features (warned)."""
    ins = sorted({k for k, _ in cfg.linear_shapes().values()})
    if all(k % requested == 0 for k in ins):
        return requested
    bad = next(k for k in ins if k % requested)
    fits = [g for g in (128, 64, 32) if g < requested and all(k % g == 0 for k in ins)]
    if not fits:
        raise EdgeAwqError(f"--group-size {requested}: in_features {bad} is not a multiple of it, "
                           "and no smaller supported group size (64, 32) divides every in_features")
    log.warning("group size %d does not divide in_features %d: using %d for the whole model",
                requested, bad, fits[0])
    return fits[0]


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, cfg.hidden_size), "model.norm.weight": (cfg.hidden_size,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    for i in range(cfg.num_layers):
        p = block_prefix(i)
        shapes[p + "input_layernorm.weight"] = (cfg.hidden_size,)
        shapes[p + "post_attention_layernorm.weight"] = (cfg.hidden_size,)
        for name, (k, n) in cfg.linear_shapes().items():
            shapes[f"{p}{name}.weight"] = (n, k)
            if cfg.linear_bias(name):
                shapes[f"{p}{name}.bias"] = (n,)
    return shapes


def plan(model_dir: Path, opts: QuantizeOptions) -> Plan:
    model_dir = Path(model_dir)
    cfg = ModelConfig.from_folder(model_dir)
    if QuantConfig.from_folder(model_dir) is not None:
        raise EdgeAwqError(f"{model_dir}: already a quantized checkpoint (config.json has quantization_config)")
    reader = WeightReader(model_dir)
    for name, shape in expected_tensors(cfg).items():
        info = reader.info(name)
        if info.shape != shape:
            raise EdgeAwqError(f"{info.file}: tensor '{name}' has shape {info.shape}, expected {shape}")
    qcfg = QuantConfig(group_size=resolve_group_size(cfg, opts.group_size))
    calib = None
    if opts.method == "awq":
        from transformers import AutoTokenizer
        try:
            tok = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError) as e:
            raise EdgeAwqError(f"{model_dir}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None
        calib = calibration_blocks(tok, opts.calib)
    ident = {
        "config": cfg.raw, "files": sorted((p.name, p.stat().st_size) for p in model_dir.glob("*.safetensors")),
        "quant": qcfg.to_hf(), "method": opts.method, "n_grid": opts.n_grid,
        "clip": {"all": True, "none": False}.get(opts.clip, opts.clip),  # the keys of runs before scopes
        "calib": None if calib is None else blocks_digest(calib),
    }
    if opts.method == "awq":
        ident["algorithm"] = ALGORITHM
        # only when set, so runs started before an option keep their key
        for flag in ("duo_scaling", "refit", "quantized_inputs"):
            if getattr(opts, flag):
                ident[flag] = True
        if opts.rounding != "nearest":
            ident["rounding"] = opts.rounding
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return Plan(model_dir, cfg, qcfg, reader, calib, key)


# ---------------------------------------------------------------- per-block AWQ


def _call(module: nn.Module, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
          params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    args = (x, *rope) if isinstance(module, Attention) else (x,)
    return module(*args) if params is None else functional_call(module, params, args)


def _forward(block: Block, x: torch.Tensor, rope, chunk: int) -> torch.Tensor:
    """The block over all calibration blocks, ``chunk`` at a time (bounded temporaries)."""
    return torch.cat([block(xc, *rope) for xc in x.split(chunk)])


def _capture(block: Block, x: torch.Tensor, groups: tuple[ScaleGroup, ...], rope, chunk: int
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run the FP block on x (B, T, H); return each group's input (B, T, K) and the block output."""
    sites = {g.name: block.get_submodule(g.linears[0]) for g in groups}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in sites}
    hooks = [m.register_forward_hook(lambda _m, inp, _out, name=name: parts[name].append(inp[0]))
             for name, m in sites.items()]
    try:
        out = _forward(block, x, rope, chunk)
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(p) for name, p in parts.items()}, out


def _output_mse(inspect: nn.Module, g: ScaleGroup, xin: torch.Tensor, refs: list[torch.Tensor], rope, chunk: int
                ) -> Callable[[dict[str, torch.Tensor]], float]:
    """Loss for the scale search: MSE of ``inspect``'s output with candidate weights vs the FP ``refs``."""
    rel = {n: (n[len(g.inspect) + 1:] + ".weight" if n != g.inspect else "weight") for n in g.linears}

    def loss_fn(cand: dict[str, torch.Tensor]) -> float:
        params = {rel[n]: w for n, w in cand.items()}
        total = 0.0
        for xc, ref in zip(xin.split(chunk), refs, strict=True):
            total += (_call(inspect, xc, rope, params) - ref).pow(2).sum(dtype=torch.float64).item()
        return total / (xin.shape[0] * xin.shape[1] * refs[0].shape[-1])

    return loss_fn


def _group_applies(block: Block, group: ScaleGroup) -> bool:
    """A linear can absorb 1/s only if its outputs are exactly the group's inputs (not under GQA for v→o)."""
    prev = block.get_submodule(group.prev)
    return isinstance(prev, RMSNorm) or all(
        block.get_submodule(n).in_features == prev.out_features for n in group.linears)


def _apply_scale(block: Block, group: ScaleGroup, s: torch.Tensor) -> None:
    prev = block.get_submodule(group.prev)
    if isinstance(prev, RMSNorm):
        prev.weight.div_(s)
    else:
        prev.weight.div_(s[:, None])
        if prev.bias is not None:
            prev.bias.div_(s)
    for name in group.linears:
        block.get_submodule(name).weight.mul_(s[None, :])


def _clippable(name: str, scope: str, no_clip: tuple[str, ...]) -> bool:
    if scope == "all":
        return name not in no_clip
    if not name.startswith("self_attn."):
        return False
    return name not in no_clip or (scope == "attention+k" and name.endswith("k_proj"))


def awq_block(block: Block, x: torch.Tensor, rope, group_size: int, opts: QuantizeOptions,
              groups: tuple[ScaleGroup, ...], no_clip: tuple[str, ...]
              ) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, dict[str, Codes]]:
    """Search and apply AWQ scales and clips to ``block`` in place.

    Returns (record, search data tensors, FP block output = next block's input, and the codes
    chosen by GPTQ's rounding per linear — empty unless ``opts.rounding`` is "gptq").
    """
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    feats, x_next = _capture(block, x, groups, rope, opts.chunk_blocks)
    times["capture"] = time.perf_counter() - t0
    record: dict = {"ratios": {}, "clipped": {}, "losses": {}}
    data: dict[str, torch.Tensor] = {}

    # Every group is searched on the FP block (as the reference does), then all are applied.
    chosen = []
    for g in groups:
        if not _group_applies(block, g):
            continue
        t0 = time.perf_counter()
        inspect = block.get_submodule(g.inspect)
        xin = feats[g.name]
        refs = [_call(inspect, xc, rope) for xc in xin.split(opts.chunk_blocks)]
        weights = {n: block.get_submodule(n).weight for n in g.linears}
        loss_fn = _output_mse(inspect, g, xin, refs, rope, opts.chunk_blocks)
        res = search_scale(channel_mean_abs(xin), weights, loss_fn, group_size, opts.n_grid,
                           duo=opts.duo_scaling)
        chosen.append((g, res.scales))
        record["ratios"][g.name] = res.ratio
        record["losses"][g.name] = [round(v, 9) for v in res.losses]
        data[f"awq.scale.{g.name}"] = res.scales.cpu()
        times[f"scale.{g.name}"] = time.perf_counter() - t0
    for g, s in chosen:
        _apply_scale(block, g, s)
        feats[g.name] = feats[g.name] / s
    grams: dict[str, torch.Tensor] = {}  # per group, of its scaled input sample (clip search, refit)

    if opts.clip != "none":
        t0 = time.perf_counter()
        record["clip_losses"] = {}
        for g in groups:
            names = [n for n in g.linears if _clippable(n, opts.clip, no_clip)]
            if not names:
                continue
            xin = feats[g.name]
            gram = grams[g.name] = group_gram(sample_tokens(xin), group_size)
            weights = {n: block.get_submodule(n).weight for n in g.linears}
            max_vals = {n: search_clip(weights[n], gram, group_size) for n in names}
            # The clip search minimises each linear's own output error; a clip is kept only if the
            # group's module output — the scale search's objective — improves too. Through the
            # MLP's silu(gate)·up it need not: on Qwen2.5-Coder-1.5B clipping gate/up made one
            # block's MLP error 27× worse, and perplexity worse than round-to-nearest.
            inspect = block.get_submodule(g.inspect)
            # The scaled FP module gives the scale search's references again; recomputed rather than
            # kept from the search, so one group's outputs are held at a time (the 4 GB bound).
            refs = [_call(inspect, xc, rope) for xc in xin.split(opts.chunk_blocks)]
            loss_fn = _output_mse(inspect, g, xin, refs, rope, opts.chunk_blocks)
            clipped = {n: apply_clip(w, max_vals[n], group_size) if n in max_vals else w for n, w in weights.items()}
            plain = loss_fn({n: fake_quantize(w, group_size) for n, w in weights.items()})
            with_clip = loss_fn({n: fake_quantize(w, group_size) for n, w in clipped.items()})
            del refs
            record["clip_losses"][g.name] = [round(plain, 9), round(with_clip, 9)]
            keep = with_clip < plain
            for n in names:
                record["clipped"][n] = 0
                if keep:
                    org = weights[n].reshape(max_vals[n].shape[0], max_vals[n].shape[1], -1).abs().amax(-1)
                    record["clipped"][n] = int((max_vals[n] < org).sum())
                    weights[n].copy_(clipped[n])
                    data[f"awq.clip.{n}"] = max_vals[n].cpu()
        times["clip"] = time.perf_counter() - t0
    if opts.refit:
        t0 = time.perf_counter()
        for g in groups:  # the clip search's Gram matrices where it made them (the inputs are the same)
            gram = grams.get(g.name)
            if gram is None:
                gram = group_gram(sample_tokens(feats[g.name]), group_size)
            for n in g.linears:
                data[f"awq.gain.{n}"] = refit_gains(block.get_submodule(n).weight, gram, group_size).cpu()
        times["refit"] = time.perf_counter() - t0
    codes: dict[str, Codes] = {}
    if opts.rounding == "gptq":
        t0 = time.perf_counter()
        for g in groups:  # the linears of a group share their input, so one Hessian and one pass
            weights = [block.get_submodule(n).weight for n in g.linears]
            q, scale, zero = gptq_quantize(torch.cat(weights), input_hessian(feats[g.name]), group_size)
            rows = [w.shape[0] for w in weights]
            for n, *c in zip(g.linears, q.split(rows), scale.split(rows), zero.split(rows), strict=True):
                codes[n] = tuple(c)
        times["gptq"] = time.perf_counter() - t0
    record["seconds"] = {k: round(v, 3) for k, v in times.items()}
    return record, data, x_next, codes


def _fp16(name: str, t: torch.Tensor) -> torch.Tensor:
    h = t.half()
    if not all(torch.isfinite(c).all() for c in h.view(-1).split(1 << 24)):  # bounded temporaries
        raise EdgeAwqError(f"tensor '{name}' overflows float16 after scaling; cannot write an AWQ checkpoint")
    return h


def pack_block(block: Block, prefix: str, group_size: int, gains: dict[str, torch.Tensor] | None = None,
               codes: dict[str, Codes] | None = None) -> dict[str, torch.Tensor]:
    """Quantize every linear of a (scaled, clipped) FP block and return its checkpoint tensors;
    ``gains`` (by linear name, (N, K/g)) multiply the group scales of round-to-nearest's codes;
    a linear in ``codes`` is packed with those (q, scale, zero) instead of rounding to nearest."""
    out = {}
    for name in LINEAR_NAMES:
        lin = block.get_submodule(name)
        q, scale, zero = codes[name] if codes and name in codes else quantize(lin.weight, group_size)
        if gains and name in gains:
            scale = (scale * gains[name].to(scale.device)).half().float()
        for k, v in pack_linear(q, scale, zero).items():
            out[f"{prefix}{name}.{k}"] = v.cpu()
        if lin.bias is not None:
            out[f"{prefix}{name}.bias"] = _fp16(f"{prefix}{name}.bias", lin.bias).cpu()
    for norm in ("input_layernorm", "post_attention_layernorm"):
        out[f"{prefix}{norm}.weight"] = _fp16(f"{prefix}{norm}.weight", block.get_submodule(norm).weight).cpu()
    return out


def load_packed(block: Block, tensors: dict[str, torch.Tensor], prefix: str, group_size: int) -> Block:
    """Put ``pack_block``'s tensors into an FP ``block`` in place: the dequantized codes, the fp16 norms
    and biases — the block as the 4-bit checkpoint computes it (in the block's dtype)."""
    for name in LINEAR_NAMES:
        lin = block.get_submodule(name)
        q, scale, zero = unpack_linear(*(tensors[f"{prefix}{name}.{k}"] for k in ("qweight", "qzeros", "scales")))
        lin.weight.copy_(dequantize(q, scale, zero, group_size))
        if lin.bias is not None:
            lin.bias.copy_(tensors[f"{prefix}{name}.bias"])
    for norm in ("input_layernorm", "post_attention_layernorm"):
        block.get_submodule(norm).weight.copy_(tensors[f"{prefix}{norm}.weight"])
    return block


# ---------------------------------------------------------------- driver


def _prepare_out(out_dir: Path, p: Plan) -> tuple[Path, bool]:
    """Check the output folder; returns (state dir, already finished)."""
    state = out_dir / STATE
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeAwqError(f"{out_dir}: exists and is not a folder")
    if (out_dir / "config.json").exists():
        report = out_dir / REPORT
        if report.exists() and read_json(report).get("run_key") == p.key:
            return state, True
        raise EdgeAwqError(f"{out_dir}: already holds a different model or quantization; choose another folder")
    if (state / "run.json").exists():
        if read_json(state / "run.json").get("run_key") != p.key:
            raise EdgeAwqError(f"{out_dir}: holds an unfinished run of a different model or options; "
                               "choose another folder or delete it")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise EdgeAwqError(f"{out_dir}: folder is not empty; choose a new or empty folder")
    state.mkdir(parents=True, exist_ok=True)
    write_json(state / "run.json", {"run_key": p.key})
    return state, False


def _block_file(state: Path, i: int) -> Path:
    return state / f"block_{i:04d}.safetensors"


def _finished(state: Path, i: int) -> bool:
    path = _block_file(state, i)
    if not path.exists():
        return False
    try:
        read_header(path)
        return True
    except EdgeAwqError:
        return False


def _embed(p: Plan, device: torch.device) -> torch.Tensor:
    weight = p.reader.get("model.embed_tokens.weight")
    return nn.functional.embedding(p.calib, weight).float().to(device)


def _inputs_for(p: Plan, state: Path, start: int, device: torch.device, rope, opts: QuantizeOptions
                ) -> torch.Tensor:
    """The calibration inputs of block ``start``: saved after the previous block, else recomputed
    through the FP blocks (or, with ``quantized_inputs``, the finished quantized ones)."""
    path = state / "inputs.safetensors"
    if path.exists():
        tensors, meta = read_header(path)
        if int(meta.get("after_block", -2)) == start - 1:
            return read_tensor(tensors["x"], "x").to(device)
    x = _embed(p, device)
    for i in range(start):
        block = load_block(p.reader, p.cfg, i, torch.float32).to(device)
        with torch.no_grad():
            if opts.quantized_inputs:
                infos, _ = read_header(_block_file(state, i))
                packed = {n: read_tensor(t, n).to(device) for n, t in infos.items() if not n.startswith("awq.")}
                load_packed(block, packed, block_prefix(i), p.qcfg.group_size)
            x = _forward(block, x, rope, opts.chunk_blocks)
    return x


def _assemble(p: Plan, state: Path, out_dir: Path) -> dict[str, int]:
    """Stream block results plus embeddings, norm and head into the output safetensors files."""
    sources: list[tuple[str, torch.dtype, tuple[int, ...], Callable[[], torch.Tensor]]] = []

    def dense(name: str) -> None:
        sources.append((name, torch.float16, p.reader.info(name).shape, lambda: _fp16(name, p.reader.get(name))))

    dense("model.embed_tokens.weight")
    for i in range(p.cfg.num_layers):
        tensors, _ = read_header(_block_file(state, i))
        for name, info in tensors.items():
            if not name.startswith("awq."):
                sources.append((name, info.dtype, info.shape, lambda info=info, name=name: read_tensor(info, name)))
    dense("model.norm.weight")
    if not p.cfg.tie_word_embeddings:
        dense("lm_head.weight")
    return write_sharded(out_dir, sources, MAX_SHARD_BYTES)


def quantize_model(model_dir: Path, out_dir: Path, opts: QuantizeOptions,
                   progress: Progress | None = None) -> dict:
    """Quantize ``model_dir`` into ``out_dir``; returns the report (also written as quant_report.json)."""
    t_start = time.perf_counter()
    p = plan(model_dir, opts)
    out_dir = Path(out_dir)
    state, done = _prepare_out(out_dir, p)
    if done:
        log.info("%s: already quantized by the same run; nothing to do", out_dir)
        return read_json(out_dir / REPORT)
    device = torch.device(opts.device)
    cfg, g = p.cfg, p.qcfg.group_size
    family = cfg.family
    start = next((i for i in range(cfg.num_layers) if not _finished(state, i)), cfg.num_layers)
    if start:
        log.info("resuming after block %d of %d", start - 1, cfg.num_layers)
    rope = None
    x = None
    if opts.method == "awq" and start < cfg.num_layers:
        rope = rope_cos_sin(rope_inv_freq(cfg), torch.arange(p.calib.shape[1]), torch.float32)
        rope = tuple(t.to(device) for t in rope)
        with torch.no_grad():
            x = _inputs_for(p, state, start, device, rope, opts)
    for i in range(cfg.num_layers):
        if progress:
            progress(i, cfg.num_layers, f"block {i}")
        if i < start:
            continue
        t0 = time.perf_counter()
        block = load_block(p.reader, cfg, i, torch.float32).to(device)
        with torch.no_grad():
            if opts.method == "awq":
                record, data, x_next, codes = awq_block(block, x, rope, g, opts, family.scale_groups,
                                                        family.no_clip)
            else:
                record, data, x_next, codes = {}, {}, None, {}
            gains = {k.removeprefix("awq.gain."): v for k, v in data.items() if k.startswith("awq.gain.")}
            tensors = pack_block(block, block_prefix(i), g, gains, codes)
            if opts.quantized_inputs and x_next is not None:
                load_packed(block, {k: v.to(device) for k, v in tensors.items()}, block_prefix(i), g)
                x_next = _forward(block, x, rope, opts.chunk_blocks)
        record["block_seconds"] = round(time.perf_counter() - t0, 3)
        write_safetensors(_block_file(state, i), {**tensors, **data}, {"record": json.dumps(record)})
        if x_next is not None:
            write_safetensors(state / "inputs.safetensors", {"x": x_next.cpu()}, {"after_block": str(i)})
            x = x_next
        log.debug("block %d: %s", i, record)
    if progress:
        progress(cfg.num_layers, cfg.num_layers, "writing checkpoint")

    sizes = _assemble(p, state, out_dir)
    for name in SIDE_FILES:
        if (p.model_dir / name).exists():
            copy_file(p.model_dir / name, out_dir / name)
    records = [json.loads(read_header(_block_file(state, i))[1]["record"]) for i in range(cfg.num_layers)]
    report = {
        "run_key": p.key, "model": str(p.model_dir), "method": opts.method,
        "quantization_config": p.qcfg.to_hf(),
        "options": {**asdict(replace(opts, calib=None)), "calib": asdict(opts.calib)},
        "calibration_blocks": None if p.calib is None else list(p.calib.shape),
        "seconds": round(time.perf_counter() - t_start, 1),
        "resumed_from_block": start,
        "peak_rss_bytes": peak_rss_bytes(), "peak_device_bytes": peak_device_bytes(device),
        "files": sizes, "total_bytes": sum(sizes.values()),
        "blocks": records,
    }
    write_json(out_dir / REPORT, report)
    hf = dict(cfg.raw)
    hf["quantization_config"] = p.qcfg.to_hf()
    hf["dtype" if "dtype" in hf else "torch_dtype"] = "float16"
    write_json(out_dir / "config.json", hf)  # last: its presence marks a complete checkpoint
    shutil.rmtree(state)
    return report
