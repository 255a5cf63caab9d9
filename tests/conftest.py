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
