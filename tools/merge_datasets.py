#!/usr/bin/env python
"""Concatenate indexed datasets (same dtype) into one, in the order given; sidecars and the recorded
tokenizer (when every input has them) are merged too, and committed with the merged dataset."""

import argparse
import glob
import os
import sys

from megasci.data.indexed_dataset import IndexedDatasetError, merge_datasets
from megasci.data.naming import sidecar_path, tokenizer_record_path
from megasci.data.provenance import common_tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="dataset prefixes (without .bin/.idx), or directories whose datasets are merged in name order",
    )
    p.add_argument("--output-prefix", required=True)
    args = p.parse_args(argv)
    prefixes = []
    for entry in args.input:
        if os.path.isdir(entry):
            prefixes += sorted(path[: -len(".idx")] for path in glob.glob(os.path.join(entry, "*.idx")))
        else:
            prefixes.append(entry)
    with_sidecar = all(os.path.isfile(sidecar_path(p)) for p in prefixes)
    try:
        tokenizer = common_tokenizer(prefixes)
        merged = merge_datasets(prefixes, args.output_prefix, sidecar=with_sidecar, tokenizer=tokenizer)
    except (IndexedDatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"merged {len(prefixes)} datasets -> {args.output_prefix}.bin/.idx: "
        f"{merged.num_documents:,} documents, {merged.num_tokens:,} tokens ({merged.dtype})"
        + (
            f", sidecar {sidecar_path(args.output_prefix)}"
            if with_sidecar
            else ", no sidecar (not every input has one)"
        )
        + (
            f", tokenizer {tokenizer_record_path(args.output_prefix)}"
            if tokenizer is not None
            else ", no tokenizer record (not every input has one)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
