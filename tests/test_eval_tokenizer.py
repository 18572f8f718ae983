"""Tokenizer evaluation: LaTeX fragment extraction, metrics against hand-computed values, and the CLI."""

import importlib.util
import json
import os
import random
import shutil

import pytest

from megasci.tokenizer import SentencePieceTrainConfig, train_sentencepiece
from megasci.tokenizer.base import Tokenizer
from megasci.tokenizer.evaluate import evaluate_tokenizers, extract_fragments, format_table

TOOL = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "eval_tokenizer.py")


def load_tool():
    spec = importlib.util.spec_from_file_location("eval_tokenizer_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CharTokenizer(Tokenizer):
    """One token per character, so every metric is a character count; non-ASCII is unknown."""

    name = "chars"
    unk_id = 0

    def __init__(self):
        self.encoded: list[str] = []

    @property
    def vocab_size(self):
        return 128

    @property
    def bos_id(self):
        return None

    @property
    def eos_id(self):
        return None

    @property
    def pad_id(self):
        return None

    def encode(self, text):
        self.encoded.append(text)
        return [ord(c) if ord(c) < 128 else self.unk_id for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def id_to_piece(self, token_id):
        return chr(token_id)


# --- fragment extraction ---------------------------------------------------------------------------


def test_escaped_dollars_are_not_delimiters():
    found = extract_fragments(r"costs \$5 and \$6, while $a+b$ is math and $\$ 7$ is too")
    assert found.inline_math == ["$a+b$", r"$\$ 7$"]
    assert found.display_math == []
    assert found.commands == []  # `\$` is an escape, not a command


def test_double_dollar_is_display_not_two_inline_spans():
    found = extract_fragments(r"$$E = mc^2$$ and $p$ then $$\int_0^1 f$$")
    assert found.display_math == ["$$E = mc^2$$", r"$$\int_0^1 f$$"]
    assert found.inline_math == ["$p$"]
    assert found.commands == [r"\int"]


def test_brackets_parens_and_nested_braces():
    text = r"By \(x_{i}\) we get \[ \frac{\sqrt{a_{1}}}{b^{2}} \] and \\[2pt] is a line break."
    found = extract_fragments(text)
    assert found.inline_math == [r"\(x_{i}\)"]
    assert found.display_math == [r"\[ \frac{\sqrt{a_{1}}}{b^{2}} \]"]
    assert found.commands == [r"\frac", r"\sqrt"]


def test_environments_swallow_their_inner_math():
    text = (
        "\\begin{align*}\n  a &= \\text{$y$ if $z$} \\\\[2pt]\n  b &= \\frac{1}{2}\n\\end{align*}\n"
        "\\begin{itemize}\\item $q$\\end{itemize}\n"
        "\\begin{equation}\\label{eq:1} E \\end{equation} \\begin{gather}g\\end{gather}\n"
        "\\begin{multline*}m\\end{multline*} \\begin{eqnarray}e\\end{eqnarray} "
        "\\begin{displaymath}d\\end{displaymath}"
    )
    found = extract_fragments(text)
    assert found.display_math == [
        "\\begin{align*}\n  a &= \\text{$y$ if $z$} \\\\[2pt]\n  b &= \\frac{1}{2}\n\\end{align*}",
        "\\begin{equation}\\label{eq:1} E \\end{equation}",
        "\\begin{gather}g\\end{gather}",
        "\\begin{multline*}m\\end{multline*}",
        "\\begin{eqnarray}e\\end{eqnarray}",
        "\\begin{displaymath}d\\end{displaymath}",
    ]
    assert found.inline_math == ["$q$"]  # itemize is not math; `$y$`, `$z$` belong to the align*
    assert found.commands.count(r"\begin") == 7 and found.commands.count(r"\end") == 7
    assert len(found.commands) == 7 + 7 + 4
    assert sorted(set(found.commands) - {r"\begin", r"\end"}) == [r"\frac", r"\item", r"\label", r"\text"]


def test_blank_lines_comments_and_line_breaks():
    text = "a $ b\n\nc $d$ x % a price of 5$\n$y$ \\\\section{S} $u\nv$"
    found = extract_fragments(text)
    assert found.inline_math == ["$d$", "$y$", "$u\nv$"]  # one newline may sit inside inline math
    assert found.commands == []  # `\\section` is a line break followed by text


# --- metrics ---------------------------------------------------------------------------------------

DOCS = [
    r"Let $x$ be \emph{new}.",  # 22 chars; \emph (5); $x$ (3)
    # 41 chars; \alpha (6), \emph (5); $x$ (3); \[ \alpha \] (12); 1 unknown
    "\\[ \\alpha \\]\nCost \\$5 for \\emph{caf\u00e9} $x$",
]


def test_metrics_match_hand_computed_values():
    (stats,) = evaluate_tokenizers([CharTokenizer()], DOCS)
    assert len(DOCS[0]) == 22 and len(DOCS[1]) == 41
    assert stats.name == "chars" and stats.vocab_size == 128 and stats.documents == 2
    assert stats.characters == stats.tokens == 63
    assert stats.tokens_per_document == 31.5
    assert stats.chars_per_token == 1.0
    assert stats.commands == 3 and stats.tokens_per_command == pytest.approx((5 + 6 + 5) / 3)
    assert stats.inline_math_spans == 2 and stats.tokens_per_inline_math == 3.0
    assert stats.display_math_spans == 1 and stats.tokens_per_display_math == 12.0
    assert stats.unknown_token_rate == pytest.approx(1 / 63)


def test_each_distinct_fragment_is_encoded_once_and_missing_ones_give_none():
    tokenizer = CharTokenizer()
    documents = [r"\emph{a} $x$ \emph{b}", r"$x$ \emph{c}"]
    (stats,) = evaluate_tokenizers([tokenizer], documents)
    fragment_calls = tokenizer.encoded[len(documents) :]
    assert sorted(fragment_calls) == sorted([r"\emph", "$x$"])
    assert stats.commands == 3 and stats.inline_math_spans == 2
    assert stats.tokens_per_display_math is None and stats.display_math_spans == 0


def test_unknown_rate_is_none_without_unk_id_and_no_documents_is_an_error():
    class NoUnk(CharTokenizer):
        unk_id = None

    (stats,) = evaluate_tokenizers([NoUnk()], DOCS)
    assert stats.unknown_token_rate is None
    with pytest.raises(ValueError):
        evaluate_tokenizers([CharTokenizer()], [])


def test_format_table_is_aligned_with_one_column_per_tokenizer():
    class Other(CharTokenizer):
        name = "a-much-longer-tokenizer-name"
        unk_id = None

    table = format_table(evaluate_tokenizers([CharTokenizer(), Other()], DOCS))
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "chars", "a-much-longer-tokenizer-name"]
    assert len({len(line) for line in lines}) == 1  # every cell is padded, so columns line up
    rows = {line[: line.index("  ")]: line.split()[-2:] for line in lines[2:]}
    assert rows["tokens / \\command"] == ["5.33", "5.33"]
    assert rows["unknown-token rate"] == ["1.5873%", "-"]
    assert rows["characters"] == ["63", "63"]


# --- CLI with trained SentencePiece models ---------------------------------------------------------


def latex_corpus(count: int, seed: int) -> list[str]:
    """Pseudo-words plus inline and display math: varied enough for a few hundred learned pieces."""
    rng = random.Random(seed)
    syllables = "ta ke ri mo na lu pe si vo gra the ion ent al ex pro con ver".split()
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    math = [r"\alpha", r"\beta", r"\sum_{i}", r"\int", r"\frac{a}{b}", r"\sqrt{x}", r"\mathbb{R}", r"\partial", r"\leq"]
    documents = []
    for _ in range(count):
        parts = [r"\section{" + rng.choice(words).title() + "}"]
        for _ in range(rng.randint(3, 8)):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
            parts.append(f"{sentence} ${rng.choice(math)} + x_{rng.randint(0, 9)}$ {rng.choice(words)}.")
            if rng.random() < 0.5:
                body = " ".join(rng.choice(math) for _ in range(4))
                parts.append(f"\\begin{{equation}}\n{body} = {rng.randint(0, 999)}\n\\end{{equation}}")
            if rng.random() < 0.3:
                parts.append(f"\\[ {rng.choice(math)} \\leq {rng.choice(math)} \\]")
        documents.append("\n".join(parts))
    return documents


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    corpus = latex_corpus(200, seed=0)
    paths = {}
    for label, vocab_size in (("small", 350), ("large", 700)):
        paths[label] = str(root / f"{label}.model")
        train_sentencepiece(
            corpus, paths[label], SentencePieceTrainConfig(vocab_size=vocab_size, num_threads=1, mined_commands=10)
        )
    return paths


@pytest.fixture(scope="module")
def eval_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "eval.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for text in latex_corpus(30, seed=1):
            f.write(json.dumps({"text": text}) + "\n")
        f.write("not json\n")
    return str(path)


def test_cli_larger_vocabulary_needs_fewer_tokens(models, eval_jsonl, tmp_path, capsys):
    out_json = tmp_path / "stats.json"
    rc = load_tool().main(
        ["--tokenizers", models["small"], models["large"], "--input", eval_jsonl, "--output-json", str(out_json)]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "small.model" in table and "large.model" in table and "tokens / display math" in table
    small, large = json.loads(out_json.read_text())
    assert (small["vocab_size"], large["vocab_size"]) == (350, 700)
    assert small["documents"] == large["documents"] == 30
    assert large["tokens"] < small["tokens"]
    assert large["tokens_per_display_math"] <= small["tokens_per_display_math"]  # mostly mined commands either way
    assert small["display_math_spans"] > 0 and small["inline_math_spans"] > 0 and small["commands"] > 0
    assert small["unknown_token_rate"] == 0.0  # byte fallback: never an unknown token


def test_cli_max_documents_and_same_named_tokenizers(models, eval_jsonl, tmp_path, capsys):
    directories = []
    for label in ("a", "b"):
        directory = tmp_path / label
        directory.mkdir()
        shutil.copy(models["small"], directory / "tokenizer.model")
        directories.append(str(directory))
    out_json = tmp_path / "stats.json"
    rc = load_tool().main(
        [
            "--tokenizers",
            *directories,
            "--input",
            os.path.join(os.path.dirname(eval_jsonl), "*.jsonl"),
            "--max-documents",
            "5",
            "--output-json",
            str(out_json),
        ]
    )
    assert rc == 0
    rows = json.loads(out_json.read_text())
    assert [row["name"] for row in rows] == directories  # identical file names fall back to the paths given
    assert all(row["documents"] == 5 for row in rows)
    assert rows[0]["tokens"] == rows[1]["tokens"]


def test_cli_errors_go_to_stderr(models, eval_jsonl, tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["--tokenizers", models["small"], "--input", str(tmp_path / "missing.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert tool.main(["--tokenizers", str(tmp_path / "missing.model"), "--input", eval_jsonl]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert tool.main(["--tokenizers", models["small"], "--input", str(empty)]) == 1
    assert "no documents" in capsys.readouterr().err
