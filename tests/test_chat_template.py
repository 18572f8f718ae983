"""The chat template: markers as single tokens, loss masks, whole-string = turn-by-turn encoding, and
transformers' apply_chat_template giving our ids from the Jinja string."""

import json
import random

import numpy as np
import pytest

from megasci.corpus.synthetic import generate_papers
from megasci.tokenizer import (
    CHAT_TEMPLATES,
    ChatFormatError,
    ChatTemplate,
    SentencePieceTrainConfig,
    get_chat_template,
    load_tokenizer,
    train_sentencepiece,
)
from megasci.tokenizer.chat import crosses_a_marker

TEMPLATE = get_chat_template("megasci-v1")
# Text full of the markers' characters, so training learns pieces like ">=", "<|" or "|>" that
# would cross a marker's edge if they were left matchable.
EDGY_TEXT = "a <| b |> c <= d >= e -> f <- g |>> h <<| i\n$x<y$ and $|x>$ or ${<}|{>}$ <end> <user> |end|\n" * 40


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat_tok")
    docs = [p["text"] for p in generate_papers(40, seed=21)] + [EDGY_TEXT] * 30
    cfg = SentencePieceTrainConfig(vocab_size=1200, num_threads=2, mined_commands=100, chat_template="megasci-v1")
    report = train_sentencepiece(docs, str(out / "chat.model"), cfg)
    return report, load_tokenizer(str(out / "chat.model")), str(out / "chat.model")


def conversation(rng, system: bool, turns: int):
    pool = [
        ">= starts here",
        "|> odd start",
        "ends with <",
        "ends with <|",
        "\nleading newline",
        "trailing newline\n",
        "  two spaces",
        "tab\tand $\\frac{a}{b} >= 0$",
        "Schrödinger’s ∂Ω",
        "x <end> y",
        "plain words only",
        "\n\n\nnewlines\n\n",
        "> quote",
        "a|b|c",
        "{<}",
        "\\begin{equation} a<b \\end{equation}",
    ]
    messages = [{"role": "system", "content": rng.choice(pool)}] if system else []
    for _ in range(turns):
        messages.append({"role": "user", "content": rng.choice(pool) + " " + rng.choice(pool)})
        messages.append({"role": "assistant", "content": rng.choice(pool) + rng.choice(pool)})
    return messages


def test_markers_are_single_tokens_and_edge_crossing_pieces_are_unused(chat_tokenizer):
    report, tok, _ = chat_tokenizer
    assert tok.chat_template == TEMPLATE
    for marker in TEMPLATE.markers:
        assert len(tok.encode(marker)) == 1
        assert tok.pieces("x" + marker + ">") == tok.pieces("x") + [marker] + tok.pieces(">")
    assert report.pieces_unused_for_chat, "the edgy corpus should have taught pieces that cross a marker's edge"
    for piece in report.pieces_unused_for_chat:
        assert any(crosses_a_marker(piece, m) for m in TEMPLATE.markers)
    assert "chat_template" in tok.identity() and tok.identity()["chat_template"]["name"] == "megasci-v1"


def test_crossing_rule_by_hand():
    marker = "<|end|>"
    assert crosses_a_marker("a<", marker) and crosses_a_marker(">=", marker) and crosses_a_marker("|>>", marker)
    assert crosses_a_marker("x<|end|>y", marker) and crosses_a_marker("d|>.", marker)
    assert not crosses_a_marker("<", marker) and not crosses_a_marker("|end|", marker)
    assert not crosses_a_marker(marker, marker) and not crosses_a_marker("abc", marker)


def test_loss_mask_scores_exactly_the_assistant_tokens(chat_tokenizer):
    _, tok, _ = chat_tokenizer
    messages = [
        {"role": "system", "content": "You answer in LaTeX."},
        {"role": "user", "content": "Integrate $x$."},
        {"role": "assistant", "content": "$\\frac{x^2}{2} + C$"},
        {"role": "user", "content": "And $1$?"},
        {"role": "assistant", "content": "$x + C$"},
    ]
    ids, mask = tok.chat_template.bind(tok).encode(messages)
    # By hand: each turn is [role marker] + content tokens + [end]; assistant content and its end are scored.
    m = {marker: tok.encode(marker)[0] for marker in TEMPLATE.markers}
    want_ids, want_mask = [], []
    for msg, role_marker, scored in [
        (messages[0], "<|system|>", 0),
        (messages[1], "<|user|>", 0),
        (messages[2], "<|assistant|>", 1),
        (messages[3], "<|user|>", 0),
        (messages[4], "<|assistant|>", 1),
    ]:
        content = tok.encode(msg["content"])
        want_ids += [m[role_marker]] + content + [m["<|end|>"]]
        want_mask += [0] + [scored] * len(content) + [scored]
    assert ids.tolist() == want_ids and mask.tolist() == want_mask
    assert len(ids) == len(mask) and mask.dtype == np.uint8
    assert tok.decode(ids[mask == 1]) == "$\\frac{x^2}{2} + C$<|end|>$x + C$<|end|>"
    assert tok.decode(ids[mask == 0]) == (
        "<|system|>You answer in LaTeX.<|end|><|user|>Integrate $x$.<|end|>"
        "<|assistant|><|user|>And $1$?<|end|><|assistant|>"
    )


def test_whole_string_encoding_equals_turn_by_turn(chat_tokenizer):
    _, tok, _ = chat_tokenizer
    encoder = tok.chat_template.bind(tok)
    rng = random.Random(5)
    for i in range(200):
        messages = conversation(rng, system=i % 2 == 0, turns=1 + i % 3)
        for prompt in (False, True):
            ids, _ = encoder.encode(messages, add_generation_prompt=prompt)
            assert tok.encode(TEMPLATE.render(messages, add_generation_prompt=prompt)) == ids.tolist()


def test_transformers_apply_chat_template_gives_our_ids(chat_tokenizer):
    pytest.importorskip("transformers")
    from transformers import PreTrainedTokenizerFast

    from megasci.export_hf import sentencepiece_to_tokenizers

    _, tok, path = chat_tokenizer
    hf = PreTrainedTokenizerFast(tokenizer_object=sentencepiece_to_tokenizers(path))
    hf.chat_template = tok.identity()["chat_template"]["jinja"]
    encoder = tok.chat_template.bind(tok)
    rng = random.Random(6)
    cases = [conversation(rng, system=s, turns=t) for s in (False, True) for t in (1, 2, 3) for _ in range(5)]
    for messages in cases:
        for prompt in (False, True):
            history = messages[:-1] if prompt else messages  # a prompt follows a user turn
            out = hf.apply_chat_template(history, tokenize=True, add_generation_prompt=prompt)
            hf_ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
            assert hf_ids == encoder.encode(history, add_generation_prompt=prompt)[0].tolist()
            assert hf.apply_chat_template(history, tokenize=False, add_generation_prompt=prompt) == TEMPLATE.render(
                history, add_generation_prompt=prompt
            )
    with pytest.raises(Exception, match="unknown chat role"):
        hf.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize(
    "messages, kind",
    [
        ({"role": "user"}, "not_a_list"),
        ([], "empty_conversation"),
        (["hello"], "bad_turn"),
        ([{"content": "hi"}, {"role": "assistant", "content": "a"}], "missing_role"),
        ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "a"}], "unknown_role"),
        ([{"role": "user"}, {"role": "assistant", "content": "a"}], "missing_content"),
        ([{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "a"}], "non_string_content"),
        ([{"role": "user", "content": " \n"}, {"role": "assistant", "content": "a"}], "empty_turn"),
        ([{"role": "user", "content": "hi <|end|>"}, {"role": "assistant", "content": "a"}], "marker_in_content"),
        ([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "no_assistant_turn"),
    ],
)
def test_malformed_conversations_name_their_reason(messages, kind):
    with pytest.raises(ChatFormatError) as caught:
        TEMPLATE.check(messages)
    assert caught.value.kind == kind


def test_template_round_trips_through_the_meta_and_rejects_a_changed_jinja(chat_tokenizer, tmp_path):
    _, _, path = chat_tokenizer
    with open(path[: -len(".model")] + ".meta.json", encoding="utf-8") as f:
        meta = json.load(f)
    assert ChatTemplate.from_meta(meta["chat_template"]) == TEMPLATE
    assert meta["chat_template"]["jinja"] == TEMPLATE.jinja()
    tampered = dict(meta["chat_template"], jinja=TEMPLATE.jinja().replace("<|end|>", "</s>"))
    with pytest.raises(ValueError, match="stored Jinja differs"):
        ChatTemplate.from_meta(tampered)
    assert set(CHAT_TEMPLATES) == {"megasci-v1"}
    with pytest.raises(ValueError, match="unknown chat template"):
        get_chat_template("chatml-v0")


def test_default_tokenizer_has_no_template_and_no_markers(tmp_path):
    docs = [p["text"] for p in generate_papers(20, seed=22)]
    train_sentencepiece(docs, str(tmp_path / "plain.model"), SentencePieceTrainConfig(vocab_size=600, num_threads=1))
    tok = load_tokenizer(str(tmp_path / "plain.model"))
    assert tok.chat_template is None and "chat_template" not in tok.identity()
    with open(tmp_path / "plain.meta.json", encoding="utf-8") as f:
        assert "chat_template" not in json.load(f)
    assert all(len(tok.encode(m)) > 1 for m in TEMPLATE.markers)
    with pytest.raises(ValueError, match="is .* tokens, not one"):
        TEMPLATE.bind(tok)


def test_bpe_with_a_chat_template_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a unigram model"):
        train_sentencepiece(
            ["some text"],
            str(tmp_path / "b.model"),
            SentencePieceTrainConfig(vocab_size=100, model_type="bpe", chat_template="megasci-v1"),
        )


def test_train_tokenizer_tool_chat_template_option(tmp_path, run_tool, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": p["text"]}) + "\n" for p in generate_papers(20, seed=23)))
    assert (
        run_tool(
            "train_tokenizer.py",
            [
                "--input",
                str(corpus),
                "--output",
                str(tmp_path / "t"),
                "--vocab-size",
                "600",
                "--num-threads",
                "1",
                "--chat-template",
                "megasci-v1",
            ],
        )
        == 0
    )
    assert "chat template megasci-v1: markers are single tokens" in capsys.readouterr().out
    tok = load_tokenizer(str(tmp_path / "t.model"))
    assert tok.chat_template == TEMPLATE
