"""The cleaner's fast paths against the slow, obviously correct forms they replace.

Each reference below is the code the fast path replaced, kept here verbatim; random texts drawn from
the characters the rules care about (and a few that merely look alike) must give identical output.
"""

import random
from collections import Counter

import pytest

from megasci.corpus import clean

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
