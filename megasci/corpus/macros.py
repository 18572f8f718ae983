"""User macros: harvesting ``\\newcommand``/``\\def``/``\\let``/``\\newtheorem`` and expanding the calls.

The cleaner expands user macros before its prose rules run, so that ``\\R`` becomes ``\\mathbb{R}``
and ``\\eg`` becomes text: what a macro prints, not its name, is what the corpus keeps. Definitions
are read the TeX way (arguments, optional defaults, definer shorthands); whatever cannot be read
safely is left as written and counted.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from megasci.corpus.latex import CONTROL_SEQUENCE, MATH_OPEN, PROTECT_OPEN, braced, bracketed, csname, skip_space

MAX_EXPANSION_ROUNDS = 10
MAX_EXPANDED_CHARS = 5_000_000


@dataclass(frozen=True)
class Macro:
    """A user macro: ``nargs`` arguments, the first optional when ``default`` is set."""

    nargs: int
    default: str | None
    parts: tuple  # literal strings at even positions, 1-based argument numbers at odd positions

    @classmethod
    def from_body(cls, body: str, nargs: int = 0, default: str | None = None) -> Macro:
        pieces = re.split(r"#(\d)", body)
        return cls(nargs, default, tuple(p if k % 2 == 0 else int(p) for k, p in enumerate(pieces)))

    def render(self, args: list[str]) -> str:
        if len(self.parts) == 1:  # a body without parameters, the common case: no join per call
            return self.parts[0]
        return "".join(p if k % 2 == 0 else (args[p - 1] if p <= len(args) else "") for k, p in enumerate(self.parts))


_DEFINERS = (
    "newcommand|renewcommand|providecommand|DeclareRobustCommand|DeclareMathOperator|[gex]?def|let"
    "|newtheorem|newenvironment|renewenvironment"
)
# ``\newcommand{\nc}{\newcommand}`` then ``\nc{\R}{…}``: shorthands for definers are definers too.
_DEFINER_SHORTHAND = re.compile(
    r"\\(?:newcommand|renewcommand|providecommand|[gex]?def|let)\s*\{?\s*\\([a-zA-Z]+)"
    r"\s*\}?\s*=?\s*\{?\s*\\(" + _DEFINERS + r")(?![a-zA-Z])\s*(?:\}|(?=\s))"
)


@lru_cache(maxsize=64)
def _definer_pattern(shorthands: tuple[str, ...]) -> re.Pattern:
    names = "|".join((_DEFINERS, *shorthands))
    return re.compile(r"\\(" + names + r")(?![a-zA-Z])(\*?)")


_SIMPLE_PARAMS = re.compile(r"\s*(?:#\d\s*)*")
# User redefinitions of these would break later passes (or are internals): they are never expanded.
_NEVER_EXPAND = frozenset(
    (
        "begin end item label ref eqref cite caption title author abstract footnote "
        "maketitle par includegraphics verb url href input include document part chapter "
        "section subsection subsubsection paragraph subparagraph newcommand renewcommand "
        "def let"
    ).split()
)


def _parse_definition(text: str, m: re.Match, kind: str) -> tuple[int, str | None, object] | None:
    """(end, name, Macro | theorem name | alias target) for the definition at ``m``; None if malformed."""
    star, i = m.group(2), skip_space(text, m.end())
    if kind == "newtheorem":
        env = braced(text, i)
        if env is None:
            return None
        i = skip_space(text, env[1])
        shared = bracketed(text, i)
        i = skip_space(text, shared[1]) if shared else i
        printed = braced(text, i)
        if printed is None:
            return None
        end = printed[1]
        counter = bracketed(text, skip_space(text, end))
        return (counter[1] if counter else end), env[0].strip(), ("theorem", printed[0])
    if kind.endswith("environment"):
        name = braced(text, i)
        if name is None:
            return None
        i = skip_space(text, name[1])
        for _ in range(2):
            optional = bracketed(text, i)
            i = skip_space(text, optional[1]) if optional else i
        begin = braced(text, i)
        finish = begin and braced(text, skip_space(text, begin[1]))
        return (finish[1], None, None) if finish else None
    name = csname(text, i)
    if name is None:
        return None
    name, i = name
    if kind == "let":
        i = skip_space(text, i)
        if text.startswith("=", i):
            i = skip_space(text, i + 1)
        target = CONTROL_SEQUENCE.match(text, i)
        if target:
            return target.end(), name, ("alias", target.group(1))
        return (i + 1, name, Macro.from_body(text[i])) if i < len(text) else None
    if kind == "DeclareMathOperator":
        body = braced(text, skip_space(text, i))
        return body and (body[1], name, Macro.from_body(f"\\operatorname{star}{{{body[0]}}}"))
    if kind.endswith("def"):
        brace = text.find("{", i)
        if brace < 0 or brace - i > 200:
            return None
        body = braced(text, brace)
        if body is None:
            return None
        params = text[i:brace]
        simple = _SIMPLE_PARAMS.fullmatch(params) is not None
        return body[1], name, (Macro.from_body(body[0], params.count("#")) if simple else None)
    i = skip_space(text, i)
    nargs, default = 0, None
    count = bracketed(text, i)
    if count:
        if not count[0].strip().isdigit():
            return None
        nargs, i = int(count[0]), skip_space(text, count[1])
        optional = bracketed(text, i)
        if optional:
            default, i = optional[0], skip_space(text, optional[1])
    body = braced(text, i)
    if body is None:
        return None
    if kind == "providecommand":
        return body[1], name, ("provide", Macro.from_body(body[0], nargs, default))
    return body[1], name, Macro.from_body(body[0], nargs, default)


def _expandable(name: str, macro: Macro) -> bool:
    body = "".join(p for p in macro.parts if isinstance(p, str))
    return name not in _NEVER_EXPAND and "@" not in name and "\\@" not in body and "##" not in body


def harvest_definitions(text: str, stats: Counter) -> tuple[str, dict[str, Macro], dict[str, str]]:
    """Collect macros and theorem names (as printed, markup included) and cut their definitions out.

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
        out.append(text[last : m.start()])
        last = end
        if isinstance(value, tuple) and value[0] == "theorem":
            theorems[name] = value[1]
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


_ENDS_IN_CONTROL_WORD = re.compile(r"\\[a-zA-Z]+$")


def _macro_args(text: str, i: int, macro: Macro) -> tuple[list[str], int] | None:
    """Arguments after a macro at ``i``: braced groups or single tokens, as TeX reads them."""
    args, wanted = [], macro.nargs
    if macro.default is not None:
        j = skip_space(text, i)
        optional = bracketed(text, j)
        args.append(optional[0] if optional else macro.default)
        i, wanted = (optional[1] if optional else i), wanted - 1
    for _ in range(wanted):
        j = skip_space(text, i)
        if j >= len(text) or text[j] in "}]":
            return None
        char = text[j]
        if char == "{":
            group = braced(text, j)
            if group is None:
                return None
            args.append(group[0])
            i = group[1]
        elif char == "\\":
            token = CONTROL_SEQUENCE.match(text, j)
            if token is None:
                return None
            args.append(token.group())
            i = token.end()
        elif char in (PROTECT_OPEN, MATH_OPEN):
            close = text.find(chr(ord(char) + 1), j)
            args.append(text[j : close + 1])
            i = close + 1
        else:
            args.append(char)
            i = j + 1
    return args, i


@lru_cache(maxsize=64)
def _calls_pattern(names: tuple[str, ...]) -> re.Pattern:
    """Finds the calls of these macros as `CONTROL_SEQUENCE` would read them, skipping the rest: an
    escaped backslash is consumed (so `\\\\foo` is no call), a control word must end where its letters end.
    Scanning only for the user's names keeps expansion off the text's thousands of other commands."""
    words = [re.escape(name) for name in names if re.fullmatch(r"[a-zA-Z@]+", name)]
    symbols = [re.escape(name) for name in names if not re.fullmatch(r"[a-zA-Z@]+", name)]
    alternatives = symbols + ([f"(?:{'|'.join(sorted(words, key=len, reverse=True))})(?![a-zA-Z@])"] if words else [])
    return re.compile(r"\\(?:(" + "|".join(alternatives or ["(?!)"]) + r")|\\)")


def _expand_once(text: str, macros: dict[str, Macro], cap: int, stats: Counter) -> tuple[str, int, bool]:
    """One left-to-right pass expanding every macro call once; also says whether a call made a new one.

    Replacements are not rescanned within the pass (the next pass does that, if needed).
    """
    out, last, count, size, rescan = [], 0, 0, len(text), False
    calls = _calls_pattern(tuple(sorted(macros)))
    for m in calls.finditer(text):
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
        out.append(text[last : m.start()])
        out.append(replacement)
        last, count = end, count + 1
        rescan = rescan or any(m.group(1) for m in calls.finditer(replacement))
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
