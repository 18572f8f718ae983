"""The builder's fast paths give what the libraries' own code gives, bit for bit: MinHash signatures
against datasketch's `update_batch` over `shingles` with the one-shingle-at-a-time `shingle_hash`,
language probabilities against langdetect's `Detector`, and macro expansion that scans only for the
user's names against a scan over every control sequence. The shingle hash itself is held to what a
MinHash needs: Jaccard estimates within their standard error of the exact Jaccard of the shingle sets."""

from __future__ import annotations

import hashlib
import math
import random
import re
import sys
import unicodedata
from collections import Counter

import pytest
from datasketch import MinHash
from langdetect.detector import Detector

from megasci.corpus.dedup import NearDuplicateIndex, exact_key, shingle_hash, shingles
from megasci.corpus.filters import DETECTION_CHARS, _Detector, _detector_factory, prose_for_detection
from megasci.corpus.latex import CONTROL_SEQUENCE
from megasci.corpus.macros import expand_macros, harvest_definitions
from megasci.corpus.synthetic import generate_papers

TEXTS = [r["text"] for r in generate_papers(8, seed=5)] + [
    "",
    "one two",
    "Ünïcode wörds  and\nmore\t\twords here, ok done now",
    "Der Hund läuft über die Straße",
    "Это тест на русском языке, привет мир",
    "これは日本語のテストです。漢字とかな",
    "NASA ESA LIGO LHC CERN observe it",
]


@pytest.mark.parametrize("text", TEXTS)
def test_minhash_signature_equals_datasketch(text):
    reference = MinHash(num_perm=128, seed=1, scheme="affine32", hashfunc=shingle_hash)
    reference.update_batch(shingles(text, 5))
    assert NearDuplicateIndex().signature(text) == [int(v) for v in reference.hashvalues]


def test_long_text_signature_spans_permutation_blocks():
    text = " ".join(f"w{i % 9973}x{i % 7}" for i in range(30_000))  # ~30k shingles: several 4096-row blocks
    reference = MinHash(num_perm=128, seed=1, scheme="affine32", hashfunc=shingle_hash)
    reference.update_batch(shingles(text, 5))
    assert NearDuplicateIndex().signature(text) == [int(v) for v in reference.hashvalues]


UNICODE_WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


@pytest.mark.parametrize(
    "text",
    TEXTS
    + [f"{UNICODE_WHITESPACE}a{UNICODE_WHITESPACE}b\u00a0c\u3000d{UNICODE_WHITESPACE}", "e\u0301 caf\u00e9 \u212b"],
)
def test_exact_key_is_the_regex_definition(text):
    """The key's rule as first written: NFC, every `\\s` run to one space, ends stripped."""
    canonical = re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    assert exact_key(text) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _edited(words: list[str], fraction: float, rng: random.Random) -> list[str]:
    return [f"edit{rng.randrange(10**9)}" if rng.random() < fraction else word for word in words]


def test_jaccard_estimates_follow_exact_jaccard():
    """A MinHash's estimate is unbiased with standard error sqrt(J(1-J)/128) only if the shingle hash
    behaves like a random one; over pairs from near-identical to unrelated, the estimates stay within
    four standard errors of the exact Jaccard and their mean error is small."""
    rng = random.Random(3)
    vocabulary = [f"tok{i}" for i in range(5000)]
    index, errors = NearDuplicateIndex(), []
    for fraction in (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.0):
        for _ in range(4):
            base = [rng.choice(vocabulary) for _ in range(3000)]
            other = _edited(base, fraction, rng)
            a, b = shingles(" ".join(base), 5), shingles(" ".join(other), 5)
            exact = len(a & b) / len(a | b)
            sig_a, sig_b = index.signature(" ".join(base)), index.signature(" ".join(other))
            estimate = sum(x == y for x, y in zip(sig_a, sig_b)) / 128
            bound = 4 * math.sqrt(exact * (1 - exact) / 128) + 1 / 128
            assert abs(estimate - exact) <= bound, (fraction, exact, estimate)
            errors.append(estimate - exact)
    assert abs(sum(errors) / len(errors)) < 0.02


LANGUAGE_TEXTS = (
    TEXTS[-6:]
    + [t[:1500] for t in TEXTS[:4]]
    + [
        "Tiếng Việt là ngôn ngữ chính thức của Việt Nam, được viết bằng chữ Quốc ngữ",  # Latin Extended Additional
        "中文文本 with some English words mixed in 以及更多的中文字符和标点。",
        "ÜBER ALLES ist NICHT gut, aber OK",
        "Contact me@example.org or see http://example.com/x?y=1 -- (and) [brackets] {braces} ^_` signs",
        "Şi România are ţări și țări, cu diacritice",
        "repeat " * 40 + "repeat",
        " leading and trailing spaces ",
        "x",
        ("A long English sentence about graphs and their spectra. " * 250),
    ]
)


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("text", LANGUAGE_TEXTS)
def test_language_probabilities_equal_langdetect(text, seed):
    factory = _detector_factory()
    fast, reference = _Detector(factory), Detector(factory)
    for detector in (fast, reference):
        detector.seed = seed
        detector.append(text)
    assert fast.text == reference.text
    if not text.strip():
        return
    assert [(p.lang, p.prob) for p in fast.get_probabilities()] == [
        (p.lang, p.prob) for p in reference.get_probabilities()
    ]


def test_a_detector_on_another_factory_uses_that_factorys_profiles():
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    other = DetectorFactory()
    other.load_profile(PROFILES_DIRECTORY)
    other.word_lang_prob_map = {gram: probs[::-1] for gram, probs in other.word_lang_prob_map.items()}
    fast, reference = _Detector(other), Detector(other)
    for detector in (fast, reference):
        detector.seed = 0
        detector.append("The quick brown fox jumps over the lazy dog near the river bank")
    assert [(p.lang, p.prob) for p in fast.get_probabilities()] == [
        (p.lang, p.prob) for p in reference.get_probabilities()
    ]


def test_language_of_the_real_sample_equals_langdetect(shared_sample_corpus):
    """The prefixes the builder detects on (masked and raw), from the real arXiv sample's papers."""
    factory = _detector_factory()
    for text in (record["text"] for record in shared_sample_corpus[0]):
        for sample in (prose_for_detection(None, None, text), text[:DETECTION_CHARS]):
            fast, reference = _Detector(factory), Detector(factory)
            for detector in (fast, reference):
                detector.seed = 0
                detector.append(sample)
            assert [(p.lang, p.prob) for p in fast.get_probabilities()] == [
                (p.lang, p.prob) for p in reference.get_probabilities()
            ]


def _expand_scanning_everything(text, macros):
    """The reference: one pass per round over every control sequence, as TeX reads them."""
    for _ in range(10):
        out, last, changed = [], 0, False
        for m in CONTROL_SEQUENCE.finditer(text):
            if m.start() < last or m.group(1) not in macros or macros[m.group(1)].nargs:
                continue
            out += [text[last : m.start()], macros[m.group(1)].render([])]
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
    assert (
        expanded
        == "\\mathbb{R}, RA, \\Rb, \\\\R, \\\\\\mathbb{R}, e.g.\\mathbb{R} x, \\egg, \\R@x, {\\mathbb{R}}\\mathbb{R}"
    )
