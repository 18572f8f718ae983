#!/usr/bin/env bash
# Supervised fine-tuning of the reference model on one node: examples/configs/finetune_sft.yaml, the plan's
# three post-training sources at 1.0x each, ZeRO-2 across NPROC GPUs. First make the SFT datasets with the
# pretraining tokenizer (trained with --chat-template megasci-v1):
#   python tools/preprocess_sft.py --input stackexchange/*/Posts.xml --min-score 2 --output-prefix data/se_stem \
#       --tokenizer-model data/tokenizer/arxiv.model --append-eod
#   python tools/preprocess_sft.py --input mathinstruct/MathInstruct.json* --output-prefix data/mathinstruct ...
#   python tools/preprocess_sft.py --input ultrachat_200k/data/train_sft-*.parquet --output-prefix data/ultrachat ...
# then:
#   PRETRAINED=runs/1p36b SAVE_DIR=runs/1p36b-sft bash examples/finetune_sft.sh optim.lr=1e-5
# Running the same command again resumes the fine-tune from SAVE_DIR. Chat with the result:
#   python tools/generate.py --checkpoint runs/1p36b-sft --chat --temperature 0 --prompt 'What is a Banach space?'
set -euo pipefail
cd "$(dirname "$0")/.."

export TOKENIZER=${TOKENIZER:-data/tokenizer/arxiv.model}
export SE_STEM=${SE_STEM:-data/se_stem_text_document}
export MATHINSTRUCT=${MATHINSTRUCT:-data/mathinstruct_text_document}
export ULTRACHAT=${ULTRACHAT:-data/ultrachat_text_document}
export PRETRAINED=${PRETRAINED:-runs/1p36b}                          # a checkpoint, or a save dir (its latest)
export SAVE_DIR=${SAVE_DIR:-runs/1p36b-sft}
NPROC=${NPROC:-2}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec torchrun --standalone --nproc_per_node="$NPROC" tools/pretrain.py \
  --config examples/configs/finetune_sft.yaml "$@"
