"""The LaTeX reading rules that several corpus stages apply, each written once.

Archive sniffing, assembly, cleaning, macro expansion and section tagging all need some of TeX's
rules: which `%` starts a comment, where the document body begins, which environments are math,
where a `{` group ends. Two copies of one rule drift apart (the math list once differed between
cleaning and tagging), so every stage reads them from here.
"""

from __future__ import annotations

import re

TEX_SUFFIXES = (".tex", ".ltx", ".latex")

# TeX's escape rule: a backslash and the character after it are read as one token, so `\%` is a
# literal percent and `\\` a line break; every other `%` starts a comment to the end of the line.
ESCAPED_PAIR = r"\\[\\%]"
LINE_COMMENT = r"%[^\n]*"
_COMMENT_SCAN = re.compile(f"{ESCAPED_PAIR}|{LINE_COMMENT}")

DOCUMENT_CLASS = re.compile(r"\\document(?:class|style)(?![A-Za-z@])")
BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")
END_DOCUMENT = re.compile(r"\\end\s*\{document\}")

# Display and inline math environments (each also starred). `dmath` is breqn's display equation.
MATH_ENVIRONMENTS = (
    "equation",
    "align",
    "alignat",
    "gather",
    "multline",
    "eqnarray",
    "flalign",
    "displaymath",
    "math",
    "dmath",
)
MATH_ENVIRONMENT_PATTERN = "|".join(MATH_ENVIRONMENTS)

# The cleaner hides verbatim and math spans behind these private-use characters, "\ue000<n>\ue001"
# and "\ue002<n>\ue003"; the reading rules below take each placeholder as one opaque token.
PROTECT_OPEN, PROTECT_CLOSE, MATH_OPEN, MATH_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
PLACEHOLDER_CHARS = re.compile("[\ue000-\ue003]")

# A control word (letters and @, as in a package's internals) or a control symbol.
CONTROL_SEQUENCE = re.compile("\\\\([a-zA-Z@]+|[^a-zA-Z@\ue000-\ue003])")
# Every branch starts with a literal, so that the scan skips to the next candidate character in C.
_BRACE = re.compile(r"\\[{}\\]|\{|\}")
_SPACE = re.compile(r"[ \t\n]*")


def code_part(line: str) -> str:
    """What TeX executes on a line: the text before its comment."""
    if "%" not in line:
        return line
    for m in _COMMENT_SCAN.finditer(line):
        if m.group()[0] == "%":
            return line[: m.start()]
    return line


def closing_brace(text: str, open_pos: int, limit: int = 100_000) -> int:
    """Index of the ``}`` matching the ``{`` at ``open_pos`` (escaped braces skipped), or -1.

    The search stops after ``limit`` characters, so unbalanced braces cannot make a pass quadratic.
    """
    depth = 0
    for m in _BRACE.finditer(text, open_pos, open_pos + limit):
        char = m.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def braced(text: str, i: int) -> tuple[str, int] | None:
    """(content, index after ``}``) of the group starting at ``i``; None when none starts there."""
    if i >= len(text) or text[i] != "{":
        return None
    close = closing_brace(text, i)
    return None if close < 0 else (text[i + 1 : close], close + 1)


def bracketed(text: str, i: int) -> tuple[str, int] | None:
    """(content, end) of ``[…]`` at ``i``; a ``]`` inside braces does not close it."""
    if i >= len(text) or text[i] != "[":
        return None
    depth = 0
    for k in range(i + 1, min(len(text), i + 2000)):
        char = text[k]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "]" and depth <= 0:
            return text[i + 1 : k], k + 1
    return None


def skip_space(text: str, i: int) -> int:
    """Index of the first character at or after ``i`` that is not a space, tab or newline."""
    return _SPACE.match(text, i).end()


def csname(text: str, i: int) -> tuple[str, int] | None:
    """Name of ``\\name`` or ``{\\name}`` at ``i`` (as in ``\\newcommand\\x`` / ``{\\x}``)."""
    group = braced(text, i)
    if group is not None:
        m = CONTROL_SEQUENCE.fullmatch(group[0].strip())
        return (m.group(1), group[1]) if m else None
    m = CONTROL_SEQUENCE.match(text, i)
    return (m.group(1), m.end()) if m else None
