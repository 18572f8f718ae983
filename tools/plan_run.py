#!/usr/bin/env python
r"""Plan an arXiv run before downloading anything: tars and bytes to fetch, papers, characters and tokens
after each stage, disk for every intermediate, and training time.

    python tools/plan_run.py --manifest arXiv_src_manifest.xml --metadata arxiv-metadata-oai-snapshot.json \
        --categories 'math.*' 'cs.*' --years 2000-2025 --yield corpus/yield.json --tokenizer tokenizer.model \
        --gpus 2 --tokens-per-s 45000 --json-out plan.json --fetch-list fetch.txt

The fetch list holds the `src/arXiv_src_YYMM_NNN.tar` keys of arXiv's requester-pays bucket, one a line:
    while read key; do aws s3 cp --request-payer requester "s3://arxiv/$key" raw/; done < fetch.txt
"""

import argparse
import json
import re
import sys

from megasci.corpus.metadata import MetadataFilterConfig
from megasci.plan import format_plan, plan_run
from megasci.utils.io import atomic_text_output


def _years(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{4})(?:-(\d{4}))?", text)
    if not m or int(m[2] or m[1]) < int(m[1]):
        raise argparse.ArgumentTypeError(f"{text!r}: expected YYYY or YYYY-YYYY")
    return int(m[1]), int(m[2] or m[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="arXiv_src_manifest.xml from the bucket")
    p.add_argument("--metadata", nargs="*", default=[], help="snapshot, OAI-PMH files, .abs files or directories")
    p.add_argument("--categories", nargs="+", default=list(MetadataFilterConfig().categories))
    p.add_argument(
        "--years",
        type=_years,
        default=(MetadataFilterConfig().min_first_version_year, 2025),
        help="first-version years, YYYY-YYYY",
    )
    p.add_argument("--yield", dest="yield_path", help="a measured yield.json (else the stated default funnel)")
    p.add_argument("--tokenizer", help="measure characters per token with this model (else the stated default)")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--tokens-per-s", type=float, default=45_000.0, help="training throughput per GPU")
    p.add_argument("--train-tokens", type=int, help="token budget (default: one pass over the corpus)")
    p.add_argument("--json-out", help="write the plan as JSON")
    p.add_argument("--fetch-list", help="write the bucket keys to fetch, one a line")
    args = p.parse_args(argv)
    if args.gpus < 1 or args.tokens_per_s <= 0:
        p.error("--gpus and --tokens-per-s must be positive")
    try:
        plan = plan_run(
            args.manifest,
            args.metadata,
            tuple(args.categories),
            args.years,
            args.yield_path,
            args.tokenizer,
            args.gpus,
            args.tokens_per_s,
            args.train_tokens,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_plan(plan))
    if args.json_out:
        with atomic_text_output(args.json_out) as out:
            json.dump(plan, out, indent=2)
    if args.fetch_list:
        with atomic_text_output(args.fetch_list) as out:
            out.writelines(key + "\n" for key in plan["fetch"]["keys"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
