"""Split → verify → load: the shard folder, its manifest, and every way a copy can go wrong."""

import hashlib
import json
import pickle
import shutil
import struct

import pytest
import torch
from click.testing import CliRunner

from edge_awq.cli import main
from edge_awq.errors import EdgeAwqError
from edge_awq.model import load_model
from edge_awq.profiles import load_profile
from edge_awq.quantize import QuantizeOptions, quantize_model
from edge_awq.shards import INDEX, MANIFEST, read_manifest, verify_folder
from edge_awq.split import split_checkpoint
from edge_awq.weights import WeightReader
from helpers import flip_byte, make_tiny_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("shards")
    model = make_tiny_model(root / "fp", "qwen2", tokenizer_from=smollm2, num_hidden_layers=3)
    quantize_model(model, root / "rtn", QuantizeOptions(method="rtn", group_size=64))
    return root / "rtn"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ckpt):
    out = tmp_path_factory.mktemp("split") / "shards"
    split_checkpoint(ckpt, out)
    return out


@pytest.fixture
def copy(tmp_path, shards):
    dst = tmp_path / "copy"
    shutil.copytree(shards, dst)
    return dst


def test_layout_and_manifest(shards, ckpt):
    m = read_manifest(shards)
    assert [f.name for f in m.files] == ["model-embed.safetensors", "model-layer-000.safetensors",
                                         "model-layer-001.safetensors", "model-layer-002.safetensors",
                                         "model-head.safetensors"]
    assert [(f.role, f.layer) for f in m.files] == [("embed", None), ("layer", 0), ("layer", 1), ("layer", 2),
                                                    ("head", None)]
    assert m.weight_layout == "awq-gemm" and m.config["quantization_config"]["group_size"] == 64
    for f in m.files:  # sizes and hashes are the files' own
        data = (shards / f.name).read_bytes()
        assert f.bytes == len(data) and f.sha256 == hashlib.sha256(data).hexdigest()
    for name, s in m.side_files.items():
        assert s["sha256"] == hashlib.sha256((shards / name).read_bytes()).hexdigest()
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= set(m.side_files)
    assert set(m.part("layer", 1).tensors) == {n for n in WeightReader(ckpt).tensors if n.startswith("model.layers.1.")}
    assert set(m.part("head").tensors) == {"model.norm.weight", "lm_head.weight"}
    # A standard HF index: every tensor of the source, mapped to its shard.
    index = json.loads((shards / INDEX).read_text())
    assert set(index["weight_map"]) == set(WeightReader(ckpt).tensors)
    assert index["weight_map"]["model.layers.2.mlp.up_proj.qweight"] == "model-layer-002.safetensors"


def test_split_tensors_are_bit_identical(shards, ckpt):
    src, dst = WeightReader(ckpt), WeightReader(shards)
    assert set(src.tensors) == set(dst.tensors)
    for name in src.tensors:
        assert torch.equal(src.get(name), dst.get(name)), name


def test_loading_shards_matches_the_checkpoint(shards, ckpt):
    tokens = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    a, b = load_model(ckpt, torch.float32), load_model(shards, torch.float32)
    with torch.no_grad():
        assert torch.equal(a(tokens), b(tokens))


def test_split_again_verifies_and_does_nothing(shards, ckpt):
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    r = split_checkpoint(ckpt, shards)
    assert r["written"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == before


def test_split_again_repairs_only_the_bad_file(copy, ckpt):
    flip_byte(copy / "model-layer-001.safetensors", -5)
    untouched = (copy / "model-layer-002.safetensors").stat().st_mtime_ns
    r = split_checkpoint(ckpt, copy)
    assert r["written"] == 1
    assert verify_folder(copy) == []
    assert (copy / "model-layer-002.safetensors").stat().st_mtime_ns == untouched


def test_split_refuses_a_folder_of_another_checkpoint(tmp_path, shards, smollm2):
    other = tmp_path / "other"
    quantize_model(make_tiny_model(tmp_path / "fp2", "llama", tokenizer_from=smollm2, seed=3), other,
                   QuantizeOptions(method="rtn", group_size=64))
    with pytest.raises(EdgeAwqError, match="split of a different checkpoint"):
        split_checkpoint(other, shards)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(EdgeAwqError, match=r"not empty \(notes.txt\)"):
        split_checkpoint(other, busy)


def test_profile_is_recorded(tmp_path, ckpt):
    out = tmp_path / "nano"
    split_checkpoint(ckpt, out, load_profile("jetson-orin-nano-4gb"))
    m = read_manifest(out)
    assert m.profile == "jetson-orin-nano-4gb" and m.weight_layout == "awq-gemm"
    assert verify_folder(out) == []


def test_verify_cli_ok_and_fast(shards):
    r = CliRunner().invoke(main, ["verify", str(shards)])
    assert r.exit_code == 0 and "OK (every sha256 checked)" in r.output
    r = CliRunner().invoke(main, ["verify", str(shards), "--fast"])
    assert r.exit_code == 0 and "sizes and headers" in r.output


# ---------------------------------------------------------------- bad input, one test each


def _verify_cli(folder):
    r = CliRunner().invoke(main, ["verify", str(folder)])
    assert r.exit_code == 1, r.output
    return r.output


def test_truncated_shard(copy):
    f = copy / "model-layer-000.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    out = _verify_cli(copy)
    assert "model-layer-000.safetensors" in out and "truncated" in out
    with pytest.raises(EdgeAwqError, match=r"model-layer-000.safetensors: \d+ bytes, manifest says \d+ \(truncated\)"):
        load_model(copy)


def test_flipped_byte(copy):
    f = copy / "model-layer-002.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside tensor data: the header still parses
    f.write_bytes(bytes(data))
    out = _verify_cli(copy)
    assert "model-layer-002.safetensors: sha256 mismatch" in out
    # --fast checks only sizes and headers, so it cannot see this one
    assert CliRunner().invoke(main, ["verify", str(copy), "--fast"]).exit_code == 0
    with pytest.raises(EdgeAwqError, match="model-layer-002.safetensors: sha256 mismatch"):
        load_model(copy)


def test_missing_shard(copy):
    (copy / "model-head.safetensors").unlink()
    out = _verify_cli(copy)
    assert "model-head.safetensors: missing" in out
    with pytest.raises(EdgeAwqError, match="model-head.safetensors: shard is missing"):
        load_model(copy)


def test_extra_unknown_file(copy):
    (copy / "model-layer-099.safetensors").write_bytes(b"stray")
    out = _verify_cli(copy)
    assert "model-layer-099.safetensors: unknown file, not in the manifest" in out


def test_manifest_from_another_model(copy, tmp_path, smollm2):
    other = tmp_path / "other"
    quantize_model(make_tiny_model(tmp_path / "fp2", "llama", tokenizer_from=smollm2, hidden_size=64,
                                   intermediate_size=128, num_hidden_layers=3), other,
                   QuantizeOptions(method="rtn", group_size=32))
    split_checkpoint(other, tmp_path / "other-shards")
    shutil.copy(tmp_path / "other-shards" / MANIFEST, copy / MANIFEST)
    out = _verify_cli(copy)
    assert "manifest.json: describes a different model than config.json (model_type" in out
    with pytest.raises(EdgeAwqError, match="manifest.json: describes a different model"):
        load_model(copy)


def _rewrite_tensor(path, name, new_dtype=None, new_shape=None):
    """Rewrite one tensor's header entry in place, keeping the file's size."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    if new_dtype:
        header[name]["dtype"] = new_dtype
    if new_shape:
        header[name]["shape"] = new_shape
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= n
    path.write_bytes(raw[:8] + blob + b" " * (n - len(blob)) + raw[8 + n:])


def test_tensor_with_wrong_dtype_or_shape(copy):
    f = copy / "model-layer-001.safetensors"
    _rewrite_tensor(f, "model.layers.1.self_attn.q_proj.scales", new_dtype="BF16")
    out = _verify_cli(copy)
    assert "tensor 'model.layers.1.self_attn.q_proj.scales' has dtype BF16, manifest says F16" in out
    f = copy / "model-layer-000.safetensors"
    _rewrite_tensor(f, "model.layers.0.self_attn.q_proj.scales", new_shape=[128, 2])
    out = _verify_cli(copy)
    assert "tensor 'model.layers.0.self_attn.q_proj.scales' has shape [128, 2], manifest says [2, 128]" in out


def test_split_input_with_wrong_shape(tmp_path, ckpt):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    _rewrite_tensor(bad / "model.safetensors", "model.layers.0.mlp.up_proj.scales", new_shape=[256, 2])
    with pytest.raises(EdgeAwqError, match=r"model.safetensors: tensor 'model.layers.0.mlp.up_proj.scales' "
                                           r"has shape \(256, 2\), expected \(2, 256\)"):
        split_checkpoint(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change,message", [
    ({"version": "gemv"}, "AWQ version 'gemv' is not supported"),
    ({"version": "marlin"}, "AWQ version 'marlin' is not supported"),
    ({"version": "exllama"}, "AWQ version 'exllama' is not supported"),
    ({"bits": 8}, "bits=8 is not supported"),
])
def test_unsupported_awq_checkpoint(tmp_path, ckpt, change, message):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"].update(change)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgeAwqError, match=f"config.json: {message}"):
        split_checkpoint(bad, tmp_path / "out")
    r = CliRunner().invoke(main, ["split", str(bad), str(tmp_path / "out")])
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "out").exists()


class _Trap:
    def __reduce__(self):
        return (open, ("UNPICKLED", "w"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_checkpoint_is_refused(tmp_path, ckpt, name, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(ckpt / "config.json", bad / "config.json")
    (bad / name).write_bytes(pickle.dumps(_Trap()))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["split", str(bad), str(tmp_path / "out")])
    assert r.exit_code == 2 and f"{name}: pickle checkpoints are refused" in r.output
    assert not (tmp_path / "UNPICKLED").exists()


def _write_autoawq_style(fp_folder, out, group):
    """A checkpoint as AutoAWQ writes it: packed by the spec, fp16, two shards + index, legacy quant_config.json."""
    from safetensors.torch import save_file

    from edge_awq.quant import quantize
    from helpers import pack_by_spec

    src = WeightReader(fp_folder)
    tensors = {}
    for name in src.tensors:
        w = src.get(name)
        if name.endswith("_proj.weight"):
            q, scale, zero = quantize(w, group)
            base = name[: -len(".weight")]
            tensors[base + ".qweight"] = pack_by_spec(q.t())
            tensors[base + ".qzeros"] = pack_by_spec(zero.t())
            tensors[base + ".scales"] = scale.t().half().contiguous()
        else:
            tensors[name] = w.half()
    out.mkdir()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(out / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (out / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = json.loads((fp_folder / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "quant_config.json").write_text(json.dumps(
        {"zero_point": True, "q_group_size": group, "w_bit": 4, "version": "GEMM"}))
    for side in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(fp_folder / side, out / side)
    return tensors


def test_autoawq_checkpoint_loads_and_splits(tmp_path, ckpt, smollm2):
    fp = make_tiny_model(tmp_path / "fp", "qwen2", tokenizer_from=smollm2, num_hidden_layers=2)
    tensors = _write_autoawq_style(fp, tmp_path / "autoawq", 64)
    ours = tmp_path / "ours"
    quantize_model(fp, ours, QuantizeOptions(method="rtn", group_size=64))
    # our packer and the spec agree on every quantized tensor
    for name, t in tensors.items():
        if name.endswith((".qweight", ".qzeros")):
            assert torch.equal(WeightReader(ours).get(name), t), name
    tokens = torch.randint(0, 49152, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = load_model(tmp_path / "autoawq", torch.float32)(tokens)
        b = load_model(ours, torch.float32)(tokens)
    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)  # fp16 vs fp32 norms/embeddings only
    split_checkpoint(tmp_path / "autoawq", tmp_path / "shards")
    m = read_manifest(tmp_path / "shards")
    q = m.config["quantization_config"]
    assert (q["bits"], q["group_size"], q["version"].lower()) == (4, 64, "gemm")
    assert verify_folder(tmp_path / "shards") == []
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "shards", torch.float32)(tokens), a)
