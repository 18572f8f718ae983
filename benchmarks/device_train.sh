#!/usr/bin/env bash
# One device call for the training-throughput acceptance: benchmarks/bench_train.py, 1p36b at seq 768,
# ours against transformers' LlamaForCausalLM (SDPA, bf16, fused AdamW) at micro-batch 4, 8 and 16,
# then 32 with selective checkpointing (HF falls back to gradient checkpointing if it runs out of
# memory), ours with torch.compile'd blocks at 8, then the HF baseline under bf16 autocast (fp32
# parameters) at 8. About 7 minutes on an H100;
# each run is capped so that one hang cannot eat the call. JSON lines and the log go to $OUT; the
# summary table is printed last.
# Usage (device tool, timeout_s 600): bash benchmarks/device_train.sh   (carry .whl with the zstandard cp312 wheel)
source "$(dirname "$0")/device_env.sh"
JSON="$OUT/bench_train.jsonl"
bench() {
  timeout 240 python3 benchmarks/bench_train.py --preset 1p36b --seq 768 --steps 30 --warmup 5 --json-out "$JSON" "$@"
  echo "(exit $?)"
}
{
  nvidia-smi -L
  python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  python3 setup.py -q build_ext --inplace 2>&1 | tail -3
  echo "== parity smoke test (CPU)"; python3 -m pytest -q -p no:cacheprovider tests/test_bench_train.py 2>&1 | tail -3
  for micro in 4 8 16; do echo "== micro-batch $micro"; bench --micro-batch "$micro"; done
  echo "== micro-batch 32, selective checkpointing"; bench --micro-batch 32 --checkpointing selective
  echo "== micro-batch 8, ours with torch.compile (inductor) of each block"; bench --micro-batch 8 --only ours --compile inductor
  echo "== micro-batch 8, HF with fp32 parameters under bf16 autocast"; bench --micro-batch 8 --only hf --hf-precision amp
  echo "== summary"; python3 benchmarks/bench_train.py --summarize "$JSON"
} 2>&1 | tee "$OUT/device_train.log"
