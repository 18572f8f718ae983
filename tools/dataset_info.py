#!/usr/bin/env python
"""Print statistics of indexed datasets (documents, tokens, length distribution, sidecar labels)."""

import argparse
import json
import sys

from megasci.data.indexed_dataset import IndexedDatasetError
from megasci.data.stats import dataset_statistics, format_statistics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("prefixes", nargs="+", help="dataset prefixes (without .bin/.idx)")
    p.add_argument("--label-key", default="section", help="sidecar field to count documents by")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    for prefix in args.prefixes:
        try:
            stats = dataset_statistics(prefix, args.label_key)
        except (IndexedDatasetError, FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(json.dumps(stats) if args.json else format_statistics(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
