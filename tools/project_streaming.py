"""What each platform profile runs resident, what streams, and the projected tok/s (a projection).

    python tools/project_streaming.py [--context 2048] [--fraction 0.6] [--storage-gbps 2.0]

For 7B/8B/13B models as 4-bit AWQ g128 (bytes computed from the real configs, fp16 activations,
the same planner as ``edge-awq chat``, each profile's own budget), the plan the runtime would make,
and tokens/s = 1 / (resident bytes ÷ (fraction × DRAM bandwidth) + streamed bytes ÷ storage read
bandwidth). ``--fraction``: the share of the DRAM roofline the H100 reached end to end (60–64 %,
docs/benchmarks.md); ``--storage-gbps``: what a module's NVMe delivers to the reader (on unified
memory the page cache is the same DRAM the budget counts, so streamed layers come from storage).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_random_model import PRESETS  # noqa: E402

from edge_awq.config import ModelConfig  # noqa: E402
from edge_awq.errors import EdgeAwqError  # noqa: E402
from edge_awq.footprint import projected_layer_bytes  # noqa: E402
from edge_awq.memory import fmt_bytes  # noqa: E402
from edge_awq.plan import PartBytes, StreamOptions, model_budget, plan_memory  # noqa: E402
from edge_awq.profiles import all_profiles  # noqa: E402

MODELS = {
    "Llama-2-7B": PRESETS["llama-2-7b"],
    "Llama-3-8B": PRESETS["llama-3-8b"],
    "Llama-2-13B": dict(PRESETS["llama-2-7b"], hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40),
}


def parts_for(cfg: ModelConfig) -> PartBytes:
    """Bytes held per part for a W4 g128 model with fp16 activations (untied head)."""
    emb = cfg.vocab_size * cfg.hidden_size * 2
    return PartBytes(emb, (projected_layer_bytes(cfg),) * cfg.num_layers, 0 if cfg.tie_word_embeddings else emb,
                     2 * cfg.hidden_size, 2 * cfg.hidden_size, cfg.vocab_size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--fraction", type=float, default=0.6)
    ap.add_argument("--storage-gbps", type=float, default=2.0)
    a = ap.parse_args()
    print("| profile | budget | model | resident | streamed per token | projected tok/s |")
    print("|---|---|---|---|---|---|")
    for prof in all_profiles():
        if not prof.name.startswith("jetson"):
            continue
        for name, preset in MODELS.items():
            cfg = ModelConfig.from_dict(dict(preset, hidden_act="silu", tie_word_embeddings=False))
            parts = parts_for(cfg)
            kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2
            ctx = min(a.context, prof.max_context)
            opts = StreamOptions("file", True, 3, head_can_stream=False)
            try:
                plan = plan_memory(parts, kv, prof, ctx, 0, "profile", staging_bytes=prof.staging_mb << 20,
                                   stream=opts)
            except EdgeAwqError:
                budget, _ = model_budget(prof, 0, "", None, (prof.runtime_overhead_mb + prof.staging_mb) << 20)
                print(f"| {prof.name} | {fmt_bytes(budget)} | {name} | does not fit at {ctx} tokens "
                      "(embeddings, head, KV cache and a ring of layers exceed the budget) | — | — |")
                continue
            s = plan.stream
            streamed = 0 if s is None else s.streamed_bytes
            resident = parts.total - streamed  # every resident weight is read once per token
            seconds = (resident + ctx // 2 * kv) / (a.fraction * prof.bandwidth_gbps * 1e9) + streamed / (
                a.storage_gbps * 1e9)
            layers = "all layers" if s is None else f"{s.resident_layers} of {cfg.num_layers} layers"
            print(f"| {prof.name} | {fmt_bytes(plan.budget_bytes)} | {name} | {layers} (KV {ctx} tokens) | "
                  f"{fmt_bytes(streamed)} | {1 / seconds:.1f} |")


if __name__ == "__main__":
    main()
