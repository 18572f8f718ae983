"""Where a dataset's files live: the one home of every name derived from a dataset prefix.

A dataset is a prefix; its files are `<prefix>.bin` and `<prefix>.idx` (Megatron's pair), the
metadata sidecar `<prefix>.docs.jsonl`, the tokenizer record `<prefix>.tokenizer.json` and the
commit record `<prefix>.commit.json` (megasci/data/commit.py). Writers name their outputs the way
Megatron's tools do: preprocessing writes `<out>_<key>_document` per JSON key and the report
`<out>_preprocess.json`; SFT preprocessing writes `<out>_text_document` (tokens),
`<out>_loss_mask_document` (its loss mask) and the report `<out>_sft.json`. Readers find a
dataset's companions through these functions only, so writer and reader cannot drift apart.
"""

from __future__ import annotations

import os

DOCUMENT_SUFFIX = "_document"
SFT_TOKENS_SUFFIX = "_text_document"
SFT_LOSS_MASK_SUFFIX = "_loss_mask_document"


def data_file_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.bin"


def index_file_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.idx"


def sidecar_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.docs.jsonl"


def tokenizer_record_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.tokenizer.json"


def commit_record_path(prefix: str | os.PathLike) -> str:
    return f"{os.fspath(prefix)}.commit.json"


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron's naming of a preprocessing output: `<prefix>_<key>_document`."""
    return f"{output_prefix}_{key}{DOCUMENT_SUFFIX}"


def report_path_for(output_prefix: str) -> str:
    """The report of the preprocessing run with `--output-prefix output_prefix`."""
    return f"{output_prefix}_preprocess.json"


def sft_output_prefixes(output_prefix: str) -> dict[str, str]:
    """The two datasets of one SFT preprocessing run: token ids and their loss mask."""
    return {"tokens": f"{output_prefix}{SFT_TOKENS_SUFFIX}", "loss_mask": f"{output_prefix}{SFT_LOSS_MASK_SUFFIX}"}


def sft_report_path(output_prefix: str) -> str:
    return f"{output_prefix}_sft.json"


def sft_output_prefix_of(prefix: str | os.PathLike) -> str | None:
    """`<out>` when `prefix` is named like the token dataset of an SFT run (`<out>_text_document`), else None.

    The name alone does not make a dataset SFT (pretraining's `text` key gives the same name); the
    SFT run's own records say so (gpt_dataset.loss_mask_prefix)."""
    prefix = os.fspath(prefix)
    return prefix[: -len(SFT_TOKENS_SUFFIX)] if prefix.endswith(SFT_TOKENS_SUFFIX) else None
