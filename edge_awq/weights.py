"""Safetensors I/O without loading whole files: validated headers, per-tensor reads, streamed writes.

Only safetensors and JSON are ever read. Pickle checkpoints (``.bin``/``.pt``/``.pth``) are
refused before any byte of them is touched. Every header is checked against the file size, so
a truncated file is reported by name instead of failing deep inside a read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import read_json
from .errors import EdgeAwqError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_HEADER = 100 * 1024 * 1024
# Tokenizer and generation files that travel with a checkpoint (copied when present).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate one safetensors header; returns (tensors, metadata)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise EdgeAwqError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise EdgeAwqError(f"{path}: truncated or corrupt safetensors header")
            header = json.loads(f.read(n))
    except OSError as e:
        raise EdgeAwqError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgeAwqError(f"{path}: corrupt safetensors header (not JSON)") from None
    meta = header.pop("__metadata__", None) or {}
    tensors, end = {}, 0
    for name, spec in header.items():
        try:
            dtype = DTYPES[spec["dtype"]]
            shape = tuple(int(s) for s in spec["shape"])
            lo, hi = (int(o) for o in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise EdgeAwqError(f"{path}: tensor '{name}' has a malformed header entry") from None
        numel = 1
        for s in shape:
            numel *= s
        if hi - lo != numel * dtype.itemsize or lo < 0:
            raise EdgeAwqError(f"{path}: tensor '{name}' byte range does not match its shape and dtype")
        end = max(end, hi)
        tensors[name] = TensorInfo(path, dtype, shape, 8 + n + lo, hi - lo)
    if 8 + n + end > size:
        raise EdgeAwqError(f"{path}: truncated safetensors file ({size} bytes, header needs {8 + n + end})")
    return tensors, meta


def read_tensor(info: TensorInfo, name: str = "") -> torch.Tensor:
    """Read one tensor's bytes into a fresh CPU tensor (no memory map is kept)."""
    out = torch.empty(info.shape, dtype=info.dtype)
    buf = out.view(-1).view(torch.uint8).numpy() if info.nbytes else None
    with open(info.file, "rb") as f:
        f.seek(info.start)
        if buf is not None and f.readinto(buf) != info.nbytes:
            raise EdgeAwqError(f"{info.file}: truncated while reading tensor '{name}'")
    return out


class WeightReader:
    """Tensor index over a folder's safetensors files (single, sharded with an index, or a bare set)."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        if not folder.is_dir():
            raise EdgeAwqError(f"{folder}: not a folder")
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
            if pickles:
                raise EdgeAwqError(
                    f"{folder / pickles[0]}: pickle checkpoints are refused (they can run code); "
                    "convert the model to safetensors")
            raise EdgeAwqError(f"{folder}: no .safetensors files")
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise EdgeAwqError(f"{index}: missing 'weight_map'")
            missing = sorted({f for f in weight_map.values() if not (folder / f).exists()})
            if missing:
                raise EdgeAwqError(f"{folder / missing[0]}: shard listed in {index.name} is missing")
            files = [folder / f for f in sorted(set(weight_map.values()))]
        self.folder = folder
        self.tensors: dict[str, TensorInfo] = {}
        for path in files:
            tensors, _ = read_header(path)
            self.tensors.update(tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise EdgeAwqError(f"{self.folder}: tensor '{name}' is missing")
        return self.tensors[name]

    def get(self, name: str) -> torch.Tensor:
        return read_tensor(self.info(name), name)


def atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class _HashingWriter:
    """A binary file that hashes what is written to it."""

    def __init__(self, f):
        self.f, self.digest = f, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.digest.update(data)


@contextlib.contextmanager
def atomic_writer(path: Path):
    """Write ``path`` through a temp file renamed into place only when the block succeeds (after
    fsync), so a reader never sees a half-written file. Yields a writer whose ``digest`` is the
    sha256 of the bytes written."""
    tmp = atomic_path(path)
    try:
        with open(tmp, "wb") as f:
            w = _HashingWriter(f)
            yield w
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_safetensors(path: Path, tensors: Iterable[tuple[str, torch.Tensor]] | dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None,
                      specs: list[tuple[str, torch.dtype, tuple[int, ...]]] | None = None) -> str:
    """Write a safetensors file atomically (temp file + rename); returns the file's sha256 (hex).

    With ``specs`` (name, dtype, shape in order) the header is written first and ``tensors`` may
    be a generator yielding them in that order, so a file larger than memory is streamed. The
    hash is taken from the bytes as they are written, not by reading the file back.
    """
    items: Iterator[tuple[str, torch.Tensor]]
    if isinstance(tensors, dict):
        specs = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
        items = iter(tensors.items())
    else:
        assert specs is not None, "streamed writes need specs"
        items = iter(tensors)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in specs:
        n = dtype.itemsize
        for s in shape:
            n *= s
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for (name, dtype, shape), (got_name, t) in zip(specs, items, strict=True):
            if got_name != name or t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"streamed tensor {got_name} does not match its spec {name}")
            if t.numel():
                f.write(memoryview(t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()))
            del t  # else it stays alive while the generator builds the next tensor
    return f.digest.hexdigest()


def write_sharded(folder: Path, sources: list[tuple[str, torch.dtype, tuple[int, ...], Callable[[], torch.Tensor]]],
                  max_shard_bytes: int = 2 << 30) -> dict[str, int]:
    """Stream tensors (name, dtype, shape, loader) into ``model.safetensors``, or into HF-named shards
    of at most ``max_shard_bytes`` plus ``model.safetensors.index.json``. Returns bytes per file."""
    shards: list[list] = [[]]
    size = 0
    for src in sources:
        n = src[1].itemsize * int(torch.Size(src[2]).numel())
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(src)
        size += n
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    weight_map, sizes = {}, {}
    for fname, shard in zip(names, shards, strict=True):
        write_safetensors(folder / fname, ((s[0], s[3]()) for s in shard), {"format": "pt"},
                          specs=[(s[0], s[1], s[2]) for s in shard])
        weight_map.update({s[0]: fname for s in shard})
        sizes[fname] = (folder / fname).stat().st_size
    if len(shards) > 1:
        write_json(folder / "model.safetensors.index.json",
                   {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map})
    return sizes


def write_json(path: Path, data: object) -> None:
    with atomic_writer(path) as f:
        f.write((json.dumps(data, indent=2) + "\n").encode())


def copy_file(src: Path, dst: Path) -> str:
    """Copy atomically (temp file + rename); returns the sha256 of the bytes written."""
    with atomic_writer(dst) as fo, open(src, "rb") as fi:
        while chunk := fi.read(16 << 20):
            fo.write(chunk)
    return fo.digest.hexdigest()
