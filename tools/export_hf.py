#!/usr/bin/env python
"""Export a checkpoint as a HuggingFace transformers directory (LlamaForCausalLM + tokenizer), verified.

    python tools/export_hf.py --checkpoint runs/1p36b/checkpoints --output hf/1p36b [--dtype bfloat16]

The export is reloaded with transformers and compared with our model and tokenizer before it gets its
final name; a failed check leaves no --output, only <output>.failed for inspection. --verify-only checks
an existing --output against the checkpoint instead of writing one.
"""

import argparse
import sys

from megasci.export_hf import EXPORT_DTYPES, ExportError, export_checkpoint, verify_export


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint directory, a save directory (its latest), or a HF model directory",
    )
    p.add_argument("--output", required=True, help="the export directory to write (or, with --verify-only, check)")
    p.add_argument(
        "--dtype", choices=sorted(EXPORT_DTYPES), default=None, help="weight dtype (default: the training dtype)"
    )
    p.add_argument("--tokenizer", default=None, help="the training tokenizer (default: the checkpoint's copy)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists (once the new one passes)")
    p.add_argument("--device", default="cpu", help="where both models run for the checks (default: cpu)")
    p.add_argument("--verify-only", action="store_true", help="check an existing export, write nothing")
    args = p.parse_args(argv)
    try:
        if args.verify_only:
            report = verify_export(args.output, args.checkpoint, tokenizer=args.tokenizer, device=args.device)
        else:
            report = export_checkpoint(
                args.checkpoint,
                args.output,
                dtype=args.dtype,
                tokenizer=args.tokenizer,
                overwrite=args.overwrite,
                device=args.device,
            )
    except (ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    done = "verified" if args.verify_only else "exported"
    print(
        f"{done} {report.export_dir} from {report.checkpoint} ({report.dtype}): logits within "
        f"{report.max_logit_diff:.3g} (tolerance {report.tolerance:.3g}), "
        f"{report.greedy_tokens} greedy tokens equal, {report.probe_tokens} probe tokens equal"
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
