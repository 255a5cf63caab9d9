"""`edge-awq inspect` and platform profiles: sizes from headers, memory needs, verdicts, bad profile files."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edge_awq.cli import main
from edge_awq.errors import EdgeAwqError
from edge_awq.footprint import describe, fit
from edge_awq.profiles import all_profiles, load_profile, profile_names
from edge_awq.quantize import QuantizeOptions, quantize_model
from edge_awq.shards import read_manifest
from edge_awq.split import split_checkpoint
from helpers import make_tiny_model

CPU_PROFILE = Path(__file__).parent.parent / "platforms" / "cpu.toml"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("inspect")
    fp = make_tiny_model(root / "fp", "llama", tokenizer_from=smollm2, dtype=torch.float16, num_hidden_layers=3)
    quantize_model(fp, root / "q", QuantizeOptions(method="rtn", group_size=128))
    split_checkpoint(root / "q", root / "shards")
    return fp, root / "q", root / "shards"


def test_sizes_and_parameters(folders):
    from transformers import AutoModelForCausalLM
    fp, q, shards = folders
    n_params = AutoModelForCausalLM.from_pretrained(fp).num_parameters()
    dense, ckpt, sh = describe(fp), describe(q), describe(shards)
    assert (dense.kind, ckpt.kind, sh.kind) == ("dense model", "AWQ checkpoint", "shard folder")
    assert dense.parameters == ckpt.parameters == sh.parameters == n_params
    assert (ckpt.bits, ckpt.group_size, dense.bits) == (4, 128, None)
    # the shard folder's per-part bytes are its files' tensor bytes
    m = read_manifest(shards)
    assert sh.layer_bytes == [sum(t["bytes"] for t in m.part("layer", i).tensors.values()) for i in range(3)]
    assert sh.weight_bytes == ckpt.weight_bytes
    # a dense fp16 model's projected AWQ size is what quantizing it at g128 actually stores
    assert dense.awq_bytes == ckpt.weight_bytes
    assert dense.kv_bytes(100) == 2 * 3 * 2 * 32 * 100 * 2  # k and v, layers, kv heads, head dim, tokens, fp16


def _profile(tmp_path, **changes):
    text = CPU_PROFILE.read_text()
    for key, value in changes.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} ")]
        text = "\n".join(lines + ([f"{key} = {value}"] if value is not None else []))
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_fit_verdicts(tmp_path, folders):
    ckpt = describe(folders[1])
    need = fit(ckpt, load_profile(str(_profile(tmp_path, total_memory_gb=100, reserved_gb=0))), 256)
    assert need.verdict == "fits" and need.stream_bytes < need.need_bytes
    gib = 2**30
    # budgets just above and just below each threshold
    for budget, verdict in ((need.need_bytes, "fits"), (need.need_bytes - 1, "streaming"),
                            (need.stream_bytes, "streaming"), (need.stream_bytes - 1, "no")):
        p = load_profile(str(_profile(tmp_path, total_memory_gb=budget / gib, reserved_gb=0)))
        assert fit(ckpt, p, 256).verdict == verdict, (budget, verdict)
    # the context is capped by the profile's max_context
    p = load_profile(str(_profile(tmp_path, max_context=64)))
    assert fit(ckpt, p, 4096).context == 64


def test_inspect_cli(folders):
    _, q, shards = folders
    r = CliRunner().invoke(main, ["inspect", str(shards), "--context", "512", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["kind"] == "shard folder" and data["layers"] == 3 and data["context"] == 512
    assert {f["profile"] for f in data["fits"]} == set(profile_names())
    r = CliRunner().invoke(main, ["inspect", str(q)])
    assert r.exit_code == 0 and "W4 g128 (awq-gemm)" in r.stdout and "jetson-orin-nano-4gb" in r.stdout
    r = CliRunner().invoke(main, ["inspect", str(q / "config.json")])
    assert r.exit_code == 2 and "not a folder" in r.output


def test_bundled_profiles_load():
    names = profile_names()
    assert {"cpu", "desktop-gpu", "jetson-agx-orin-64gb", "jetson-agx-orin-32gb", "jetson-orin-nx-16gb",
            "jetson-orin-nx-8gb", "jetson-orin-nano-8gb", "jetson-orin-nano-4gb"} <= set(names)
    for p in all_profiles():
        assert p.budget_bytes is None or 0 < p.budget_bytes < p.total_memory_gb * 2**30


@pytest.mark.parametrize("changes,message", [
    (dict(colour='"red"'), "unknown profile field 'colour'"),
    (dict(kernel=None), "missing profile field 'kernel'"),
    (dict(kernel='"cuda-magic"'), "kernel 'cuda-magic' is not one of triton, torch"),
    (dict(kv_dtype='"int3"'), "kv_dtype 'int3' is not supported"),
    (dict(max_context='"long"'), "p.toml: field 'max_context' must be"),
])
def test_bad_profile_file(tmp_path, changes, message):
    with pytest.raises(EdgeAwqError, match=message):
        load_profile(str(_profile(tmp_path, **changes)))


def test_unknown_profile_name(folders, tmp_path):
    r = CliRunner().invoke(main, ["split", str(folders[1]), str(tmp_path / "o"), "--profile", "jetson-tx1"])
    assert r.exit_code == 2 and "unknown profile" in r.output and "jetson-orin-nano-8gb" in r.output
