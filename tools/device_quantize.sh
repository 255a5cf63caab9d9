#!/usr/bin/env bash
# On the lent GPU machine: install edge-awq, check `quantize --device cuda` against the CPU on a tiny
# model, then time RTN and AWQ on a Llama-2-7B-shaped random model. Needs .device/tok (a tokenizer
# folder, carried). Logs and JSON reports go to $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1
pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site . >/dev/null
export PYTHONPATH=/tmp/site
W=/tmp/work; mkdir -p $W
REPO=$PWD
# Run from outside the checkout: with a non-editable install, `python -m` from the repo root would
# import the source folder edge_awq/, which lacks the kernels/ mapping.
cd $W
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
# 1. tiny model: CUDA and CPU searches agree
python3 $REPO/tools/make_random_model.py llama-2-7b $W/tiny --layers 2 --vocab 49152 --tokenizer $REPO/.device/tok
for dev in cpu cuda; do
  python3 -m edge_awq quantize $W/tiny $W/tiny-$dev --device $dev --max-blocks 8 --group-size 128 2>&1 | tail -1
done
python3 - <<'PY'
import json, torch
from edge_awq.weights import WeightReader
a, b = WeightReader("/tmp/work/tiny-cpu"), WeightReader("/tmp/work/tiny-cuda")
same = [torch.equal(a.get(n), b.get(n)) for n in a.tensors if n.endswith("qweight")]
ra = [x["ratios"] for x in json.load(open("/tmp/work/tiny-cpu/quant_report.json"))["blocks"]]
rb = [x["ratios"] for x in json.load(open("/tmp/work/tiny-cuda/quant_report.json"))["blocks"]]
print(f"tiny: identical qweight tensors cpu vs cuda {sum(same)}/{len(same)}; ratios cpu {ra} cuda {rb}")
PY
# 2. Llama-2-7B shape (vocab 49152 to match the carried tokenizer)
python3 $REPO/tools/make_random_model.py llama-2-7b $W/l7b --vocab 49152 --tokenizer $REPO/.device/tok
/usr/bin/time -v python3 -m edge_awq quantize $W/l7b $W/l7b-rtn --method rtn --device cuda 2> $OUT/rtn.log | tail -1
grep -E "Maximum resident|Elapsed" $OUT/rtn.log
python3 -m edge_awq quantize $W/l7b $W/l7b-awq --device cuda --max-blocks 32 2>&1 | tail -1
cp $W/l7b-awq/quant_report.json $OUT/awq7b_report.json
python3 - <<'PY'
import json
r = json.load(open("/tmp/work/l7b-awq/quant_report.json"))
b = r["blocks"][5]
print("7B AWQ: seconds", r["seconds"], "peak RSS GB", round(r["peak_rss_bytes"] / 2**30, 2),
      "peak GPU GB", round(r["peak_device_bytes"] / 2**30, 2), "block 5 stages", b["seconds"])
PY
