"""Synthetic papers packaged as arXiv's bulk access gives them: metadata-snapshot lines and source
packages (gzipped `.tex`, gzipped tars with `\\input` trees, bibliographies and figures, PDF-only
papers), loose or in `arXiv_src_YYMM_NNN.tar` bundles.

Randomness is keyed by arXiv id (`_rng_for`), so a paper's metadata and package depend on its record
alone, and archives carry fixed times, so equal records give equal bytes.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os
import re
import struct
import tarfile
import textwrap
import zlib
from collections.abc import Iterable, Mapping

import numpy as np

from megasci.corpus.synthetic.papers import (
    FIRST_NAMES,
    LAST_NAMES,
    PSEUDO_WORDS,
    generate_papers,
    pick,
    write_lines_atomically,
)

_JOURNALS = (
    "Ann. of Math.|J. Funct. Anal.|Comm. Math. Phys.|Phys. Rev. D|J. High Energy Phys.|Adv. Math.|"
    "Invent. Math.|J. Mach. Learn. Res.|Duke Math. J.|Probab. Theory Related Fields"
).split("|")


def _rng_for(key: str, purpose: str) -> np.random.Generator:
    """Randomness keyed by arXiv id, so metadata and packages depend on the record alone."""
    return np.random.default_rng(zlib.crc32(f"{purpose}:{key}".encode()))


def _authors(key: str) -> list[tuple[str, str]]:
    rng = _rng_for(key, "authors")
    return [(pick(rng, FIRST_NAMES), pick(rng, LAST_NAMES)) for _ in range(1 + int(rng.integers(0, 5)))]


def _snapshot_date(moment: dt.datetime) -> str:
    """RFC 2822 as the snapshot spells it ("Mon, 2 Apr 2007 19:18:42 GMT"), independent of the locale."""
    weekday = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[moment.weekday()]
    month = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()[moment.month - 1]
    return f"{weekday}, {moment.day} {month} {moment.year} {moment:%H:%M:%S} GMT"


def _metadata_entry(record: dict) -> dict:
    """One line of the public arXiv metadata snapshot for a synthetic record."""
    arxiv_id, year = record["id"], record["year"]
    rng, authors = _rng_for(arxiv_id, "metadata"), _authors(arxiv_id)
    names = [f"{first} {last}" for first, last in authors]
    withdrawn, published, page = rng.random() < 0.03, rng.random() < 0.3, int(rng.integers(1, 900))
    dates = [
        dt.datetime(year, int(arxiv_id.split("/")[-1][2:4]), int(rng.integers(1, 29)))
        + dt.timedelta(seconds=int(rng.integers(0, 86400)))
    ]
    for _ in range(int(rng.random() < 0.35) + int(rng.random() < 0.12) + int(withdrawn)):
        dates.append(dates[-1] + dt.timedelta(days=int(rng.integers(3, 400)), seconds=int(rng.integers(0, 86400))))
    comments = pick(
        rng,
        (
            None,
            f"{rng.integers(8, 60)} pages, {rng.integers(0, 9)} figures",
            f"{rng.integers(8, 60)} pages; v2: minor corrections",
        ),
    )
    found = re.search(r"\\begin\{abstract\}\n(.*?)\n\\end\{abstract\}", record["text"], re.S)
    assert found is not None, "generated papers have an abstract"
    abstract = found.group(1)
    return {
        "id": arxiv_id,
        "submitter": names[0],
        "authors": ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0],
        "title": record["title"],
        "comments": "This paper has been withdrawn by the author due to a crucial error in the proof of Lemma 3"
        if withdrawn
        else comments,
        "journal-ref": f"{pick(rng, _JOURNALS)} {rng.integers(1, 300)} ({year + 1}) {page}–{page + 30}"
        if published
        else None,
        "doi": f"10.{rng.integers(1000, 9999)}/{pick(rng, PSEUDO_WORDS)}.{year + 1}.{page}" if published else None,
        "report-no": f"CERN-TH-{year}-{rng.integers(1, 300):03d}"
        if record["categories"][0].startswith("hep") and rng.random() < 0.2
        else None,
        "categories": " ".join(record["categories"]),
        "license": None
        if year < 2004
        else pick(
            rng,
            (
                None,
                "http://arxiv.org/licenses/nonexclusive-distrib/1.0/",
                "http://creativecommons.org/licenses/by/4.0/",
            ),
        ),
        "abstract": "  " + textwrap.fill(abstract, 78) + "\n",
        "versions": [{"version": f"v{i}", "created": _snapshot_date(d)} for i, d in enumerate(dates, 1)],
        "update_date": f"{dates[-1] + dt.timedelta(days=int(rng.integers(0, 30))):%Y-%m-%d}",
        "authors_parsed": [[last, first, ""] for first, last in authors],
    }


def write_arxiv_metadata(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write arXiv-snapshot-format metadata lines for ``records``; returns the count."""
    return write_lines_atomically(path, (json.dumps(_metadata_entry(r), ensure_ascii=False) for r in records))


_TAR_MTIME = 1_262_304_000  # 2010-01-01 UTC: fixed so archive bytes never depend on the clock


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_TINY_PNG = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
    + _png_chunk(b"IEND", b"")
)
_PREAMBLE = r"""\documentclass{article}
\usepackage[utf8]{inputenc}
\usepackage{amsmath,amssymb,amsthm}
%s\newcommand{\R}{\mathbb{R}}
\newcommand{\norm}[1]{\left\|#1\right\|}
\DeclareMathOperator{\Tr}{Tr}
\newtheorem{theorem}{Theorem}[section]
\newtheorem{lemma}[theorem]{Lemma}
\newtheorem{proposition}[theorem]{Proposition}
\newtheorem{corollary}[theorem]{Corollary}
\theoremstyle{definition}
\newtheorem{definition}[theorem]{Definition}
\newtheorem{remark}[theorem]{Remark}
\author{%s}

\begin{document}
"""
_FIGURE = (
    "\\begin{figure}[t]\n\\centering\n\\includegraphics[width=0.6\\textwidth]{figures/fig1}\n"
    "\\caption{Numerical illustration.}\n\\end{figure}\n\n"
)


def _minimal_pdf() -> bytes:
    """A one-page empty PDF, standing in for papers arXiv only has as PDF."""
    objects = (
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    )
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return bytes(out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))


def _preamble(record: dict, rng: np.random.Generator, graphics: bool) -> str:
    packages = "\\usepackage{graphicx}\n" if graphics else ""
    packages += "\\usepackage{hyperref}\n" if rng.random() < 0.5 else ""
    return _PREAMBLE % (packages, " \\and ".join(f"{first} {last}" for first, last in _authors(record["id"])))


def _references(text: str) -> list[tuple[str, str, str, str, str]]:
    """(key, authors, title, journal, year) for every key the text cites; the key ends in the year."""
    keys = sorted({key for group in re.findall(r"\\cite\{([^}]*)\}", text) for key in group.split(",")})
    references = []
    for key in keys:
        rng = _rng_for(key, "reference")
        title = " ".join(pick(rng, PSEUDO_WORDS) for _ in range(int(rng.integers(3, 8)))).capitalize()
        authors = " and ".join(f"{first} {last}" for first, last in _authors(key))
        references.append((key, authors, title, pick(rng, _JOURNALS), key[-4:]))
    return references


def _thebibliography(text: str) -> str:
    items = "".join(
        rf"\bibitem{{{key}}} {authors}, \emph{{{title}}}, {journal} ({year})." + "\n"
        for key, authors, title, journal, year in _references(text)
    )
    return f"\\begin{{thebibliography}}{{99}}\n{items}\\end{{thebibliography}}\n"


def _bibtex(text: str) -> str:
    return "".join(
        f"@article{{{key},\n  author = {{{authors}}},\n  title = {{{title}}},\n"
        f"  journal = {{{journal}}},\n  year = {{{year}}}\n}}\n\n"
        for key, authors, title, journal, year in _references(text)
    )


def _tar_bytes(files: Mapping[str, str | bytes]) -> bytes:
    """An uncompressed tar with sorted members and fixed metadata, hence reproducible bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_bytes(data: bytes, name: str = "") -> bytes:
    """Gzip with mtime 0; ``name`` fills the header's original-filename field, as arXiv's single files have."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, mtime=0) as gz:
        gz.write(data)
    return buffer.getvalue()


def _multi_file_tar(record: dict, rng: np.random.Generator) -> bytes:
    """A main file that \\input-s one file per section, plus bibliography, maybe a figure and a 00README."""
    main_name = pick(rng, ("main.tex", "paper.tex", "ms.tex"))
    command = "include" if rng.random() < 0.25 else "input"
    chunks = re.split(r"(?m)^(?=\\section)", record["text"])
    files: dict[str, str | bytes] = {}
    body = [chunks[0]]
    for number, chunk in enumerate(chunks[1:], 1):
        found = re.match(r"\\section\*?\{([^}]*)\}", chunk)
        assert found is not None, "each chunk starts at a \\section"
        heading = found.group(1)
        stem = f"sections/{number:02d}_{re.sub(r'[^a-z0-9]+', '_', heading.lower()).strip('_')}"
        files[stem + ".tex"] = chunk
        body.append(f"\\{command}{{{stem}{'.tex' if rng.random() < 0.2 else ''}}}\n")
    graphics = rng.random() < 0.6
    if graphics:
        files["figures/fig1.png"] = _TINY_PNG
        body.append(_FIGURE)
    if rng.random() < 0.4:
        files[main_name[:-4] + ".bbl"] = _thebibliography(record["text"])
    else:
        files["refs.bib"] = _bibtex(record["text"])
    body.append("\\bibliographystyle{plain}\n\\bibliography{refs}\n\\end{document}\n")
    files[main_name] = _preamble(record, rng, graphics) + "".join(body)
    if rng.random() < 0.35:
        files["00README.XXX"] = f"{main_name} toplevelfile\n"
    return _tar_bytes(files)


def _source_package(record: dict) -> tuple[str, bytes]:
    """(suffix, bytes) of one paper as arXiv serves it: gzipped .tex, gzipped tar, or a bare PDF."""
    rng = _rng_for(record["id"], "package")
    kind = rng.random()
    if kind < 0.07:
        return ".pdf", _minimal_pdf()
    if kind < 0.5:
        tex = _preamble(record, rng, False) + record["text"] + _thebibliography(record["text"]) + "\\end{document}\n"
        return ".gz", gzip_bytes(tex.encode(), name=pick(rng, ("main.tex", "paper.tex", "article.tex")))
    return ".gz", gzip_bytes(_multi_file_tar(record, rng))


def write_source_packages(
    out_dir: str | os.PathLike, records: Iterable[dict], bulk_tar: bool = True, loose_files: bool = True
) -> list[str]:
    """Write ``out_dir/YYMM/<id>.gz|.pdf`` per record (unless not ``loose_files``) and, with ``bulk_tar``,
    ``arXiv_src_YYMM_001.tar`` bundles of them."""
    written: list[str] = []
    by_month: dict[str, dict[str, bytes]] = {}
    for record in records:
        yymm = record["id"].split("/")[-1][:4]
        suffix, data = _source_package(record)
        member = f"{yymm}/{record['id'].replace('/', '')}{suffix}"
        by_month.setdefault(yymm, {})[member] = data
        if loose_files:
            written.append(os.path.join(out_dir, member))
            os.makedirs(os.path.dirname(written[-1]), exist_ok=True)
            with open(written[-1], "wb") as handle:
                handle.write(data)
    if by_month and bulk_tar:
        os.makedirs(out_dir, exist_ok=True)
    for yymm in sorted(by_month) if bulk_tar else ():
        written.append(os.path.join(out_dir, f"arXiv_src_{yymm}_001.tar"))
        with open(written[-1], "wb") as handle:
            handle.write(_tar_bytes(by_month[yymm]))
    return written


def write_arxiv_dump(out_dir: str | os.PathLike, n: int, seed: int = 0) -> tuple[list[str], str]:
    """What arXiv's bulk access gives, for `n` generated papers: `arXiv_src_YYMM_NNN.tar` files of
    gzipped sources (some PDF-only) and a metadata-snapshot file. Returns (tar paths, metadata path)."""
    out_dir = os.fspath(out_dir)
    records = list(generate_papers(n, seed=seed))
    tars = write_source_packages(out_dir, records, bulk_tar=True, loose_files=False)
    metadata = os.path.join(out_dir, "metadata.jsonl")
    write_arxiv_metadata(metadata, records)
    return tars, metadata
