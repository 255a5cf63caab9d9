"""End to end on real weights: SmolLM2-135M, reduced calibration, held-out BBC tech text."""

import json

import pytest
import torch

from edge_awq.calibration import CalibConfig
from edge_awq.eval import load_eval_text, perplexity
from edge_awq.families import FAMILIES
from edge_awq.quantize import QuantizeOptions, quantize_model
from edge_awq.weights import WeightReader


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("smollm2")
    rtn = quantize_model(smollm2, root / "rtn", QuantizeOptions(method="rtn", group_size=64))
    awq = quantize_model(smollm2, root / "awq", QuantizeOptions(group_size=64, calib=CalibConfig(max_blocks=4)))
    return root, rtn, awq


def test_awq_beats_rtn_on_held_out_text(smollm2, checkpoints):
    root, _, _ = checkpoints
    text = load_eval_text("bbc-tech")  # calibration is pydoc: this text is held out
    ppl = {name: perplexity(path, text, seqlen=2048, max_windows=2).ppl
           for name, path in (("fp", smollm2), ("rtn", root / "rtn"), ("awq", root / "awq"))}
    assert ppl["fp"] <= ppl["awq"] < ppl["rtn"], ppl


def test_checkpoint_is_autoawq_gemm_layout(checkpoints):
    root, rtn_report, awq_report = checkpoints
    cfg = json.loads((root / "awq" / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True,
                                          "version": "gemm", "modules_to_not_convert": None}
    r = WeightReader(root / "awq")
    p = "model.layers.7.self_attn.q_proj."
    assert r.info(p + "qweight").shape == (576, 576 // 8) and r.info(p + "qweight").dtype == torch.int32
    assert r.info(p + "qzeros").shape == (576 // 64, 576 // 8) and r.info(p + "qzeros").dtype == torch.int32
    assert r.info(p + "scales").shape == (576 // 64, 576) and r.info(p + "scales").dtype == torch.float16
    assert r.info("model.layers.7.mlp.down_proj.qweight").shape == (1536, 576 // 8)
    assert not any(n.endswith("_proj.weight") for n in r.tensors)
    assert not any(n.startswith("awq.") for n in r.tensors)
    assert (root / "awq" / "tokenizer.json").exists()
    blocks = awq_report["blocks"]
    assert len(blocks) == 30 and set(blocks[0]["ratios"]) == {"attn_in", "mlp_in", "mlp_out"}  # GQA: no v→o
    # Each group's clip was judged by the group's module loss: kept only where it lowered it.
    family = FAMILIES["llama"]
    for b in blocks:
        for g in family.scale_groups:
            plain, with_clip = b["clip_losses"][g.name]
            if with_clip >= plain:
                assert all(b["clipped"][n] == 0 for n in g.linears if n not in family.no_clip), (g.name, b)
    assert sum(sum(b["clipped"].values()) for b in blocks) > 0
    assert awq_report["calibration_blocks"] == [4, 512] and awq_report["peak_rss_bytes"] > 0
    # Same weights, different search: AWQ changed what RTN would have written.
    assert not torch.equal(r.get(p + "qweight"), WeightReader(root / "rtn").get(p + "qweight"))
