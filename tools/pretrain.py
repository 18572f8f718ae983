#!/usr/bin/env python
"""Pretrain a megasci model: one process per GPU under torchrun, resuming from the newest checkpoint.

    torchrun --standalone --nproc_per_node=2 tools/pretrain.py --config examples/configs/pretrain_1p36b.yaml \\
        data.tokenizer=tok/arxiv.model train.save_dir=runs/1p36b optim.lr=2e-4

Overrides are `section.field=value` (value read as YAML) over the sections of
megasci/training/config.py: model, data, optim, train. `--print-config` shows the resolved config.
SIGTERM saves a checkpoint and exits; running the same command again resumes exactly.

Fine-tuning is the same command with `train.init_from=<pretrained checkpoint>` (weights only) over SFT
sources and `data.document_mask=true`, as examples/finetune_sft.sh runs it.
"""

import argparse
import sys

from megasci.distributed import shutdown_distributed
from megasci.training.config import load_config
from megasci.training.guard import TrainingDiverged
from megasci.training.trainer import pretrain


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file; omitted sections keep their defaults")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    try:
        summary = pretrain(cfg)
    except TrainingDiverged as error:  # every rank saw the same losses, so all stop here together
        print(f"error: {error}", file=sys.stderr)
        shutdown_distributed()
        return 3
    shutdown_distributed()
    if summary["end_step"] == summary["start_step"]:
        print(f"nothing to do: the checkpoint in {cfg.train.save_dir} is already at step {summary['end_step']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
