#!/usr/bin/env python
"""Perplexity of a checkpoint on held-out data: per data prefix, per sidecar label, and overall.

By default the documents evaluated are each prefix's validation split under the checkpoint's own
split fractions and seed, i.e. exactly the documents training held out; --split all takes every
document, for a dataset the model never saw. Samples are seq_length + 1 tokens packed across the
documents of one group, as in training. See megasci/evaluation.py for the details.

--by-position [W] also scores every token and reports the mean loss per bucket of W positions
(default: an eighth of the sequence), with its standard error, into --out-dir: by_position.json,
by_position.png and TensorBoard scalars eval/loss_by_position/<start>-<end> at the checkpoint's step.

Example:
    python tools/eval_ppl.py --checkpoint runs/1p36b/checkpoints --data data/arxiv_sections_text_document \\
        --by section --max-samples 256 --json-out ppl.json
    python tools/eval_ppl.py --checkpoint runs/extend_4096/checkpoints --data data/arxiv_text_document \\
        --seq-length 4096 --by-position 512 --max-samples 64 --out-dir runs/extend_4096/by_position
"""

import argparse
import json
import os
import sys

import torch

from megasci.data.indexed_dataset import IndexedDatasetError
from megasci.evaluation import EVAL_SPLITS, by_position_scalars, evaluate_perplexity, format_report, plot_by_position
from megasci.model.dtypes import DTYPES
from megasci.training.metrics import MetricsLog


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a save directory (its latest)")
    p.add_argument("--data", nargs="+", required=True, metavar="PREFIX", help="dataset prefixes (without .bin/.idx)")
    p.add_argument(
        "--split",
        choices=EVAL_SPLITS,
        default="valid",
        help="valid/test/train under the checkpoint's split; all = every document (default: valid)",
    )
    p.add_argument("--by", metavar="KEY", help="also group by each value of this sidecar key, e.g. section")
    p.add_argument("--seq-length", type=int, default=None, help="default: the checkpoint's data.seq_length")
    p.add_argument("--max-samples", type=int, default=None, help="at most this many samples per group")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the training dtype")
    p.add_argument("--cache-dir", default=None, help="sample-index cache; default <prefix>_cache/")
    p.add_argument("--json-out", metavar="FILE", help="also write the report as JSON")
    p.add_argument(
        "--by-position",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="W",
        help="mean loss per bucket of W positions (default W: seq_length / 8)",
    )
    p.add_argument(
        "--out-dir",
        default="eval_by_position",
        help="--by-position's by_position.json, .png and tensorboard/ (default: eval_by_position)",
    )
    args = p.parse_args(argv)
    if args.batch_size < 1 or (args.seq_length is not None and args.seq_length < 1):
        p.error("--batch-size and --seq-length must be positive")
    try:
        report = evaluate_perplexity(
            args.checkpoint,
            args.data,
            split=args.split,
            by=args.by,
            seq_length=args.seq_length,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            device=args.device,
            dtype=DTYPES.get(args.dtype),
            cache_dir=args.cache_dir,
            warn=lambda line: print(line, file=sys.stderr),
            by_position=args.by_position,
        )
    except (OSError, ValueError, IndexedDatasetError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    if report.get("by_position") is not None:
        write_by_position(report, args.out_dir)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


def write_by_position(report: dict, out_dir: str) -> None:
    """The by-position buckets as a console table, by_position.json, by_position.png and TensorBoard scalars."""
    buckets = report["by_position"]
    os.makedirs(out_dir, exist_ok=True)
    print("positions        loss    stderr  samples")
    for b in buckets:
        print(f"{b['start']:>6}-{b['end']:<6}  {b['loss']:8.4f}  {b['stderr']:8.4f}  {b['samples']:>7}")
    with open(os.path.join(out_dir, "by_position.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                key: report[key]
                for key in ("checkpoint", "step", "split", "seq_length", "trained_seq_length", "by_position")
            },
            f,
            indent=2,
        )
        f.write("\n")
    plot_by_position(
        buckets,
        os.path.join(out_dir, "by_position.png"),
        f"loss by position, step {report['step']}",
        report.get("trained_seq_length"),
    )
    log = MetricsLog(os.path.join(out_dir, "tensorboard"), active=True)
    log.scalars(int(report["step"] or 0), by_position_scalars(buckets))
    log.close()
    print(f"by position: {out_dir}/by_position.json, by_position.png, tensorboard/")


if __name__ == "__main__":
    sys.exit(main())
