"""Stage 4/5 of the corpus: one assembled LaTeX document → clean, LaTeX-preserving text.

Public pipelines (RedPajama's regex cleaner) drop titles and abstracts, eat the character before
``%`` and drop papers whose macros hold non-ASCII; this module does each step the TeX way instead.

Order: protect (verbatim, ``\\verb``, URLs; comments removed in the same left-to-right lexing
pass) → ``\\iffalse`` blocks → harvest (macros and theorem names, by ``macros.py``; title, abstract,
front matter) → split at ``\\begin{document}``/``\\end{document}`` → expand user macros → transform the prose
(math hidden behind placeholders) → restore → normalise. Every pass is one regex scan, so the
cost stays linear in the document length.

Rule choices (one each, applied everywhere outside math):

* ``\\cite…{keys}`` → ``[CITATION]``; ``\\ref``, ``\\eqref``, ``\\autoref``, ``\\cref``… → ``[REF]``;
  ``\\label`` and ``\\nocite`` removed. A placeholder keeps the sentence grammatical ("see [REF]")
  without leaking label keys; commands that print nothing vanish.
* Theorem-like environments are renamed to their printed name, lowercased letters only
  (``\\newtheorem{thm}{Theorem}`` makes ``\\begin{thm}`` → ``\\begin{theorem}``), so one concept has
  one spelling across the corpus; ``proof`` is kept as is.
* ``--``, ``---``, quotes ````` `` ''`````, ``\\%``, ``\\&``, ``\\\\`` stay as LaTeX: the text is
  LaTeX-preserving and dashes also occur in code-like spans (``\\texttt{--help}``).
* Math is left exactly as written (only macro expansion and comment removal reach it), so
  ``\\label`` inside an ``equation`` stays.
* ``text`` holds the body without title and abstract; the record builder places those.
* Unlike TeX, the space after an argument-less macro is kept (``\\eg the`` stays two words).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from megasci.corpus.latex import (
    BEGIN_DOCUMENT,
    END_DOCUMENT,
    ESCAPED_PAIR,
    LINE_COMMENT,
    MATH_CLOSE,
    MATH_ENVIRONMENT_PATTERN,
    MATH_ENVIRONMENTS,
    MATH_OPEN,
    PLACEHOLDER_CHARS,
    PROTECT_CLOSE,
    PROTECT_OPEN,
    braced,
    bracketed,
    closing_brace,
    skip_space,
)
from megasci.corpus.macros import expand_macros, harvest_definitions

_PROTECTED_TOKEN = re.compile(f"{PROTECT_OPEN}(\\d+){PROTECT_CLOSE}")
_MATH_TOKEN = re.compile(f"{MATH_OPEN}(\\d+){MATH_CLOSE}")


@dataclass
class CleanedPaper:
    title: str | None
    abstract: str | None
    text: str
    theorem_names: dict = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)


# ----------------------------------------------------------------------------- protect + comments
# TeX's escape rule and comment rule (latex.py) plus the spans that hide a `%` from them. Every
# top-level branch starts with a literal so that the regex engine can skip ahead quickly.
_LEX = re.compile(
    ESCAPED_PAIR
    + r"""
| \\(?:(?P<verbatim>begin\{(?P<vname>verbatim\*?|Verbatim\*?|lstlisting|minted|alltt)\}(?s:.*?)\\end\{(?P=vname)\})
     | (?P<comment_env>begin\{comment\}(?s:.*?)\\end\{comment\})
     | (?P<verb>verb\*?(?P<delim>[^a-zA-Z\s*]).*?(?P=delim))
     | (?P<url>url\s*\{[^{}\n]*\}|href\s*\{[^{}\n]*\}))
| """
    + LINE_COMMENT
    + r"""(?P<newline>\n[ \t]*)?
""",
    re.X,
)


def strip_comments_and_protect(text: str, protected: list[str], stats: Counter) -> str:
    """Remove ``%`` comments TeX's way and hide verbatim-like spans behind placeholders.

    One left-to-right scan decides what each ``\\`` and ``%`` means, as TeX's reader does: ``\\\\``
    is consumed first, so ``\\%`` is literal and ``\\\\%`` is a line break plus a comment. A line
    holding only a comment disappears with its newline; a trailing comment eats its newline and
    the next line's leading spaces (joining ``foo%`` and ``bar`` into ``foobar``) unless the next
    line is blank, which would lose a paragraph break. ``comment`` environments are dropped;
    verbatim environments, ``\\verb``, ``\\url{…}`` and the url of ``\\href`` are stored in
    ``protected`` and left untouched by every later pass.
    """
    out, last = [], 0
    for m in _LEX.finditer(text):
        start, kind = m.start(), m.lastgroup
        if kind is None and text[start] == "\\":
            continue
        if text[start] == "%":
            line_start = text.rfind("\n", 0, start) + 1
            newline = m.group("newline")
            stats["comments_removed"] += 1
            if not text[line_start:start].strip(" \t"):
                out.append(text[last : max(last, line_start)])
                last = m.start("newline") + 1 if newline else m.end()
                continue
            out.append(text[last:start])
            if newline and (m.end() >= len(text) or text[m.end()] == "\n"):
                out.append("\n")
        elif kind == "comment_env":
            out.append(text[last:start])
            stats["comment_envs_removed"] += 1
        else:
            out.append(text[last:start])
            out.append(f"{PROTECT_OPEN}{len(protected)}{PROTECT_CLOSE}")
            protected.append(m.group())
            stats["verbatim_protected"] += 1
        last = m.end()
    out.append(text[last:])
    return "".join(out)


_IF_TOKEN = re.compile(r"\\(?:(iffalse)|(if[a-zA-Z]*)|(else)|(fi))(?![a-zA-Z])")


def drop_iffalse(text: str, stats: Counter) -> str:
    """Remove ``\\iffalse … \\fi`` (keeping an ``\\else`` branch), counting nested ``\\if…``.

    Every ``\\if<letters>`` inside counts one level, so a ``\\newif\\iffoo`` inside such a block
    would unbalance it; an unclosed block is kept rather than eating the rest of the paper.
    """
    if "\\iffalse" not in text:
        return text
    out, last, depth, block_start, in_else = [], 0, 0, 0, False
    for m in _IF_TOKEN.finditer(text):
        if depth == 0:
            if m.group(1):
                out.append(text[last : m.start()])
                depth, block_start, in_else, last = 1, m.start(), False, m.end()
            continue
        if m.group(1) or m.group(2):
            depth += 1
        elif m.group(3) and depth == 1 and not in_else:
            in_else, last = True, skip_space(text, m.end())
        elif m.group(4):
            depth -= 1
            if depth == 0:
                if in_else:
                    out.append(text[last : m.start()])
                last = m.end()
                stats["iffalse_removed"] += 1
    out.append(text[block_start:] if depth else text[last:])
    return "".join(out)


# ----------------------------------------------------------------------------- front matter
def _plain_name(printed: str) -> str:
    """``{\\bf Th\\'eor\\`eme}`` → ``Théorème``: a printed theorem name without markup."""
    return re.sub(r"\\[a-zA-Z]+\s*|[{}]", "", accents_to_unicode(printed, Counter())).strip()


# The \maketitle area: who wrote the paper, where they work, how to reach them, what funded it.
# Names and addresses are not paper text. Each command with the braced arguments it takes (REVTeX,
# elsarticle, IEEEtran, AMS, LLNCS, AASTeX, ICML, svjour forms).
_FRONT_MATTER_ARGS = {
    "title": 1,
    "author": 1,
    "address": 1,
    "affiliation": 1,
    "affil": 1,
    "institute": 1,
    "institution": 1,
    "email": 1,
    "date": 1,
    "thanks": 1,
    "curraddr": 1,
    "urladdr": 1,
    "homepage": 1,
    "orcid": 1,
    "ead": 1,
    "dedicatory": 1,
    "collaboration": 1,
    "altaffiltext": 2,
    "tnotetext": 1,
    "fntext": 1,
    "cortext": 1,
    "IEEEauthorblockN": 1,
    "IEEEauthorblockA": 1,
    "icmlauthor": 2,
    "icmlaffiliation": 2,
    "icmlcorrespondingauthor": 2,
    "correspondingauthor": 1,
    "authorinfo": 3,
    "titlerunning": 1,
    "authorrunning": 1,
    "shorttitle": 1,
    "shortauthors": 1,
    "markboth": 2,
    "preprint": 1,
    "pacs": 1,
    "PACS": 1,
    "subjclass": 1,
    "received": 1,
    "accepted": 1,
    "revised": 1,
    "published": 1,
    "journal": 1,
    "catchline": 5,
}
_FRONT_MATTER = re.compile(
    r"\\(" + "|".join(sorted(_FRONT_MATTER_ARGS, key=len, reverse=True)) + r")"
    r"(?![a-zA-Z])\*?\s*(?:\[[^\]]*\]\s*)?(?=\{)"
)
_ABSTRACT_ENV = re.compile(r"\\begin\{abstract\}(?s:(.*?))\\end\{abstract\}")
_ABSTRACT_CMD = re.compile(r"\\abstract\s*(?=\{)")
_THANKS = re.compile(r"\\thanks\s*\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}")  # braces nest two deep


def extract_front_matter(text: str, stats: Counter) -> tuple[str, str | None, str | None]:
    """(text without front matter, raw title, raw abstract).

    The first ``\\title`` gives the title (``\\thanks`` dropped, ``\\\\`` → space); the first
    ``abstract`` environment or ``\\abstract{…}`` the abstract. Author, affiliation, address, e-mail,
    funding and running-head commands (``_FRONT_MATTER_ARGS``) are dropped with their arguments and a
    trailing comma: names and addresses are not paper text.
    """
    title = abstract = None
    out, last = [], 0
    for m in _FRONT_MATTER.finditer(text):
        if m.start() < last:
            continue
        groups, end = [], m.end()
        for _ in range(_FRONT_MATTER_ARGS[m.group(1)]):
            group = braced(text, skip_space(text, end))
            if group is None:
                break
            groups.append(group[0])
            end = group[1]
        if not groups:
            continue
        out.append(text[last : m.start()])
        last = end
        if text.startswith(",", last):
            last += 1
        if m.group(1) == "title" and title is None:
            title = _THANKS.sub("", groups[0]).replace("\\\\", " ")
    out.append(text[last:])
    text = "".join(out)
    m = _ABSTRACT_ENV.search(text)
    if m:
        abstract, text = m.group(1), text[: m.start()] + text[m.end() :]
    else:
        m = _ABSTRACT_CMD.search(text)
        group = m and braced(text, m.end())
        if group:
            abstract, text = group[0], text[: m.start()] + text[group[1] :]
    stats["title_found"] += title is not None
    stats["abstract_found"] += abstract is not None
    return text, title, abstract


_HEURISTIC_TITLE = re.compile(
    r"\{\s*(?:\\(?:large|Large|LARGE|huge|Huge|bf|bfseries)(?![a-zA-Z])\s*)+"
    r"([^{}\\$]{4,300}?)\s*(?:\\\\|\\break)?\s*\}"
)


def guess_title(body: str) -> str | None:
    """Title of papers without ``\\title`` (LaTeX 2.09 era): the first big bold group up front."""
    m = _HEURISTIC_TITLE.search(body, 0, 5000)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- prose transforms
_MATH = re.compile(
    r"""
  \\(?:\\ | \$
     | (?P<paren>\((?s:.*?)\\\))
     | (?P<bracket>\[(?s:.*?)\\\])
     | (?P<env>begin\{(?P<name>(?:"""
    + MATH_ENVIRONMENT_PATTERN
    + r""")\*?)\}(?s:.*?)\\end\{(?P=name)\}))
| \$\$(?s:.+?)\$\$
| \$[^$\\]*(?s:\\.[^$\\]*)*\$
""",
    re.X,
)


def hide_math(text: str, store: list[str], stats: Counter) -> str:
    """Replace every math span by a placeholder so that no prose rule can touch it."""

    def hide(m: re.Match) -> str:
        span = m.group()
        if span[0] != "$" and m.lastgroup not in ("paren", "bracket", "env"):
            return span
        store.append(span)
        return f"{MATH_OPEN}{len(store) - 1}{MATH_CLOSE}"

    hidden = _MATH.sub(hide, text)
    stats["math_spans"] += len(store)
    return hidden


_FLOAT = re.compile(
    r"\\begin\{(?P<env>(?:figure|table|wrapfigure|wraptable|sidewaysfigure|sidewaystable|SCfigure"
    r"|picture)\*?)\}(?s:.*?)\\end\{(?P=env)\}"
)
_CAPTION = re.compile(r"\\caption\*?\s*(?:\[[^\]]*\]\s*)?(?=\{)")


def drop_floats(text: str, stats: Counter, keep_captions: bool = True) -> str:
    """Drop figures and tables; each ``\\caption{…}`` becomes a paragraph of its own."""

    def replace(m: re.Match) -> str:
        stats["floats_dropped"] += 1
        if not keep_captions:
            return "\n"
        captions = [group[0].strip() for c in _CAPTION.finditer(m.group()) if (group := braced(m.group(), c.end()))]
        stats["captions_kept"] += len(captions)
        return "".join(f"\n\n{caption}\n\n" for caption in captions) or "\n"

    return _FLOAT.sub(replace, text)


_REFERENCE = re.compile(
    r"\\(?:(?P<cite>[cC]ite[a-zA-Z]*)|(?P<ref>ref|eqref|autoref|Autoref|cref|Cref|pageref"
    r"|vref|nameref)|(?P<gone>label|nocite))\*?\s*(?:\[[^\]]*\]\s*){0,2}\{[^{}]*\}"
)


def replace_references(text: str, stats: Counter) -> str:
    """``\\cite…`` → ``[CITATION]``, ``\\ref``-likes → ``[REF]``, ``\\label``/``\\nocite`` removed."""

    def replace(m: re.Match) -> str:
        kind = m.lastgroup
        stats[f"{kind}_replaced"] += 1
        return "[CITATION]" if kind == "cite" else "[REF]" if kind == "ref" else ""

    return _REFERENCE.sub(replace, text)


_HEADING_COMMANDS = "part|chapter|section|subsection|subsubsection|paragraph|subparagraph"
_SECTION = re.compile(r"\\(" + _HEADING_COMMANDS + r")\*?(?![a-zA-Z])\s*")


def normalise_sections(text: str, stats: Counter) -> str:
    """``\\section*[short]{Long}`` → ``\\section{Long}``: one form per heading level."""
    out, last = [], 0
    for m in _SECTION.finditer(text):
        if m.start() < last:
            continue
        i = m.end()
        short = bracketed(text, i)
        group = braced(text, skip_space(text, short[1]) if short else i)
        if group is None:
            continue
        out.append(f"{text[last : m.start()]}\\{m.group(1)}{{{group[0].strip()}}}")
        last = group[1]
        stats["headings"] += 1
    out.append(text[last:])
    return "".join(out)


_DECLARATIONS = (
    "bf|it|em|sc|sl|rm|sf|tt|bfseries|itshape|mdseries|upshape|scshape|slshape|rmfamily|sffamily"
    "|ttfamily|normalfont|boldmath|unboldmath|tiny|scriptsize|footnotesize|small|normalsize|large|Large"
    "|LARGE|huge|Huge"
)
_UNWRAP = re.compile(
    r"\\(?:textbf|textit|emph|underline|textsc|textrm|textsf|texttt|textsl|textup|textmd"
    r"|textnormal|mbox|hbox|text|uline|fbox)\s*\{"
    r"|\{(?:\s*\\(?:" + _DECLARATIONS + r")(?![a-zA-Z]))+\s*"
)
_DECLARATION = re.compile(r"\\(?:" + _DECLARATIONS + r")(?![a-zA-Z])[ \t]*")
# A heading command (with its star and [short title]) whose argument the group is: the heading keeps its braces.
_ARGUMENT_BEFORE = re.compile(r"\\(?:" + _HEADING_COMMANDS + r")\*?\s*(?:\[[^\]]*\])?\s*$")


def unwrap_formatting(text: str, stats: Counter) -> str:
    """``\\textbf{x}``, ``\\emph{x}``, ``\\mbox{x}``, ``{\\bf x}`` → ``x``; bare ``\\bf``-style switches go."""
    cuts = []
    for m in _UNWRAP.finditer(text):
        brace = m.end() - 1 if text[m.start()] == "\\" else m.start()
        close = closing_brace(text, brace)
        if close < 0:
            continue
        if brace == m.start() and _ARGUMENT_BEFORE.search(text, max(0, brace - 64), brace):
            cuts += [(m.start() + 1, m.end()), (close, close)]  # `\section{\bf x}`: the heading's own braces
        else:
            cuts += [(m.start(), m.end()), (close, close + 1)]
    if cuts:
        cuts.sort()
        out, last = [], 0
        for start, end in cuts:
            out.append(text[last : max(start, last)])
            last = max(end, last)
        out.append(text[last:])
        text = "".join(out)
        stats["formatting_unwrapped"] += len(cuts) // 2
    return _DECLARATION.sub("", text)


# Bibliography and graphics commands, and TeX's own spacing with a bare dimension: nothing here is paper text.
_UNIT = r"(?:true)?(?:pt|cm|mm|in|em|ex|bp|pc|sp|dd|cc|mu)"
_DIMEN = (
    r"-?(?:[\d.]+\s*" + _UNIT + r"|[\d.]*\s*\\[a-zA-Z@]+)(?:\s+plus\s*-?[\d.]+\s*(?:" + _UNIT + r"|fil+))?"
    r"(?:\s+minus\s*-?[\d.]+\s*(?:" + _UNIT + r"|fil+))?"
)
# Length and count registers papers set in their body (plain TeX style: `\baselineskip=18pt`).
_REGISTERS = (
    "baselineskip|baselinestretch|parindent|parskip|hsize|vsize|hoffset|voffset|textwidth|textheight"
    "|topmargin|oddsidemargin|evensidemargin|headheight|headsep|footskip|columnsep|tabcolsep|arraycolsep"
    "|arraystretch|jot|abovedisplayskip|belowdisplayskip|abovecaptionskip|belowcaptionskip|overfullrule"
    "|unitlength|epsfxsize|epsfysize|linewidth|leftmargin|itemsep|topsep|labelsep|footnotesep|mathsurround"
    "|magnification|tolerance|emergencystretch|hbadness|vbadness|hfuzz|vfuzz|pretolerance|clubpenalty"
    "|widowpenalty|displaywidowpenalty|interlinepenalty"
)
_NON_TEXT = re.compile(
    r"\\begin\{thebibliography\}(?s:.*?)(?:\\end\{thebibliography\}|$)"
    r"|\\(?:bibliography|bibliographystyle|addbibresource|includegraphics|epsfig|psfig|epsffile"
    r"|epsfbox)\*?\s*(?:\[[^\]]*\])?\s*\{[^{}]*\}|\\printbibliography(?:\[[^\]]*\])?"
    r"|\\(?:vskip|hskip|kern|vspace|hspace|mskip|moveleft|moveright|raise|lower)\*?\s*"
    + _DIMEN
    + r"|\\(?:"
    + _REGISTERS
    + r")(?![a-zA-Z])\s*=?\s*(?:\\magstep\s*\d|\d+(?![\d.]*\s*[a-z\\])|"
    + _DIMEN
    + r")"
    r"|\\(?:newdimen|newcount|newskip|newbox|newtoks|newlength|newfam)\s*\{?\s*\\[a-zA-Z@]+\s*\}?"
    r"|\\(?:textfont|scriptfont|scriptscriptfont)\s*\\?\w+\s*=\s*\\[a-zA-Z@]+"
    r"|\\font\s*\\[a-zA-Z@]+\s*=?\s*[\w-]+(?:\s+(?:at\s*[\d.]+\s*" + _UNIT + r"|scaled\s*\\?\w+))?"
)


def drop_non_text(text: str, stats: Counter) -> str:
    """Drop the reference list, ``\\bibliography``, stray ``\\includegraphics`` and TeX spacing."""
    text, count = _NON_TEXT.subn("", text)
    stats["non_text_commands_removed"] += count
    return text


# Layout-only commands, each with its arguments: `o` an optional ``[…]`` and `m` a braced argument,
# both dropped, `k` a braced argument whose content is kept (``\textsuperscript{1}`` → ``1``,
# ``\centerline{x}`` → ``x``). A bare command also takes a following ``{}`` with it (``\today{}``).
# Inside math these are the math's business (``\hspace`` in ``$…$``, ``\quad``): math is hidden first.
LAYOUT_COMMANDS = {
    **dict.fromkeys(
        (
            "xspace",
            "today",
            "maketitle",
            "par",
            "indent",
            "noindent",
            "newpage",
            "clearpage",
            "cleardoublepage",
            "pagebreak",
            "nopagebreak",
            "linebreak",
            "nolinebreak",
            "newline",
            "break",
            "allowbreak",
            "medskip",
            "smallskip",
            "bigskip",
            "vfill",
            "hfill",
            "vfil",
            "hfil",
            "hss",
            "vss",
            "centering",
            "raggedright",
            "raggedleft",
            "sloppy",
            "fussy",
            "protect",
            "relax",
            "tableofcontents",
            "listoffigures",
            "listoftables",
            "makeatletter",
            "makeatother",
            "onecolumn",
            "twocolumn",
            "selectfont",
            "frenchspacing",
            "nonfrenchspacing",
            "and",
            "AND",
            "And",
            "noaffiliation",
            "leavevmode",
            "null",
            "strut",
            "nobreak",
            "quad",
            "qquad",
            "enspace",
            "thinspace",
            "negthinspace",
            "displaystyle",
            "flushbottom",
            "raggedbottom",
            "singlespacing",
            "onehalfspacing",
            "doublespacing",
            "normalbaselines",
            "offinterlineskip",
            "bye",
            "eject",
            "supereject",
            "acknowledgments",
            "acknowledgements",
            "justifying",
            "mainmatter",
            "frontmatter",
            "backmatter",
            "narrower",
            "obeylines",
            "singlespace",
            "doublespace",
            "flushleft",
            "flushright",
        ),
        "",
    ),
    **dict.fromkeys(
        (
            "vspace",
            "hspace",
            "addvspace",
            "thispagestyle",
            "pagestyle",
            "enlargethispage",
            "phantom",
            "hphantom",
            "vphantom",
            "newcounter",
            "stepcounter",
            "refstepcounter",
            "pagenumbering",
            "altaffilmark",
            "inst",
            "IEEEauthorrefmark",
            "thanksref",
            "corref",
            "fnref",
            "tnoteref",
            "footnotetext",
            "color",
            "linespread",
            "setstretch",
            "fontsize",
            "usefont",
            "fontfamily",
            "fontseries",
            "fontshape",
            "DeclareGraphicsExtensions",
            "graphicspath",
            "hypersetup",
            "special",
            "linethickness",
            "setcitestyle",
            "initfloatingfigs",
        ),
        "m",
    ),
    **dict.fromkeys(
        ("setcounter", "addtocounter", "setlength", "addtolength", "settowidth", "settoheight", "settodepth"), "mm"
    ),
    **dict.fromkeys(("footnotemark", "hyphenation"), "o"),
    **dict.fromkeys(
        (
            "textsuperscript",
            "textsubscript",
            "centerline",
            "leftline",
            "rightline",
            "uppercase",
            "lowercase",
            "MakeUppercase",
            "MakeLowercase",
            "nolinkurl",
            "ensuremath",
            "underbar",
            "vbox",
        ),
        "k",
    ),
    **dict.fromkeys(("makebox", "framebox"), "ook"),
    "parbox": "ooomk",
    "raisebox": "mook",
    "textcolor": "mk",
    "colorbox": "mk",
    "fcolorbox": "mmk",
    "scalebox": "mok",
    "resizebox": "mmk",
    "rotatebox": "omk",
    "hyperlink": "mk",
    "hypertarget": "mk",
    "rule": "omm",
    "hrule": "",
    "vrule": "",
    "smash": "ok",
    "adjustbox": "mk",
    "IEEEPARstart": "kk",
}
_LAYOUT_COMMAND = re.compile(r"\\(" + "|".join(sorted(LAYOUT_COMMANDS, key=len, reverse=True)) + r")(?![a-zA-Z@])\*?")
# Environments that only place their content: unwrapped, their text kept (``center`` keeps its lines),
# with the width or options they take (`minipage` has ``[pos]{width}``).
LAYOUT_ENVIRONMENTS = {
    **dict.fromkeys(
        (
            "center",
            "flushleft",
            "flushright",
            "titlepage",
            "singlespace",
            "doublespace",
            "onehalfspace",
            "raggedright",
            "raggedleft",
            "small",
            "footnotesize",
            "scriptsize",
            "tiny",
            "large",
            "Large",
            "normalsize",
            "frontmatter",
            "centering",
            "sloppypar",
            "landscape",
            "samepage",
            "minipage",
            "spacing",
            "multicols",
            "adjustwidth",
            "addmargin",
            "narrow",
            "fullwidth",
            "widetext",
            "linenumbers",
            "strip",
            "bottomstuff",
        ),
        "",
    ),
    "minipage": "oom",
    "spacing": "m",
    "multicols": "mo",
    "adjustwidth": "mm",
    "addmargin": "om",
}
_LAYOUT_ENVIRONMENT = re.compile(
    r"\\(?:begin|end)\s*\{(" + "|".join(sorted(LAYOUT_ENVIRONMENTS, key=len, reverse=True)) + r")\*?\}"
)


def _arguments(text: str, i: int, spec: str) -> tuple[list[str], int]:
    """The kept arguments of a layout command at ``i`` and where it ends; a missing mandatory one ends it."""
    kept = []
    for kind in spec:
        j = skip_space(text, i)
        group = bracketed(text, j) if kind == "o" else braced(text, j)
        if group is None:
            if kind == "o":
                continue
            break
        if kind == "k":
            kept.append(group[0])
        i = group[1]
    return kept, i


def _drop_layout_commands(text: str, stats: Counter) -> str:
    """Each layout command with its arguments; kept arguments are cleaned the same way (``\\vbox{\\centerline{x}}``)."""
    out, last = [], 0
    for m in _LAYOUT_COMMAND.finditer(text):
        if m.start() < last:
            continue
        spec = LAYOUT_COMMANDS[m.group(1)]
        kept, end = _arguments(text, m.end(), spec)
        if not spec and text.startswith("{}", end):
            end += 2
        elif not spec:
            end = _TRAILING_BLANKS.match(text, end).end()
        out.append(text[last : m.start()])
        out.append(_drop_layout_commands("".join(kept), stats) if kept else "")
        last = end
        stats["layout_commands_removed"] += 1
    out.append(text[last:])
    return "".join(out)


def drop_layout(text: str, stats: Counter) -> str:
    """Layout commands go with their arguments (content kept where they have any), layout environments
    keep their text; outside math only (math is hidden by then)."""
    text = _drop_layout_commands(text, stats)
    out, last = [], 0
    for m in _LAYOUT_ENVIRONMENT.finditer(text):
        if m.start() < last:
            continue
        end = m.end()
        if text[m.start() + 1] == "b":
            end = _arguments(text, end, LAYOUT_ENVIRONMENTS[m.group(1)])[1]
        out.append(text[last : m.start()])
        last = end
        stats["layout_environments_unwrapped"] += text[m.start() + 1] == "b"
    out.append(text[last:])
    return "".join(out)


_TRAILING_BLANKS = re.compile(r"[ \t]*")
# An e-mail address (also `{a,b}@host` and a label before it: "E-mail:", "email address:"); a paper's
# authors are not its text, and addresses are personal data wherever they appear.
_EMAIL = re.compile(
    r"(?:(?i:\b(?:e-?mails?|electronic\s+(?:mail|address))(?:\s+address(?:es)?)?)\s*[:.]?\s*)?"
    r"(?:\\?\{[\w.,\s+-]+\\?\}|(?<![\w.+-])[\w.+-]+)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)


# Every character an `_EMAIL` match can consume. No match crosses any other character, and its
# lookbehind and `\b` read such a character as they read the text's edge, so the unanchored pattern
# (slow: ~0.1 µs a character) need only scan the runs of these that hold an `@`.
_EMAIL_RUN = re.compile(r"[\w\s.,+\-{}\\:@]*")


def remove_emails(text: str, stats: Counter) -> str:
    """Remove every e-mail address (and its "E-mail:" label), counted in ``emails_removed``."""
    at = text.find("@")
    if at < 0:
        return text
    reverse, out, last = text[::-1], [], 0
    while at >= 0:
        back = len(text) - at  # where text[at - 1] is in `reverse`
        start = at - (_EMAIL_RUN.match(reverse, back).end() - back)
        end = _EMAIL_RUN.match(text, at).end()
        run, count = _EMAIL.subn("", text[start:end])
        out += [text[last:start], run]
        stats["emails_removed"] += count
        last, at = end, text.find("@", end)
    out.append(text[last:])
    return "".join(out)


_ACCENTED = (
    r"\\(?:['\"`^~=.]\s*(?:\{\s*(?:\\[ij]|[a-zA-Z])\s*\}|\\[ij](?![a-zA-Z])|[a-zA-Z])"
    r"|[uvHckdr](?:\s*\{\s*(?:\\[ij]|[a-zA-Z])\s*\}|[ \t]+[a-zA-Z](?![a-zA-Z]))"
    r"|(?:ss|o|O|aa|AA|ae|AE|oe|OE|l|L|i|j)(?![a-zA-Z])(?:\{\})?)"
)
# The bare form is not wrapped in a group: a branch that starts with `(` instead of a literal costs the
# scan its first-character skip and made the pass three times slower.
_ACCENT = re.compile(r"\{(" + _ACCENTED + r")\}|" + _ACCENTED)


@lru_cache(maxsize=4096)
def _accent_to_unicode(snippet: str) -> str:
    """pylatexenc on one short snippet only: it is far too slow (~0.25 MB/s) for whole documents."""
    from pylatexenc.latex2text import LatexNodes2Text

    return unicodedata.normalize("NFC", LatexNodes2Text().latex_to_text(snippet))


def accents_to_unicode(text: str, stats: Counter) -> str:
    """``\\"o``, ``{\\"u}``, ``\\'{e}``, ``\\v c``, ``\\ss``, ``\\o`` … → ö, ü, é, č, ß, ø (prose only)."""

    def replace(m: re.Match) -> str:
        stats["accents_converted"] += 1
        return _accent_to_unicode(m.group(1) or m.group())

    return _ACCENT.sub(replace, text)


_TIE = re.compile(r"\\~|~")


def ties_to_spaces(text: str) -> str:
    """``~`` is a non-breaking space in prose; ``\\~`` (an accent or literal tilde) is kept."""
    return _TIE.sub(lambda m: " " if len(m.group()) == 1 else m.group(), text) if "~" in text else text


_RESERVED_ENVS = frozenset(MATH_ENVIRONMENTS + tuple("figure table proof document abstract itemize enumerate".split()))


def theorem_environment_name(printed: str) -> str:
    """``Main Theorem`` → ``maintheorem``: the printed name, lowercased, letters only."""
    return "".join(char for char in printed.lower() if char.isalpha())


def rename_theorems(text: str, theorem_names: dict[str, str], stats: Counter) -> str:
    """``\\begin{thm}`` → ``\\begin{theorem}`` when ``\\newtheorem{thm}{Theorem}``; arguments stay."""
    renames = {
        env: name
        for env, printed in theorem_names.items()
        if (name := theorem_environment_name(printed)) and name != env and name not in _RESERVED_ENVS
    }
    if not renames:
        return text
    pattern = re.compile(r"\\(begin|end)\{(" + "|".join(map(re.escape, renames)) + r")\}")

    def replace(m: re.Match) -> str:
        stats["theorem_envs_renamed"] += m.group(1) == "begin"
        return f"\\{m.group(1)}{{{renames[m.group(2)]}}}"

    return pattern.sub(replace, text)


# ----------------------------------------------------------------------------- normalise
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BLANK_RUN = re.compile(r"\n\n\n+")


def normalise(text: str) -> str:
    """Stage 5: NFC, no control characters but ``\\n``/``\\t``, no trailing spaces, ≤ 1 blank line."""
    text = _CONTROL_CHARS.sub("", unicodedata.normalize("NFC", text))
    text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    return _BLANK_RUN.sub("\n\n", text).strip("\n")


def _restore(text: str, token: re.Pattern, store: list[str]) -> str:
    return token.sub(lambda m: store[int(m.group(1))], text) if store else text


# ----------------------------------------------------------------------------- pipeline
def _clean_fragment(text: str, context: dict, stats: Counter, keep_captions: bool) -> str:
    """Expand, transform the prose around hidden math, restore, normalise."""
    text = expand_macros(text, context["macros"], stats)
    math: list[str] = []
    text = hide_math(text, math, stats)
    text = drop_floats(text, stats, keep_captions)
    text = drop_non_text(text, stats)
    text = drop_layout(text, stats)
    text = normalise_sections(text, stats)
    text = replace_references(text, stats)
    text = unwrap_formatting(text, stats)
    text = accents_to_unicode(text, stats)
    text = ties_to_spaces(text)
    text = rename_theorems(text, context["theorems"], stats)
    text = _restore(_restore(text, _MATH_TOKEN, math), _PROTECTED_TOKEN, context["protected"])
    return normalise(remove_emails(text, stats))


def clean_latex(source: str, keep_captions: bool = True) -> CleanedPaper:
    """Clean one assembled LaTeX document (all ``\\input`` expanded) into a :class:`CleanedPaper`."""
    stats: Counter = Counter()
    source = PLACEHOLDER_CHARS.sub("", source.replace("\r\n", "\n").replace("\r", "\n"))
    protected: list[str] = []
    text = strip_comments_and_protect(source, protected, stats)
    text = drop_iffalse(text, stats)
    text, macros, printed_theorems = harvest_definitions(text, stats)
    theorems = {env: _plain_name(printed) for env, printed in printed_theorems.items()}
    text, title, abstract = extract_front_matter(text, stats)
    begin = BEGIN_DOCUMENT.search(text)
    body = text[begin.end() :] if begin else text
    end = END_DOCUMENT.search(body)
    body = body[: end.start()] if end else body
    stats["has_begin_document"] += begin is not None
    if title is None and (title := guess_title(body)) is not None:
        stats["title_guessed"] += 1
    context = {"macros": macros, "theorems": theorems, "protected": protected}
    if title is not None:
        title = " ".join(_clean_fragment(title, context, stats, keep_captions).split()) or None
    if abstract is not None:
        abstract = _clean_fragment(abstract, context, stats, keep_captions) or None
    body = _clean_fragment(body, context, stats, keep_captions)
    return CleanedPaper(title, abstract, body, theorems, stats)
