"""An interrupted quantization, rerun, gives the same checkpoint as an uninterrupted one."""

import pytest
import torch

from edge_awq.calibration import CalibConfig
from edge_awq.quantize import STATE, QuantizeOptions, quantize_model
from edge_awq.weights import WeightReader
from helpers import make_tiny_model

OPTS = QuantizeOptions(group_size=32, calib=CalibConfig(max_blocks=3, block_tokens=64), chunk_blocks=2)


class Interrupt(Exception):
    pass


def _stop_at(block):
    def progress(done, total, msg):
        if done == block:
            raise Interrupt
    return progress


def _tensors(folder):
    r = WeightReader(folder)
    return {n: r.get(n) for n in r.tensors}


@pytest.fixture(scope="module")
def model_and_reference(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("resume")
    model = make_tiny_model(root / "m", "qwen2", tokenizer_from=smollm2, num_hidden_layers=4)
    quantize_model(model, root / "ref", OPTS)
    return model, _tensors(root / "ref")


@pytest.mark.parametrize("lose_inputs", [False, True])
def test_resume_gives_identical_tensors(tmp_path, model_and_reference, lose_inputs):
    model, ref = model_and_reference
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        quantize_model(model, out, OPTS, progress=_stop_at(2))
    state = out / STATE
    assert sorted(p.name for p in state.glob("block_*")) == ["block_0000.safetensors", "block_0001.safetensors"]
    assert not (out / "config.json").exists(), "an unfinished run must not look like a checkpoint"
    if lose_inputs:  # as if the crash came between the block result and the saved activations
        (state / "inputs.safetensors").unlink()
    report = quantize_model(model, out, OPTS)
    assert report["resumed_from_block"] == 2
    assert not state.exists()
    got = _tensors(out)
    assert got.keys() == ref.keys()
    for name, t in ref.items():
        assert torch.equal(got[name], t), name


def test_duo_scaling_is_its_own_run(tmp_path, model_and_reference):
    from dataclasses import replace

    from edge_awq.errors import EdgeAwqError

    model, ref = model_and_reference
    duo = replace(OPTS, duo_scaling=True)
    with pytest.raises(Interrupt):
        quantize_model(model, tmp_path / "plain", OPTS, progress=_stop_at(1))
    with pytest.raises(EdgeAwqError, match="different model or options"):
        quantize_model(model, tmp_path / "plain", duo)  # never resumes a plain run with duo blocks
    report = quantize_model(model, tmp_path / "duo", duo)
    assert report["options"]["duo_scaling"] is True
    got = _tensors(tmp_path / "duo")
    assert got.keys() == ref.keys()
    assert any(not torch.equal(got[n], ref[n]) for n in ref if n.endswith("qweight"))


def test_clip_attention_leaves_the_mlp_unclipped(tmp_path, model_and_reference):
    """``--clip attention``: the same v and o as the default run (their clips do not depend on the
    MLP's), no clip recorded for any MLP linear, and its own run key."""
    from dataclasses import replace

    from edge_awq.errors import EdgeAwqError

    model, ref = model_and_reference
    attn = replace(OPTS, clip="attention")
    with pytest.raises(Interrupt):
        quantize_model(model, tmp_path / "all", OPTS, progress=_stop_at(1))
    with pytest.raises(EdgeAwqError, match="different model or options"):
        quantize_model(model, tmp_path / "all", attn)
    report = quantize_model(model, tmp_path / "attn", attn)
    for block in report["blocks"]:
        assert set(block["clipped"]) == {"self_attn.v_proj", "self_attn.o_proj"}
    got = _tensors(tmp_path / "attn")
    for name, t in ref.items():
        if "self_attn" in name:
            assert torch.equal(got[name], t), name
    with pytest.raises(EdgeAwqError, match="--clip"):
        replace(OPTS, clip="mlp")


def test_refit_and_k_clip_change_only_what_they_should(tmp_path, model_and_reference):
    """``--refit`` keeps every code and zero point of the plain run and rescales the groups;
    ``--clip attention+k`` clips k as well as v and o. Each is its own run."""
    from dataclasses import replace

    from edge_awq.errors import EdgeAwqError

    model, ref = model_and_reference
    refit = replace(OPTS, refit=True)
    with pytest.raises(Interrupt):
        quantize_model(model, tmp_path / "refit", refit, progress=_stop_at(1))
    with pytest.raises(EdgeAwqError, match="different model or options"):
        quantize_model(model, tmp_path / "refit", OPTS)
    report = quantize_model(model, tmp_path / "refit", refit)
    assert all("refit" in b["seconds"] for b in report["blocks"])
    got = _tensors(tmp_path / "refit")
    assert got.keys() == ref.keys()
    for name, t in ref.items():
        if name.endswith(("qweight", "qzeros")) or not name.endswith("scales"):
            assert torch.equal(got[name], t), name
    changed = [n for n in ref if n.endswith("scales") and not torch.equal(got[n], ref[n])]
    assert len(changed) == sum(n.endswith("scales") for n in ref)
    ratio = torch.cat([(got[n].float() / ref[n].float()).flatten() for n in changed])
    assert 0.5 <= ratio.min() and ratio.max() <= 2.0

    report = quantize_model(model, tmp_path / "k", replace(OPTS, clip="attention+k"))
    for block in report["blocks"]:
        assert set(block["clipped"]) == {"self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}


def test_gptq_rounding_is_its_own_run_and_resumes(tmp_path, model_and_reference):
    """``--rounding gptq`` keeps the AWQ scales (norm weights, biases) of the plain run, changes the
    codes, and an interrupted run resumes to the same tensors."""
    from dataclasses import replace

    from edge_awq.errors import EdgeAwqError

    model, ref = model_and_reference
    gptq = replace(OPTS, rounding="gptq")
    whole = quantize_model(model, tmp_path / "whole", gptq)
    assert all("gptq" in b["seconds"] for b in whole["blocks"])
    with pytest.raises(Interrupt):
        quantize_model(model, tmp_path / "cut", gptq, progress=_stop_at(2))
    with pytest.raises(EdgeAwqError, match="different model or options"):
        quantize_model(model, tmp_path / "cut", OPTS)
    quantize_model(model, tmp_path / "cut", gptq)
    got, again = _tensors(tmp_path / "whole"), _tensors(tmp_path / "cut")
    assert got.keys() == ref.keys() == again.keys()
    for name, t in ref.items():
        assert torch.equal(again[name], got[name]), name
        if name.endswith("norm.weight") or name.endswith("bias"):
            assert torch.equal(got[name], t), name  # same scale search and clips before the rounding
    assert any(not torch.equal(got[n], ref[n]) for n in ref if n.endswith("qweight"))
    with pytest.raises(EdgeAwqError, match="--rounding"):
        replace(OPTS, rounding="gptq", refit=True)
    with pytest.raises(EdgeAwqError, match="--rounding"):
        replace(OPTS, rounding="stochastic")


def test_quantized_inputs_are_what_the_checkpoint_computes(tmp_path, model_and_reference):
    """``--quantized-inputs``: block i is calibrated on what the 4-bit checkpoint's first i blocks
    compute (as the runtime's own W4A16 blocks compute it), a run that lost its saved inputs
    recomputes them through the finished quantized blocks, and the option is its own run."""
    from dataclasses import replace

    from edge_awq.config import QuantConfig
    from edge_awq.errors import EdgeAwqError
    from edge_awq.kernels.dispatch import KernelSettings
    from edge_awq.kernels.quant_linear import QuantLinear
    from edge_awq.model import load_block, rope_cos_sin, rope_inv_freq
    from edge_awq.quantize import plan
    from edge_awq.weights import read_header, read_tensor

    model, ref = model_and_reference
    qin = replace(OPTS, quantized_inputs=True)
    whole = quantize_model(model, tmp_path / "whole", qin)
    assert whole["options"]["quantized_inputs"] is True
    with pytest.raises(Interrupt):
        quantize_model(model, tmp_path / "cut", qin, progress=_stop_at(2))
    state = tmp_path / "cut" / STATE
    infos, meta = read_header(state / "inputs.safetensors")
    assert meta["after_block"] == "1"
    saved = read_tensor(infos["x"], "x")

    p = plan(model, qin)
    ckpt = WeightReader(tmp_path / "whole")
    qcfg = QuantConfig.from_folder(tmp_path / "whole")
    x = torch.nn.functional.embedding(p.calib, WeightReader(model).get("model.embed_tokens.weight")).float()
    rope = rope_cos_sin(rope_inv_freq(p.cfg), torch.arange(p.calib.shape[1]), torch.float32)
    fp = x
    with torch.no_grad():
        for i in range(2):
            block = load_block(ckpt, p.cfg, i, torch.float32, qcfg)
            for m in block.modules():
                if isinstance(m, QuantLinear):
                    m.kernel_settings = KernelSettings(backend="reference")
            x = block(x, *rope)
            fp = load_block(WeightReader(model), p.cfg, i, torch.float32)(fp, *rope)
    torch.testing.assert_close(saved, x, rtol=1e-5, atol=1e-5)
    assert (saved - fp).abs().max() > 100 * (saved - x).abs().max()  # not the FP model's outputs

    with pytest.raises(EdgeAwqError, match="different model or options"):
        quantize_model(model, tmp_path / "cut", OPTS)  # never resumed as a plain run
    (state / "inputs.safetensors").unlink()
    quantize_model(model, tmp_path / "cut", qin)
    got, again = _tensors(tmp_path / "whole"), _tensors(tmp_path / "cut")
    assert got.keys() == ref.keys() == again.keys()
    for name, t in got.items():
        assert torch.equal(again[name], t), name
        if name.startswith("model.layers.0."):
            assert torch.equal(t, ref[name]), name  # block 0 sees the same embeddings either way
    assert any(not torch.equal(got[n], ref[n]) for n in ref if n.startswith("model.layers.3.") and "qweight" in n)
    with pytest.raises(EdgeAwqError, match="--quantized-inputs"):
        replace(OPTS, method="rtn", quantized_inputs=True)
