"""Tokenizer evaluation for LaTeX: how many tokens documents, commands and equations cost.

Fragments are found with regular expressions, not a TeX parser, so the numbers are estimates that
are cheap to compute on a large sample and identical for every tokenizer compared.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from megasci.tokenizer.base import Tokenizer

DISPLAY_ENVIRONMENTS = (
    "equation",
    "equation*",
    "align",
    "align*",
    "gather",
    "gather*",
    "multline",
    "multline*",
    "eqnarray",
    "eqnarray*",
    "displaymath",
)
_ENV_NAMES = "|".join(re.escape(env) for env in DISPLAY_ENVIRONMENTS)

# One left-to-right scan; at each position the first alternative that matches wins and its text is
# consumed, so a display span is never also read as inline math and `\$` (eaten by `escape`) never
# opens or closes math. `\\[2pt]` is a line break then `[`, not display math, for the same reason.
# Comments are skipped so a stray `$` in them cannot pair with a real delimiter.
_MATH_SCAN = re.compile(
    rf"(?P<environment>\\begin\{{(?P<env>{_ENV_NAMES})\}}[\s\S]*?\\end\{{(?P=env)\}})"
    r"|(?P<double_dollar>\$\$(?:[^$\\]|\\[\s\S])+\$\$)"
    r"|(?P<bracket>\\\[(?:[^\\]|\\[^\]])*\\\])"
    r"|(?P<paren>\\\((?:[^\\]|\\[^)])*\\\))"
    r"|(?P<dollar>\$(?:[^$\\\n]|\\[\s\S]|\n(?![ \t]*\n))+\$)"  # a blank line ends a paragraph, so no math crosses it
    r"|(?P<escape>\\[\s\S])"
    r"|(?P<comment>%[^\n]*)"
)
_DISPLAY_GROUPS = ("environment", "double_dollar", "bracket")
_INLINE_GROUPS = ("paren", "dollar")
# Control sequences and escapes are consumed in pairs, so `\\section` is a line break then text.
_CONTROL_SEQUENCE = re.compile(r"\\(?:(?P<command>[A-Za-z]+)|[\s\S])")


@dataclass
class LatexFragments:
    """The fragments of one document, in document order, delimiters included."""

    commands: list[str] = field(default_factory=list)
    inline_math: list[str] = field(default_factory=list)
    display_math: list[str] = field(default_factory=list)


def extract_fragments(text: str) -> LatexFragments:
    """Find `\\commands` (everywhere, math included), inline math (`$...$`, `\\(...\\)`) and display
    math (`$$...$$`, `\\[...\\]`, `\\begin{ENV}...\\end{ENV}` for ENV in DISPLAY_ENVIRONMENTS)."""
    found = LatexFragments()
    found.commands = [m.group(0) for m in _CONTROL_SEQUENCE.finditer(text) if m.group("command")]
    for match in _MATH_SCAN.finditer(text):
        if match.lastgroup in _DISPLAY_GROUPS:
            found.display_math.append(match.group(0))
        elif match.lastgroup in _INLINE_GROUPS:
            found.inline_math.append(match.group(0))
    return found


@dataclass
class TokenizerStats:
    name: str
    vocab_size: int
    documents: int
    characters: int
    tokens: int
    tokens_per_document: float
    chars_per_token: float
    tokens_per_command: float | None
    tokens_per_inline_math: float | None
    tokens_per_display_math: float | None
    commands: int
    inline_math_spans: int
    display_math_spans: int
    unknown_token_rate: float | None


def _mean_tokens(tokenizer: Tokenizer, fragments: Counter, batch_size: int) -> float | None:
    """Mean over occurrences, but each distinct fragment is encoded only once."""
    total = sum(fragments.values())
    if total == 0:
        return None
    distinct = list(fragments)
    tokens = 0
    for start in range(0, len(distinct), batch_size):
        batch = distinct[start : start + batch_size]
        tokens += sum(len(ids) * fragments[text] for text, ids in zip(batch, tokenizer.encode_batch(batch)))
    return tokens / total


def evaluate_tokenizers(
    tokenizers: list[Tokenizer], documents: list[str], batch_size: int = 256
) -> list[TokenizerStats]:
    """One stats row per tokenizer, all measured on the same documents and the same fragments.

    Whole documents are encoded as they are. Commands and math spans are encoded out of context,
    each on its own with its delimiters, which isolates how well the vocabulary covers LaTeX but
    can differ by a token or so from the same text inside a document (merges across its edges).
    The unknown-token rate needs an `unk_id` attribute on the tokenizer; without one it is None.
    """
    if not documents:
        raise ValueError("no documents to evaluate on")
    commands, inline_math, display_math = Counter(), Counter(), Counter()
    for text in documents:
        found = extract_fragments(text)
        commands.update(found.commands)
        inline_math.update(found.inline_math)
        display_math.update(found.display_math)
    characters = sum(len(text) for text in documents)
    rows = []
    for tokenizer in tokenizers:
        unk_id = getattr(tokenizer, "unk_id", None)
        tokens = unknown = 0
        for start in range(0, len(documents), batch_size):
            for ids in tokenizer.encode_batch(documents[start : start + batch_size]):
                tokens += len(ids)
                if unk_id is not None:
                    unknown += sum(1 for i in ids if i == unk_id)
        rows.append(
            TokenizerStats(
                name=tokenizer.name,
                vocab_size=tokenizer.vocab_size,
                documents=len(documents),
                characters=characters,
                tokens=tokens,
                tokens_per_document=tokens / len(documents),
                chars_per_token=characters / tokens if tokens else 0.0,
                tokens_per_command=_mean_tokens(tokenizer, commands, batch_size),
                tokens_per_inline_math=_mean_tokens(tokenizer, inline_math, batch_size),
                tokens_per_display_math=_mean_tokens(tokenizer, display_math, batch_size),
                commands=sum(commands.values()),
                inline_math_spans=sum(inline_math.values()),
                display_math_spans=sum(display_math.values()),
                unknown_token_rate=(unknown / tokens if tokens else 0.0) if unk_id is not None else None,
            )
        )
    return rows


_TABLE_ROWS = (
    ("vocabulary size", "vocab_size"),
    ("documents", "documents"),
    ("characters", "characters"),
    ("tokens", "tokens"),
    ("tokens / document", "tokens_per_document"),
    ("characters / token", "chars_per_token"),
    ("tokens / \\command", "tokens_per_command"),
    ("tokens / inline math", "tokens_per_inline_math"),
    ("tokens / display math", "tokens_per_display_math"),
    ("\\commands", "commands"),
    ("inline math spans", "inline_math_spans"),
    ("display math spans", "display_math_spans"),
    ("unknown-token rate", "unknown_token_rate"),
)


def _format_value(attribute: str, value) -> str:
    if value is None:
        return "-"
    if attribute == "unknown_token_rate":
        return f"{value:.4%}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.2f}"


def format_table(stats: list[TokenizerStats]) -> str:
    """Metrics down, tokenizers across, numbers right-aligned so columns compare at a glance."""
    header = ["metric"] + [row.name for row in stats]
    body = [[label] + [_format_value(attr, getattr(row, attr)) for row in stats] for label, attr in _TABLE_ROWS]
    widths = [max(len(line[col]) for line in [header] + body) for col in range(len(header))]

    def render(line: list[str]) -> str:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule] + [render(line) for line in body])
