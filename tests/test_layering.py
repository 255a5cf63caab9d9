"""Imports flow one way: math and kernels → model and I/O → stages → UI."""

import ast
from pathlib import Path

import edge_awq

PKG = Path(edge_awq.__file__).parent
KERNELS = PKG.parent / "kernels"

# module → the edge_awq modules it may import (besides errors)
ALLOWED = {
    "errors": set(), "quant": set(), "pack": set(), "families": set(), "memory": set(),
    "config": {"families"},
    "weights": {"config"},
    "awq": {"quant"},
    "calibration": {"assets"},
    "model": {"config", "families", "weights", "kernels", "shards"},
    "assets": set(),
    "profiles": {"kernels"},
    "shards": {"config", "weights"},
    "split": {"config", "memory", "model", "profiles", "shards", "weights"},
    "footprint": {"config", "profiles", "shards", "weights"},
    "generate": {"model"},
    "quantize": {"awq", "calibration", "config", "families", "memory", "model", "pack", "quant", "weights"},
    "eval": {"model", "memory", "assets", "kernels"},
    "stream": set(),
    "loader": {"config", "kernels", "memory", "model", "plan", "shards", "stream", "weights"},
    "engine": {"generate", "kernels", "loader", "model", "stream"},
    "plan": {"kernels", "memory", "shards", "stream", "weights"},
    "tokenizer": {"generate"},
    "runtime": {"engine", "footprint", "generate", "kernels", "loader", "memory", "plan", "profiles", "shards",
                "stream", "tokenizer"},
    "chat": {"engine", "generate"},
    "bench": {"engine", "footprint", "generate", "runtime"},
    "cli": {"memory", "calibration", "quantize", "eval", "assets", "profiles", "split", "shards",
            "footprint", "generate", "model", "plan", "runtime", "chat", "bench", "weights"},
    "__main__": {"cli"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1:
                found.add(mod.split(".")[0] if mod else node.names[0].name)
            elif mod.startswith("edge_awq."):
                found.add(mod.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("edge_awq."))
    return found - {"errors"}


def test_package_imports_follow_the_layers():
    for path in sorted(PKG.glob("*.py")):
        if path.stem == "__init__":
            continue
        assert path.stem in ALLOWED, f"new module {path.stem}: add it to the layering table"
        extra = _imports(path) - ALLOWED[path.stem]
        assert not extra, f"{path.name} imports {sorted(extra)} against the layering"


def test_kernels_depend_only_on_the_packing_math():
    for path in KERNELS.glob("*.py"):
        assert _imports(path) <= {"pack", "reference", "torch_int4", "triton_w4a16", "gluon_w4a16", "triton_ops",
                                  "dispatch", "layout"}, path.name
