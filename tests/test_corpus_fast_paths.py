"""The builder's fast paths give what the libraries' own code gives, bit for bit: MinHash signatures
against datasketch's `update_batch(shingles)`, language probabilities against langdetect's `Detector`,
and macro expansion that scans only for the user's names against a scan over every control sequence."""

from __future__ import annotations

from collections import Counter

import pytest
from datasketch import MinHash
from langdetect.detector import Detector

from megasci.corpus.dedup import NearDuplicateIndex, shingles
from megasci.corpus.filters import _Detector, _detector_factory
from megasci.corpus.latex import CONTROL_SEQUENCE
from megasci.corpus.macros import expand_macros, harvest_definitions
from megasci.corpus.synthetic import generate_papers

TEXTS = [r["text"] for r in generate_papers(8, seed=5)] + [
    "", "one two", "Ünïcode wörds  and\nmore\t\twords here, ok done now", "Der Hund läuft über die Straße",
    "Это тест на русском языке, привет мир", "これは日本語のテストです。漢字とかな", "NASA ESA LIGO LHC CERN observe it"]


@pytest.mark.parametrize("text", TEXTS)
def test_minhash_signature_equals_datasketch(text):
    index = NearDuplicateIndex()
    template = index._template
    reference = MinHash(num_perm=128, seed=template.seed, permutations=template.permutations, scheme=template.scheme)
    reference.update_batch(shingles(text, 5))
    assert index.signature(text) == [int(v) for v in reference.hashvalues]


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("text", TEXTS[-6:] + [t[:1500] for t in TEXTS[:4]])
def test_language_probabilities_equal_langdetect(text, seed):
    factory = _detector_factory()
    fast, reference = _Detector(factory), Detector(factory)
    for detector in (fast, reference):
        detector.seed = seed
        detector.append(text)
    if not text.strip():
        return
    assert [(p.lang, p.prob) for p in fast.get_probabilities()] == \
        [(p.lang, p.prob) for p in reference.get_probabilities()]


def _expand_scanning_everything(text, macros):
    """The reference: one pass per round over every control sequence, as TeX reads them."""
    for _ in range(10):
        out, last, changed = [], 0, False
        for m in CONTROL_SEQUENCE.finditer(text):
            if m.start() < last or m.group(1) not in macros or macros[m.group(1)].nargs:
                continue
            out += [text[last:m.start()], macros[m.group(1)].render([])]
            last, changed = m.end(), True
        text = "".join(out) + text[last:]
        if not changed:
            return text
    return text


def test_macro_calls_are_found_as_tex_reads_them():
    preamble = "\\def\\R{\\mathbb{R}}\\def\\eg{e.g.}\\def\\a{\\R x}\\newcommand{\\Ra}{RA}\n"
    body = "\\R, \\Ra, \\Rb, \\\\R, \\\\\\R, \\eg\\a, \\egg, \\R@x, {\\R}\\R"
    text, macros, _ = harvest_definitions(preamble + body, Counter())
    assert text.strip() == body
    expanded = expand_macros(body, macros, Counter())
    assert expanded == _expand_scanning_everything(body, macros)
    assert expanded == "\\mathbb{R}, RA, \\Rb, \\\\R, \\\\\\mathbb{R}, e.g.\\mathbb{R} x, \\egg, \\R@x, {\\mathbb{R}}\\mathbb{R}"
