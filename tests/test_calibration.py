import json

import pytest
import torch
from transformers import AutoTokenizer

from edge_awq.calibration import CalibConfig, calibration_blocks, load_documents
from edge_awq.errors import EdgeAwqError


@pytest.fixture(scope="module")
def tok(smollm2):
    return AutoTokenizer.from_pretrained(smollm2)


def test_default_is_offline_pydoc_and_deterministic(tok):
    a = calibration_blocks(tok, CalibConfig(max_blocks=8))
    b = calibration_blocks(tok, CalibConfig(max_blocks=8))
    c = calibration_blocks(tok, CalibConfig(max_blocks=8, seed=1))
    assert a.shape == (8, 512) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)
    full = calibration_blocks(tok, CalibConfig())
    assert 20 <= full.shape[0] <= 128  # 128 samples of ≤ 512 tokens


def test_sources(tmp_path, tok):
    para = "The quick brown fox jumps over the lazy dog. " * 20
    (tmp_path / "a.txt").write_text("\n\n".join([para] * 6))
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(para * 2)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": para * 2}) for _ in range(4)))
    for src in (tmp_path / "a.txt", folder, tmp_path / "d.jsonl"):
        blocks = calibration_blocks(tok, CalibConfig(str(src), block_tokens=128))
        assert blocks.shape[0] >= 2, src
    assert len(load_documents(str(folder))) == 4


def test_bad_sources(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(EdgeAwqError, match="empty.txt: calibration text is empty"):
        calibration_blocks(tok, CalibConfig(str(tmp_path / "empty.txt")))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(EdgeAwqError, match=r"bad.jsonl:2: record has no string field 'text'"):
        load_documents(str(tmp_path / "bad.jsonl"))
    (tmp_path / "short.txt").write_text("just a few words")
    with pytest.raises(EdgeAwqError, match="fewer than one block"):
        calibration_blocks(tok, CalibConfig(str(tmp_path / "short.txt")))
    with pytest.raises(EdgeAwqError, match="not found"):
        load_documents(str(tmp_path / "nope.txt"))
