"""The cleaner's and section tagger's fast paths against the slow, obviously correct forms they replace.

Each reference below is the code the fast path replaced, kept here verbatim; random texts drawn from
the characters the rules care about (and a few that merely look alike) must give identical output.
"""

import bisect
import random
import re
from collections import Counter, defaultdict

import pytest

from megasci.corpus import clean, sections
from megasci.corpus.latex import MATH_ENVIRONMENT_PATTERN

# Characters that start, end or sit inside the rules' spans, plus Unicode letters, digits and spaces.
_ALPHABET = list("ab eEmMaAiIlLsSx.,:;+-_{}\\@$()[]\n\t#%~'\"") + ["\u00e9", "\u017f", "\u212a", "\u00a0", "1",
                                                                   "\u0301", "\u2028", "\ue002"]
_WORDS = ["E-mail: ", "email address ", "Electronic mail: ", "emails:", "a.b@c.org", "{x,y}@uni-a.de", "\\{p\\}@q.eu",
          "@", "@x", "@host.c", " and ", "x@y.z", "foo+bar@b-c.co.uk", "\\makeatletter", "\\@ifnextchar"]


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


_MATH_TOKEN_REFERENCE = re.compile(r"""
  \\begin\{(?:ENVS)\*?\} | \\end\{(?:ENVS)\*?\}
| \\[()\[\]] | \\[\\$] | \$\$ | \$
| \n[ \t]*\n
""".replace("ENVS", MATH_ENVIRONMENT_PATTERN), re.X)


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


_MATH_PIECES = ["$", "$$", "\\$", "\\\\", "\\(", "\\)", "\\[", "\\]", "\\begin{equation}", "\\end{equation}",
                "\\begin{align*}", "\\end{align*}", "\\end{align}", "\\begin{alignat}", "\\end{alignat}", "\n",
                "\n\n", "\n \t\n", " ", "x", "\\", "{", "}", "(", "["]


@pytest.mark.parametrize("seed", range(4))
def test_math_spans_match_the_token_by_token_reference(seed):
    rng = random.Random(seed)
    for _ in range(1000):
        text = "".join(rng.choice(_MATH_PIECES) for _ in range(rng.randrange(0, 40)))
        assert sections.math_spans(text) == _math_spans_reference(text), text
