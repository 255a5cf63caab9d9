"""Platform profiles: small frozen dataclasses read from the TOML files in ``platforms/``.

The files ship inside the package (``edge_awq.platforms``); a path to a user's own TOML file
works wherever a profile name does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from edge_awq.kernels.dispatch import KernelSettings

from .errors import EdgeAwqError

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack 6 ships Python 3.10
    import tomli as tomllib

WEIGHT_LAYOUTS = ("awq-gemm",)  # packed layouts this version can write; kernels work adds more
KERNELS = ("triton", "torch-int4", "torch")  # Triton; torch's int4 kernel; the torch reference


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    total_memory_gb: float  # 0: the device's (or host's) own total, read at run time
    reserved_gb: float  # left to the OS, desktop and CUDA context
    unified_memory: bool  # CPU and GPU share DRAM (Jetson)
    bandwidth_gbps: float  # DRAM bandwidth; 0 when unknown
    kernel: str  # "triton" (falls back to torch's int4 kernel), "torch-int4", or "torch" (the reference)
    weight_layout: str  # packed layout the kernels read
    max_context: int
    kv_dtype: str
    staging_mb: int  # bounded host staging buffer when streaming shards
    runtime_overhead_mb: int  # activations, logits, allocator slack
    cuda_graphs: bool
    match_model: tuple[str, ...] = ()  # substrings of /proc/device-tree/model
    match_memory_gb: int | None = None
    kernels: dict[str, Any] = field(default_factory=dict)  # [kernels] table: KernelSettings overrides

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise EdgeAwqError(f"profile {self.name}: kernel {self.kernel!r} is not one of {', '.join(KERNELS)}")
        if self.weight_layout not in WEIGHT_LAYOUTS:
            raise EdgeAwqError(f"profile {self.name}: weight_layout {self.weight_layout!r} is not supported "
                               f"by this version ({', '.join(WEIGHT_LAYOUTS)})")
        if self.kv_dtype not in ("float16", "bfloat16", "float32"):
            raise EdgeAwqError(f"profile {self.name}: kv_dtype {self.kv_dtype!r} is not supported")
        known = {f.name for f in fields(KernelSettings)}
        for key in self.kernels:
            if key not in known:
                raise EdgeAwqError(f"profile {self.name}: [kernels] field '{key}' is not a kernel setting "
                                   f"({', '.join(sorted(known))})")
        try:
            self.kernel_settings()
        except (TypeError, ValueError) as e:
            raise EdgeAwqError(f"profile {self.name}: [kernels]: {e}") from None

    def kernel_settings(self) -> KernelSettings:
        backend = {"triton": "auto", "torch-int4": "torch-int4", "torch": "reference"}[self.kernel]
        return KernelSettings(**{"backend": backend, **self.kernels})

    @property
    def budget_bytes(self) -> int | None:
        """Memory the model, KV cache and runtime may use; None when sized from the device at run time."""
        if not self.total_memory_gb:
            return None
        return int((self.total_memory_gb - self.reserved_gb) * 2**30)

    @property
    def kv_bytes_per_value(self) -> int:
        return 4 if self.kv_dtype == "float32" else 2


def _parse(text: str, source: str) -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EdgeAwqError(f"{source}: not valid TOML ({e})") from None
    known = {f.name for f in fields(Profile)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EdgeAwqError(f"{source}: unknown profile field '{unknown[0]}'")
    missing = sorted(f.name for f in fields(Profile) if f.name not in data and f.default is not None
                     and f.name not in ("match_model", "match_memory_gb", "kernels"))
    if missing:
        raise EdgeAwqError(f"{source}: missing profile field '{missing[0]}'")
    for f in fields(Profile):
        if f.name in data and f.name != "kernels" and not _has_type(data[f.name], f.type):
            raise EdgeAwqError(f"{source}: field '{f.name}' must be {_TYPE_WORDS[f.type]}, "
                               f"not {data[f.name]!r}")
    if "match_model" in data:
        data["match_model"] = tuple(data["match_model"])
    if not isinstance(data.get("kernels", {}), dict):
        raise EdgeAwqError(f"{source}: 'kernels' must be a table of kernel settings")
    return Profile(**data)


_TYPE_WORDS = {"str": "a string", "float": "a number", "bool": "true or false", "int": "an integer",
               "tuple[str, ...]": "a list of strings", "int | None": "an integer"}


def _has_type(value, annotation: str) -> bool:
    if isinstance(value, bool):  # TOML booleans are not numbers
        return annotation == "bool"
    return {"str": isinstance(value, str), "float": isinstance(value, (int, float)),
            "bool": False, "int": isinstance(value, int), "int | None": isinstance(value, int),
            "tuple[str, ...]": isinstance(value, list) and all(isinstance(v, str) for v in value)}[annotation]


def profile_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("edge_awq.platforms").iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> Profile:
    """A bundled profile by name, or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        try:
            return _parse(path.read_text(encoding="utf-8"), str(path))
        except OSError as e:
            raise EdgeAwqError(f"{path}: cannot read profile ({e.strerror})") from None
    res = resources.files("edge_awq.platforms") / f"{name_or_path}.toml"
    if not res.is_file():
        raise EdgeAwqError(f"--profile {name_or_path!r}: unknown profile; known: {', '.join(profile_names())}")
    return _parse(res.read_text(encoding="utf-8"), f"platforms/{name_or_path}.toml")


def all_profiles() -> list[Profile]:
    return [load_profile(n) for n in profile_names()]


def _jetson_model() -> str | None:
    """The module's name on a Jetson (/proc/device-tree/model), None elsewhere."""
    if not Path("/etc/nv_tegra_release").exists():
        return None
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return "unknown Jetson"


def detect_profile(cuda_available: bool, host_memory_bytes: int) -> tuple[Profile, str]:
    """(the profile of this machine, why): a Jetson module by its device-tree name and memory, a
    generic desktop GPU, or the CPU."""
    if not cuda_available:
        return load_profile("cpu"), "no CUDA device"
    model = _jetson_model()
    if model is None:
        return load_profile("desktop-gpu"), "CUDA GPU, not a Jetson"
    gb = host_memory_bytes / 2**30
    named = [p for p in all_profiles() if any(s in model for s in p.match_model)]
    if not named:
        return load_profile("desktop-gpu"), f"Jetson {model!r} has no profile of its own"
    best = min(named, key=lambda p: abs((p.match_memory_gb or 0) - gb))
    return best, f"{model}, {gb:.1f} GB"
