"""Math spans, section tagging, language and length filters, exact and near dedup."""

import random
import sys

import pytest

from megasci.corpus.dedup import ExactDeduplicator, NearDuplicateIndex, exact_key
from megasci.corpus.filters import LanguageConfig, check_language, detect_language, detect_language_raw, passes_length
from megasci.corpus.labels import SECTION_LABELS
from megasci.corpus.sections import compose_document, heading_label, mask_math, math_fraction, math_spans

ZETA_MATH = (
    r"$$ \sum_{n=1}^\infty \frac{1}{n^s} = \prod_p \frac{1}{1-p^{-s}} $$ $ \zeta(s) $ $ \Gamma(s) $ "
    r"$ \xi(s) = \pi^{-s/2} \Gamma(s/2) \zeta(s) $"
)
ENGLISH = (
    "We study the analytic continuation of the zeta function and show that the product over "
    "primes converges whenever the real part of the argument is large enough. "
)


# ----------------------------------------------------------------------------- math
@pytest.mark.parametrize(
    "text, math_chars",
    [
        ("ab $x$ cd", 3),  # 3 of 9
        ("$$a+b$$", 7),
        (r"p \(y\) q", 5),
        (r"p \[y\] q", 5),
        (r"\begin{align*}x&=1\end{align*}", 30),
        (r"\begin{alignat}{2}x\end{alignat}", 32),
        (r"costs \$5 and \$6", 0),  # escaped dollars are not math
        (r"a \\[2pt] b", 0),  # line break with spacing, not display math
        ("a $ b\n\nc $ d", 0),  # inline math cannot span a paragraph
        (r"\begin{theorem}x\end{theorem}", 0),
        ("\\begin{equation}a\n\nb\\end{equation}", 0),  # a paragraph break ends any math attempt
        ("x $$a\nb$$", 7),  # a single newline is fine
        (r"\(a \\) b\)", 11),  # \\ is a line break inside math, not a closer
        ("", 0),
    ],
)
def test_math_fraction_by_hand(text, math_chars):
    assert math_fraction(text) == (math_chars / len(text) if text else 0.0)


def test_math_spans_and_mask():
    text = r"p $a$ q \[b\] r \begin{equation*}c\end{equation*} s \$ t"
    assert math_spans(text) == [(2, 5), (8, 13), (16, 49)]
    assert mask_math(text) == r"p   q   r   s \$ t"
    assert mask_math("ab $x$ cd \\(y\\)", "M") == "ab M cd M"


def python_lines_run(function, *args) -> int:
    """How many lines of megasci/corpus/sections.py ``function(*args)`` executes: its work, whatever the clock."""
    sections_file, lines = sys.modules[math_spans.__module__].__file__, [0]

    def trace(frame, event, arg):
        if frame.f_code.co_filename != sections_file:
            return None
        if event == "line":
            lines[0] += 1
        return trace

    previous = sys.gettrace()  # a coverage tool or debugger gets its tracer back
    sys.settrace(trace)
    try:
        function(*args)
    finally:
        sys.settrace(previous)
    return lines[0]


def test_unclosed_delimiters_cost_linear_time():
    unit = "\\( word \\[ w \\begin{equation} "  # no closers, no paragraph breaks
    assert math_fraction(unit * 20_000 + "$") == 0.0
    # A rescan per opener would make 4x the text cost 16x the work; linear work costs 4x.
    small, large = (python_lines_run(math_fraction, unit * n + "$") for n in (1_000, 4_000))
    assert large <= 4.2 * small


# ----------------------------------------------------------------------------- sections
BODY = (
    "\\section{Introduction}\nHello.\n\\subsection{Details}\nMore.\n"
    "\\section{Our Method}\nM.\n\\section{Strange things}\nS.\n\\appendix\n\\section{Proofs}\nP.\n"
)


def test_compose_document_exact_text_and_spans():
    text, sections = compose_document("T", "A", BODY)
    assert text == "\\title{T}\n\n\\begin{abstract}\nA\n\\end{abstract}\n\n" + BODY
    # title: "\title{T}" + blank line = 11; abstract: 16 + 3 + 14 + 2 = 35 chars.
    assert sections == [
        {"label": "title", "start": 0, "end": 11},
        {"label": "abstract", "start": 11, "end": 46},
        {"label": "introduction", "start": 46, "end": 103},  # the subsection stays inside
        {"label": "method", "start": 103, "end": 127},
        {"label": "other", "start": 127, "end": 155},  # unknown heading
        {"label": "appendix", "start": 155, "end": 185},  # \appendix onwards, "Proofs" included
    ]
    assert text[46:103].endswith("\\subsection{Details}\nMore.\n")
    assert text[155:].startswith("\\appendix")


def test_compose_document_missing_parts_and_preamble():
    assert compose_document(None, "", "body only") == ("body only", [{"label": "other", "start": 0, "end": 9}])
    assert compose_document("T", None, None) == ("\\title{T}", [{"label": "title", "start": 0, "end": 9}])
    assert compose_document(None, None, None) == ("", [])
    short = "\n\\section{Conclusions}\nDone."
    assert compose_document(None, None, short)[1] == [{"label": "conclusion", "start": 0, "end": len(short)}]
    long_preamble = "x" * 300 + "\n"
    text, sections = compose_document(None, None, long_preamble + "\\section{Results}\nR.")
    assert sections == [
        {"label": "other", "start": 0, "end": 301},
        {"label": "results", "start": 301, "end": len(text)},
    ]
    body = "\\section{Methods}\nM.\n\\begin{appendices}\n\\section{Extra}\nE.\n\\end{appendices}"
    assert compose_document(None, None, body)[1] == [
        {"label": "method", "start": 0, "end": 21},
        {"label": "appendix", "start": 21, "end": len(body)},
    ]


def test_spans_are_contiguous_and_labels_known():
    text, sections = compose_document("A title", "An abstract.", "pre\n" + BODY + "\\section{Discussion}\nD.")
    assert sections[0]["start"] == 0 and sections[-1]["end"] == len(text)
    assert all(a["end"] == b["start"] for a, b in zip(sections, sections[1:]))
    assert all(s["label"] in SECTION_LABELS for s in sections)


@pytest.mark.parametrize(
    "heading, label",
    [
        ("Introduction and background", "introduction"),
        ("Related Work", "background"),
        ("Preliminaries and notation", "background"),
        ("The $\\mathcal{O}(n)$ algorithm", "method"),
        ("Results and discussion", "results"),
        ("Numerical experiments", "results"),
        ("Proof of Theorem 2", "proof"),
        ("Discussion", "discussion"),
        ("Summary and outlook", "conclusion"),
        ("Concluding remarks", "conclusion"),
        ("Remarks and Open Problems", "discussion"),
        ("Analysis", "results"),
        ("Appendix A: proofs", "appendix"),
        ("Acknowledgments", "other"),
    ],
)
def test_heading_labels(heading, label):
    assert heading_label(heading) == label


# ----------------------------------------------------------------------------- language, length
def test_masking_math_keeps_english_papers():
    # Pure LaTeX math has no natural-language n-grams; langdetect calls this one Catalan.
    assert detect_language_raw(ZETA_MATH * 3) == "ca"
    assert detect_language("On the zeta function", ENGLISH, ZETA_MATH * 20 + ENGLISH) == "en"
    assert detect_language(None, None, ZETA_MATH * 3) == "unknown"  # nothing left to judge
    assert check_language("On the zeta function", ENGLISH, ZETA_MATH, LanguageConfig()) == ("en", True)


def test_language_detection_is_deterministic():
    german = "Wir untersuchen die analytische Fortsetzung der Zetafunktion und zeigen, dass das Produkt konvergiert."
    for seed in (0, 7):
        assert {detect_language(None, german, ZETA_MATH, seed=seed) for _ in range(5)} == {"de"}
        assert len({detect_language_raw(ZETA_MATH + ENGLISH[:60], seed=seed) for _ in range(5)}) == 1


def test_passes_length():
    assert passes_length("x" * 2000) and not passes_length("x" * 1999 + "   \n")
    assert passes_length("abc", min_chars=3)


# ----------------------------------------------------------------------------- dedup
def _random_text(rng: random.Random, words: int = 500) -> list[str]:
    vocabulary = [f"w{k}" for k in range(3000)] + ["$x$", "\\alpha", "the", "of"]
    return [rng.choice(vocabulary) for _ in range(words)]


def test_exact_key_and_deduplicator():
    assert exact_key("a  b\n\tc ") == exact_key("a b c") != exact_key("a b  d")
    assert exact_key("caf\u00e9") == exact_key("cafe\u0301")
    exact = ExactDeduplicator()
    exact.add("p1", "same text", priority=(2019, 9))
    exact.add("p2", "same\n text", priority=(2021, 10))
    exact.add("p3", "other text", priority=(2000, 1))
    exact.add("p0", "same text ", priority=(2021, 10))  # tie with p2: smallest id wins
    assert exact.keep_set() == {"p0", "p3"}
    assert exact.dropped() == {"p1": "p0", "p2": "p0"}


def test_near_duplicates_cluster_and_keep_highest_priority():
    rng = random.Random(0)
    original = _random_text(rng)
    edited = list(original)
    for position in (40, 250, 460):
        edited[position] = "changed"
    index = NearDuplicateIndex()
    index.add("old", " ".join(original), priority=(2010, 500))
    index.add("unrelated", " ".join(_random_text(rng)), priority=(2030, 9999))
    index.add("new", " ".join(edited).upper(), priority=(2012, 500))  # lowercased before shingling
    assert index.clusters() == [["new", "old"]]
    assert index.keep_set() == {"new", "unrelated"}
    with pytest.raises(ValueError):
        index.add("old", "again")


def test_unrelated_texts_do_not_cluster():
    rng = random.Random(1)
    index = NearDuplicateIndex()
    for k in range(20):
        index.add(f"doc{k}", " ".join(_random_text(rng)), priority=k)
    assert index.clusters() == []
    assert index.keep_set() == {f"doc{k}" for k in range(20)}
