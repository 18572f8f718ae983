"""megasci/downstream/passkey.py and tools/eval_passkey.py: seeded generation, the needle where the
depth says, and the scorer reporting 100% for a planted copying oracle and 0% for models that cannot
retrieve (single and multi-key), plus the CLI on a checkpoint."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import torch

from megasci.downstream import passkey
from megasci.model import build_model, get_config
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import save_checkpoint
from megasci.training.config import TrainConfig
from megasci.training.metrics import read_metrics

VOCAB = 400
FILLER = np.random.default_rng(0).integers(200, VOCAB, size=5000)  # ids no prompt word uses


class WordEncoder:
    """Words and punctuation to ids below 200, one id per distinct piece, in order of first sight."""

    def __init__(self):
        self.ids = {}

    def __call__(self, text: str) -> list[int]:
        return [self.ids.setdefault(piece, len(self.ids)) for piece in re.findall(r"\w+|[^\w\s]", text)]


def copying_oracle(tokens: torch.Tensor) -> torch.Tensor:
    """Logits that predict, at each position, the token that followed the longest earlier match of
    the text ending there (an ideal induction head): retrieval by copying, as a long-context model does."""
    batch, length = tokens.shape
    logits = torch.zeros(batch, length, VOCAB)
    for b in range(batch):
        row = tokens[b].tolist()
        for t in range(length):
            best, best_len = 0, 0
            for j in range(t):
                n = 0
                while n <= j and row[j - n] == row[t - n]:
                    n += 1
                if n > best_len:
                    best, best_len = row[j + 1], n
            logits[b, t, best] = 1.0
    return logits


def constant_model(tokens: torch.Tensor) -> torch.Tensor:
    """Always the same answer (and, for the log-likelihood, the same probability for every key)."""
    logits = torch.zeros(*tokens.shape, VOCAB)
    logits[..., 0] = 1.0
    return logits


CONFIG = passkey.PasskeyConfig(lengths=(60, 120), depths=(0.0, 0.5, 1.0), per_cell=3, seed=3, digits=4, distractors=3)


def test_generation_is_seeded_and_the_needle_sits_at_its_depth():
    encode = WordEncoder()
    a = passkey.make_examples(encode, FILLER, CONFIG)
    assert a == passkey.make_examples(encode, FILLER, CONFIG)
    assert a != passkey.make_examples(encode, FILLER, dataclasses.replace(CONFIG, seed=4))
    assert len(a) == 2 * 3 * 3
    intro, question = encode(passkey.INTRO), encode(" What is the pass key? The pass key is")
    for ex in a:
        assert len(ex.context) + len(ex.answer) == ex.length
        assert ex.answer == tuple(encode(" " + ex.key)) and len(ex.key) == 4
        assert list(ex.context[: len(intro)]) == intro and list(ex.context[-len(question) :]) == question
        needle = encode(f" The pass key is {ex.key}.")
        start = next(i for i in range(len(ex.context)) if list(ex.context[i : i + len(needle)]) == needle)
        filler_len = len(ex.context) - len(intro) - len(question) - len(encode(passkey._needle(None, ex.key)))
        assert start - len(intro) == round(ex.depth * filler_len)
        assert all(w != ex.answer and len(w) == len(ex.answer) for w in ex.wrong)


def test_the_oracle_scores_100_percent_and_models_that_cannot_retrieve_score_0():
    encode = WordEncoder()
    examples = passkey.make_examples(encode, FILLER, CONFIG)
    perfect = passkey.summarize(passkey.score_examples(copying_oracle, examples))
    assert perfect["overall"]["greedy_acc"] == 1.0 and perfect["overall"]["ll_acc"] == 1.0
    assert perfect["overall"]["greedy_stderr"] == 0.0 and perfect["overall"]["n"] == 18
    assert perfect["table"]["0.5"]["120"] == {
        "n": 3,
        "greedy_acc": 1.0,
        "greedy_stderr": 0.0,
        "ll_acc": 1.0,
        "ll_stderr": 0.0,
        "mean_logprob": pytest.approx(perfect["table"]["0.5"]["120"]["mean_logprob"]),
    }
    blind = passkey.summarize(passkey.score_examples(constant_model, examples))
    assert blind["overall"]["greedy_acc"] == 0.0 and blind["overall"]["ll_acc"] == 0.0  # ties are not wins
    table = passkey.format_table(perfect)
    assert "100%" in table and "(n=9)" in table


def test_multi_key_asks_for_one_of_several_named_keys():
    encode = WordEncoder()
    config = dataclasses.replace(CONFIG, keys=3, lengths=(150,))
    examples = passkey.make_examples(encode, FILLER, config)
    for ex in examples:
        names = [n for n in passkey.NAMES if encode(f" for {n} is")[1] in ex.context]
        assert len(names) == 3  # three named needles in every document
    assert passkey.summarize(passkey.score_examples(copying_oracle, examples))["overall"]["greedy_acc"] == 1.0

    def first_key(tokens):  # copies the key of the first needle, whichever was asked for
        logits = constant_model(tokens)
        for b in range(tokens.shape[0]):
            row = tokens[b].tolist()
            is_id = encode("is")[0]
            first = next(
                i
                for i in range(len(row) - 1)
                if row[i] == is_id
                and row[i + 1] >= 0
                and any(row[i + 1] == e.answer[0] or row[i + 1] in (w[0] for w in e.wrong) for e in examples)
                or (row[i] == is_id and i > 0 and row[i - 1] in [encode(n)[0] for n in passkey.NAMES])
            )
            logits[b, :, :] = 0
            logits[b, :, row[first + 1]] = 1.0
        return logits

    partial = passkey.summarize(passkey.score_examples(first_key, examples))["overall"]["greedy_acc"]
    assert partial < 1.0  # returning the wrong needle's key is counted wrong


def test_stderr_and_heatmap(tmp_path):
    assert passkey.stderr(0.5, 4) == 0.25 and passkey.stderr(0.0, 10) == 0.0
    summary = passkey.summarize(
        passkey.score_examples(constant_model, passkey.make_examples(WordEncoder(), FILLER, CONFIG))
    )
    passkey.plot_heatmap(summary, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="too short"):
        passkey.make_examples(WordEncoder(), FILLER, dataclasses.replace(CONFIG, lengths=(10,)))


def test_the_tool_writes_table_json_png_and_tensorboard(tmp_path, capsys):
    from tools.eval_passkey import main
    from training_fixtures import make_training_data

    data = make_training_data(str(tmp_path / "data"), papers=20)
    cfg = get_config("tiny", vocab_size=data["vocab_size"])
    torch.manual_seed(0)
    train = TrainConfig()
    train.data.seq_length, train.data.split, train.data.tokenizer = 32, (0.5, 0.5, 0.0), data["tokenizer"]
    save_checkpoint(
        str(tmp_path / "ckpt"),
        7,
        rank=0,
        rank_state={},
        model_state=build_model(cfg).state_dict(),
        meta={
            "model_config": dataclasses.asdict(cfg),
            "train_config": train.to_dict(),
            "tokenizer": load_tokenizer(data["tokenizer"]).identity(),
        },
    )
    out = str(tmp_path / "out")
    assert (
        main(
            [
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--data",
                data["prefix"],
                "--min-length",
                "64",
                "--depths",
                "0",
                "1",
                "--per-cell",
                "2",
                "--compact",
                "--out-dir",
                out,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "depth \\ length" in printed and "128" in printed  # 64 and the model's maximum, 128
    report = json.load(open(os.path.join(out, "passkey.json")))
    assert report["summary"]["lengths"] == [64, 128] and report["step"] == 7 and len(report["examples"]) == 8
    rows = read_metrics(os.path.join(out, "tensorboard"))
    expected = report["summary"]["by_length"]["128"]["greedy_acc"]
    assert rows[7]["eval/passkey/greedy_acc/00128"] == pytest.approx(expected)
    assert os.path.getsize(os.path.join(out, "passkey.png")) > 0
