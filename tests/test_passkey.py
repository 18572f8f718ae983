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


class DigitEncoder(WordEncoder):
    """One id per digit, as SentencePiece with split digits gives: a key is several tokens."""

    def __call__(self, text: str) -> list[int]:
        return [self.ids.setdefault(piece, len(self.ids)) for piece in re.findall(r"\d|[^\W\d]+|[^\w\s]", text)]


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


def _random_run(tmp_path, step: int) -> dict:
    """A random tiny model saved as <tmp_path>/ckpt at `step`, trained (by its config) at 32 tokens on
    half of a 20-paper dataset, the other half held out; returns make_training_data's dict."""
    from training_fixtures import make_training_data

    data = make_training_data(str(tmp_path / "data"), papers=20)
    cfg = get_config("tiny", vocab_size=data["vocab_size"])
    torch.manual_seed(0)
    train = TrainConfig()
    train.data.seq_length, train.data.split, train.data.tokenizer = 32, (0.5, 0.5, 0.0), data["tokenizer"]
    save_checkpoint(
        str(tmp_path / "ckpt"),
        step,
        rank=0,
        rank_state={},
        model_state=build_model(cfg).state_dict(),
        meta={
            "model_config": dataclasses.asdict(cfg),
            "train_config": train.to_dict(),
            "tokenizer": load_tokenizer(data["tokenizer"]).identity(),
        },
    )
    return data


def test_the_tool_writes_table_json_png_and_tensorboard(tmp_path, capsys):
    from tools.eval_passkey import main

    data = _random_run(tmp_path, step=7)
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


RETRIEVAL = passkey.RetrievalDataConfig(length=64, count=60, min_episode=32, digits=3, span=(4, 12), seed=5)


def _scored_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of scored positions."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def test_retrieval_documents_score_only_what_an_earlier_part_of_the_document_answers():
    encode = WordEncoder()
    docs = passkey.retrieval_documents(encode, FILLER, RETRIEVAL)
    assert len(docs) == 60
    assert all(len(ids) == len(mask) == 64 for ids, mask in docs)
    needle_head = encode(" The pass key is")
    kinds = {"passkey": 0, "copy": 0}
    for ids, mask in docs:
        ids = ids.tolist()
        (start, end), *more = _scored_runs(mask)
        assert not more, "one scored run per document"
        if ids[start - len(needle_head) : start] == needle_head:
            kinds["passkey"] += 1
            key = ids[start:end]  # the key's digits (the word encoder gives the number one id)
            needle = needle_head + key
            assert any(ids[i : i + len(needle)] == needle for i in range(start - len(needle)))
        else:
            kinds["copy"] += 1  # the span's first token is unscored: the whole span appears before it
            span = ids[start - 1 : end]
            assert 4 <= len(span) <= 12
            assert any(ids[i : i + len(span)] == span for i in range(start - len(span)))
    assert kinds == {"passkey": 30, "copy": 30}
    again = passkey.retrieval_documents(encode, FILLER, RETRIEVAL)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(docs, again))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"min_episode": 65}, "min_episode <= length"),
        ({"copy_share": 1.5}, "copy_share"),
        ({"span": (20, 30)}, "do not fit twice"),
    ],
)
def test_retrieval_config_refuses_what_cannot_be_built(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(RETRIEVAL, **changes)


def test_make_passkey_data_writes_a_masked_dataset_whose_samples_are_its_documents(tmp_path, capsys):
    from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig, loss_mask_prefix
    from megasci.data.indexed_dataset import IndexedDataset
    from tools.make_passkey_data import main

    data = _random_run(tmp_path, step=1)
    out = str(tmp_path / "retrieval")
    argv = ["--checkpoint", str(tmp_path / "ckpt"), "--filler", data["prefix"], "--output-prefix", out]
    assert main([*argv, "--length", "64", "--count", "40", "--digits", "3", "--span", "4", "12"]) == 0
    assert "wrote 40 documents of 64 tokens" in capsys.readouterr().out
    prefix = out + "_text_document"
    tokens, mask = IndexedDataset(prefix), IndexedDataset(loss_mask_prefix(prefix))
    assert tokens.document_lengths().tolist() == [64] * 40
    documents = {tuple(tokens.get_document(i).tolist()): mask.get_document(i).tolist() for i in range(40)}
    report = json.load(open(out + "_passkey.json"))
    assert report["documents"] == 40 and report["scored_tokens"] == sum(map(sum, documents.values()))
    tokenizer = load_tokenizer(data["tokenizer"])
    passkeys = [d for d in documents if " pass key is " in tokenizer.decode(list(d))]
    assert len(passkeys) == 20
    # Samples are cut every seq_length tokens, so with seq_length = the documents' length each sample
    # is one whole document with its own mask (the extra last token is the next document's first).
    dataset = GPTDataset(GPTDatasetConfig(prefix, split_fractions=(1.0, 0.0, 0.0), seq_length=64, num_samples=39))
    for i in range(39):
        sample = dataset.sample(i)
        document = tuple(sample.tokens[:64].tolist())
        assert document in documents and sample.loss_mask[:64].tolist() == documents[document]
    assert main([*argv, "--length", "64", "--count", "4", "--min-episode", "100"]) == 1
    assert "min_episode <= length" in capsys.readouterr().err


YARN_4X = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}


@pytest.mark.parametrize("scaling", [None, YARN_4X])
def test_cached_scoring_equals_one_forward_pass_per_answer(scaling):
    """The KV-cached scorer (the context run once) against the plain one (a full row per answer), on a
    random model: the same log-probabilities to float32 rounding and the same greedy verdicts."""
    cfg = get_config("tiny", vocab_size=VOCAB, max_seq_len=128, rope_scaling=scaling, init_std=0.5)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    examples = passkey.make_examples(DigitEncoder(), FILLER, CONFIG)
    assert all(len(ex.answer) == 4 for ex in examples)  # one token a digit: the answers' own positions count
    full = passkey.score_examples(lambda tokens: model(tokens), examples)
    cached = passkey.score_examples(model, examples)
    assert [r["greedy"] for r in cached] == [r["greedy"] for r in full]
    assert [r["ll_correct"] for r in cached] == [r["ll_correct"] for r in full]
    logprobs = np.array([r["logprob"] for r in full])
    assert logprobs.std() > 1.0  # a sharp random model: keys differ in likelihood
    np.testing.assert_allclose([r["logprob"] for r in cached], logprobs, rtol=1e-5)
