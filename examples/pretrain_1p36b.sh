#!/usr/bin/env bash
# The reference run on one node: the 1p36b preset, ZeRO-2 across NPROC GPUs, three-stage curriculum.
# Every knob is in examples/configs/pretrain_1p36b.yaml; anything can be overridden on the command line:
#   TOKENIZER=tok/arxiv.model ARXIV=data/arxiv_text_document ARXIV_SECTIONS=data/arxiv_sections_text_document \
#   WEBMATH=data/webmath_text_document SAVE_DIR=runs/1p36b bash examples/pretrain_1p36b.sh optim.lr=1.5e-4
# Running the same command again resumes from the newest checkpoint in SAVE_DIR; SIGTERM (what torchrun
# and batch schedulers send) saves a checkpoint first. Several nodes: replace --standalone with
#   --nnodes=$NNODES --node-rank=$NODE_RANK --rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:29500
set -euo pipefail
cd "$(dirname "$0")/.."

export TOKENIZER=${TOKENIZER:-data/tokenizer/arxiv.model}            # tools/train_tokenizer.py output
export ARXIV=${ARXIV:-data/arxiv_text_document}                      # tools/preprocess_data.py, full papers
export ARXIV_SECTIONS=${ARXIV_SECTIONS:-data/arxiv_sections_text_document}  # one document per section, sidecar labels
export WEBMATH=${WEBMATH:-data/webmath_text_document}                # a second source for stage 3
export SAVE_DIR=${SAVE_DIR:-runs/1p36b}
NPROC=${NPROC:-2}                                                    # GPUs on this node

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec torchrun --standalone --nproc_per_node="$NPROC" tools/pretrain.py \
  --config examples/configs/pretrain_1p36b.yaml "$@"
