"""A tiny trained tokenizer, a checkpoint of a tiny model and its HF export, for the downstream tests."""

from __future__ import annotations

import dataclasses
import json

import torch

from megasci.corpus.synthetic import generate_papers
from megasci.export_hf import export_checkpoint
from megasci.model import build_model, get_config
from megasci.tokenizer import SentencePieceTokenizer, SentencePieceTrainConfig, train_sentencepiece
from megasci.training.checkpoint import save_checkpoint

VOCAB = 1200


def make_tokenizer(path) -> SentencePieceTokenizer:
    docs = [p["text"] for p in generate_papers(40, seed=0)]
    train_sentencepiece(docs, str(path), SentencePieceTrainConfig(vocab_size=VOCAB, num_threads=1, mined_commands=100))
    return SentencePieceTokenizer(str(path))


def make_checkpoint(save_dir, tok, seed: int = 0):
    """A tiny float32 model (init large enough that logits are far from uniform), saved with its tokenizer."""
    cfg = get_config("tiny", vocab_size=tok.vocab_size, init_std=0.1)
    torch.manual_seed(seed)
    model = build_model(cfg, dtype=torch.float32)
    meta = {"model_config": dataclasses.asdict(cfg), "tokenizer": tok.identity()}
    save_checkpoint(str(save_dir), 10, rank=0, rank_state={}, model_state=model.state_dict(), meta=meta, tokenizer=tok)
    return model.eval()


def make_export(root, tok):
    """(our model, checkpoint dir, HF export dir)."""
    model = make_checkpoint(root / "ckpt", tok)
    export_checkpoint(str(root / "ckpt"), str(root / "hf"))
    return model, root / "ckpt", root / "hf"


# Requests that exercise every branch of HFLM's tokenisation: a trailing space moved to the
# continuation, an empty context, a choice without a leading space, non-ASCII text, a context longer
# than the tiny model's 128-token window (left truncation), a continuation of one character.
LONG = " ".join(f"\\alpha_{i} + \\beta^{{{i}}}" for i in range(60))
EXAMPLES = [
    {"context": "Question: what is $x^2$ when $x = 3$?\nAnswer:", "choices": [" 9", " 6", " nine", " 3^2"], "gold": 0},
    {"context": "The derivative of \\sin x is ", "choices": ["\\cos x", "-\\cos x", "\\tan x"], "gold": 0},
    {"context": "", "choices": ["\\begin{theorem}", "Theorem.", " theorem"], "gold": 1},
    {"context": "Ünïcödé ∂Ω: ", "choices": ["中文", "😀 emoji", "∇·E = ρ/ε₀"], "gold": 2},
    {"context": LONG + "\nTherefore", "choices": [" the sum diverges.", " $\\sum_i \\alpha_i = 0$.", " q"], "gold": 1},
    {
        "id": "last",
        "context": "Let $G$ be a group. Then",
        "choices": [" $G$ is abelian", " $e \\in G$", "x"],
        "gold": 1,
    },
]


def write_task(path, examples=EXAMPLES) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    return str(path)
