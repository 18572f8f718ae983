#!/usr/bin/env python
"""Give a tokenizer trained without chat markers (LLaMA's, SmolLM's, ...) the chat template's markers.

    python tools/add_chat_template.py --tokenizer downloads/TinyLlama-1.1B --output tokenizers/tinyllama-chat

writes <output>/tokenizer.json (the tokenizer with the markers appended as added tokens: every existing id
keeps its piece), tokenizer_config.json (the original's, with the template's Jinja as `chat_template`) and
special_tokens_map.json. A directory's tokenizer.json is used, else its tokenizer.model; a SentencePiece
model is converted through the export's conversion (unigram with the identity normaliser only; others are
refused with the reason). Use <output> as `--tokenizer-model` of tools/preprocess_sft.py and as
`data.tokenizer` with `train.init_from` the original model: its embeddings grow to the new vocabulary, the
new rows the mean of the old ones. See docs/open-models.md.
"""

import argparse
import sys

from megasci.export.chat_markers import add_chat_markers
from megasci.tokenizer import CHAT_TEMPLATES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tokenizer",
        required=True,
        help="a tokenizer.json, a SentencePiece .model, or a directory holding one (e.g. a HF model)",
    )
    p.add_argument("--output", required=True, help="a new directory for the extended tokenizer")
    p.add_argument(
        "--chat-template",
        default="megasci-v1",
        choices=sorted(CHAT_TEMPLATES),
        help="the template whose markers to add (default: megasci-v1)",
    )
    args = p.parse_args(argv)
    try:
        result = add_chat_markers(args.tokenizer, args.output, args.chat_template)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    added = ", ".join(f"{m} = {i}" for m, i in result["added"].items()) or "none (all markers were tokens already)"
    print(f"{result['tokenizer']}: {result['vocab_size']} tokens; from {result['source']}; added {added}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
