"""Importing edge-awq is free: no GPU query, no Triton, no transformers until a command needs them."""

import subprocess
import sys


def test_import_touches_no_gpu_and_no_heavy_modules():
    code = (
        "import sys, torch\n"
        "import edge_awq, edge_awq.cli, edge_awq.quantize, edge_awq.eval, edge_awq.kernels.quant_linear\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised at import'\n"
        "bad = [m for m in ('triton', 'transformers', 'gguf') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kernels_ship_inside_the_package():
    import edge_awq.kernels

    assert edge_awq.kernels.__name__ == "edge_awq.kernels"
    assert "kernels" not in sys.modules or sys.modules["kernels"] is not edge_awq.kernels
