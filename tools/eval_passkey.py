#!/usr/bin/env python
"""Passkey retrieval of a checkpoint: a depth x length accuracy table (console, JSON) and a heatmap PNG.

Seeded documents of held-out filler text (--data's split the checkpoint never trained on) with a
key at each depth, at each length up to the model's max_seq_len (default: powers of two from 1024,
or from --min-length for small models), scored by greedy decoding and by the key's log-likelihood
against --distractors other keys; --keys N hides N named keys and asks for one (RULER-style
multi-key). The logic is megasci/downstream/passkey.py; megasci/evaluation.py loads the model.
Writes <out-dir>/passkey.json, passkey.png and TensorBoard scalars eval/passkey/... at the step.

Example:
    python tools/eval_passkey.py --checkpoint runs/extend_4096/checkpoints --data data/arxiv_text_document \\
        --depths 0 0.25 0.5 0.75 1 --per-cell 20 --out-dir runs/extend_4096/passkey
"""

import argparse
import json
import os
import sys

import torch

from megasci.data.indexed_dataset import IndexedDatasetError
from megasci.downstream.passkey import PasskeyConfig, format_table, plot_heatmap
from megasci.evaluation import EVAL_SPLITS, evaluate_passkey
from megasci.model.dtypes import DTYPES
from megasci.training.metrics import MetricsLog


def passkey_scalars(summary: dict, prefix: str = "eval/passkey") -> dict[str, float]:
    """TensorBoard tags: accuracy per length (greedy and, when scored, log-likelihood) and overall."""
    values = {}
    for length, cell in summary["by_length"].items():
        values[f"{prefix}/greedy_acc/{int(length):05d}"] = cell["greedy_acc"]
        if "ll_acc" in cell:
            values[f"{prefix}/ll_acc/{int(length):05d}"] = cell["ll_acc"]
    values[f"{prefix}/greedy_acc/all"] = summary["overall"]["greedy_acc"]
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a save directory (its latest)")
    p.add_argument("--data", required=True, metavar="PREFIX", help="dataset prefix of the filler text")
    p.add_argument("--split", choices=EVAL_SPLITS, default="valid", help="filler documents (default: held out)")
    p.add_argument("--lengths", type=int, nargs="+", help="context lengths in tokens (default: see --min-length)")
    p.add_argument("--min-length", type=int, default=1024, help="shortest default length (default 1024)")
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--per-cell", type=int, default=20, help="examples per depth x length cell")
    p.add_argument("--keys", type=int, default=1, help="keys hidden per document; one is asked for")
    p.add_argument("--digits", type=int, default=5)
    p.add_argument("--distractors", type=int, default=4, help="other keys for the log-likelihood choice")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--compact", action="store_true", help="short needle and question, no introduction")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--out-dir", default="eval_passkey")
    p.add_argument("--tag", default="eval/passkey", help="TensorBoard tag prefix")
    args = p.parse_args(argv)
    try:
        config = PasskeyConfig(
            lengths=tuple(args.lengths or ()),
            min_length=args.min_length,
            depths=tuple(args.depths),
            per_cell=args.per_cell,
            seed=args.seed,
            digits=args.digits,
            compact=args.compact,
            keys=args.keys,
            distractors=args.distractors,
        )
        report = evaluate_passkey(
            args.checkpoint, args.data, config, device=args.device, dtype=DTYPES.get(args.dtype), split=args.split
        )
    except (OSError, ValueError, IndexedDatasetError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = report["summary"]
    print(f"passkey retrieval, greedy (% exact key), {args.keys} key(s), step {report['step']}:")
    print(format_table(summary, "greedy_acc"))
    if args.distractors:
        chance = 100 / (args.distractors + 1)
        print(f"log-likelihood choice against {args.distractors} other keys (chance {chance:.0f}%):")
        print(format_table(summary, "ll_acc"))
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "passkey.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    plot_heatmap(summary, os.path.join(args.out_dir, "passkey.png"), title=f"passkey, {args.keys} key(s)")
    log = MetricsLog(os.path.join(args.out_dir, "tensorboard"), active=True)
    log.scalars(int(report["step"] or 0), passkey_scalars(summary, args.tag))
    log.close()
    print(f"wrote {args.out_dir}/passkey.json, passkey.png, tensorboard/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
