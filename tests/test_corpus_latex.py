"""The LaTeX rules the corpus stages share (megasci/corpus/latex.py), checked through every stage that applies them."""

from megasci.corpus.clean import clean_latex
from megasci.corpus.latex import closing_brace, code_part
from megasci.corpus.sections import compose_document, mask_math, math_spans


def test_closing_brace_skips_escaped_braces_and_stops_at_its_limit():
    text = r"{a \{ b {c} \\}rest"
    assert closing_brace(text, 0) == text.index("}rest")
    assert closing_brace(r"{never \} closed", 0) == -1
    assert closing_brace("{" + "x" * 50 + "}", 0, limit=20) == -1


def test_comment_rule_is_the_same_for_assembly_and_cleaning():
    lines = ["a % b", "50\\% of % c", "\\\\% c", "\\\\\\% kept", "no comment", "trailing \\"]
    expected = ["a ", "50\\% of ", "\\\\", "\\\\\\% kept", "no comment", "trailing \\"]
    assert [code_part(line) for line in lines] == expected
    for line, code in zip(lines[:4], expected):
        cleaned = clean_latex(f"\\begin{{document}}\n{line}\n\\end{{document}}\n").text
        assert cleaned == code.rstrip(), line


def test_dmath_is_math_for_cleaning_and_for_tagging():
    source = (
        "\\documentclass{article}\n\\begin{document}\nSee~the bound.\n"
        "\\begin{dmath}\na~b \\ref{x}\n\\end{dmath}\n\\end{document}\n"
    )
    text = clean_latex(source).text
    dmath = "\\begin{dmath}\na~b \\ref{x}\n\\end{dmath}"
    assert text == "See the bound.\n" + dmath  # prose rules (ties, references) stop at the math
    start = text.index(dmath)
    assert math_spans(text) == [(start, start + len(dmath))]
    assert mask_math(text) == "See the bound.\n "


def test_section_heading_ends_at_its_matching_brace():
    body = "\\section{Proof of \\{x\\} {bounds}} text " + "w " * 150
    _, sections = compose_document(None, None, body)
    assert [s["label"] for s in sections] == ["proof"]
    _, sections = compose_document(None, None, "x " * 150 + "\\section{Results} more")
    assert [s["label"] for s in sections] == ["other", "results"]
