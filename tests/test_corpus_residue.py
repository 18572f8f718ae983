"""Cleaning leaves no layout residue: the layout commands arXiv papers use most, written the way papers
write them, are gone from the text (their content kept where they have any), author blocks are gone, and
no e-mail address survives. Math is the math's business: layout inside it (`\\hspace` in `$…$`, `\\quad`)
stays as written, so the checks read the text with math masked.

The list was built from what real arXiv sources use (the shared sample's papers and common class files:
article, REVTeX, elsarticle, IEEEtran, amsart, llncs, AASTeX)."""

from __future__ import annotations

import re

import pytest

from megasci.corpus.clean import clean_latex
from megasci.corpus.sections import mask_math
from megasci.corpus.synthetic import generate_papers

# (usage as papers write it, text that must survive it or "" when it carries none)
LAYOUT_USES = [
    # spacing and breaks
    (r"\vspace{2mm}", ""),
    (r"\vspace*{-0.5cm}", ""),
    (r"\hspace{1em}", ""),
    (r"\hspace*{\fill}", ""),
    (r"\vskip 12pt", ""),
    (r"\vskip -3mm", ""),
    (r"\hskip 2em plus 1fil", ""),
    (r"\kern 3pt", ""),
    (r"\medskip", ""),
    (r"\bigskip", ""),
    (r"\smallskip", ""),
    (r"\noindent", ""),
    (r"\indent", ""),
    (r"\newpage", ""),
    (r"\clearpage", ""),
    (r"\cleardoublepage", ""),
    (r"\linebreak", ""),
    (r"\pagebreak", ""),
    (r"\nopagebreak", ""),
    (r"\newline", ""),
    (r"\xspace", ""),
    (r"\par", ""),
    (r"\hfill", ""),
    (r"\vfill", ""),
    (r"\hfil", ""),
    (r"\addvspace{4pt}", ""),
    (r"\enlargethispage{2\baselineskip}", ""),
    (r"\allowbreak", ""),
    (r"\quad", ""),
    (r"\qquad", ""),
    (r"\leavevmode", ""),
    (r"\null", ""),
    (r"\strut", ""),
    # fonts, sizes and alignment
    (r"\small", ""),
    (r"\large", ""),
    (r"\Large", ""),
    (r"\LARGE", ""),
    (r"\huge", ""),
    (r"\footnotesize", ""),
    (r"\scriptsize", ""),
    (r"\tiny", ""),
    (r"\normalsize", ""),
    (r"\centering", ""),
    (r"\raggedright", ""),
    (r"\raggedleft", ""),
    (r"\bfseries", ""),
    (r"\itshape", ""),
    (r"\normalfont", ""),
    (r"\boldmath", ""),
    (r"\selectfont", ""),
    (r"\sloppy", ""),
    (r"\fussy", ""),
    (r"\frenchspacing", ""),
    (r"\color{blue}", ""),
    (r"\textcolor{red}{crimson words}", "crimson words"),
    (r"\colorbox{yellow}{boxed words}", "boxed words"),
    # content kept, wrapper gone
    (r"\textsuperscript{th}", "th"),
    (r"\textsubscript{sub}", "sub"),
    (r"\centerline{centred words}", "centred words"),
    (r"\rightline{right words}", "right words"),
    (r"\leftline{left words}", "left words"),
    (r"\makebox[3cm][l]{made words}", "made words"),
    (r"\framebox{framed words}", "framed words"),
    (r"\parbox[t]{5cm}{parboxed words}", "parboxed words"),
    (r"\raisebox{1ex}{raised words}", "raised words"),
    (r"\scalebox{0.8}{scaled words}", "scaled words"),
    (r"\resizebox{\linewidth}{!}{resized words}", "resized words"),
    (r"\MakeUppercase{upper words}", "upper words"),
    (r"\vbox{\centerline{nested words}}", "nested words"),
    (r"\hyperlink{target}{linked words}", "linked words"),
    (r"\IEEEPARstart{T}{his}", "This"),
    # title area and running heads
    (r"\today", ""),
    (r"\maketitle", ""),
    (r"\thanks{Supported by a grant.}", ""),
    (r"\footnotemark", ""),
    (r"\footnotemark[2]", ""),
    (r"\footnotetext{Corresponding author.}", ""),
    (r"\protect", ""),
    (r"\thispagestyle{empty}", ""),
    (r"\pagestyle{plain}", ""),
    (r"\markboth{A. Author}{Short title}", ""),
    (r"\titlerunning{Short}", ""),
    (r"\authorrunning{A. Author et al.}", ""),
    (r"\altaffilmark{1}", ""),
    (r"\inst{2}", ""),
    (r"\IEEEauthorrefmark{1}", ""),
    (r"\and", ""),
    (r"\tableofcontents", ""),
    (r"\onecolumn", ""),
    (r"\twocolumn", ""),
    (r"\pagenumbering{arabic}", ""),
    # lengths, counters, definitions and plain TeX settings
    (r"\phantom{xx}", ""),
    (r"\hphantom{x}", ""),
    (r"\vphantom{X}", ""),
    (r"\setlength{\parindent}{0pt}", ""),
    (r"\addtolength{\textwidth}{1cm}", ""),
    (r"\setcounter{equation}{0}", ""),
    (r"\addtocounter{page}{1}", ""),
    (r"\newcounter{step}", ""),
    (r"\linespread{1.3}", ""),
    (r"\baselineskip=18pt", ""),
    (r"\baselineskip=1.3\baselineskip", ""),
    (r"\parindent=0pt", ""),
    (r"\parskip 6pt", ""),
    (r"\magnification=\magstep1", ""),
    (r"\overfullrule=0pt", ""),
    (r"\newdimen\figwidth", ""),
    (r"\newlength{\colwidth}", ""),
    (r"\font\tenmsb=msbm10", ""),
    (r"\textfont\msbfam=\tenmsb", ""),
    (r"\makeatletter", ""),
    (r"\makeatother", ""),
    (r"\rule{\linewidth}{0.4pt}", ""),
    (r"\special{papersize=8.5in,11in}", ""),
]
LAYOUT_COMMANDS = sorted({re.match(r"\\([a-zA-Z]+)", use).group(1) for use, _ in LAYOUT_USES})
LAYOUT_ENVIRONMENTS = [
    "center",
    "flushleft",
    "flushright",
    "titlepage",
    "minipage",
    "small",
    "singlespace",
    "multicols",
    "spacing",
]
RESIDUE = re.compile(
    r"\\(?:" + "|".join(LAYOUT_COMMANDS) + r")(?![a-zA-Z])"
    r"|\\(?:begin|end)\{(?:" + "|".join(LAYOUT_ENVIRONMENTS) + r")\}"
)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def test_the_list_is_arxivs_hundred():
    assert len(LAYOUT_COMMANDS) >= 100, len(LAYOUT_COMMANDS)


FRONT_MATTER = [  # author blocks in the forms of the common classes; nothing in them is paper text
    r"\author{Anna M\"uller\textsuperscript{1}\thanks{Corresponding: \email{anna@uni.example.org}} \and Lars Berg}",
    r"\affiliation{Department of Physics, Example University, 12345 City}",
    r"\address{Institute of Mathematics, Example Street 1, City}",
    r"\institute{Example Institute \email{lars@inst.example.com}}",
    r"\email{someone@example.edu}",
    r"\author[a]{Chen Wang}\address[a]{Lab of Things, City}\ead{chen.wang@lab.example.cn}",
    r"\altaffiltext{1}{Visiting scientist, Observatory of Example}",
    r"\author{\IEEEauthorblockN{Kateřina Dvořák}\IEEEauthorblockA{School of EE, Example Tech}}",
    r"\curraddr{Current address: Elsewhere University}",
    r"\urladdr{www.example.org/~someone}",
    r"\date{\today}",
    r"\subjclass[2010]{35J25}",
]
AUTHOR_WORDS = (
    "Müller",
    "Berg",
    "Department of Physics",
    "Institute of Mathematics",
    "Example Institute",
    "Chen Wang",
    "Lab of Things",
    "Visiting scientist",
    "Dvořák",
    "School of EE",
    "Elsewhere University",
)


def residue_paper(record: dict, seed: int) -> tuple[str, list[str]]:
    """A generated paper with a centred title block, every front-matter form, and every layout use
    placed into its prose (one per paragraph, in turn), plus `$\\hspace{1em}$` in math; returns the LaTeX
    and the texts that must survive."""
    paragraphs = record["text"].split("\n\n")
    uses = LAYOUT_USES[seed % len(LAYOUT_USES) :] + LAYOUT_USES[: seed % len(LAYOUT_USES)]
    for k, (use, _) in enumerate(uses):
        where = 1 + k % (len(paragraphs) - 1)
        paragraphs[where] += f" Also {use} here."
    title_block = (
        "\\begin{titlepage}\\begin{center}{\\Large\\bf Centred Title Words}\\\\[2mm]\n"
        "\\vspace{1cm} Written \\today\\\\ Contact: e-mail: first.last@example.ac.uk\n"
        "\\end{center}\\end{titlepage}\n"
    )
    layout_envs = (
        "\\begin{flushleft}Left block words.\\end{flushleft}\n"
        "\\begin{flushright}Right block words.\\end{flushright}\n"
        "\\begin{minipage}[t]{0.45\\textwidth}Minipage words.\\end{minipage}\n"
        "\\begin{small}Small words.\\end{small}\n\\begin{singlespace}Single words.\\end{singlespace}\n"
        "\\begin{multicols}{2}Column words.\\end{multicols}\n"
        "\\begin{spacing}{1.5}Spaced words.\\end{spacing}\n"
        "Math keeps its own spacing: $a\\hspace{1em}b \\quad c$ and \\[ x \\qquad y \\]\n"
    )
    latex = (
        "\\documentclass{article}\n\\title{" + record["title"] + "}\n" + "\n".join(FRONT_MATTER) + "\n"
        "\\begin{document}\n\\maketitle\n" + title_block + layout_envs + "\n\n".join(paragraphs) + "\n\\end{document}\n"
    )
    kept = [text for _, text in LAYOUT_USES if text] + [
        "Centred Title Words",
        "Left block words.",
        "Right block words.",
        "Minipage words.",
        "Small words.",
        "Single words.",
        "Column words.",
        "Spaced words.",
    ]
    return latex, kept


@pytest.mark.parametrize("seed", range(4))
def test_generated_papers_leave_no_layout_residue(seed):
    record = next(iter(generate_papers(1, seed=40 + seed)))
    latex, kept = residue_paper(record, seed * 29)
    paper = clean_latex(latex)
    prose = mask_math(paper.text)
    assert RESIDUE.findall(prose) == []
    assert EMAIL.findall(paper.text) == [] and paper.stats["emails_removed"] >= 1
    assert "e-mail:" not in paper.text.lower() and "Contact:" in paper.text
    for words in kept:
        assert words in paper.text, words
    for words in AUTHOR_WORDS:
        assert words not in paper.text, words
    assert "$a\\hspace{1em}b \\quad c$" in paper.text and "\\[ x \\qquad y \\]" in paper.text
    assert paper.title == " ".join(record["title"].split())


def test_emails_are_removed_everywhere_and_counted():
    paper = clean_latex(
        "\\begin{document}\nWrite to {alice,bob}@uni.example.org or E-mail: carol@x.example.com."
        "\n\\begin{verbatim}\nmail dave@host.example.net\n\\end{verbatim}\nNot an address: a@b or "
        "$x@y$ in math and f@ct.\n\\end{document}"
    )
    assert EMAIL.findall(paper.text) == []
    assert paper.stats["emails_removed"] == 3
    assert "Write to  or ." in paper.text and "Not an address: a@b" in paper.text


def test_shared_sample_has_no_email_and_no_layout_residue(shared_sample_corpus):
    records, report = shared_sample_corpus
    for record in records:
        assert EMAIL.findall(mask_math(record["text"])) == [], record["id"]
        assert RESIDUE.findall(mask_math(record["text"])) == [], record["id"]
    assert report.emails_removed >= 9  # the sample's authors give at least nine addresses
    assert f"{report.emails_removed:,} e-mail addresses removed" in report.format()
