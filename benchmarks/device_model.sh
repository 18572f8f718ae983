#!/usr/bin/env bash
# One device call for the model issue: op and model tests, then benchmarks/bench_model.py on the GPU.
# Usage (device tool): bash benchmarks/device_model.sh   (carry .whl with the zstandard cp312 wheel)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  python3 setup.py -q build_ext --inplace 2>&1 | tail -3
  echo "== tests"; python3 -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_triton_ops.py tests/test_model.py 2>&1 | tail -3
  echo "== bench"; python3 benchmarks/bench_model.py --json-out "$OUT/bench_model.jsonl"
  python3 benchmarks/bench_model.py --only model --checkpointing selective --seq 2048 --micro-batches 8 16 32 \
    --json-out "$OUT/bench_model.jsonl"
} 2>&1 | tee "$OUT/device_model.log"
