#!/usr/bin/env bash
# On the lent GPU machine (carry .device/tok: the SmolLM2 tokenizer): a Llama-2-7B-shaped model of
# random 4-bit codes (g128), split; the GPU tests (streaming included); then the 7B model under a
# 2 GB budget: bench with layers streamed from pinned host memory and from a spill file (page
# cache), prefetch on and off, each reporting bytes streamed per token and the source's bandwidth.
source "$(dirname "$0")/device_env.sh"
T0=$(date +%s); t() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
if [ ! -f $W/s4/manifest.json ]; then  # random 4-bit codes straight away: the bench needs shapes only
  python3 $REPO/tools/make_random_model.py llama-2-7b $W/q4 --vocab 49152 --tokenizer $REPO/.device/tok --awq 128
  ea split $W/q4 $W/s4 2>&1 | tail -1
  rm -rf $W/q4
fi
t built
(cd $REPO && pytest -q -p no:cacheprovider tests/test_engine_gpu.py > $OUT/pytest.log 2>&1; tail -3 $OUT/pytest.log)
t tested
B="--memory-budget ${BUDGET:-2GB} --context 1024 --prompt-lengths 128,129 --new-tokens ${NEW:-64}"
for run in "host on" "host off" "file on" "file off"; do
  set -- $run
  ea bench $W/s4 $B --stream-from $1 --$( [ $2 = on ] && echo prefetch || echo no-prefetch ) \
    --stream-dir /tmp --json $OUT/stream_$1_$2.json > $OUT/stream_$1_$2.txt 2>&1
  t "== $1 prefetch $2"; grep -E "^(memory plan|layer streaming|loaded)|^\| [0-9]|streamed|streaming:|Error" \
    $OUT/stream_$1_$2.txt
done
ea bench $W/s4 --context 1024 --prompt-lengths 128 --new-tokens ${NEW:-64} > $OUT/resident.txt 2>&1
echo "== resident"; grep -E "^\| [0-9]|^loaded" $OUT/resident.txt
