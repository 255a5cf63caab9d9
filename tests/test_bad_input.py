"""Every bad input of the quantize command: one-line error naming the culprit, non-zero exit, no output."""

import json

import pytest
from click.testing import CliRunner

from edge_awq.cli import main
from edge_awq.weights import WeightReader, read_tensor, write_safetensors
from helpers import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "m", "llama", tokenizer_from=smollm2)


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _quantize(model, out, *extra):
    return CliRunner().invoke(main, ["quantize", str(model), str(out), "--max-blocks", "1",
                                     "--block-tokens", "64", *extra])


def _assert_fails(result, *fragments, out=None):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    if out is not None:
        assert not out.exists(), "a failed run must leave no output folder"


def test_missing_config(tmp_path, tiny):
    m = _copy(tiny, tmp_path / "m")
    (m / "config.json").unlink()
    _assert_fails(_quantize(m, tmp_path / "out"), "config.json: file not found", out=tmp_path / "out")


def test_malformed_config(tmp_path, tiny):
    m = _copy(tiny, tmp_path / "m")
    (m / "config.json").write_text("{ not json")
    _assert_fails(_quantize(m, tmp_path / "out"), "config.json: not valid JSON", out=tmp_path / "out")
    (m / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 128}))
    _assert_fails(_quantize(m, tmp_path / "out"), "missing required field 'num_attention_heads'",
                  out=tmp_path / "out")


def test_unsupported_model_type(tmp_path, tiny):
    m = _copy(tiny, tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    _assert_fails(_quantize(m, tmp_path / "out"), "unsupported model_type 'gpt2'", "llama, mistral, qwen2",
                  out=tmp_path / "out")


def test_missing_tensor(tmp_path, tiny):
    m = _copy(tiny, tmp_path / "m")
    reader = WeightReader(m)
    keep = {n: read_tensor(i, n) for n, i in reader.tensors.items() if n != "model.layers.1.mlp.down_proj.weight"}
    write_safetensors(m / "model.safetensors", keep)
    _assert_fails(_quantize(m, tmp_path / "out"), "tensor 'model.layers.1.mlp.down_proj.weight' is missing",
                  out=tmp_path / "out")


def test_truncated_safetensors(tmp_path, tiny):
    m = _copy(tiny, tmp_path / "m")
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    _assert_fails(_quantize(m, tmp_path / "out"), "model.safetensors: truncated", out=tmp_path / "out")


def test_pickle_checkpoint_refused(tmp_path, tiny):
    m = _copy(tiny, tmp_path / "m")
    (m / "model.safetensors").unlink()
    (m / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    _assert_fails(_quantize(m, tmp_path / "out"), "pytorch_model.bin: pickle checkpoints are refused",
                  out=tmp_path / "out")


def test_empty_calibration_text(tmp_path, tiny):
    (tmp_path / "calib.txt").write_text("\n\n  \n")
    _assert_fails(_quantize(tiny, tmp_path / "out", "--calib", str(tmp_path / "calib.txt")),
                  "calib.txt: calibration text is empty", out=tmp_path / "out")


def test_group_size_that_does_not_fit(tmp_path, smollm2):
    m = make_tiny_model(tmp_path / "m", "llama", tokenizer_from=smollm2, hidden_size=80, head_dim=20)
    _assert_fails(_quantize(m, tmp_path / "out", "--group-size", "64"), "--group-size 64", "in_features 80",
                  out=tmp_path / "out")
    _assert_fails(_quantize(m, tmp_path / "out", "--group-size", "100"), "group size 100 is not supported",
                  out=tmp_path / "out")


def test_group_size_fallback_is_announced(tmp_path, smollm2, caplog):
    m = make_tiny_model(tmp_path / "m", "llama", tokenizer_from=smollm2, hidden_size=192, head_dim=48)
    r = _quantize(m, tmp_path / "out", "--method", "rtn")
    assert r.exit_code == 0, r.output
    assert "group size 128 does not divide in_features 192: using 64" in caplog.text
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["quantization_config"]["group_size"] == 64


def test_output_folder_holding_another_model(tmp_path, tiny, smollm2):
    out = tmp_path / "out"
    assert _quantize(tiny, out, "--method", "rtn").exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    other = make_tiny_model(tmp_path / "other", "qwen2", tokenizer_from=smollm2)
    _assert_fails(_quantize(other, out, "--method", "rtn"), "already holds a different model")
    assert sorted(p.name for p in out.iterdir()) == before
    # The same command again is a no-op, not an error.
    assert _quantize(tiny, out, "--method", "rtn").exit_code == 0


def test_non_empty_output_folder(tmp_path, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _assert_fails(_quantize(tiny, out, "--method", "rtn"), "folder is not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("extra, fragment", [
    (("--method", "rtn", "--quantized-inputs"), "--quantized-inputs needs --method awq"),
    (("--method", "rtn", "--rounding", "gptq"), "--rounding gptq needs --method awq"),
])
def test_options_that_do_not_go_together(tmp_path, tiny, extra, fragment):
    _assert_fails(_quantize(tiny, tmp_path / "out", *extra), fragment, out=tmp_path / "out")
