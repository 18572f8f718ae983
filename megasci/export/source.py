"""What an export is made from: the checkpoint's training tokenizer (a SentencePiece model or a HuggingFace
tokenizer.json) (checked against the hash its
meta.json records), that tokenizer's identity, and the export dtype; `ExportError` for every refusal."""

from __future__ import annotations

import os

import torch

from megasci.model import ModelConfig
from megasci.model.dtypes import DTYPES
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import checkpoint_tokenizer_path
from megasci.utils.io import file_sha256

EXPORT_DTYPES = ("float32", "bfloat16")  # the dtypes whose logit tolerance is known (verify.LOGIT_RTOL)


class ExportError(ValueError):
    """The export (or an existing export directory) does not reproduce the checkpoint."""


def training_tokenizer_path(checkpoint: str, tokenizer: str | None, meta: dict) -> str:
    """The training tokenizer: `tokenizer` if given, which must then be the file meta.json names by hash."""
    path = tokenizer or checkpoint_tokenizer_path(checkpoint)
    if path is None:
        raise ExportError(
            f"{checkpoint}: holds no tokenizer (tokenizer.model or tokenizer.json); pass the training "
            f"tokenizer explicitly"
        )
    want = (meta.get("tokenizer") or {}).get("sha256")
    if want and file_sha256(path) != want:
        raise ExportError(
            f"{path}: not the tokenizer this checkpoint was trained with (sha256 differs from "
            f"{os.path.join(checkpoint, 'meta.json')})"
        )
    return path


def tokenizer_identity(tokenizer: str) -> dict:
    return load_tokenizer(tokenizer).identity()


def export_dtype(dtype: str | None, cfg: ModelConfig) -> torch.dtype:
    name = dtype or cfg.dtype
    if name not in EXPORT_DTYPES:
        raise ExportError(f"dtype {name!r} is not one of {sorted(EXPORT_DTYPES)}")
    return DTYPES[name]
