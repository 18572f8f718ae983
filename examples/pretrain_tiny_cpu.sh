#!/usr/bin/env bash
# A small model on 2 CPU processes in a few minutes: the reference run's pipeline and curriculum, scaled
# down, over the demo's data (made first if missing). TensorBoard: tensorboard --logdir $DEMO_DIR/run/tensorboard
set -euo pipefail
cd "$(dirname "$0")/.."
export DEMO_DIR=${DEMO_DIR:-demo_output}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if [ ! -f "$DEMO_DIR/data/arxiv_text_document.idx" ]; then
  "$PY" -m megasci.demo --output "$DEMO_DIR" --skip-training
fi
exec "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 tools/pretrain.py \
  --config examples/configs/tiny_cpu.yaml "$@"
