"""Shared fixtures: the real SmolLM2 folder (converted once per cache)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from edge_awq.assets import ensure_model
    return ensure_model("smollm2-135m")
