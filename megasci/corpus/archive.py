"""Stage 2 of the corpus builder: turn arXiv source objects into safe in-memory packages.

Every input is assumed hostile: gzip bombs, truncated or forged tars, path traversal, links, devices,
encrypted or non-source objects. Nothing here writes to disk; every member is read under a byte cap,
and each input ends as exactly one `SourcePackage` or one `Rejected` with a stable reason key, so the
yield report can account for all of them.

Decisions on ambiguous real-world objects (see tests/test_corpus_archive.py):
- a `.gz` that is not gzip but plausible text is read as one plain file (named after the input
  without `.gz`); it yields a paper only if it looks like TeX, else "no_tex".
- a package whose only content is arXiv's `%auto-ignore` placeholder, or a file named "withdrawn",
  is "withdrawn_stub" (real withdrawn papers with TeX still yield, cleaning handles them).
- an all-NUL tar is a valid but empty archive: "empty".
- any `.cry` member rejects the whole package as "encrypted": the paper cannot be assembled.
- nested archives (`.tar`, `.tar.gz`, `.tgz`, `.zip` inside a package) are unpacked in place, into
  the directory that holds them, up to `max_nesting` levels; deeper or unreadable ones are skipped
  ("nested_archive_too_deep", "nested_<reason>") and the rest of the paper still yields.

Rejected reasons: pdf_only, encrypted, html, rar, postscript_only, not_source, empty, corrupt_gzip,
truncated_tar, corrupt_tar, corrupt_zip, too_many_members, member_too_large, total_too_large, no_tex,
withdrawn_stub, special_file (a bulk-tar member that is not a regular file), tar_of_<what it holds>
(a tar handed in that is neither a paper nor a bulk tar: `tar_of_data+images`).

Layout by content: a tar whose members are mostly per-paper objects named by arXiv id (`YYMM/`, any
other folder or none; `.gz`, `.tar.gz`, `.tgz`, `.pdf`; `math0303004.gz` or `math/0303004.gz`) and hold no
source file is a bulk tar, whatever it is called; each member is then one input (`is_bulk_listing`).
Skipped-member reasons: absolute_path, parent_path, directory, link, special_file, bad_name, __MACOSX,
appledouble, duplicate_name, nested_archive_too_deep, nested_<rejection reason>.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from megasci.corpus.latex import BEGIN_DOCUMENT, DOCUMENT_CLASS, TEX_SUFFIXES
from megasci.corpus.package import Rejected, SourcePackage, is_encrypted

_CHUNK = 1 << 16
_SUPPORT_EXTENSIONS = (".sty", ".cls", ".clo", ".bst", ".bbl", ".bib", ".cfg", ".def", ".fd", ".ist")
_NESTED_ARCHIVE_EXTENSIONS = (".tar", ".tar.gz", ".tgz", ".zip")
_INPUT_EXTENSIONS = (".gz", ".tgz", ".tar", ".tex", ".pdf", ".zip")
# A LaTeX preamble or body, or plain TeX's end: content that is TeX whatever the file is called.
_TEX_MARKERS = re.compile(b"|".join(rule.pattern.encode() for rule in (DOCUMENT_CLASS, BEGIN_DOCUMENT)) + rb"|\\bye\b")
_HTML_PREFIXES = (b"<!doctype html", b"<html", b"<head", b"<body")
_BULK_NAME = re.compile(r"^arXiv_src_\d{4}_\d+\.tar$")
# What one paper's object is called inside a bulk tar: `<id>.gz` (a gzipped file or tar), `<id>.tar.gz`
# / `<id>.tgz` (repackaged downloads) or `<id>.pdf` (arXiv keeps only the PDF).
_PER_PAPER_SUFFIXES = (".tar.gz", ".tgz", ".gz", ".pdf")
# Member names that tell a paper's own tar from a bulk tar: sources and their support files.
_SOURCE_FILE_SUFFIXES = TEX_SUFFIXES + _SUPPORT_EXTENSIONS
BULK_SCAN_MEMBERS = 256  # regular members whose names decide whether a tar is a bulk tar


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps per paper: decompressed bytes and member counts bound the memory and time one input can take."""

    max_members: int = 2_000
    max_member_bytes: int = 50 * 1024 * 1024
    max_total_bytes: int = 200 * 1024 * 1024
    max_nesting: int = 1


class _Budget:
    """What one paper has used so far, shared by nested archives so nesting cannot multiply the caps.

    A nested archive counts twice (itself and its contents): both are in memory at once.
    """

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits, self.members, self.bytes = limits, 0, 0

    def count_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise Rejected("too_many_members", f"more than {self.limits.max_members} members (at {name!r})")

    def take(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise Rejected("member_too_large", f"{name!r}: {size} bytes > {self.limits.max_member_bytes}")
        self.bytes += size
        if self.bytes > self.limits.max_total_bytes:
            raise Rejected("total_too_large", f"more than {self.limits.max_total_bytes} bytes at {name!r}")


def _is_tar_header(block: bytes) -> bool:
    """ustar magic, or (old v7 tars have none) a header whose checksum adds up."""
    if len(block) < 512 or not any(block[:512]):
        return False
    if block[257:262] == b"ustar":
        return True
    field = block[148:156].replace(b"\0", b" ").strip()
    if not field or any(c not in b"01234567" for c in field):
        return False
    header = block[:148] + b" " * 8 + block[156:512]
    return int(field, 8) in (sum(header), sum(b - 256 if b > 127 else b for b in header))


def _looks_like_text(head: bytes) -> bool:
    """No NULs and few control characters; any 8-bit encoding (Latin-1 TeX is common) passes."""
    if b"\0" in head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in b"\t\n\r\f\v\x1b\x08")
    return controls <= len(head) // 100


def sniff(data: bytes) -> str:
    """Name the kind of an object from its magic bytes, whatever its file name claims."""
    if not data:
        return "empty"
    if not any(data[:512]) and data.count(0) == len(data):
        return "nul"
    head = bytes(data[:4096])
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if _is_tar_header(head):
        return "tar"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"%PDF"):
        return "pdf"
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "postscript"
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if lowered.startswith(_HTML_PREFIXES) or (lowered.startswith(b"<?xml") and b"<html" in lowered):
        return "html"
    if _looks_like_text(head):
        return "text"
    return "unknown"


def _gzip_file_name(data: bytes) -> str | None:
    """The FNAME field of a gzip header (RFC 1952), which arXiv uses to keep a single file's name."""
    if len(data) < 10:
        return None
    flags, pos = data[3], 10
    if flags & 4:
        pos += 2 + int.from_bytes(data[10:12], "little")
    if not flags & 8:
        return None
    end = data.find(b"\0", pos, pos + 1024)
    return data[pos:end].decode("latin-1") if end > pos else None


def _gunzip(data: bytes, cap: int) -> bytes:
    """Stream-decompress every gzip member, stopping as soon as the output passes ``cap`` (bomb guard)."""
    chunks, total, rest = [], 0, memoryview(data)
    while rest[:2] == b"\x1f\x8b":
        inflater, pos, pending = zlib.decompressobj(31), 0, b""
        try:
            while not inflater.eof:
                if inflater.unconsumed_tail:
                    pending = inflater.unconsumed_tail
                elif pos < len(rest):
                    pending, pos = rest[pos : pos + _CHUNK], pos + _CHUNK
                else:
                    pending = b""
                piece = inflater.decompress(pending, _CHUNK)
                if not piece and not pending:
                    raise Rejected("corrupt_gzip", "gzip stream ends early")
                total += len(piece)
                if total > cap:
                    raise Rejected("total_too_large", f"decompresses to more than {cap} bytes")
                chunks.append(piece)
        except zlib.error as error:
            raise Rejected("corrupt_gzip", str(error)) from None
        rest = rest[min(pos, len(rest)) - len(inflater.unused_data) :]
    return b"".join(chunks)


def _safe_name(raw: str) -> tuple[str, str]:
    """(normalised POSIX relative path, "") or ("", reason) for a name that must not be used."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "", "absolute_path"
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return "", "parent_path"
    if not parts:
        return "", "directory"
    if any(ord(c) < 32 for c in name):
        return "", "bad_name"
    if "__MACOSX" in parts:
        return "", "__MACOSX"
    if parts[-1].startswith("._") or parts[-1] == ".DS_Store":
        return "", "appledouble"
    return "/".join(parts), ""


def _is_nested_archive(name: str) -> bool:
    return name.lower().endswith(_NESTED_ARCHIVE_EXTENSIONS)


class _Collector:
    """Gathers one paper's files; members that are not safe regular files are recorded, not kept.

    Members of a nested archive are recorded as "<archive path>:<member name>".
    """

    def __init__(self, limits: ArchiveLimits) -> None:
        self.budget, self.files, self.skipped, self.within = _Budget(limits), {}, [], ""

    def add(self, raw_name: str, prefix: str, data: bytes, depth: int) -> None:
        name, reason = _safe_name(raw_name)
        if reason:
            self.skipped.append((self.within + raw_name, reason))
            return
        name = posixpath.join(prefix, name) if prefix else name
        if is_encrypted(name):
            raise Rejected("encrypted", f"encrypted member {name!r}")
        if _is_nested_archive(name) and sniff(data) in ("tar", "gzip", "zip"):
            self._unpack_nested(raw_name, name, data, depth)
        elif name in self.files:
            self.skipped.append((self.within + raw_name, "duplicate_name"))
        else:
            self.files[name] = data

    def _unpack_nested(self, raw_name: str, name: str, data: bytes, depth: int) -> None:
        if depth >= self.budget.limits.max_nesting:
            self.skipped.append((self.within + raw_name, "nested_archive_too_deep"))
            return
        outer, self.within = self.within, f"{self.within}{name}:"
        try:
            _unpack_container(data, self, posixpath.dirname(name), depth + 1)
        except Rejected as nested:
            if nested.reason in ("encrypted", "too_many_members", "member_too_large", "total_too_large"):
                raise
            self.skipped.append((outer + raw_name, f"nested_{nested.reason}"))
        finally:
            self.within = outer

    def skip(self, raw_name: str, reason: str) -> None:
        unsafe = _safe_name(raw_name)[1]
        self.skipped.append((self.within + raw_name, unsafe if unsafe and unsafe != "directory" else reason))


def _read_tar(data: bytes, into: _Collector, prefix: str, depth: int) -> None:
    """Read members from an in-memory tar; a member whose data runs past the end means truncation."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        while (member := tar.next()) is not None:
            into.budget.count_member(member.name)
            if not member.isreg():
                kind = "directory" if member.isdir() else "link" if member.issym() or member.islnk() else "special_file"
                into.skip(member.name or "/", kind)  # tarfile strips a directory's slashes: "" was "/"
                continue
            into.budget.take(member.name, member.size)
            if member.offset_data + member.size > len(data):
                raise Rejected("truncated_tar", f"{member.name!r} runs past the end of the archive")
            into.add(member.name, prefix, tar.extractfile(member).read(), depth)
    except (tarfile.TarError, EOFError, ValueError, OverflowError) as error:
        raise Rejected("truncated_tar" if "unexpected end" in str(error) else "corrupt_tar", str(error)) from None
    trailing = data[tar.offset : tar.offset + 512]
    if any(trailing):
        reason = "truncated_tar" if len(trailing) < 512 else "corrupt_tar"
        raise Rejected(reason, f"unreadable tar header at byte {tar.offset}")


def _zip_member_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    if info.is_dir() or stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return "special_file"
    return ""


def _read_zip(data: bytes, into: _Collector, prefix: str, depth: int) -> None:
    """Read a zip in memory (uploaders send them); sizes are re-checked while reading, not trusted."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        for info in archive.infolist():
            into.budget.count_member(info.filename)
            kind = _zip_member_kind(info)
            if kind:
                into.skip(info.filename, kind)
                continue
            if info.flag_bits & 1:
                raise Rejected("encrypted", f"password-protected zip member {info.filename!r}")
            into.budget.take(info.filename, info.file_size)
            with archive.open(info) as handle:
                content = handle.read(info.file_size + 1)
            if len(content) != info.file_size:
                raise Rejected("corrupt_zip", f"{info.filename!r} is not the size its header says")
            into.add(info.filename, prefix, content, depth)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        EOFError,
        ValueError,
        OSError,
        zlib.error,
        RuntimeError,
    ) as error:
        raise Rejected("corrupt_zip", str(error)) from None


def _unpack_container(data: bytes, into: _Collector, prefix: str, depth: int) -> None:
    """A tar, a gzipped tar or a zip, as found at the top of a package or nested inside one."""
    kind = sniff(data)
    if kind == "gzip":
        data = _gunzip(data, into.budget.limits.max_total_bytes - into.budget.bytes)
        kind = sniff(data)
    if kind in ("empty", "nul"):
        return
    if kind == "tar":
        _read_tar(data, into, prefix, depth)
    elif kind == "zip":
        _read_zip(data, into, prefix, depth)
    else:
        raise Rejected("not_source", f"expected an archive, found {kind}")


_KIND_REJECTIONS = {
    "pdf": "pdf_only",
    "rar": "rar",
    "html": "html",
    "postscript": "postscript_only",
    "unknown": "not_source",
    "empty": "empty",
    "nul": "empty",
}


def _strip_compression_suffix(name: str) -> str:
    base = posixpath.basename(name.replace("\\", "/"))
    return base[:-3] if base.lower().endswith(".gz") else base


def _id_candidates(name: str) -> list[str]:
    """The spellings of a path that may be an arXiv id: as given, its file name, and its last two parts
    (old-style `math/0303004.gz` keeps its archive in the folder)."""
    parts = [part for part in name.replace("\\", "/").split("/") if part]
    return list(dict.fromkeys([name, *parts[-1:], "/".join(parts[-2:])]))


def _canonical_or_none(name: str) -> str | None:
    from megasci.corpus.arxiv_ids import canonical_id

    for candidate in _id_candidates(name):
        try:
            return canonical_id(candidate)
        except ValueError:
            continue
    return None


def _paper_id(name: str) -> str:
    """Canonical arXiv id when arxiv_ids can read one (under any folder), else the bare file stem."""
    try:
        paper_id = _canonical_or_none(name)
    except ImportError:
        paper_id = None
    if paper_id is not None:
        return paper_id
    stem = posixpath.basename(name.replace("\\", "/"))
    for suffix in (".tar.gz", ".tgz", ".gz", ".pdf", ".tar", ".zip", ".tex"):
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def per_paper_archive_id(name: str) -> str | None:
    """The arXiv id of a member named like one paper's object (`<id>.gz|.tar.gz|.tgz|.pdf`, new or old
    style, under any folder), else None."""
    if not name.lower().endswith(_PER_PAPER_SUFFIXES):
        return None
    try:
        return _canonical_or_none(name)
    except ImportError:
        return None


def is_bulk_listing(regular_members: list[str]) -> bool:
    """Whether a tar's regular members make it a bulk tar (each member one paper) rather than one paper.

    Most members must be per-paper objects named by arXiv id and none a source file (`.tex`, `.sty`,
    `.bib`…): a paper's own tar always holds its source, and may hold its own `<id>.pdf` beside it, while
    a mirror's bundle may hold a stray README beside thousands of papers (that member is then an input
    of its own, rejected with its reason). macOS metadata (`__MACOSX/`, `._*`, `.DS_Store`) is not counted.
    """
    names = [name for name in regular_members if _safe_name(name)[1] not in ("__MACOSX", "appledouble")]
    if any(name.lower().endswith(_SOURCE_FILE_SUFFIXES) for name in names):
        return False
    papers = sum(per_paper_archive_id(name) is not None for name in names)
    return papers > 0 and 2 * papers >= len(names)


def _is_tex(name: str, data: bytes) -> bool:
    """A TeX source by extension (any case) or, like `JCMI.Final.ii`, by its content."""
    lowered = name.lower()
    if not _looks_like_text(data[:4096]) or lowered.endswith(_SUPPORT_EXTENSIONS):
        return False
    return lowered.endswith(TEX_SUFFIXES) or bool(_TEX_MARKERS.search(data[:65536]))


def _reject_without_tex(files: dict[str, bytes], skipped: list[tuple[str, str]]) -> None:
    """Say why a package with no TeX yields nothing: placeholder, PDF/PS only, empty, or just no TeX."""
    if any(_is_tex(name, data) for name, data in files.items()):
        return
    detail = "; ".join(f"skipped {name!r} ({reason})" for name, reason in skipped)
    if not files and not skipped:
        raise Rejected("empty", "no members")
    if any(
        posixpath.basename(name).lower() == "withdrawn" or data.strip() == b"%auto-ignore"
        for name, data in files.items()
    ):
        raise Rejected("withdrawn_stub", f"placeholder only: {sorted(files)}")
    kinds = {sniff(data) for data in files.values()}
    if kinds in ({"pdf"}, {"postscript"}):
        raise Rejected(_KIND_REJECTIONS[kinds.pop()], f"no TeX beside {sorted(files)}")
    raise Rejected("no_tex", f"files {sorted(files)}" + (f"; {detail}" if detail else ""), skipped_members=skipped)


def read_package(
    name: str, data: bytes, limits: ArchiveLimits | None = None, source: str | None = None
) -> SourcePackage:
    """One per-paper object as arXiv serves or receives it → its files, or `Rejected` with a reason."""
    limits = limits or ArchiveLimits()
    if is_encrypted(name):
        raise Rejected("encrypted", f"{name!r} is an encrypted source")
    collector, file_name, kind = _Collector(limits), _strip_compression_suffix(name), sniff(data)
    if kind == "gzip":
        file_name = posixpath.basename((_gzip_file_name(data) or "").replace("\\", "/")) or "main.tex"
        if is_encrypted(file_name):
            raise Rejected("encrypted", f"{name!r} holds the encrypted source {file_name!r}")
        data = _gunzip(data, limits.max_total_bytes)
        kind = sniff(data)
        if kind == "gzip":
            raise Rejected("not_source", "gzip inside gzip")
    if kind in ("tar", "zip"):
        _unpack_container(data, collector, "", 0)
    elif kind == "text":
        collector.budget.count_member(file_name)
        collector.budget.take(file_name, len(data))
        collector.add(file_name, "", data, 0)
    elif kind in ("empty", "nul"):
        raise Rejected("empty", f"{name!r} holds no data" if kind == "empty" else f"{name!r} is all NUL bytes")
    else:
        raise Rejected(_KIND_REJECTIONS.get(kind, "not_source"), f"{name!r} is {kind}")
    _reject_without_tex(collector.files, collector.skipped)
    return SourcePackage(
        paper_id=_paper_id(name), source=source or name, files=collector.files, skipped_members=collector.skipped
    )


def _tar_listing(path: str) -> list[str] | None:
    """Names of the first `BULK_SCAN_MEMBERS` regular members of a tar file (headers only, data skipped),
    or None when the file is not a tar. A tar that breaks off after some members lists those."""
    with open(path, "rb") as handle:
        if not _is_tar_header(handle.read(512)):
            return None
        handle.seek(0)
        names: list[str] = []
        try:
            tar = tarfile.open(fileobj=handle, mode="r:")
            while len(names) < BULK_SCAN_MEMBERS and (member := tar.next()) is not None:
                if member.isreg():
                    names.append(member.name)
        except (tarfile.TarError, EOFError, ValueError, OverflowError):
            pass
        return names


_CONTENT_CATEGORIES = (  # what a tar that is no paper holds, by file suffix, for its rejection reason
    ("images", (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".svg", ".eps", ".ps", ".fig")),
    ("documents", (".pdf", ".doc", ".docx", ".odt", ".djvu", ".rtf", ".html", ".htm", ".md", ".txt")),
    ("data", (".csv", ".tsv", ".json", ".jsonl", ".xml", ".dat", ".h5", ".hdf5", ".npy", ".npz", ".mat", ".parquet")),
    ("code", (".py", ".c", ".h", ".cc", ".cpp", ".f", ".f90", ".m", ".r", ".jl", ".sh", ".ipynb", ".java", ".js")),
    ("archives", _NESTED_ARCHIVE_EXTENSIONS + (".gz", ".bz2", ".xz", ".7z", ".rar")),
)


def _content_category(name: str) -> str:
    lowered = name.lower()
    return next((category for category, suffixes in _CONTENT_CATEGORIES if lowered.endswith(suffixes)), "other")


def _not_a_paper(listing: list[str], rejected: Rejected) -> Rejected:
    """A tar that is neither a paper nor a bulk tar: the reason names what it holds (`tar_of_data+images`),
    the detail how many files of each kind and a few of their names."""
    by_category: dict[str, list[str]] = {}
    for name in listing:
        by_category.setdefault(_content_category(name), []).append(name)
    detail = "; ".join(
        f"{len(names)} {category} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for category, names in sorted(by_category.items())
    )
    return Rejected(
        "tar_of_" + "+".join(sorted(by_category)),
        f"neither a paper nor a bulk tar of papers: {detail}",
        skipped_members=rejected.skipped_members,
    )


@dataclass(frozen=True)
class PendingInput:
    """One per-paper object read from disk but not opened yet: `open` decompresses and unpacks it,
    most of the archive stage's time, so a builder can do that in a worker process instead of the
    one that reads the inputs. `listing`: a lone tar's member names, for what a tar without TeX holds."""

    name: str
    data: bytes
    source: str
    listing: tuple[str, ...] | None = None

    @property
    def paper_id(self) -> str:
        """The id the package will carry, from the object's name alone."""
        return _paper_id(self.name)

    def open(self, limits: ArchiveLimits | None = None) -> SourcePackage | Rejected:
        try:
            return read_package(self.name, self.data, limits, self.source)
        except Rejected as rejected:
            if self.listing and rejected.reason == "no_tex":
                return _not_a_paper(list(self.listing), rejected)
            return rejected


def _iter_bulk_tar(path: str, limits: ArchiveLimits) -> Iterator[tuple[str, PendingInput | Rejected]]:
    """Stream a bulk tar member by member: only one paper's bytes are in memory at a time."""
    label, papers = os.path.basename(path), 0
    try:
        with open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            for member in tar:
                if member.isdir():
                    continue
                source, papers = f"{label}:{member.name}", papers + 1
                if not member.isfile():
                    yield source, Rejected("special_file", f"{member.name!r} is not a regular file")
                elif member.size > limits.max_total_bytes:
                    yield source, Rejected("total_too_large", f"{member.size} bytes compressed")
                else:
                    yield source, PendingInput(member.name, tar.extractfile(member).read(), source)
    except (tarfile.TarError, EOFError, OSError) as error:
        yield label, Rejected("truncated_tar" if "unexpected end" in str(error) else "corrupt_tar", str(error))
        return
    if not papers:
        yield label, Rejected("empty", "bulk tar without members")


def _iter_file(path: str, limits: ArchiveLimits) -> Iterator[tuple[str, PendingInput | Rejected]]:
    """A bulk tar (arXiv's name, or members that say so, whatever the file is called) streams one input
    per member; anything else is one paper's object, and a tar without TeX says what it holds instead."""
    try:
        listing = _tar_listing(path)
    except OSError:
        listing = None
    if _BULK_NAME.match(os.path.basename(path)) or (listing is not None and is_bulk_listing(listing)):
        yield from _iter_bulk_tar(path, limits)
        return
    if os.path.getsize(path) > limits.max_total_bytes:
        yield path, Rejected("total_too_large", f"{path!r} is larger than {limits.max_total_bytes} bytes")
        return
    with open(path, "rb") as handle:
        yield path, PendingInput(os.path.basename(path), handle.read(), path, tuple(listing) if listing else None)


def iter_pending_inputs(
    paths: Iterable[str | os.PathLike], limits: ArchiveLimits | None = None
) -> Iterator[tuple[str, PendingInput | Rejected]]:
    """Every input (bulk-tar member, file in a directory, single file) → exactly one (source, object
    read but not opened, or what already rejects it: a bulk tar's broken or special members)."""
    limits = limits or ArchiveLimits()
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            yield from _iter_file(path, limits)
            continue
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                if name.lower().endswith(_INPUT_EXTENSIONS):
                    yield from _iter_file(os.path.join(root, name), limits)


def iter_source_inputs(
    paths: Iterable[str | os.PathLike], limits: ArchiveLimits | None = None
) -> Iterator[tuple[str, SourcePackage | Rejected]]:
    """Every input (bulk-tar member, file in a directory, single file) → exactly one (source, outcome)."""
    limits = limits or ArchiveLimits()
    for source, item in iter_pending_inputs(paths, limits):
        yield source, item if isinstance(item, Rejected) else item.open(limits)
