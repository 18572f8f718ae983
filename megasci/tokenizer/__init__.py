"""Tokenizers: train SentencePiece for LaTeX, or bring an existing SentencePiece / HuggingFace one."""

from __future__ import annotations

import os

from megasci.tokenizer.base import Tokenizer
from megasci.tokenizer.chat import CHAT_TEMPLATES, ChatEncoder, ChatFormatError, ChatTemplate, get_chat_template
from megasci.tokenizer.hf_tokenizer import HFTokenizer
from megasci.tokenizer.sp_tokenizer import (
    SentencePieceTokenizer,
    SentencePieceTrainConfig,
    TrainReport,
    train_sentencepiece,
)

__all__ = [
    "CHAT_TEMPLATES",
    "ChatEncoder",
    "ChatFormatError",
    "ChatTemplate",
    "get_chat_template",
    "Tokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "SentencePieceTrainConfig",
    "TrainReport",
    "train_sentencepiece",
    "load_tokenizer",
]


def load_tokenizer(path: str) -> Tokenizer:
    """A `.model` file is SentencePiece, a `.json` file HuggingFace; a directory is searched for either."""
    if os.path.isdir(path):
        for name in ("tokenizer.model", "tokenizer.json"):
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        raise FileNotFoundError(f"{path}: directory holds neither tokenizer.model nor tokenizer.json")
    if path.endswith(".json"):
        return HFTokenizer(path)
    return SentencePieceTokenizer(path)
