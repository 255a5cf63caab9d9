"""Perplexity of a dense model or an AWQ checkpoint, as the AWQ/GPTQ papers measure it:
the text is tokenized once, cut into non-overlapping ``seqlen`` windows (tail dropped), and
ppl = exp(mean next-token NLL over all windows)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from edge_awq.kernels.dispatch import KernelSettings
from edge_awq.kernels.quant_linear import QuantLinear

from .errors import EdgeAwqError
from .memory import peak_rss_bytes
from .model import load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    windows: int
    seqlen: int
    tokens: int
    seconds: float
    peak_rss_bytes: int
    window_nll: tuple[float, ...]  # summed next-token NLL of each window, in text order


def window_perplexity(window_nll: list[float] | tuple[float, ...], seqlen: int) -> float:
    """exp(mean next-token NLL) from the summed NLL of each ``seqlen``-token window (seqlen − 1 targets each)."""
    return math.exp(sum(window_nll) / (len(window_nll) * (seqlen - 1)))


def load_eval_text(spec: str) -> str:
    """``bbc-tech`` (installed corpus), ``pydoc`` (CPython topics), or a path to a .txt file."""
    if spec == "bbc-tech":
        from .assets import bbc_tech_text
        return bbc_tech_text()
    if spec == "pydoc":
        from pydoc_data.topics import topics
        return "\n\n".join(topics[k] for k in sorted(topics))
    path = Path(spec)
    if not path.is_file():
        raise EdgeAwqError(f"{spec}: eval text not found (a .txt path, 'bbc-tech' or 'pydoc')")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise EdgeAwqError(f"{spec}: eval text is empty")
    return text


def perplexity(model_dir: Path, text: str, seqlen: int = 2048, max_windows: int | None = None,
               dtype: torch.dtype = torch.float32, device: str = "cpu",
               progress: Callable[[int, int, str], None] | None = None) -> PerplexityResult:
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor(tok.encode(text, add_special_tokens=False), dtype=torch.int64)
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise EdgeAwqError(f"eval text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    model = load_model(model_dir).to(device)
    # The measure is the torch reference W4A16 linear on any device: the layers stay in the
    # checkpoint's GEMM layout, which the GPU kernels would first have to be laid out for.
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.kernel_settings = KernelSettings(backend="reference")
    nlls = []
    with torch.no_grad():
        for w in range(n):
            if progress:
                progress(w, n, f"window {w}")
            window = ids[w * seqlen:(w + 1) * seqlen].to(device)[None]
            logits = model(window, dtype=dtype)[0, :-1]
            nlls.append(F.cross_entropy(logits.float(), window[0, 1:], reduction="sum").item())
    if progress:
        progress(n, n, "done")
    return PerplexityResult(window_perplexity(nlls, seqlen), n, seqlen, n * seqlen, time.perf_counter() - t0,
                            peak_rss_bytes(), tuple(nlls))
