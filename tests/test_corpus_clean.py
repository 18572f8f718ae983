"""Exact-output tests for the LaTeX cleaner, one per rule, plus real arXiv files when present."""

import os
import re
import unicodedata

import pytest

from megasci.corpus.clean import clean_latex

PREAMBLE = "\\documentclass{article}\n\\usepackage{amsmath}\n"
SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "arxiv_sample", "packages")


def clean_body(body: str, preamble: str = "", **options):
    return clean_latex(f"{PREAMBLE}{preamble}\\begin{{document}}\n{body}\n\\end{{document}}\n", **options)


def body_text(body: str, preamble: str = "", **options) -> str:
    return clean_body(body, preamble, **options).text


# ----------------------------------------------------------------------------- comments
def test_escaped_percent_is_literal_and_double_backslash_starts_a_comment():
    assert body_text("50\\% done % note\nnext") == "50\\% done next"
    assert body_text("a\\\\% gone\nb") == "a\\\\b"
    assert body_text("odd \\\\\\% kept") == "odd \\\\\\% kept"


def test_comment_only_lines_disappear_without_leaving_blank_lines():
    assert body_text("a\n% only a comment\n   % indented comment\nb") == "a\nb"


def test_trailing_percent_joins_lines_like_tex():
    assert body_text("foo%\n    bar") == "foobar"
    assert body_text("word % note\nnext") == "word next"


def test_trailing_comment_before_blank_line_keeps_the_paragraph_break():
    assert body_text("end. % c\n\nNew") == "end.\n\nNew"


def test_iffalse_blocks_are_removed_counting_nested_ifs_and_keeping_else():
    paper = clean_body("a \\iffalse hidden \\ifdim x\\fi still hidden\\fi b\n\\iffalse no\\else yes\\fi")
    assert paper.text == "a  b\nyes"
    assert paper.stats["iffalse_removed"] == 2


def test_comment_environment_is_removed():
    assert body_text("a\n\\begin{comment}\nsecret % x\n\\end{comment}\nb") == "a\n\nb"


def test_verbatim_content_is_untouched():
    verbatim = "\\begin{verbatim}\n50% of x~y \\textbf{z} \\cite{k}\n\\end{verbatim}"
    assert body_text(f"Code:\n{verbatim}\nend") == f"Code:\n{verbatim}\nend"


def test_verb_and_urls_keep_percent_and_tilde():
    assert body_text("use \\verb|%| and \\verb+a~b+ here") == "use \\verb|%| and \\verb+a~b+ here"
    assert body_text("see \\url{http://x.org/a%20b~c} now") == "see \\url{http://x.org/a%20b~c} now"
    assert body_text("at \\href{http://x.org/a%20b}{the \\textbf{site}}.") == "at \\href{http://x.org/a%20b}{the site}."


# ----------------------------------------------------------------------------- macros
def test_newcommand_with_arguments_and_default():
    preamble = "\\newcommand{\\pair}[2][x]{(#1,#2)}\n\\renewcommand*\\R{\\mathbb{R}}\n"
    assert body_text("$\\pair{y}$ and $\\pair[z]{w} \\in \\R^2$", preamble) == "$(x,y)$ and $(z,w) \\in \\mathbb{R}^2$"


def test_def_with_parameters_and_unbraced_arguments():
    preamble = "\\def\\sq#1#2{#1^{#2}}\n"
    assert body_text("$\\sq a2 + \\sq{b}{3} + \\sq\\alpha{n}$", preamble) == "$a^{2} + b^{3} + \\alpha^{n}$"


def test_declare_math_operator_plain_and_starred():
    preamble = "\\DeclareMathOperator{\\Tr}{Tr}\n\\DeclareMathOperator*{\\argmax}{arg\\,max}\n"
    assert body_text("$\\Tr A = \\argmax_x f$", preamble) == "$\\operatorname{Tr} A = \\operatorname*{arg\\,max}_x f$"


def test_let_with_and_without_equals_and_saved_builtin():
    preamble = (
        "\\let\\eps\\varepsilon\n\\let\\ph = \\varphi\n"
        "\\let\\oldvec\\vec\n\\renewcommand{\\vec}[1]{\\oldvec{\\mathbf{#1}}}\n"
    )
    paper = clean_body("$\\eps\\ph \\vec{x}$", preamble)
    assert paper.text == "$\\varepsilon\\varphi \\oldvec{\\mathbf{x}}$"
    assert paper.stats["macro_depth_capped"] == 0


def test_macros_defined_in_the_body_are_used_and_their_definitions_removed():
    assert (
        body_text("\\newcommand{\\be}{\\begin{equation}}\\def\\ee{\\end{equation}}\n\\be x~y \\ee")
        == "\\begin{equation} x~y \\end{equation}"
    )


def test_non_ascii_macro_body_and_empty_group_after_macro():
    preamble = "\\newcommand{\\Schr}{Schrödinger}\n"
    assert body_text("The \\Schr{} equation and \\Schr's", preamble) == "The Schrödinger equation and Schrödinger's"


def test_recursive_macros_stop_at_the_caps_and_are_counted():
    paper = clean_body("\\a", "\\def\\a{\\a x}\n")
    assert paper.text == "\\a" + " x" * 10  # the space after a macro is kept, unlike TeX, for prose
    assert paper.stats["macro_depth_capped"] == 1
    paper = clean_body("\\b", "\\def\\b{\\b\\b\\b\\b}\n")
    assert paper.stats["macro_growth_capped"] == 1
    assert len(paper.text) < 20_000


def test_definer_shorthands_delimited_defs_and_edge_arguments():
    preamble = (
        "\\newcommand{\\nc}{\\newcommand}\n\\nc{\\Z}{\\mathbb{Z}}\n\\def\\pt#1.{#1}\n"
        "\\newcommand{\\tail}[1]{#1\\alpha}\n\\newcommand{\\two}[2]{#1#2}\n"
    )
    paper = clean_body("$\\Z \\tail{a}b$ \\pt x. \\two{a}", preamble)
    assert paper.text == "$\\mathbb{Z} a\\alpha b$ \\pt x. \\two{a}"
    assert paper.stats["macro_missing_args"] == 1


def test_macros_are_not_expanded_inside_verbatim():
    assert body_text("\\verb|\\R| \\R", "\\newcommand{\\R}{\\mathbb{R}}") == "\\verb|\\R| \\mathbb{R}"


# ----------------------------------------------------------------------------- body
def test_figure_becomes_its_caption_paragraph():
    figure = (
        "\\begin{figure}[h]\n\\centering\n\\includegraphics[width=3cm]{f.png}\n"
        "\\caption{A \\textbf{nice} plot of $x^2$.}\\label{fig:1}\n\\end{figure}"
    )
    assert body_text(f"Text.\n{figure}\nMore.") == "Text.\n\nA nice plot of $x^2$.\n\nMore."
    assert body_text(f"Text.\n{figure}\nMore.", keep_captions=False) == "Text.\n\nMore."


def test_table_without_caption_is_dropped():
    table = "\\begin{table*}\n\\begin{tabular}{cc}\n1 & 2\\\\\n\\end{tabular}\n\\end{table*}"
    assert body_text(f"Before.\n{table}\nAfter.") == "Before.\n\nAfter."


def test_bibliography_is_dropped():
    body = (
        "Done.\n\\bibliographystyle{plain}\n\\bibliography{refs}\n"
        "\\begin{thebibliography}{9}\n\\bibitem{a} A. Author, \\emph{Title}.\n\\end{thebibliography}"
    )
    assert body_text(body) == "Done."


def test_citations_references_and_labels_follow_one_rule():
    body = (
        "As in~\\cite{a,b} and \\citep[p.~3]{c}, \\citet{d} see Section~\\ref{s:1}, "
        "\\eqref{e} and \\cref{f}.\\label{x}\\nocite{g}"
    )
    text = body_text(body)
    assert text == "As in [CITATION] and [CITATION], [CITATION] see Section [REF], [REF] and [REF]."
    assert "\\cite" not in text


def test_formatting_is_unwrapped():
    assert (
        body_text("\\textbf{bold \\emph{and} it} {\\bf x} {\\it y} {\\large\\bf T} \\mbox{m b} \\textsc{s}")
        == "bold and it x y T m b s"
    )


def test_a_font_switch_inside_a_command_argument_keeps_the_argument_braces():
    """`\\section{\\boldmath Experiment}` (a real arXiv heading) is a heading, not `\\sectionExperiment`."""
    text = body_text("\\section{\\boldmath Experiment}\nText.\n\\subsection*{\\bf Layout}\nMore. See {\\bf this}.")
    assert (
        "\\section{Experiment}" in text and "\\subsection{Layout}" in text and "See this." in text
    )  # headings lose the star


def test_spacing_and_title_page_commands_are_removed():
    body = (
        "\\maketitle\n\\tableofcontents\n\\noindent First\\vspace{2mm} line\\hspace*{1em}.\n\\medskip\n\\newpage\nNext"
    )
    assert body_text(body) == "First line.\n\nNext"


def test_accents_become_unicode():
    body = "Schr\\\"odinger, Erd\\H{o}s, {\\\"u}ber, \\'{e}t\\'e, Gau\\ss, \\o, \\v{C}ech, \\c c, Espa\\~na, \\'{\\i}"
    assert body_text(body) == "Schrödinger, Erdős, über, été, Gauß, ø, Čech, ç, España, í"


def test_math_is_kept_verbatim_except_comments():
    equation = "\\begin{equation}\n  a~b \\mbox{ a } \\quad % note\n  \\label{eq}\n\\end{equation}"
    text = body_text(f"Inline $a~b \\textbf{{x}}$ and \\(\\emph{{y}}\\) and\n\\[ \\mbox{{ z }} \\]\n{equation}")
    assert text == (
        "Inline $a~b \\textbf{x}$ and \\(\\emph{y}\\) and\n\\[ \\mbox{ z } \\]\n"
        "\\begin{equation}\n  a~b \\mbox{ a } \\quad \\label{eq}\n\\end{equation}"
    )


def test_line_break_with_spacing_is_not_display_math():
    assert body_text("a\\\\[2pt] \\textbf{b} \\$5 and $x$") == "a\\\\[2pt] b \\$5 and $x$"


def test_theorem_environments_take_their_printed_name():
    preamble = (
        "\\newtheorem{thm}{Theorem}[section]\n\\newtheorem{lem}[thm]{Lemma}\n\\newtheorem*{mainthm}{Main Theorem}\n"
    )
    body = (
        "\\begin{thm}[Main]\nText.\n\\end{thm}\n\\begin{lem}\nX\n\\end{lem}\n"
        "\\begin{mainthm}\nZ\n\\end{mainthm}\n\\begin{proof}\nY\n\\end{proof}"
    )
    paper = clean_body(body, preamble)
    assert paper.text == (
        "\\begin{theorem}[Main]\nText.\n\\end{theorem}\n\\begin{lemma}\nX\n\\end{lemma}\n"
        "\\begin{maintheorem}\nZ\n\\end{maintheorem}\n\\begin{proof}\nY\n\\end{proof}"
    )
    assert paper.theorem_names == {"thm": "Theorem", "lem": "Lemma", "mainthm": "Main Theorem"}
    french = clean_body("\\begin{thm}x\\end{thm}", "\\newtheorem{thm}{{\\bf Th\\'eor\\`eme}}\n")
    assert (french.text, french.theorem_names) == ("\\begin{théorème}x\\end{théorème}", {"thm": "Théorème"})
    clash = clean_body("\\begin{eq}x\\end{eq}", "\\newtheorem{eq}{Equation}\n")
    assert clash.text == "\\begin{eq}x\\end{eq}"  # never renamed into a math environment


def test_sections_have_one_form():
    body = "\\section*{Intro}\n\\subsection[Short]{Long \\emph{title}}\n\\paragraph{P.} x\n\\chapter*{C}"
    assert body_text(body) == "\\section{Intro}\n\\subsection{Long title}\n\\paragraph{P.} x\n\\chapter{C}"


def test_title_and_abstract_are_extracted():
    preamble = '\\title{On \\emph{Things}\\thanks{Funded by \\textbf{X}.}\\\\ and Stuff}\n\\author{A. B\\"ohm}\n'
    paper = clean_body(
        "\\maketitle\n\\begin{abstract}\nWe study $x$ % really\nhere.\n\\end{abstract}\n\\section{Intro}\nHi.", preamble
    )
    assert paper.title == "On Things and Stuff"
    assert paper.abstract == "We study $x$ here."
    assert paper.text == "\\section{Intro}\nHi."


def test_abstract_command_and_missing_document_environment():
    paper = clean_latex("\\title{T}\\abstract{Short \\emph{one}.}\nBody text.")
    assert (paper.title, paper.abstract, paper.text) == ("T", "Short one.", "Body text.")


def test_text_after_end_document_is_dropped():
    assert clean_latex("\\begin{document}\nIn.\n\\end{document}\nOut.").text == "In."


# ----------------------------------------------------------------------------- normalisation
def test_unicode_is_nfc_and_control_characters_are_removed():
    text = body_text("Caf" + unicodedata.normalize("NFD", "é") + "\x07 ok\tyes")
    assert text == "Café ok\tyes"
    assert unicodedata.is_normalized("NFC", text)


def test_blank_line_runs_and_trailing_spaces_are_normalised():
    assert body_text("\n\n  \na  \n\n\n\n  \nb  \n\n") == "a\n\nb"


# ----------------------------------------------------------------------------- synthetic and real papers
def test_synthetic_papers_clean_without_citations_and_keep_their_titles():
    from megasci.corpus.synthetic import generate_papers

    for record in generate_papers(5, seed=3):
        paper = clean_latex(
            f"{PREAMBLE}\\newtheorem{{theorem}}{{Theorem}}\n\\begin{{document}}\n{record['text']}\n\\end{{document}}\n"
        )
        assert paper.title == " ".join(record["title"].split())
        assert paper.abstract
        assert "\\cite{" not in paper.text and "\\label{" not in paper.text.replace("\\label{eq", "")
        assert "\\section{" in paper.text


_VERBATIM_LIKE = re.compile(
    r"\\begin\{(verbatim\*?|Verbatim|lstlisting|minted)\}.*?\\end\{\1\}|\\verb(.).*?\2"
    r"|\\url\{[^}]*\}|\\href\{[^}]*\}",
    re.S,
)
_UNESCAPED_PERCENT = re.compile(r"(?:^|[^\\])(?:\\\\)*%", re.M)


@pytest.mark.parametrize("name", ["polch.tex", "paper-t4.1_Vienna_preprint.tex"])
def test_real_arxiv_sources(name):
    path = os.path.join(SAMPLES, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not available")
    with open(path, encoding="latin-1") as handle:
        paper = clean_latex(handle.read())
    text = paper.text
    assert "\\documentstyle" not in text and "\\documentclass" not in text and "\\usepackage" not in text
    assert not _UNESCAPED_PERCENT.search(_VERBATIM_LIKE.sub("", text))
    assert "\\cite{" not in text
    assert paper.title
    assert "$" in text or "\\begin{equation}" in text
