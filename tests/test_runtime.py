"""The runtime on the CPU: streaming loader, engine, chat (scripted, multi-turn KV reuse), bench,
memory plan and profiles, on real SmolLM2 shards."""

import json
import re

import pytest
import torch
from click.testing import CliRunner

from edge_awq.cli import main
from edge_awq.engine import Engine
from edge_awq.errors import EdgeAwqError
from edge_awq.footprint import describe
from edge_awq.generate import SamplingParams, eos_ids, generate_tokens, load_tokenizer
from edge_awq.kernels.dispatch import KernelSettings
from edge_awq.loader import load_shards
from edge_awq.model import load_model
from edge_awq.plan import held_bytes, parse_bytes, plan_memory
from edge_awq.profiles import load_profile
from edge_awq.shards import read_manifest
from helpers import corrupted_copy

PROMPT = "The three most important inventions of the last century are"


@pytest.fixture(scope="module")
def shards(smollm2_shards):
    return smollm2_shards


def test_engine_matches_the_reference_generation(shards):
    """Same kernels (the torch reference), fused q/k/v and gate/up, streamed loading: the engine's
    greedy tokens are the baseline's, and a truncated cache continues exactly as a fresh one."""
    tok = load_tokenizer(shards)
    prompt = tok.encode(PROMPT)
    ref_model = load_model(shards, torch.float32)
    eos = eos_ids(shards, ref_model, tok)
    ref = list(generate_tokens(ref_model, prompt, SamplingParams(max_new_tokens=12), eos))
    loaded = load_shards(shards, "cpu", torch.float32, KernelSettings())
    assert loaded.model.model.layers[0].self_attn.qkv_proj is not None  # fused
    assert loaded.settings.pdl is False  # no programmatic dependent launch off sm_90
    engine = Engine(loaded, 128, torch.float32)
    out = list(engine.generate(prompt, SamplingParams(max_new_tokens=12), eos))
    assert out == ref
    assert engine.ids == prompt + out[:-1] and engine.length == len(prompt) + 11
    # keep the prompt, drop the answer, prefill it again: the same logits as from scratch
    full = engine.ids + [out[-1]]
    engine.truncate(len(prompt))
    a = engine.prefill(full[len(prompt):])
    engine.reset()
    b = engine.prefill(full)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_engine_refuses_token_ids_outside_the_vocabulary(shards):
    """A tokenizer that does not belong to the model gives ids past its vocabulary: a clear error
    (on a GPU the embedding lookup would end the process with a device-side assert), nothing cached."""
    engine = Engine(load_shards(shards, "cpu", torch.float32, KernelSettings()), 64, torch.float32)
    vocab = engine.cfg.vocab_size
    with pytest.raises(EdgeAwqError, match=f"token id {vocab} is outside the model's vocabulary of {vocab}"):
        engine.prefill([1, 2, vocab])
    with pytest.raises(EdgeAwqError, match="token id -1 is outside"):
        engine.decode(-1)
    assert engine.length == 0 and engine.ids == []


def test_loader_refuses_a_corrupt_shard_before_use(shards, tmp_path):
    bad = corrupted_copy(shards, tmp_path / "bad", "model-layer-007.safetensors", -10)
    with pytest.raises(EdgeAwqError, match="model-layer-007.safetensors: sha256 mismatch"):
        load_shards(bad, "cpu", torch.float32)


def _turn_stats(stderr: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"prefill (\d+) of (\d+) tokens", stderr)]


def test_scripted_chat_reuses_the_kv_cache_of_earlier_turns(shards):
    script = "What is the capital of France?\nAnd of Italy?\nAnd of Spain?\n"
    r = CliRunner().invoke(main, ["chat", str(shards), "--temperature", "0", "--max-new-tokens", "20",
                                  "--context", "1024"], input=script)
    assert r.exit_code == 0, r.output
    turns = _turn_stats(r.stderr)
    assert len(turns) == 3
    (p1, t1), (p2, t2), (p3, t3) = turns
    assert p1 == t1  # the first turn prefills everything
    # later turns keep every token of the earlier turns in the cache: only the new part is prefilled
    assert t2 - p2 >= t1 and t3 - p3 >= t2
    assert p2 < 30 and p3 < 30
    assert r.stdout.count("> ") == 3 and "Paris" in r.stdout
    assert "TTFT" in r.stderr and "tok/s" in r.stderr and "RSS" in r.stderr
    assert "profile cpu" in r.stderr and "KV cache" in r.stderr  # what was loaded, and its memory


def test_chat_commands_and_context_limit(shards):
    script = "/system You answer in one short sentence.\nHi!\n/stats\n/reset\nHi!\n/bogus\n/exit\nnever read\n"
    r = CliRunner().invoke(main, ["chat", str(shards), "--temperature", "0", "--max-new-tokens", "8"], input=script)
    assert r.exit_code == 0, r.output
    assert "[system prompt set" in r.stderr and "[conversation cleared]" in r.stderr
    assert "unknown command /bogus" in r.stderr and "never read" not in r.stdout
    (a, ta), (b, tb) = _turn_stats(r.stderr)
    assert a == ta and b == tb  # after /reset nothing is reused
    # a context too small for the conversation: the oldest turns go, and the turn says so
    script = "Tell me about the sea.\nAnd the mountains?\nAnd the desert?\n"
    r = CliRunner().invoke(main, ["chat", str(shards), "--temperature", "0", "--max-new-tokens", "40",
                                  "--context", "128"], input=script)
    assert r.exit_code == 0, r.output
    assert "dropped" in r.stderr and "oldest turns" in r.stderr


def test_chat_turn_that_cannot_run_reports_and_goes_on(shards):
    """A message longer than the context fails its turn with the reason; the next one is answered,
    and a scripted session ends with a non-zero status."""
    script = ("word " * 120).strip() + "\nHi!\n"
    r = CliRunner().invoke(main, ["chat", str(shards), "--temperature", "0", "--max-new-tokens", "8",
                                  "--context", "64"], input=script)
    assert "error: the message is" in r.stderr and "the context holds 64" in r.stderr
    assert len(_turn_stats(r.stderr)) == 1  # the second turn ran
    assert r.exit_code == 2 and "error: 1 turn failed" in r.stderr


def test_chat_one_prompt_and_sampling(shards):
    args = ["chat", str(shards), "--prompt", "Name a colour.", "--max-new-tokens", "10", "--seed", "3"]
    a, b = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout and a.stdout.strip()  # sampled (default temperature), seeded


def test_memory_plan_refuses_with_what_would_fit(shards):
    fp = describe(shards)
    cpu = load_profile("cpu")
    parts = held_bytes(read_manifest(shards), "torch-int4", torch.float32)
    kv = fp.kv_bytes(1, 4)
    plan = plan_memory(parts, kv, cpu, 2048, 8 << 30, "host")
    assert plan.need_bytes == parts.total + 2048 * kv and plan.stream is None
    assert plan.budget_bytes == (8 << 30) - int(cpu.reserved_gb * 2**30) - (cpu.runtime_overhead_mb << 20)
    with pytest.raises(EdgeAwqError, match=r"does not fit.*a context of at most \d+ tokens fits"):
        plan_memory(parts, kv, cpu, 4096, 0, "host", budget_override=parts.total + (20 << 20))
    with pytest.raises(EdgeAwqError, match="the weights alone do not fit"):
        plan_memory(parts, kv, cpu, 4096, 0, "host", budget_override=50 << 20)
    assert parse_bytes("1.5GB") == 3 << 29 and parse_bytes("800 MiB") == 800 << 20
    with pytest.raises(EdgeAwqError, match="--memory-budget"):
        parse_bytes("lots")


@pytest.mark.parametrize("model,gb,want", [
    (None, 80, "desktop-gpu"),
    ("NVIDIA Jetson Orin Nano Developer Kit", 7.4, "jetson-orin-nano-8gb"),
    ("NVIDIA Jetson Orin Nano Developer Kit", 3.6, "jetson-orin-nano-4gb"),
    ("Jetson AGX Orin Developer Kit", 61.3, "jetson-agx-orin-64gb"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", 15.3, "jetson-orin-nx-16gb"),
    ("NVIDIA Jetson Xavier NX", 7.6, "desktop-gpu")])
def test_profile_detection(monkeypatch, model, gb, want):
    import edge_awq.profiles as profiles
    monkeypatch.setattr(profiles, "_jetson_model", lambda: model)
    assert profiles.detect_profile(True, int(gb * 2**30))[0].name == want
    assert profiles.detect_profile(False, int(gb * 2**30))[0].name == "cpu"


def test_profiles_command_and_bad_files(tmp_path):
    r = CliRunner().invoke(main, ["profiles"])
    assert r.exit_code == 0 and "jetson-orin-nano-8gb" in r.stdout and "* " in r.stdout
    good = dict(load_profile("jetson-orin-nano-8gb").__dict__)
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in good.items() if k not in ("kernels", "match_model",
                                                                                    "match_memory_gb"))
    (tmp_path / "ok.toml").write_text(text + "\n[kernels]\nrow_block_n = 16\n")
    assert load_profile(str(tmp_path / "ok.toml")).kernel_settings().row_block_n == 16
    (tmp_path / "bad.toml").write_text(text + "\n[kernels]\nrow_blocks = 16\n")
    with pytest.raises(EdgeAwqError, match="'row_blocks' is not a kernel setting"):
        load_profile(str(tmp_path / "bad.toml"))
    (tmp_path / "bad2.toml").write_text(text.replace('"triton"', '"cuda"'))
    with pytest.raises(EdgeAwqError, match="kernel 'cuda'"):
        load_profile(str(tmp_path / "bad2.toml"))


def test_bench_reports_json(shards, tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", str(shards), "--prompt-lengths", "8,32", "--new-tokens", "6",
                                  "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert [(x["prompt_tokens"], x["new_tokens"]) for x in data["rows"]] == [(8, 6), (32, 6)]
    for row in data["rows"]:
        assert row["decode_tokens_per_s"] > 0 and 0 < row["roofline_fraction"]
        assert row["bytes_per_token"] > describe(shards).embed_bytes  # the tied head reads the table
    assert data["load"]["peak_rss_bytes"] > 0 and "| prompt |" in r.stdout


def test_fast_tokenizer_matches_transformers(smollm2):
    from edge_awq.tokenizer import FastTokenizer
    ours, theirs = FastTokenizer(smollm2), load_tokenizer(smollm2)
    convs = [[{"role": "user", "content": "Hello"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
              {"role": "assistant", "content": "Hello — how can I help?"}, {"role": "user", "content": "naïve 東京?"}]]
    for msgs in convs:
        for gen in (True, False):
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == list(theirs.apply_chat_template(
                msgs, add_generation_prompt=gen, tokenize=True, return_dict=False))
    text = "The three most important inventions — naïve café, 東京!"
    assert ours.encode(text) == theirs.encode(text)
    ids = ours.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.eos_token_id == theirs.eos_token_id
