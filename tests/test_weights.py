"""Safetensors reading and writing: validation before trust, pickle refused, streamed atomic writes."""

import json

import pytest
import torch

from edge_awq.errors import EdgeAwqError
from edge_awq.weights import WeightReader, read_header, write_safetensors


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 5, generator=g), "b": torch.randint(-9, 9, (7,), dtype=torch.int32, generator=g),
            "c": torch.randn(4, 4, generator=g).bfloat16()}


def test_round_trip_and_safetensors_compatible(tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    write_safetensors(path, _tensors(), {"format": "pt"})
    other = load_file(path)  # the upstream reader agrees with ours
    reader = WeightReader(tmp_path)
    for k, v in _tensors().items():
        assert torch.equal(reader.get(k), v) and torch.equal(other[k], v)


def test_streamed_write_checks_order(tmp_path):
    t = _tensors()
    specs = [(k, v.dtype, tuple(v.shape)) for k, v in t.items()]
    write_safetensors(tmp_path / "s.safetensors", iter(t.items()), specs=specs)
    assert set(read_header(tmp_path / "s.safetensors")[0]) == set(t)
    with pytest.raises(ValueError):
        write_safetensors(tmp_path / "bad.safetensors", iter(reversed(list(t.items()))), specs=specs)
    assert not list(tmp_path.glob(".*tmp*")) and not (tmp_path / "bad.safetensors").exists()


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, _tensors())
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(EdgeAwqError, match="model.safetensors: truncated"):
        WeightReader(tmp_path)
    path.write_bytes(data[:5])
    with pytest.raises(EdgeAwqError, match="truncated"):
        WeightReader(tmp_path)


def test_pickle_is_refused_without_reading(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(EdgeAwqError, match="pytorch_model.bin: pickle checkpoints are refused"):
        WeightReader(tmp_path)


def test_index_with_missing_shard(tmp_path):
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a": torch.ones(2)})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(EdgeAwqError, match="model-00002-of-00002.safetensors: shard listed"):
        WeightReader(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    write_safetensors(tmp_path / "model.safetensors", {"a": torch.ones(2)})
    with pytest.raises(EdgeAwqError, match="tensor 'zz' is missing"):
        WeightReader(tmp_path).get("zz")
