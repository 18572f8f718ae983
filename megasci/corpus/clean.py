"""Stage 4/5 of the corpus: one assembled LaTeX document → clean, LaTeX-preserving text.

Public pipelines (RedPajama's regex cleaner) drop titles and abstracts, eat the character before
``%`` and drop papers whose macros hold non-ASCII; this module does each step the TeX way instead.

Order: protect (verbatim, ``\\verb``, URLs; comments removed in the same left-to-right lexing
pass) → ``\\iffalse`` blocks → harvest (macros, theorem names, title, abstract, front matter) →
split at ``\\begin{document}``/``\\end{document}`` → expand user macros → transform the prose
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

MAX_EXPANSION_ROUNDS = 10
MAX_EXPANDED_CHARS = 5_000_000

_PROTECT_OPEN, _PROTECT_CLOSE, _MATH_OPEN, _MATH_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
_PLACEHOLDER_CHARS = re.compile("[\ue000-\ue003]")
_PROTECTED_TOKEN = re.compile("\ue000(\\d+)\ue001")
_MATH_TOKEN = re.compile("\ue002(\\d+)\ue003")


@dataclass
class CleanedPaper:
    title: str | None
    abstract: str | None
    text: str
    theorem_names: dict = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class Macro:
    """A user macro: ``nargs`` arguments, the first optional when ``default`` is set."""

    nargs: int
    default: str | None
    parts: tuple  # literal strings at even positions, 1-based argument numbers at odd positions

    @classmethod
    def from_body(cls, body: str, nargs: int = 0, default: str | None = None) -> "Macro":
        pieces = re.split(r"#(\d)", body)
        return cls(nargs, default, tuple(p if k % 2 == 0 else int(p) for k, p in enumerate(pieces)))

    def render(self, args: list[str]) -> str:
        return "".join(p if k % 2 == 0 else (args[p - 1] if p <= len(args) else "")
                       for k, p in enumerate(self.parts))


# ----------------------------------------------------------------------------- brace reading
_BRACE = re.compile(r"\\[{}\\]|[{}]")
_CONTROL_SEQ = re.compile("\\\\([a-zA-Z@]+|[^a-zA-Z@\ue000-\ue003])")


def _closing_brace(text: str, open_pos: int, limit: int = 100_000) -> int:
    """Index of the ``}`` matching the ``{`` at ``open_pos`` (escaped braces skipped), or -1.

    The search stops after ``limit`` characters, so unbalanced braces cannot make a pass quadratic.
    """
    depth = 0
    for m in _BRACE.finditer(text, open_pos, open_pos + limit):
        char = m.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def _braced(text: str, i: int) -> tuple[str, int] | None:
    """(content, index after ``}``) of the group starting at ``i``; None when none starts there."""
    if i >= len(text) or text[i] != "{":
        return None
    close = _closing_brace(text, i)
    return None if close < 0 else (text[i + 1:close], close + 1)


def _bracketed(text: str, i: int) -> tuple[str, int] | None:
    """(content, end) of ``[…]`` at ``i``; a ``]`` inside braces does not close it."""
    if i >= len(text) or text[i] != "[":
        return None
    depth = 0
    for k in range(i + 1, min(len(text), i + 2000)):
        char = text[k]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "]" and depth <= 0:
            return text[i + 1:k], k + 1
    return None


_SPACE = re.compile(r"[ \t\n]*")


def _skip_space(text: str, i: int) -> int:
    return _SPACE.match(text, i).end()


def _csname(text: str, i: int) -> tuple[str, int] | None:
    """Name of ``\\name`` or ``{\\name}`` at ``i`` (as in ``\\newcommand\\x`` / ``{\\x}``)."""
    group = _braced(text, i)
    if group is not None:
        inner = group[0].strip()
        m = _CONTROL_SEQ.fullmatch(inner)
        return (m.group(1), group[1]) if m else None
    m = _CONTROL_SEQ.match(text, i)
    return (m.group(1), m.end()) if m else None


# ----------------------------------------------------------------------------- protect + comments
# Every top-level branch starts with a literal so that the regex engine can skip ahead quickly.
_LEX = re.compile(r"""
  \\(?:\\ | %
     | (?P<verbatim>begin\{(?P<vname>verbatim\*?|Verbatim\*?|lstlisting|minted|alltt)\}(?s:.*?)\\end\{(?P=vname)\})
     | (?P<comment_env>begin\{comment\}(?s:.*?)\\end\{comment\})
     | (?P<verb>verb\*?(?P<delim>[^a-zA-Z\s*]).*?(?P=delim))
     | (?P<url>url\s*\{[^{}\n]*\}|href\s*\{[^{}\n]*\}))
| %[^\n]*(?P<newline>\n[ \t]*)?
""", re.X)


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
                out.append(text[last:max(last, line_start)])
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
            out.append(f"{_PROTECT_OPEN}{len(protected)}{_PROTECT_CLOSE}")
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
                out.append(text[last:m.start()])
                depth, block_start, in_else, last = 1, m.start(), False, m.end()
            continue
        if m.group(1) or m.group(2):
            depth += 1
        elif m.group(3) and depth == 1 and not in_else:
            in_else, last = True, _skip_space(text, m.end())
        elif m.group(4):
            depth -= 1
            if depth == 0:
                if in_else:
                    out.append(text[last:m.start()])
                last = m.end()
                stats["iffalse_removed"] += 1
    out.append(text[block_start:] if depth else text[last:])
    return "".join(out)


# ----------------------------------------------------------------------------- harvest
_DEFINERS = ("newcommand|renewcommand|providecommand|DeclareRobustCommand|DeclareMathOperator|[gex]?def|let"
             "|newtheorem|newenvironment|renewenvironment")
# ``\newcommand{\nc}{\newcommand}`` then ``\nc{\R}{…}``: shorthands for definers are definers too.
_DEFINER_SHORTHAND = re.compile(r"\\(?:newcommand|renewcommand|providecommand|[gex]?def|let)\s*\{?\s*\\([a-zA-Z]+)"
                                r"\s*\}?\s*=?\s*\{?\s*\\(" + _DEFINERS + r")(?![a-zA-Z])\s*(?:\}|(?=\s))")


@lru_cache(maxsize=64)
def _definer_pattern(shorthands: tuple[str, ...]) -> re.Pattern:
    names = "|".join((_DEFINERS, *shorthands))
    return re.compile(r"\\(" + names + r")(?![a-zA-Z])(\*?)")
_SIMPLE_PARAMS = re.compile(r"\s*(?:#\d\s*)*")
# User redefinitions of these would break later passes (or are internals): they are never expanded.
_NEVER_EXPAND = frozenset(("begin end item label ref eqref cite caption title author abstract footnote "
                           "maketitle par includegraphics verb url href input include document part chapter "
                           "section subsection subsubsection paragraph subparagraph newcommand renewcommand "
                           "def let").split())


def _parse_definition(text: str, m: re.Match, kind: str) -> tuple[int, str | None, object] | None:
    """(end, name, Macro | theorem name | alias target) for the definition at ``m``; None if malformed."""
    star, i = m.group(2), _skip_space(text, m.end())
    if kind == "newtheorem":
        env = _braced(text, i)
        if env is None:
            return None
        i = _skip_space(text, env[1])
        shared = _bracketed(text, i)
        i = _skip_space(text, shared[1]) if shared else i
        printed = _braced(text, i)
        if printed is None:
            return None
        end = printed[1]
        counter = _bracketed(text, _skip_space(text, end))
        return (counter[1] if counter else end), env[0].strip(), ("theorem", printed[0])
    if kind.endswith("environment"):
        name = _braced(text, i)
        if name is None:
            return None
        i = _skip_space(text, name[1])
        for _ in range(2):
            optional = _bracketed(text, i)
            i = _skip_space(text, optional[1]) if optional else i
        begin = _braced(text, i)
        finish = begin and _braced(text, _skip_space(text, begin[1]))
        return (finish[1], None, None) if finish else None
    name = _csname(text, i)
    if name is None:
        return None
    name, i = name
    if kind == "let":
        i = _skip_space(text, i)
        if text.startswith("=", i):
            i = _skip_space(text, i + 1)
        target = _CONTROL_SEQ.match(text, i)
        if target:
            return target.end(), name, ("alias", target.group(1))
        return (i + 1, name, Macro.from_body(text[i])) if i < len(text) else None
    if kind == "DeclareMathOperator":
        body = _braced(text, _skip_space(text, i))
        return body and (body[1], name, Macro.from_body(f"\\operatorname{star}{{{body[0]}}}"))
    if kind.endswith("def"):
        brace = text.find("{", i)
        if brace < 0 or brace - i > 200:
            return None
        body = _braced(text, brace)
        if body is None:
            return None
        params = text[i:brace]
        simple = _SIMPLE_PARAMS.fullmatch(params) is not None
        return body[1], name, (Macro.from_body(body[0], params.count("#")) if simple else None)
    i = _skip_space(text, i)
    nargs, default = 0, None
    count = _bracketed(text, i)
    if count:
        if not count[0].strip().isdigit():
            return None
        nargs, i = int(count[0]), _skip_space(text, count[1])
        optional = _bracketed(text, i)
        if optional:
            default, i = optional[0], _skip_space(text, optional[1])
    body = _braced(text, i)
    if body is None:
        return None
    if kind == "providecommand":
        return body[1], name, ("provide", Macro.from_body(body[0], nargs, default))
    return body[1], name, Macro.from_body(body[0], nargs, default)


def _expandable(name: str, macro: Macro) -> bool:
    body = "".join(p for p in macro.parts if isinstance(p, str))
    return name not in _NEVER_EXPAND and "@" not in name and "\\@" not in body and "##" not in body


def harvest_definitions(text: str, stats: Counter) -> tuple[str, dict[str, Macro], dict[str, str]]:
    """Collect macros and theorem names from the whole document and cut their definitions out.

    ``\\let\\a\\b`` copies ``\\b`` if it is a user macro at that point; otherwise ``\\a`` becomes
    ``\\b`` itself, unless ``\\b`` is redefined later (the usual ``\\let\\oldvec\\vec`` before
    ``\\renewcommand\\vec``), where expanding would loop, so ``\\a`` stays as written.
    """
    macros: dict[str, Macro] = {}
    builtin_aliases: dict[str, str] = {}
    theorems: dict[str, str] = {}
    out, last = [], 0
    shorthands = dict(_DEFINER_SHORTHAND.findall(text)) if "\\" in text else {}
    for m in _definer_pattern(tuple(sorted(shorthands))).finditer(text):
        if m.start() < last:
            continue
        parsed = _parse_definition(text, m, shorthands.get(m.group(1), m.group(1)))
        if parsed is None:
            stats["definitions_unparsed"] += 1
            continue
        end, name, value = parsed
        out.append(text[last:m.start()])
        last = end
        if isinstance(value, tuple) and value[0] == "theorem":
            theorems[name] = _plain_name(value[1])
        elif isinstance(value, tuple) and value[0] == "alias":
            if value[1] in macros:
                macros[name] = macros[value[1]]
            else:
                macros[name] = Macro.from_body(f"\\{value[1]}")
                builtin_aliases[name] = value[1]
        elif isinstance(value, tuple) and value[0] == "provide":
            macros.setdefault(name, value[1])
        elif isinstance(value, Macro) and _expandable(name, value) and name not in shorthands:
            macros[name] = value
            stats["macros_defined"] += 1
        elif name is not None:
            macros.pop(name, None)
            stats["macros_not_expanded"] += 1
    out.append(text[last:])
    for alias, target in builtin_aliases.items():
        if target in macros and macros.get(alias) == Macro.from_body(f"\\{target}"):
            del macros[alias]
    return "".join(out), macros, theorems


def _plain_name(printed: str) -> str:
    """``{\\bf Th\\'eor\\`eme}`` → ``Théorème``: a printed theorem name without markup."""
    return re.sub(r"\\[a-zA-Z]+\s*|[{}]", "", accents_to_unicode(printed, Counter())).strip()


_FRONT_MATTER = re.compile(r"\\(title|author|address|affiliation|affil|institute|email|date|thanks)"
                           r"(?![a-zA-Z])\s*(?:\[[^\]]*\]\s*)?(?=\{)")
_ABSTRACT_ENV = re.compile(r"\\begin\{abstract\}(?s:(.*?))\\end\{abstract\}")
_ABSTRACT_CMD = re.compile(r"\\abstract\s*(?=\{)")
_THANKS = re.compile(r"\\thanks\s*\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}")  # braces nest two deep


def extract_front_matter(text: str, stats: Counter) -> tuple[str, str | None, str | None]:
    """(text without front matter, raw title, raw abstract).

    The first ``\\title`` gives the title (``\\thanks`` dropped, ``\\\\`` → space); the first
    ``abstract`` environment or ``\\abstract{…}`` the abstract. Author, address, e-mail and date
    commands are dropped with a trailing comma: names and addresses are not paper text.
    """
    title = abstract = None
    out, last = [], 0
    for m in _FRONT_MATTER.finditer(text):
        if m.start() < last:
            continue
        group = _braced(text, m.end())
        if group is None:
            continue
        out.append(text[last:m.start()])
        last = group[1]
        if text.startswith(",", last):
            last += 1
        if m.group(1) == "title" and title is None:
            title = _THANKS.sub("", group[0]).replace("\\\\", " ")
    out.append(text[last:])
    text = "".join(out)
    m = _ABSTRACT_ENV.search(text)
    if m:
        abstract, text = m.group(1), text[:m.start()] + text[m.end():]
    else:
        m = _ABSTRACT_CMD.search(text)
        group = m and _braced(text, m.end())
        if group:
            abstract, text = group[0], text[:m.start()] + text[group[1]:]
    stats["title_found"] += title is not None
    stats["abstract_found"] += abstract is not None
    return text, title, abstract


_HEURISTIC_TITLE = re.compile(r"\{\s*(?:\\(?:large|Large|LARGE|huge|Huge|bf|bfseries)(?![a-zA-Z])\s*)+"
                              r"([^{}\\$]{4,300}?)\s*(?:\\\\|\\break)?\s*\}")


def guess_title(body: str) -> str | None:
    """Title of papers without ``\\title`` (LaTeX 2.09 era): the first big bold group up front."""
    m = _HEURISTIC_TITLE.search(body, 0, 5000)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- macro expansion
_ENDS_IN_CONTROL_WORD = re.compile(r"\\[a-zA-Z]+$")


def _macro_args(text: str, i: int, macro: Macro) -> tuple[list[str], int] | None:
    """Arguments after a macro at ``i``: braced groups or single tokens, as TeX reads them."""
    args, wanted = [], macro.nargs
    if macro.default is not None:
        j = _skip_space(text, i)
        optional = _bracketed(text, j)
        args.append(optional[0] if optional else macro.default)
        i, wanted = (optional[1] if optional else i), wanted - 1
    for _ in range(wanted):
        j = _skip_space(text, i)
        if j >= len(text) or text[j] in "}]":
            return None
        char = text[j]
        if char == "{":
            group = _braced(text, j)
            if group is None:
                return None
            args.append(group[0])
            i = group[1]
        elif char == "\\":
            token = _CONTROL_SEQ.match(text, j)
            if token is None:
                return None
            args.append(token.group())
            i = token.end()
        elif char in (_PROTECT_OPEN, _MATH_OPEN):
            close = text.find(chr(ord(char) + 1), j)
            args.append(text[j:close + 1])
            i = close + 1
        else:
            args.append(char)
            i = j + 1
    return args, i


def _expand_once(text: str, macros: dict[str, Macro], cap: int, stats: Counter) -> tuple[str, int, bool]:
    """One left-to-right pass expanding every macro call once; also says whether a call made a new one.

    Replacements are not rescanned within the pass (the next pass does that, if needed).
    """
    out, last, count, size, rescan = [], 0, 0, len(text), False
    for m in _CONTROL_SEQ.finditer(text):
        if m.start() < last:
            continue
        macro = macros.get(m.group(1))
        if macro is None:
            continue
        if macro.nargs:
            parsed = _macro_args(text, m.end(), macro)
            if parsed is None:
                stats["macro_missing_args"] += 1
                continue
            args, end = parsed
        else:  # ``\foo{}`` is the idiom for "keep the space after me": the empty group goes too
            args, end = [], m.end() + 2 if text.startswith("{}", m.end()) else m.end()
        replacement = macro.render(args)
        if end < len(text) and text[end].isalpha() and _ENDS_IN_CONTROL_WORD.search(replacement):
            replacement += " "
        out.append(text[last:m.start()])
        out.append(replacement)
        last, count = end, count + 1
        rescan = rescan or any(name in macros for name in _CONTROL_SEQ.findall(replacement))
        size += len(replacement) - (end - m.start())
        if size > cap:
            break
    out.append(text[last:])
    return "".join(out), count, rescan


def expand_macros(text: str, macros: dict[str, Macro], stats: Counter) -> str:
    """Expand user macros to a fixed point, at most ``MAX_EXPANSION_ROUNDS`` passes.

    Growth is capped at twice the input (plus 4 KiB so tiny texts may grow) and at
    ``MAX_EXPANDED_CHARS``; a recursive ``\\def\\a{\\a x}`` thus stops, counted in stats.
    """
    if not macros or "\\" not in text:
        return text
    cap = min(2 * len(text) + 4096, MAX_EXPANDED_CHARS)
    for _ in range(MAX_EXPANSION_ROUNDS):
        text, count, rescan = _expand_once(text, macros, cap, stats)
        stats["macros_expanded"] += count
        if len(text) > cap:
            stats["macro_growth_capped"] += 1
            return text
        if not rescan:
            return text
    stats["macro_depth_capped"] += 1
    return text


# ----------------------------------------------------------------------------- prose transforms
_MATH_ENVS = "equation|align|alignat|gather|multline|eqnarray|flalign|displaymath|math|dmath"
_MATH = re.compile(r"""
  \\(?:\\ | \$
     | (?P<paren>\((?s:.*?)\\\))
     | (?P<bracket>\[(?s:.*?)\\\])
     | (?P<env>begin\{(?P<name>(?:""" + _MATH_ENVS + r""")\*?)\}(?s:.*?)\\end\{(?P=name)\}))
| \$\$(?s:.+?)\$\$
| \$[^$\\]*(?s:\\.[^$\\]*)*\$
""", re.X)


def hide_math(text: str, store: list[str], stats: Counter) -> str:
    """Replace every math span by a placeholder so that no prose rule can touch it."""
    def hide(m: re.Match) -> str:
        if m.group()[0] != "$" and m.lastgroup not in ("paren", "bracket", "env"):
            return m.group()
        store.append(m.group())
        return f"{_MATH_OPEN}{len(store) - 1}{_MATH_CLOSE}"

    hidden = _MATH.sub(hide, text)
    stats["math_spans"] += len(store)
    return hidden


_FLOAT = re.compile(r"\\begin\{(?P<env>(?:figure|table|wrapfigure|wraptable|sidewaysfigure|sidewaystable|SCfigure"
                    r"|picture)\*?)\}(?s:.*?)\\end\{(?P=env)\}")
_CAPTION = re.compile(r"\\caption\*?\s*(?:\[[^\]]*\]\s*)?(?=\{)")


def drop_floats(text: str, stats: Counter, keep_captions: bool = True) -> str:
    """Drop figures and tables; each ``\\caption{…}`` becomes a paragraph of its own."""
    def replace(m: re.Match) -> str:
        stats["floats_dropped"] += 1
        if not keep_captions:
            return "\n"
        captions = [group[0].strip() for c in _CAPTION.finditer(m.group())
                    if (group := _braced(m.group(), c.end()))]
        stats["captions_kept"] += len(captions)
        return "".join(f"\n\n{caption}\n\n" for caption in captions) or "\n"

    return _FLOAT.sub(replace, text)


_REFERENCE = re.compile(r"\\(?:(?P<cite>[cC]ite[a-zA-Z]*)|(?P<ref>ref|eqref|autoref|Autoref|cref|Cref|pageref"
                        r"|vref|nameref)|(?P<gone>label|nocite))\*?\s*(?:\[[^\]]*\]\s*){0,2}\{[^{}]*\}")


def replace_references(text: str, stats: Counter) -> str:
    """``\\cite…`` → ``[CITATION]``, ``\\ref``-likes → ``[REF]``, ``\\label``/``\\nocite`` removed."""
    def replace(m: re.Match) -> str:
        kind = m.lastgroup
        stats[f"{kind}_replaced"] += 1
        return "[CITATION]" if kind == "cite" else "[REF]" if kind == "ref" else ""

    return _REFERENCE.sub(replace, text)


_SECTION = re.compile(r"\\(part|chapter|section|subsection|subsubsection|paragraph|subparagraph)\*?(?![a-zA-Z])\s*")


def normalise_sections(text: str, stats: Counter) -> str:
    """``\\section*[short]{Long}`` → ``\\section{Long}``: one form per heading level."""
    out, last = [], 0
    for m in _SECTION.finditer(text):
        if m.start() < last:
            continue
        i = m.end()
        short = _bracketed(text, i)
        group = _braced(text, _skip_space(text, short[1]) if short else i)
        if group is None:
            continue
        out.append(f"{text[last:m.start()]}\\{m.group(1)}{{{group[0].strip()}}}")
        last = group[1]
        stats["headings"] += 1
    out.append(text[last:])
    return "".join(out)


_DECLARATIONS = ("bf|it|em|sc|sl|rm|sf|tt|bfseries|itshape|mdseries|upshape|scshape|slshape|rmfamily|sffamily"
                 "|ttfamily|normalfont|boldmath|unboldmath|tiny|scriptsize|footnotesize|small|normalsize|large|Large"
                 "|LARGE|huge|Huge")
_UNWRAP = re.compile(r"\\(?:textbf|textit|emph|underline|textsc|textrm|textsf|texttt|textsl|textup|textmd"
                     r"|textnormal|mbox|hbox|text|uline|fbox)\s*\{"
                     r"|\{(?:\s*\\(?:" + _DECLARATIONS + r")(?![a-zA-Z]))+\s*")
_DECLARATION = re.compile(r"\\(?:" + _DECLARATIONS + r")(?![a-zA-Z])[ \t]*")


def unwrap_formatting(text: str, stats: Counter) -> str:
    """``\\textbf{x}``, ``\\emph{x}``, ``\\mbox{x}``, ``{\\bf x}`` → ``x``; bare ``\\bf``-style switches go."""
    cuts = []
    for m in _UNWRAP.finditer(text):
        brace = m.end() - 1 if text[m.start()] == "\\" else m.start()
        close = _closing_brace(text, brace)
        if close >= 0:
            cuts += [(m.start(), m.end()), (close, close + 1)]
    if cuts:
        cuts.sort()
        out, last = [], 0
        for start, end in cuts:
            out.append(text[last:max(start, last)])
            last = max(end, last)
        out.append(text[last:])
        text = "".join(out)
        stats["formatting_unwrapped"] += len(cuts) // 2
    return _DECLARATION.sub("", text)


# Bibliography, graphics, spacing, page layout and title-page commands: nothing here is paper text.
_NON_TEXT = re.compile(r"\\begin\{thebibliography\}(?s:.*?)(?:\\end\{thebibliography\}|$)"
                       r"|\\(?:bibliography|bibliographystyle|addbibresource|includegraphics)\*?\s*"
                       r"(?:\[[^\]]*\])?\s*\{[^{}]*\}|\\printbibliography(?:\[[^\]]*\])?"
                       r"|\\(?:vspace|hspace|addvspace|thispagestyle|pagestyle|enlargethispage)\*?\s*\{[^{}]*\}"
                       r"|\\(?:setcounter|addtocounter|setlength|addtolength)\s*\{[^{}]*\}\s*\{[^{}]*\}"
                       r"|\\(?:vskip|hskip|kern)\s*-?[\d.]+\s*(?:true)?(?:pt|cm|mm|in|em|ex|bp|pc|sp|dd|cc)"
                       r"|\\(?:medskip|smallskip|bigskip|noindent|indent|newpage|clearpage|cleardoublepage|pagebreak"
                       r"|nopagebreak|linebreak|break|vfill|hfill|centering|raggedright|raggedleft|sloppy|fussy"
                       r"|maketitle|tableofcontents|listoffigures|listoftables|makeatletter|makeatother|protect"
                       r")(?![a-zA-Z])[ \t]*")


def drop_non_text(text: str, stats: Counter) -> str:
    """Drop the reference list, ``\\bibliography``, stray ``\\includegraphics`` and layout commands."""
    text, count = _NON_TEXT.subn("", text)
    stats["non_text_commands_removed"] += count
    return text


_ACCENTED = (r"\\(?:['\"`^~=.]\s*(?:\{\s*(?:\\[ij]|[a-zA-Z])\s*\}|\\[ij](?![a-zA-Z])|[a-zA-Z])"
             r"|[uvHckdr](?:\s*\{\s*(?:\\[ij]|[a-zA-Z])\s*\}|[ \t]+[a-zA-Z](?![a-zA-Z]))"
             r"|(?:ss|o|O|aa|AA|ae|AE|oe|OE|l|L|i|j)(?![a-zA-Z])(?:\{\})?)")
_ACCENT = re.compile(r"\{(" + _ACCENTED + r")\}|(" + _ACCENTED + ")")


@lru_cache(maxsize=4096)
def _accent_to_unicode(snippet: str) -> str:
    """pylatexenc on one short snippet only: it is far too slow (~0.25 MB/s) for whole documents."""
    from pylatexenc.latex2text import LatexNodes2Text

    return unicodedata.normalize("NFC", LatexNodes2Text().latex_to_text(snippet))


def accents_to_unicode(text: str, stats: Counter) -> str:
    """``\\"o``, ``{\\"u}``, ``\\'{e}``, ``\\v c``, ``\\ss``, ``\\o`` … → ö, ü, é, č, ß, ø (prose only)."""
    def replace(m: re.Match) -> str:
        stats["accents_converted"] += 1
        return _accent_to_unicode(m.group(1) or m.group(2))

    return _ACCENT.sub(replace, text)


_TIE = re.compile(r"\\~|~")


def ties_to_spaces(text: str) -> str:
    """``~`` is a non-breaking space in prose; ``\\~`` (an accent or literal tilde) is kept."""
    return _TIE.sub(lambda m: " " if len(m.group()) == 1 else m.group(), text) if "~" in text else text


_RESERVED_ENVS = frozenset(_MATH_ENVS.split("|") + "figure table proof document abstract itemize enumerate".split())


def theorem_environment_name(printed: str) -> str:
    """``Main Theorem`` → ``maintheorem``: the printed name, lowercased, letters only."""
    return "".join(char for char in printed.lower() if char.isalpha())


def rename_theorems(text: str, theorem_names: dict[str, str], stats: Counter) -> str:
    """``\\begin{thm}`` → ``\\begin{theorem}`` when ``\\newtheorem{thm}{Theorem}``; arguments stay."""
    renames = {env: name for env, printed in theorem_names.items()
               if (name := theorem_environment_name(printed)) and name != env and name not in _RESERVED_ENVS}
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
_BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")
_END_DOCUMENT = re.compile(r"\\end\s*\{document\}")


def _clean_fragment(text: str, context: dict, stats: Counter, keep_captions: bool) -> str:
    """Expand, transform the prose around hidden math, restore, normalise."""
    text = expand_macros(text, context["macros"], stats)
    math: list[str] = []
    text = hide_math(text, math, stats)
    text = drop_floats(text, stats, keep_captions)
    text = drop_non_text(text, stats)
    text = normalise_sections(text, stats)
    text = replace_references(text, stats)
    text = unwrap_formatting(text, stats)
    text = accents_to_unicode(text, stats)
    text = ties_to_spaces(text)
    text = rename_theorems(text, context["theorems"], stats)
    text = _restore(_restore(text, _MATH_TOKEN, math), _PROTECTED_TOKEN, context["protected"])
    return normalise(text)


def clean_latex(source: str, keep_captions: bool = True) -> CleanedPaper:
    """Clean one assembled LaTeX document (all ``\\input`` expanded) into a :class:`CleanedPaper`."""
    stats: Counter = Counter()
    source = _PLACEHOLDER_CHARS.sub("", source.replace("\r\n", "\n").replace("\r", "\n"))
    protected: list[str] = []
    text = strip_comments_and_protect(source, protected, stats)
    text = drop_iffalse(text, stats)
    text, macros, theorems = harvest_definitions(text, stats)
    text, title, abstract = extract_front_matter(text, stats)
    begin = _BEGIN_DOCUMENT.search(text)
    body = text[begin.end():] if begin else text
    end = _END_DOCUMENT.search(body)
    body = body[:end.start()] if end else body
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
