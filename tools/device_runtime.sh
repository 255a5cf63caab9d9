#!/usr/bin/env bash
# On the lent GPU machine: install edge-awq, run the GPU tests of the runtime and kernels.
set -uo pipefail
export PYTHONUNBUFFERED=1
pip install -q --no-deps --no-build-isolation --no-index --upgrade --target /tmp/site . >/dev/null 2>&1 || exit 1
export PYTHONPATH=/tmp/site
pytest -q -p no:cacheprovider -x tests/test_engine_gpu.py tests/test_triton_ops.py tests/test_kernels.py "$@" \
  > $OUT/pytest.log 2>&1; tail -30 $OUT/pytest.log
