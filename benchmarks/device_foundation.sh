#!/usr/bin/env bash
# One device call for the foundation issue: build the extension on the GPU machine's Python/torch,
# run the CPU test suite there, and the preprocessing benchmark at 1-8 workers (16 cores).
# Usage (device tool): bash benchmarks/device_foundation.sh   (carry .whl: the wheels of
# `bash benchmarks/device_check.sh --fetch-wheels`, without which the suite stops at collection)
source "$(dirname "$0")/device_env.sh"
{
  nvidia-smi -L; nproc; python3 --version
  python3 -c "import torch, numpy, sentencepiece; print('torch', torch.__version__, 'numpy', numpy.__version__, 'sentencepiece', sentencepiece.__version__)"
  echo "== build"; python3 setup.py -q build_ext --inplace 2>&1 | tail -3
  echo "== tests"; python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -5
  echo "== benchmark"; python3 benchmarks/bench_preprocess.py --papers 6000 --copies 4 --workers 1 2 8 --repeats 2 --start-methods fork --json-out "$OUT/bench_preprocess.jsonl"
} 2>&1 | tee "$OUT/device_foundation.log"
