#!/usr/bin/env bash
# One device call for the model issue: op and model tests, then benchmarks/bench_model.py on the GPU.
# Usage (device tool): bash benchmarks/device_model.sh   (carry .whl with the zstandard cp312 wheel)
source "$(dirname "$0")/device_env.sh"
{
  nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  python3 setup.py -q build_ext --inplace 2>&1 | tail -3
  echo "== tests"; python3 -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_triton_ops.py tests/test_model.py 2>&1 | tail -3
  echo "== bench"; python3 benchmarks/bench_model.py --json-out "$OUT/bench_model.jsonl"
  python3 benchmarks/bench_model.py --only model --checkpointing selective --seq 2048 --micro-batches 8 16 32 \
    --json-out "$OUT/bench_model.jsonl"
} 2>&1 | tee "$OUT/device_model.log"
