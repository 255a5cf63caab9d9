"""The fused CUDA-graph decode step against the eager model code, on a GPU (skipped without one)."""

import pytest
import torch

from edge_awq.engine import SHORT_CONTEXT, Engine
from edge_awq.generate import SamplingParams
from edge_awq.kernels.dispatch import KernelSettings
from edge_awq.loader import load_shards
from edge_awq.quantize import QuantizeOptions, quantize_model
from edge_awq.split import split_checkpoint
from helpers import make_tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def shards(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    over = dict(hidden_size=256, intermediate_size=704, num_attention_heads=8, num_key_value_heads=2,
                num_hidden_layers=3)
    make_tiny_model(root / "m", request.param, **over)
    quantize_model(root / "m", root / "q", QuantizeOptions(method="rtn", group_size=64))
    split_checkpoint(root / "q", root / "s")
    return root / "s"


NEAR_SWITCH = SHORT_CONTEXT - 10  # a prompt whose decode crosses into the long-context attention graph


@pytest.mark.parametrize("graphs,prompt_len,row_kernel,pdl", [
    (True, 37, "row", None), (False, 37, "row", None), (True, NEAR_SWITCH, "row", None),
    (True, NEAR_SWITCH, "dot", None), (True, 37, "row", False)])
def test_fused_decode_matches_eager(shards, graphs, prompt_len, row_kernel, pdl):
    """NEAR_SWITCH + 20 tokens cross from the short-context attention graph to the long one; the
    tensor-core kernel serves one row too; ``pdl=False`` in the settings keeps programmatic
    dependent launch off, which the loader otherwise turns on where the GPU has it (sm_90+)."""
    torch.manual_seed(0)
    prompt = torch.randint(0, 49152, (prompt_len,)).tolist()
    settings = KernelSettings(row_kernel=row_kernel, pdl=pdl)
    fast = Engine(load_shards(shards, "cuda", torch.float16, settings), 1024, torch.float16, cuda_graphs=graphs)
    eager = Engine(load_shards(shards, "cuda", torch.float16), 1024, torch.float16)
    eager.fast = eager.use_graph = False
    assert fast.fast and fast.use_graph == graphs
    assert fast.pdl is (pdl is None and torch.cuda.get_device_capability() >= (9, 0))
    a, b = fast.prefill(prompt), eager.prefill(prompt)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)  # prefill is the same code
    for tok in torch.randint(0, 49152, (20,)).tolist():  # teacher-forced: the same inputs at every step
        a, b = fast.decode(tok), eager.decode(tok)
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < 2e-2, rel  # fp16 activations, fp32 residual on the fast path
    n = prompt_len + 20
    assert fast.length == eager.length == n
    # the caches hold the same keys and values
    for i in range(len(fast.cache.k)):
        k_rel = ((fast.cache.k[i][:, :, :n].float() - eager.cache.k[i][:, :, :n].float()).norm()
                 / eager.cache.k[i][:, :, :n].float().norm()).item()
        assert k_rel < 2e-2


def test_generate_on_gpu_is_seeded_and_stops(shards):
    eng = Engine(load_shards(shards, "cuda", torch.float16, KernelSettings()), 128, torch.float16)
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=5)

    def run():
        eng.reset()
        g = torch.Generator(device="cuda").manual_seed(5)
        return list(eng.generate([1, 2, 3, 4], params, set(), g))
    first = run()
    assert first == run() and len(first) == 10
    eng.reset()
    # a full context: 125 tokens fed after the 3 of the prompt, and the last one sampled from position 127
    assert len(list(eng.generate([1, 2, 3], SamplingParams(max_new_tokens=500), set()))) == 128 - 3 + 1
    assert eng.length == 128


@pytest.mark.parametrize("prompt_len,eos_at", [(30, None), (NEAR_SWITCH, None), (30, 9)])
def test_pipelined_greedy_matches_step_by_step(shards, prompt_len, eos_at):
    """Greedy generation feeds the argmax back on the device and launches a step ahead; the tokens,
    the cached ids and the cache length are those of feeding each token by hand (``decode`` +
    argmax on the same graphs' logits). NEAR_SWITCH + 40 tokens cross into the long-context graph; an
    EOS stops it with the extra step left outside the cache."""
    torch.manual_seed(1)
    prompt = torch.randint(0, 49152, (prompt_len,)).tolist()
    eng = Engine(load_shards(shards, "cuda", torch.float16), 1024, torch.float16)
    ref, logits = [], eng.prefill(prompt)
    for _ in range(40):
        ref.append(int(torch.argmax(logits)))
        logits = eng.decode(ref[-1])
    ref_ids = list(eng.ids)
    eos = set() if eos_at is None else {ref[eos_at]}
    want = ref if eos_at is None else ref[:ref.index(ref[eos_at])]
    eng.reset()
    got = list(eng.generate(prompt, SamplingParams(max_new_tokens=40), eos))
    assert got == want
    assert eng.ids == ref_ids[:prompt_len + len(want) - (1 if eos_at is None else 0)]
    assert eng.length == len(eng.ids)
    assert eng.last.decode_tokens == len(want) - (1 if eos_at is None else 0)
    # the cache holds what it should: continuing by hand gives the reference's next logits
    if eos_at is None:
        torch.testing.assert_close(eng.decode(got[-1]), logits, rtol=1e-3, atol=1e-3)  # split-K sums: any order


@pytest.mark.parametrize("source,prefetch", [("host", True), ("host", False), ("file", True), ("file", False)])
def test_streamed_layers_decode_as_resident_ones(shards, source, prefetch, tmp_path):
    """A budget of two layers beside embeddings, head and cache: with prefetch all three layers
    stream through two slots, without it one stays resident and two take turns in one slot
    (pinned host memory: inside the CUDA graph; a spill file: a reader thread, no graph). The
    logits are those of the resident model, step by step."""
    from edge_awq.footprint import describe
    from edge_awq.plan import StreamOptions, held_bytes, plan_memory
    from edge_awq.profiles import load_profile
    from edge_awq.shards import read_manifest
    from edge_awq.stream import FileSource, PinnedSource

    parts = held_bytes(read_manifest(shards), "triton", torch.float16)
    kv = describe(shards).kv_bytes(1, 2)
    budget = parts.embed + parts.head + parts.norm + 256 * kv + 2 * max(parts.layers)
    options = StreamOptions(PinnedSource.kind if source == "host" else FileSource.kind, prefetch, 2 if source == "host"
                            else 3)
    plan = plan_memory(parts, kv, load_profile("desktop-gpu"), 256, 0, "gpu", budget, stream=options).stream
    assert (plan.resident_layers, plan.streamed_layers, plan.slots) == ((0, 3, 2) if prefetch else (1, 2, 1))
    loaded = load_shards(shards, "cuda", torch.float16, stream=plan, stream_dir=tmp_path)
    assert loaded.report.held_bytes + 256 * kv <= budget
    streamed = Engine(loaded, 256, torch.float16)
    full = Engine(load_shards(shards, "cuda", torch.float16), 256, torch.float16)
    assert streamed.use_graph == (source == "host")
    torch.manual_seed(1)
    prompt = torch.randint(0, 49152, (40,)).tolist()
    torch.testing.assert_close(streamed.prefill(prompt), full.prefill(prompt), rtol=1e-3, atol=1e-3)
    for tok in torch.randint(0, 49152, (12,)).tolist():
        a, b = streamed.decode(tok), full.decode(tok)
        assert ((a - b).norm() / b.norm()).item() < 2e-2
    loaded.close()
