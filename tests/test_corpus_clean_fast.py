"""Fast paths of cleaning, section tagging and assembly against the slow, obviously correct code they replaced.

Each reference below is the code the fast path replaced, kept here verbatim; random texts drawn from
the characters the rules care about (and a few that merely look alike) must give identical output.
"""

import bisect
import posixpath
import random
import re
from collections import Counter, defaultdict

import pytest

from megasci.corpus import assemble, clean, sections
from megasci.corpus.assemble import ENDINPUT_LINE_RE, INCLUSION_RE
from megasci.corpus.latex import MATH_ENVIRONMENT_PATTERN, code_part
from megasci.corpus.package import SourcePackage

# Characters that start, end or sit inside the rules' spans, plus Unicode letters, digits and spaces.
_ALPHABET = list("ab eEmMaAiIlLsSx.,:;+-_{}\\@$()[]\n\t#%~'\"") + [
    "\u00e9",
    "\u017f",
    "\u212a",
    "\u00a0",
    "1",
    "\u0301",
    "\u2028",
    "\ue002",
]
_WORDS = [
    "E-mail: ",
    "email address ",
    "Electronic mail: ",
    "emails:",
    "a.b@c.org",
    "{x,y}@uni-a.de",
    "\\{p\\}@q.eu",
    "@",
    "@x",
    "@host.c",
    " and ",
    "x@y.z",
    "foo+bar@b-c.co.uk",
    "\\makeatletter",
    "\\@ifnextchar",
]


def _random_text(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(_WORDS) if rng.random() < 0.25 else rng.choice(_ALPHABET) for _ in range(size))


def _remove_emails_reference(text: str, stats: Counter) -> str:
    if "@" not in text:
        return text
    text, count = clean._EMAIL.subn("", text)
    stats["emails_removed"] += count
    return text


@pytest.mark.parametrize("seed", range(4))
def test_remove_emails_matches_one_scan_of_the_whole_text(seed):
    rng = random.Random(seed)
    for _ in range(500):
        text = _random_text(rng, rng.randrange(0, 80))
        fast, slow = Counter(), Counter()
        assert clean.remove_emails(text, fast) == _remove_emails_reference(text, slow), text
        assert fast == slow and list(fast) == list(slow)


_MATH_TOKEN_REFERENCE = re.compile(
    r"""
  \\begin\{(?:ENVS)\*?\} | \\end\{(?:ENVS)\*?\}
| \\[()\[\]] | \\[\\$] | \$\$ | \$
| \n[ \t]*\n
""".replace("ENVS", MATH_ENVIRONMENT_PATTERN),
    re.X,
)


def _math_spans_reference(text: str) -> list[tuple[int, int]]:
    tokens = [(m.start(), m.end(), m.group()) for m in _MATH_TOKEN_REFERENCE.finditer(text)]
    paragraph_of, positions, paragraph = [], defaultdict(list), 0
    for k, (_, _, token) in enumerate(tokens):
        paragraph += token[0] == "\n"
        paragraph_of.append(paragraph)
        positions[token].append(k)
    spans, k = [], 0
    while k < len(tokens):
        closer = sections._closer(tokens[k][2])
        if closer:
            candidates = positions.get(closer, [])
            j = bisect.bisect_right(candidates, k)
            if j < len(candidates) and paragraph_of[candidates[j]] == paragraph_of[k]:
                spans.append((tokens[k][0], tokens[candidates[j]][1]))
                k = candidates[j]
        k += 1
    return spans


_MATH_PIECES = [
    "$",
    "$$",
    "\\$",
    "\\\\",
    "\\(",
    "\\)",
    "\\[",
    "\\]",
    "\\begin{equation}",
    "\\end{equation}",
    "\\begin{align*}",
    "\\end{align*}",
    "\\end{align}",
    "\\begin{alignat}",
    "\\end{alignat}",
    "\n",
    "\n\n",
    "\n \t\n",
    " ",
    "x",
    "\\",
    "{",
    "}",
    "(",
    "[",
]


@pytest.mark.parametrize("seed", range(4))
def test_math_spans_match_the_token_by_token_reference(seed):
    rng = random.Random(seed)
    for _ in range(1000):
        text = "".join(rng.choice(_MATH_PIECES) for _ in range(rng.randrange(0, 40)))
        assert sections.math_spans(text) == _math_spans_reference(text), text


def _references_reference(self, path):
    folder = posixpath.dirname(path)
    found = set()
    for line in self.text_of(path).split("\n"):
        for match in INCLUSION_RE.finditer(code_part(line)):
            name = assemble._argument(match)
            if match.group("import"):
                name = posixpath.join(match.group("dir"), name)
            target = self.resolve(name, [folder])
            if target not in (None, assemble.OUTSIDE):
                found.add(target)
    return found


def _expand_reference(self, path, base_dir, ancestors):
    out_lines = []
    file_dir = posixpath.dirname(path)
    for line in self.text_of(path).split("\n"):
        code = code_part(line)
        if "\\" not in code:
            out_lines.append(line)
            continue
        expanded = self.expand_line(line, code, base_dir, file_dir, ancestors)
        if expanded is not None:
            out_lines.append(expanded)
        if ENDINPUT_LINE_RE.fullmatch(code):
            break
    return "\n".join(out_lines)


_SOURCE_PIECES = [
    "\\input{a}",
    "\\input b",
    "\\include{b}",
    "\\subfile{a}",
    "\\import{d/}{c}",
    "\\subimport{d/}{c}",
    "\\endinput",
    " \\endinput ",
    "input",
    "include",
    "\\inputencoding",
    "%",
    "\\%",
    "\\\\",
    "x",
    " ",
    "\n",
    "\n",
    "\\input{a.bbl}",
    "\\input{/abs}",
    "\\input{missing}",
    "\\begin{document}",
    "é",
]


@pytest.mark.parametrize("seed", range(3))
def test_assembly_reads_only_the_lines_with_inclusion_words_as_the_line_by_line_loop_did(seed, monkeypatch):
    rng = random.Random(seed)

    def source() -> bytes:
        return "".join(rng.choice(_SOURCE_PIECES) for _ in range(rng.randrange(0, 30))).encode()

    for _ in range(300):
        files = {
            "main.tex": b"\\documentclass{article}\n" + source(),
            "a.tex": source(),
            "b.tex": source(),
            "d/c.tex": source(),
            "a.bbl": b"x",
        }
        if rng.random() < 0.3:
            files["other.tex"] = b"\\documentclass{article}\n" + source()
        package = SourcePackage(paper_id="2301.00001", source="test", files=files)
        fast = assemble.assemble(package)
        with monkeypatch.context() as patched:
            patched.setattr(assemble._Assembler, "expand", _expand_reference)
            patched.setattr(assemble._Assembler, "references", _references_reference)
            slow = assemble.assemble(package)
        assert fast == slow, files
