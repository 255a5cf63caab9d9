"""The CLI as a user runs it: summaries, JSON output, errors."""

import json
import math

import pytest
from click.testing import CliRunner

from edge_awq.cli import main
from helpers import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2):
    return make_tiny_model(tmp_path_factory.mktemp("cli") / "m", "mistral", tokenizer_from=smollm2)


def test_quantize_then_eval(tmp_path, tiny):
    out = tmp_path / "q"
    r = CliRunner().invoke(main, ["quantize", str(tiny), str(out), "--group-size", "64", "--max-blocks", "2",
                                  "--block-tokens", "128", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "AWQ w4 g64" in r.output and "peak RSS" in r.output and "calibration 2×128 tokens" in r.output
    r = CliRunner().invoke(main, ["eval", str(tiny), str(out), "--text", "pydoc", "--seqlen", "256",
                                  "--max-windows", "2", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["windows"] for row in rows] == [2, 2]
    assert all(math.isfinite(row["ppl"]) and row["ppl"] > 1 for row in rows)
    # each window's NLL, so that a benchmark can report a prefix of the same pass
    for row in rows:
        assert len(row["window_nll"]) == 2
        assert row["ppl"] == pytest.approx(math.exp(sum(row["window_nll"]) / (2 * 255)), rel=1e-12)
    r = CliRunner().invoke(main, ["eval", str(out), "--text", "pydoc", "--seqlen", "256", "--max-windows", "1",
                                  "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["window_nll"] == rows[1]["window_nll"][:1]


def test_eval_errors(tmp_path, tiny):
    r = CliRunner().invoke(main, ["eval", str(tiny), "--text", str(tmp_path / "missing.txt")])
    assert r.exit_code == 2 and "missing.txt: eval text not found" in r.output
    (tmp_path / "short.txt").write_text("a few words")
    r = CliRunner().invoke(main, ["eval", str(tiny), "--text", str(tmp_path / "short.txt")])
    assert r.exit_code == 2 and "fewer than one window of 2048" in r.output
