"""The split stage: AWQ checkpoint → shard folder (one file per part, manifest with hashes).

Tensors are streamed one at a time from the source files into the shard files, hashing as they
are written, so peak memory is about the largest tensor. ``manifest.json`` is written last: a
folder with a manifest is complete. Splitting again into a finished folder verifies it and only
rewrites files that fail.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from .config import ModelConfig, QuantConfig, read_json
from .errors import EdgeAwqError
from .memory import peak_rss_bytes
from .model import checkpoint_tensors
from .profiles import Profile
from .shards import (
    INDEX,
    MANIFEST,
    Manifest,
    ShardFile,
    assign_parts,
    part_name,
    read_manifest,
    tensor_entries,
    verify_folder,
)
from .weights import DTYPE_NAMES, SIDE_FILES, WeightReader, copy_file, read_tensor, write_json, write_safetensors

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


def check_tensors(reader: WeightReader, cfg: ModelConfig, qcfg: QuantConfig | None) -> None:
    """Every tensor the model needs is there with the right shape; packed ints have the right dtype."""
    for name, (shape, dtype) in checkpoint_tensors(cfg, qcfg).items():
        info = reader.info(name)
        if info.shape != shape:
            raise EdgeAwqError(f"{info.file}: tensor '{name}' has shape {info.shape}, expected {shape}")
        if dtype.is_floating_point != info.dtype.is_floating_point or (not dtype.is_floating_point
                                                                        and info.dtype != dtype):
            raise EdgeAwqError(f"{info.file}: tensor '{name}' has dtype {DTYPE_NAMES[info.dtype]}, "
                               f"expected {DTYPE_NAMES[dtype] if not dtype.is_floating_point else 'a float type'}")


def source_fingerprint(folder: Path, reader: WeightReader, config: dict) -> str:
    """Identifies the checkpoint cheaply (config, tensor index, file sizes), without hashing its bytes."""
    ident = {"config": config,
             "tensors": sorted((n, DTYPE_NAMES[i.dtype], list(i.shape), i.file.name, i.start)
                               for n, i in reader.tensors.items()),
             "files": sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def split_checkpoint(ckpt: Path, out_dir: Path, profile: Profile | None = None,
                     progress: Progress | None = None) -> dict:
    """Split ``ckpt`` into a shard folder ``out_dir``; returns a summary (also logged)."""
    t0 = time.perf_counter()
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    if (ckpt / MANIFEST).exists():
        raise EdgeAwqError(f"{ckpt}: already a shard folder; split the checkpoint it came from")
    cfg = ModelConfig.from_folder(ckpt)
    qcfg = QuantConfig.from_folder(ckpt)
    reader = WeightReader(ckpt)
    check_tensors(reader, cfg, qcfg)
    config = read_json(ckpt / "config.json")
    if qcfg is not None and "quantization_config" not in config:
        config["quantization_config"] = qcfg.to_hf()  # legacy quant_config.json: the shard folder is self-contained
    layout = "dense" if qcfg is None else "awq-gemm"
    if profile is not None and qcfg is not None and profile.weight_layout != layout:
        raise EdgeAwqError(f"--profile {profile.name}: weight layout {profile.weight_layout!r} cannot be "
                           "written by this version")
    fingerprint = source_fingerprint(ckpt, reader, config)
    parts = assign_parts(list(reader.tensors), cfg.num_layers, ckpt)
    side = ["config.json"] + [n for n in SIDE_FILES if (ckpt / n).exists()]

    redo = _prepare_out(out_dir, fingerprint, profile, cfg.num_layers, side)
    if redo == set():
        log.info("%s: already split from this checkpoint and verified; nothing to do", out_dir)
        m = read_manifest(out_dir)
        return _summary(out_dir, m, t0, written=0)

    files, side_files = [], {}
    total = sum(reader.info(n).nbytes for names in parts.values() for n in names)
    done = 0
    old = read_manifest(out_dir) if redo is not None else None
    for (role, layer), names in parts.items():
        name = part_name(role, layer, cfg.num_layers)
        nbytes = sum(reader.info(n).nbytes for n in names)
        if progress:
            progress(done, total, name)
        done += nbytes
        if old is not None and name not in redo:
            files.append(old.part(role, layer))
            continue
        names = sorted(names)
        specs = [(n, reader.info(n).dtype, reader.info(n).shape) for n in names]
        sha = write_safetensors(out_dir / name, ((n, read_tensor(reader.info(n), n)) for n in names),
                                {"format": "pt"}, specs=specs)
        files.append(ShardFile(name, role, layer, (out_dir / name).stat().st_size, sha, tensor_entries(out_dir / name)))
    for name in side:
        if name == "config.json":
            write_json(out_dir / name, config)
            sha = hashlib.sha256((out_dir / name).read_bytes()).hexdigest()
        else:
            sha = copy_file(ckpt / name, out_dir / name)
        side_files[name] = {"bytes": (out_dir / name).stat().st_size, "sha256": sha}
    if progress:
        progress(total, total, "manifest")
    m = Manifest(config, tuple(files), side_files, layout, None if profile is None else profile.name, fingerprint)
    write_json(out_dir / INDEX, m.index())
    write_json(out_dir / MANIFEST, m.to_json())  # last: its presence marks a complete folder
    return _summary(out_dir, m, t0, written=len(files) if old is None else len(redo))


def _prepare_out(out_dir: Path, fingerprint: str, profile: Profile | None, num_layers: int,
                 side: list[str]) -> set[str] | None:
    """None: write everything. A set: the folder is a finished split of this checkpoint; rewrite these files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeAwqError(f"{out_dir}: exists and is not a folder")
    if (out_dir / MANIFEST).exists():
        m = read_manifest(out_dir)
        want = None if profile is None else profile.name
        if m.source != fingerprint or m.profile != want:
            raise EdgeAwqError(f"{out_dir}: already holds a split of a different checkpoint or profile; "
                               "choose another folder")
        faults = verify_folder(out_dir)
        for f in faults:
            log.warning("%s: %s; rewriting it", f.file, f.problem)
        unknown = [f.file for f in faults if f.problem.startswith("unknown file")]
        if unknown:
            raise EdgeAwqError(f"{out_dir / unknown[0]}: unknown file in the shard folder; remove it")
        return {f.file for f in faults if f.file != MANIFEST}
    if out_dir.exists():
        ours = {part_name("embed", None, num_layers), part_name("head", None, num_layers), INDEX, *side}
        ours |= {part_name("layer", i, num_layers) for i in range(num_layers)}
        # An interrupted split leaves only our own names (and temp files); anything else is someone's data.
        stray = [p.name for p in out_dir.iterdir() if p.name not in ours and ".tmp-" not in p.name]
        if stray:
            raise EdgeAwqError(f"{out_dir}: folder is not empty ({stray[0]}); choose a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return None


def _summary(out_dir: Path, m: Manifest, t0: float, written: int) -> dict:
    sizes = {f.name: f.bytes for f in m.files}
    largest = max(sizes, key=sizes.get)
    return {"out_dir": str(out_dir), "files": len(sizes), "written": written, "total_bytes": sum(sizes.values()),
            "largest_file": largest, "largest_bytes": sizes[largest], "sizes": sizes,
            "weight_layout": m.weight_layout, "profile": m.profile,
            "seconds": round(time.perf_counter() - t0, 2), "peak_rss_bytes": peak_rss_bytes()}

