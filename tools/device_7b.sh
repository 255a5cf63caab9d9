#!/usr/bin/env bash
# On the lent GPU machine, in two calls (the machine keeps .device/w between calls while warm):
#   build   — a Llama-2-7B-shaped random model (its vocabulary of 32000; the carried SmolLM2
#             tokenizer in .device/tok is copied in for the chat; with the system prompt "Be brief." the
#             scripted turns' ids stay below 32000, its default one does not), RTN-quantized
#             on the GPU, split as 4-bit and as a dense fp16 reference;
#             the first half of the SmolLM2 shard folder (.device/smA) put aside
#   measure — the second half (.device/smB): SmolLM2 GPU-vs-CPU greedy parity and a scripted chat;
#             7B bench (4-bit and fp16), cold start (empty and warm Triton cache), scripted chat
source "$(dirname "$0")/device_env.sh"
if [ "$1" = build ]; then
  rm -rf $W/sm && cp -r $REPO/.device/smA $W/sm
  python3 $REPO/tools/make_random_model.py llama-2-7b $W/l7b --tokenizer $REPO/.device/tok
  ea quantize $W/l7b $W/q4 --method rtn --device cuda 2>&1 | tail -1
  ea split $W/q4 $W/s4 2>&1 | tail -1
  ea split $W/l7b $W/s16 2>&1 | tail -1
  du -sh $W/*
  exit 0
fi
if [ "$1" = quick ]; then  # the step's kernel table, cold start and the 4-bit bench only
  python3 $REPO/tools/profile_step.py $W/s4 2>&1 | grep -v Warn > $OUT/step.txt; cat $OUT/step.txt
  export TRITON_CACHE_DIR=/tmp/triton-cold; rm -rf $TRITON_CACHE_DIR
  python3 $REPO/tools/cold_start.py $W/s4 --system "Be brief." > $OUT/cold.txt 2>$OUT/cold_err.txt
  python3 $REPO/tools/cold_start.py $W/s4 --system "Be brief." > $OUT/warm.txt 2>$OUT/warm_err.txt
  ea bench $W/s4 --prompt-lengths 128,1024 --new-tokens 128 --json $OUT/bench4.json > $OUT/bench4.txt 2>&1
  cat $OUT/cold.txt $OUT/warm.txt; grep -E "^(loaded|memory)|^\|" $OUT/bench4.txt; grep -E "loaded in" $OUT/warm_err.txt
  exit 0
fi
cp $REPO/.device/smB/* $W/sm/
if [ -z "${SKIP_TESTS:-}" ]; then  # SKIP_TESTS=1: the GPU tests ran in the build call
  (cd $REPO && pytest -q -p no:cacheprovider tests/test_engine_gpu.py tests/test_triton_ops.py > $OUT/pytest.log 2>&1; \
    tail -2 $OUT/pytest.log)
fi
ea verify $W/sm | tail -1
python3 $REPO/tools/parity_gpu.py $W/sm --tokens 64 2>&1 | grep -v Warn | tee $OUT/parity.txt
printf 'What is the capital of France?\nAnd of Italy?\nAnd of Spain?\n' | ea chat $W/sm --temperature 0 \
  --max-new-tokens 32 > $OUT/chat_smollm2.txt 2>&1
ea bench $W/sm --prompt-lengths 128,1024 --new-tokens 128 --json $OUT/bench_smollm2.json > $OUT/bench_smollm2.txt 2>&1
export TRITON_CACHE_DIR=/tmp/triton-cold
rm -rf $TRITON_CACHE_DIR
python3 $REPO/tools/cold_start.py $W/s4 --system "Be brief." > $OUT/cold.txt 2>$OUT/cold_err.txt
python3 $REPO/tools/cold_start.py $W/s4 --system "Be brief." > $OUT/warm.txt 2>$OUT/warm_err.txt
ea bench $W/s4 --prompt-lengths 128,1024 --new-tokens 128 --json $OUT/bench4.json --plot $OUT/bench4.png \
  > $OUT/bench4.txt 2>&1
ea bench $W/s16 --prompt-lengths 128 --new-tokens 128 --json $OUT/bench16.json > $OUT/bench16.txt 2>&1
printf 'Hello!\nTell me more.\nThanks.\n' | ea chat $W/s4 --system "Be brief." --temperature 0 --max-new-tokens 32 \
  > $OUT/chat7b.txt 2>&1
tail -3 $OUT/chat_smollm2.txt; grep "^|" $OUT/bench_smollm2.txt
cat $OUT/cold.txt $OUT/warm.txt; grep -E "^(model|profile|loaded|memory)" $OUT/bench4.txt
grep -E "^\||bandwidth" $OUT/bench4.txt $OUT/bench16.txt; grep -E "loaded" $OUT/bench16.txt; tail -4 $OUT/chat7b.txt
(cd $OUT && tar czf measure.tgz *.txt *.log 2>/dev/null && rm -f *.txt *.log)  # the tool returns only so many files
