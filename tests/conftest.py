"""Shared fixtures: the real SmolLM2 folder (converted once per cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter (numpy on the CPU). It is read when
# kernels are decorated, so it must be set before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from edge_awq.assets import ensure_model
    return ensure_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_shards(tmp_path_factory, smollm2) -> Path:
    """SmolLM2 RTN g64, split into shards (quantized once per session)."""
    from edge_awq.quantize import QuantizeOptions, quantize_model
    from edge_awq.split import split_checkpoint

    root = tmp_path_factory.mktemp("smollm2-shards")
    quantize_model(smollm2, root / "rtn", QuantizeOptions(method="rtn", group_size=64))
    split_checkpoint(root / "rtn", root / "shards")
    return root / "shards"
