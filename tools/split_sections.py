#!/usr/bin/env python
"""Cut corpus records into one record per labelled section, for section-level datasets.

    python tools/split_sections.py --input 'corpus/shards/*.jsonl.zst' --output corpus_sections/arxiv_sections.jsonl.zst
    python tools/preprocess_data.py --input corpus_sections/arxiv_sections.jsonl.zst \\
        --output-prefix data/arxiv_sections --tokenizer-model tokenizer/arxiv.model --append-eod \\
        --metadata-keys id section

Each output line is `{"id", "section", "text"}` from a record's `sections` spans (the corpus
builder's tags); preprocessing then records `section` in the dataset's sidecar, where curriculum
stages and tools/eval_ppl.py --by section select documents by label.
"""

import argparse
import sys

from megasci.corpus.sections import write_section_records
from megasci.utils.io import expand_inputs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="corpus JSONL files (.jsonl, .gz, .zst) or globs")
    p.add_argument("--output", required=True, help="output JSONL (.jsonl, .jsonl.gz or .jsonl.zst), written atomically")
    args = p.parse_args(argv)
    try:
        papers, sections = write_section_records(expand_inputs(args.input), args.output)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{sections:,} sections from {papers:,} papers -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
