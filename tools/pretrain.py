#!/usr/bin/env python
"""Pretrain a megasci model: one process per GPU under torchrun, resuming from the newest checkpoint.

    torchrun --standalone --nproc_per_node=2 tools/pretrain.py --config examples/configs/pretrain_1p36b.yaml \\
        data.tokenizer=tok/arxiv.model train.save_dir=runs/1p36b optim.lr=2e-4

Overrides are `section.field=value` (value read as YAML) over the sections of
megasci/training/config.py: model, data, optim, train. `--print-config` shows the resolved config.
SIGTERM saves a checkpoint and exits; running the same command again resumes exactly.

Fine-tuning is the same command with `train.init_from=<pretrained checkpoint>` (weights only) over SFT
sources and `data.document_mask=true`, as examples/finetune_sft.sh runs it.

A set-up error (config, files, checkpoint, save_dir lock) is one line from rank 0, `error: ...`, exit
code 2; a divergence is exit code 3, with the command that rolls back (docs/checkpoints.md).
"""

import argparse
import datetime
import os
import shlex
import sys

import torch.distributed as dist

from megasci.distributed import shutdown_distributed
from megasci.training.config import load_config
from megasci.training.guard import TrainingDiverged
from megasci.training.trainer import Trainer

# What a bad config, missing or damaged file, another tokenizer, a taken save_dir or an unusable
# device raise while the run is set up; anything else is a bug and keeps its traceback.
SETUP_ERRORS = (ValueError, KeyError, OSError, RuntimeError)
_SETUP_KEY = "megasci/setup_error"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))


def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or type(error).__name__


def _report_setup_error(error: BaseException) -> None:
    """Rank 0 prints the error; another rank stays quiet unless rank 0 did not fail (then its own
    error is the only report), which it learns from the rendezvous store torchrun provides."""
    rank, message = _rank(), _one_line(error)
    store = None
    if dist.is_available() and dist.is_initialized():
        try:
            store = dist.distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError):
            store = None
    key = f"{_SETUP_KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if rank == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
        if store is not None:
            try:
                store.set(key, message)
            except RuntimeError:
                pass
        return
    if store is not None:
        try:
            store.wait([key], datetime.timedelta(seconds=20))
            return  # rank 0 reported the failure
        except RuntimeError:
            pass
    print(f"error (rank {rank}): {message}", file=sys.stderr, flush=True)


def _rollback_command(argv: list[str], overrides: list[str]) -> str:
    """This command with the rollback overrides in place of any earlier ones."""
    keys = {o.split("=", 1)[0] for o in overrides}
    kept = [a for a in argv if a.split("=", 1)[0] not in keys]
    launcher = "torchrun <the same torchrun options> " if "LOCAL_RANK" in os.environ else "python "
    return launcher + shlex.join([sys.argv[0], *kept, *overrides])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file; omitted sections keep their defaults")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as error:  # every rank reads the same config: rank 0 alone says so
        if _rank() == 0:
            print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    try:
        trainer = Trainer(cfg)
    except SETUP_ERRORS as error:
        _report_setup_error(error)
        shutdown_distributed(wait=False)
        return 2
    try:
        summary = trainer.train()
    except TrainingDiverged as error:  # every rank saw the same losses, so all stop here together
        if _rank() == 0:
            print(f"error: {error}", file=sys.stderr)
            if error.rollback:
                print(f"to roll back: {_rollback_command(argv, error.rollback)}", file=sys.stderr, flush=True)
        shutdown_distributed()
        return 3
    shutdown_distributed()
    if summary.end_step == summary.start_step and _rank() == 0:
        print(f"nothing to do: the checkpoint in {cfg.train.save_dir} is already at step {summary.end_step}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
