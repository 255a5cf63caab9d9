"""Generation: KV-cache decoding equals full recomputation, sampling steps, and split == unsplit on SmolLM2."""

import pytest
import torch
from click.testing import CliRunner

from edge_awq.cli import main
from edge_awq.errors import EdgeAwqError
from edge_awq.generate import (
    SamplingParams,
    TextStream,
    apply_repetition_penalty,
    eos_ids,
    filter_top_k,
    filter_top_p,
    generate_tokens,
    load_tokenizer,
    next_token,
    sample_token,
)
from edge_awq.model import KVCache, load_model
from edge_awq.quantize import QuantizeOptions, quantize_model
from edge_awq.split import split_checkpoint
from helpers import make_tiny_model


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cached_decoding_matches_full_forward(tmp_path, family):
    model = load_model(make_tiny_model(tmp_path / "m", family), torch.float32)
    tokens = torch.randint(0, 49152, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache.allocate(model.cfg, 32, torch.float32)
        # a prefill, a chunk continuing it (mask offset by the prefix), then one token at a time
        parts = [model(tokens[:, :7], cache=cache), model(tokens[:, 7:12], cache=cache)]
        parts += [model(tokens[:, i:i + 1], cache=cache) for i in range(12, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)
    with pytest.raises(EdgeAwqError, match="context full"):
        model(tokens, cache=cache)


def test_repetition_penalty():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert torch.equal(apply_repetition_penalty(logits, torch.tensor([0]), 1.0), logits)


def test_top_k_and_top_p():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [True, False, False, True]
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = ~torch.isinf(filter_top_p(probs.log(), 0.7))
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert (~torch.isinf(filter_top_p(probs.log(), 0.01))).sum() == 1  # never empty


def test_sampling_is_seeded_and_greedy_is_argmax():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    hist = torch.tensor([], dtype=torch.int64)
    assert next_token(logits, hist, SamplingParams()) == int(logits.argmax())

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [next_token(logits, hist, SamplingParams(temperature=1.0, top_p=0.95), g) for _ in range(20)]
    assert draw(5) == draw(5) and draw(5) != draw(6)
    # top_k=1 leaves one candidate: sampling must return the argmax
    g = torch.Generator().manual_seed(0)
    assert {next_token(logits, hist, SamplingParams(temperature=2.0, top_k=1), g) for _ in range(10)} == {
        int(logits.argmax())}


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 40, 0.9), (1.3, 0, 0.5), (0.5, 5, 1.0)])
def test_sample_token_draws_the_filtered_distribution(temperature, top_k, top_p):
    """Over many fresh draws, each token comes up as often as its probability after the temperature,
    top-k and top-p filters (``filter_top_k`` + ``filter_top_p`` + softmax), and never one they drop."""
    logits = torch.randn(300, generator=torch.Generator().manual_seed(3)) * 3
    want = filter_top_p(filter_top_k(logits / temperature, top_k), top_p).softmax(-1)
    n = 40000
    noise = torch.empty(n, 300).exponential_(generator=torch.Generator().manual_seed(4))
    drawn = torch.cat([sample_token(logits, e, temperature, top_k, top_p) for e in noise])
    got = torch.bincount(drawn, minlength=300).float() / n
    # 5 binomial standard deviations per token (the largest is 0.0025 at p = 0.5)
    assert ((got - want).abs() <= 5 * (want * (1 - want) / n).sqrt() + 1e-4).all()
    assert set(drawn.tolist()) <= set(torch.nonzero(want).flatten().tolist())
    zero_clock = noise[0].clone()
    zero_clock[torch.nonzero(want == 0).flatten()[:5]] = 0.0  # 0/0 must not win (or make NaN)
    assert want[sample_token(logits, zero_clock, temperature, top_k, top_p)] > 0


def test_sample_token_is_stable_under_rounding_noise():
    """The same noise draws the same token from logits that differ by split-K rounding (1e-3 here),
    even from a flat distribution over a large vocabulary, where an inverted cumulative
    distribution kept only 13 of these 200 draws."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50000, generator=gen) * 0.1
    jittered = logits + torch.randn(50000, generator=gen) * 1e-3
    same = sum(int(sample_token(logits, e, 0.8, 0, 0.9)) == int(sample_token(jittered, e, 0.8, 0, 0.9))
               for e in torch.empty(200, 50000).exponential_(generator=gen))
    assert same >= 195, same


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0), dict(top_k=-1),
                                 dict(repetition_penalty=0)])
def test_bad_sampling_options(bad):
    with pytest.raises(EdgeAwqError, match="--"):
        SamplingParams(**bad)


@pytest.fixture(scope="module")
def smollm2_split(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("gen")
    quantize_model(smollm2, root / "awq", QuantizeOptions(method="rtn", group_size=64))
    split_checkpoint(root / "awq", root / "shards")
    return root / "awq", root / "shards"


def test_split_then_generate_matches_unsplit_smollm2(smollm2_split):
    ckpt, shards = smollm2_split
    assert CliRunner().invoke(main, ["verify", str(shards)]).exit_code == 0
    tok = load_tokenizer(shards)
    prompt = tok.encode("The three most important inventions of the last century are")
    runs = {}
    for name, folder in (("ckpt", ckpt), ("shards", shards)):
        model = load_model(folder, torch.float32)
        eos = eos_ids(folder, model, tok)
        runs[name] = list(generate_tokens(model, prompt, SamplingParams(max_new_tokens=16), eos))
    assert len(runs["ckpt"]) == 16 and runs["shards"] == runs["ckpt"]
    # the CLI streams the same tokens as text
    r = CliRunner().invoke(main, ["generate", str(shards), "--prompt",
                                  "The three most important inventions of the last century are",
                                  "--max-new-tokens", "16", "--ids"])
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == [str(t) for t in runs["ckpt"]]
    assert "decode" in r.stderr and "tok/s" in r.stderr


def test_generate_cli_text_sampling_and_eos(smollm2_split):
    _, shards = smollm2_split
    args = ["generate", str(shards), "--chat", "--prompt", "Say hello.", "--max-new-tokens", "12",
            "--temperature", "0.8", "--top-p", "0.9", "--seed", "7"]
    a, b = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout and a.stdout.strip()  # same seed, same text
    tok = load_tokenizer(shards)
    model = load_model(shards, torch.float32)
    eos = eos_ids(shards, model, tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos
    # A chat turn ends with the end-of-turn token: generation stops before max tokens and never yields it.
    ids = tok.apply_chat_template([{"role": "user", "content": "Reply with one word: yes or no?"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=False)
    out = list(generate_tokens(model, list(ids), SamplingParams(max_new_tokens=64), eos))
    assert 0 < len(out) < 64 and not eos & set(out)


def test_text_stream_holds_back_partial_characters(smollm2):
    tok = load_tokenizer(smollm2)
    for text in ("naïve café — 東京 ok", "def f(x):\n    return  x * 2  # twice\n\n" * 20 + "Done. 東京 — café."):
        stream = TextStream(tok)  # each push decodes a bounded window, not the whole answer so far
        pieces = [stream.push(t) for t in tok.encode(text)]
        assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
