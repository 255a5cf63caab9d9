#!/usr/bin/env bash
# On the lent GPU machine: install edge-awq, run the kernel tests on the GPU (compiled kernels,
# inline PTX, bf16), then the kernel benchmark. Logs and JSON go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . >/dev/null || exit 1
export PYTHONPATH=/tmp/site
REPO=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
pytest -q -p no:cacheprovider tests/test_kernels.py > $OUT/pytest.log 2>&1; tail -4 $OUT/pytest.log
# from outside the checkout: the source folder edge_awq/ lacks the kernels/ mapping
cd /tmp && python3 $REPO/tools/bench_kernels.py --out $OUT/kernels.json "$@" 2>&1 | tee $OUT/bench.log
