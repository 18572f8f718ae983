"""Canonical arXiv identifiers, so metadata lines, bulk-tar members and uploaded files join on one key.

Canonical forms are the ones the public metadata snapshot uses:

- new style ``YYMM.NNNN`` (April 2007 to December 2014) or ``YYMM.NNNNN`` (from January 2015);
- old style ``archive/YYMMNNN`` (August 1991 to March 2007), e.g. ``math/0303004``.

Old-style ids written with a subject class (``math.GT/0309136``) canonicalise to the bare archive
(``math/0309136``): arXiv numbered old-style papers per archive, not per subject class, its abstract
pages redirect the long form to the short one, and the snapshot spells only the short form.
Versions (``v3``), an ``arXiv:`` prefix and archive file extensions are dropped.
"""

from __future__ import annotations

import re

OLD_STYLE_ARCHIVES = (
    "acc-phys",
    "adap-org",
    "alg-geom",
    "ao-sci",
    "astro-ph",
    "atom-ph",
    "bayes-an",
    "chao-dyn",
    "chem-ph",
    "cmp-lg",
    "comp-gas",
    "cond-mat",
    "cs",
    "dg-ga",
    "funct-an",
    "gr-qc",
    "hep-ex",
    "hep-lat",
    "hep-ph",
    "hep-th",
    "math",
    "math-ph",
    "mtrl-th",
    "nlin",
    "nucl-ex",
    "nucl-th",
    "patt-sol",
    "physics",
    "plasm-ph",
    "q-alg",
    "q-bio",
    "quant-ph",
    "solv-int",
    "supr-con",
)
"""Every archive that issued old-style ids; bulk-tar member names glue these to the number
(``math-ph0303004``), so splitting them back needs the list rather than a guess at where letters end."""

_ARCHIVE = "|".join(re.escape(a) for a in sorted(OLD_STYLE_ARCHIVES, key=len, reverse=True))
_FILE_EXTENSIONS = (".tar.gz", ".tgz", ".tar", ".gz", ".pdf")
_VERSION = re.compile(r"v[1-9][0-9]*$")
_NEW_STYLE = re.compile(r"(?P<yymm>[0-9]{4})\.(?P<number>[0-9]{4,5})")
_OLD_STYLE = re.compile(rf"(?P<archive>{_ARCHIVE})(?:\.[A-Za-z][A-Za-z-]*)?/(?P<number>[0-9]{{7}})")
_OLD_STYLE_GLUED = re.compile(rf"(?P<archive>{_ARCHIVE})(?P<number>[0-9]{{7}})")
_BARE_OLD_NUMBER = re.compile(r"[0-9]{7}")
_MEMBER_DIRECTORY = re.compile(r"(?P<yymm>[0-9]{4})/(?P<name>[^/]+)")


def _strip_extension(name: str) -> str:
    for extension in _FILE_EXTENSIONS:
        if name.endswith(extension):
            return name[: -len(extension)]
    return name


def _check_new_style(text: str, yymm: str, number: str) -> str:
    year, month = int(yymm[:2]), int(yymm[2:])
    if not 1 <= month <= 12 or int(yymm) < 704:
        raise ValueError(f"{text!r}: {yymm} is not a month with new-style arXiv ids (April 2007 on)")
    expected_digits = 4 if year < 15 else 5
    if len(number) != expected_digits:
        raise ValueError(f"{text!r}: ids from {yymm} have {expected_digits}-digit numbers")
    return f"{yymm}.{number}"


def _check_old_style(text: str, archive: str, number: str) -> str:
    year, month = int(number[:2]), int(number[2:4])
    yymm = (1900 + year if year >= 91 else 2000 + year) * 100 + month
    if not 1 <= month <= 12 or not 199108 <= yymm <= 200703:
        raise ValueError(f"{text!r}: {number[:4]} is not a month with old-style arXiv ids (Aug 1991 to Mar 2007)")
    return f"{archive}/{number}"


def _canonical_name(text: str, name: str, default_archive: str | None) -> str:
    """Canonicalise one path component (or an ``archive/number`` pair) with extension and version gone."""
    if m := _NEW_STYLE.fullmatch(name):
        return _check_new_style(text, m["yymm"], m["number"])
    if m := _OLD_STYLE.fullmatch(name) or _OLD_STYLE_GLUED.fullmatch(name):
        return _check_old_style(text, m["archive"], m["number"])
    if _BARE_OLD_NUMBER.fullmatch(name):
        if default_archive is None:
            raise ValueError(
                f"{text!r}: an old-style number without its archive is ambiguous "
                "(pass default_archive when the context names it)"
            )
        if default_archive not in OLD_STYLE_ARCHIVES:
            raise ValueError(f"{text!r}: default_archive {default_archive!r} is not an old-style archive")
        return _check_old_style(text, default_archive, name)
    raise ValueError(f"{text!r}: not an arXiv id")


def canonical_id(text: str, default_archive: str | None = None) -> str:
    """The canonical id for an id, versioned id, bulk-tar member name or per-paper file name.

    Accepted: ``2301.04217``, ``2301.04217v3``, ``arXiv:2301.04217``, ``math/0303004``,
    ``math.GT/0309136``, ``math0303004``, ``0303/math0303004.gz``, ``1403/1403.1234.gz``,
    ``2301.04217.tar.gz`` (also ``.tgz``, ``.tar``, ``.gz``, ``.pdf``). A bulk member's ``YYMM/``
    directory must agree with the id's own month. A bare old-style number (``0303/0303004.pdf``)
    carries no archive, so it is refused unless ``default_archive`` says which one it belongs to.
    Anything else raises ``ValueError`` naming the input.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r}: not an arXiv id (expected a string)")
    name = text.strip()
    if name[:6].lower() == "arxiv:":
        name = name[6:]
    name = _VERSION.sub("", _strip_extension(name))
    member = _MEMBER_DIRECTORY.fullmatch(name)
    if member is None:
        return _canonical_name(text, name, default_archive)
    canonical = _canonical_name(text, member["name"], default_archive)
    if _yymm(canonical) != member["yymm"]:
        raise ValueError(f"{text!r}: directory {member['yymm']} does not match the id's month")
    return canonical


def _yymm(canonical: str) -> str:
    return canonical.split("/")[-1][:4]


def is_old_style(canonical: str) -> bool:
    """Old-style ids carry their archive; new-style ones carry none and need metadata for a category."""
    return "/" in canonical


def id_year_month(arxiv_id: str) -> tuple[int, int]:
    """(year, month) the id was issued, from its ``YYMM``: ``9x`` is 199x, everything else 20xx."""
    yymm = _yymm(canonical_id(arxiv_id))
    year, month = int(yymm[:2]), int(yymm[2:])
    return (1900 + year if year >= 91 else 2000 + year), month


def bulk_member_stem(arxiv_id: str) -> str:
    """The member name in arXiv's bulk source tars without extension (``0303/math0303004``)."""
    canonical = canonical_id(arxiv_id)
    return f"{_yymm(canonical)}/{canonical.replace('/', '')}"
