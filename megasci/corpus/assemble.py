"""Stage 3, LaTeX assembly: one SourcePackage becomes one LaTeX document.

The main file is found (00README directives, else `\\documentclass`), then every `\\input`-like command
that TeX would obey is replaced by the file it names, recursively. Files the main file never reaches
are left out: concatenating every `.tex` in a package (RedPajama's approach) mixes in old drafts,
unused templates and response letters.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field

import charset_normalizer

from megasci.corpus.latex import BEGIN_DOCUMENT, DOCUMENT_CLASS, END_DOCUMENT, TEX_SUFFIXES, code_part
from megasci.corpus.package import Rejected, SourcePackage, is_encrypted

MAX_DEPTH = 20
MAX_TOTAL_CHARS = 20_000_000
# Detection is trusted only below this chaos (charset_normalizer's mess ratio, 0..1) and with this
# many non-ASCII bytes to judge by: a stray byte or two says nothing about the code page.
MAX_DETECTION_CHAOS = 0.2
MIN_DETECTION_EVIDENCE = 32

# Files that may mention \documentclass but are never the paper itself.
NEVER_MAIN_SUFFIXES = {
    ".sty",
    ".cls",
    ".clo",
    ".cfg",
    ".def",
    ".fd",
    ".bst",
    ".bbl",
    ".bib",
    ".dtx",
    ".ins",
    ".aux",
    ".log",
    ".toc",
    ".eps",
    ".ps",
    ".pdf",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".tif",
    ".tiff",
    ".svg",
    ".fig",
    ".xxx",
    ".json",
    ".yml",
    ".yaml",
    ".toml",
    ".txt",
    ".md",
    ".html",
}
# Ladder order: a later rung is a weaker guess, and the paper reports its weakest.
ENCODING_RANK = {"utf-8": 0, "detected": 1, "cp1252": 2, "latin-1": 3}
ZZRM_V1_KEYWORDS = {"toplevelfile", "ignore", "include", "append", "keepcomments", "landscape", "fontmap"}

INCLUSION_RE = re.compile(
    r"\\(?P<import>(?:sub)?import)\*?\s*\{(?P<dir>[^{}]*)\}\s*\{(?P<ifile>[^{}]*)\}"
    r"|\\(?P<cmd>include|subfile)\s*\{(?P<file>[^{}]*)\}"
    r"|\\input(?![A-Za-z@])\s*(?:\{(?P<ifile2>[^{}]*)\}|(?P<bare>[^\s{}\\%]+))"
)
# Only a bare `\endinput` line: inside a conditional (a load-once guard) it may never run.
ENDINPUT_LINE_RE = re.compile(r"\s*\\endinput\s*")
# Every inclusion command and `\endinput` holds one of these words; a line without one is kept as it is.
INCLUSION_WORD_RE = re.compile(r"input|include|import|subfile")
_HIGH_BYTES = bytes(range(0x80, 0x100))
OUTSIDE = "<outside>"


@dataclass
class AssembledPaper:
    """One paper's whole LaTeX source as a single string, with what assembly had to work around."""

    paper_id: str
    source: str
    main_file: str
    text: str
    encoding: str  # weakest decoding used: "utf-8", "detected:<name>", "cp1252" or "latin-1"
    inputs_followed: list[str] = field(default_factory=list)
    issues: Counter = field(default_factory=Counter)
    bbl_files: list[str] = field(default_factory=list)
    file_encodings: dict[str, str] = field(default_factory=dict)  # every file read, main included

    @property
    def main_encoding(self) -> str:
        return self.file_encodings[self.main_file]


def decode_tex(data: bytes) -> tuple[str, str]:
    """Bytes to text with LF line ends, and the rung of the ladder that decoded them."""
    try:
        text, encoding = data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = _decode_legacy(data)
    return text.replace("\r\n", "\n").replace("\r", "\n"), encoding


def _decode_legacy(data: bytes) -> tuple[str, str]:
    """Non-UTF-8 bytes. charset_normalizer ranks cp1250 first among ties with cp1252 and turns
    French `è` into `č`; arXiv's legacy uploads are overwhelmingly Western, so cp1252 wins any tie."""
    evidence = len(data) - len(data.translate(None, _HIGH_BYTES))
    matches = list(charset_normalizer.from_bytes(data)) if evidence >= MIN_DETECTION_EVIDENCE else []
    if matches and matches[0].chaos <= MAX_DETECTION_CHAOS:
        best = matches[0]
        tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
        if not any("cp1252" in m.could_be_from_charset for m in tied):
            return str(best), f"detected:{best.encoding}"
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def weakest_encoding(encodings: list[str]) -> str:
    return max(encodings, key=lambda name: ENCODING_RANK[name.split(":")[0]], default="utf-8")


def _suffix(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _argument(match: re.Match) -> str:
    """The file name of any inclusion command (the `{file}` part for \\import)."""
    return next((g for g in match.group("file", "ifile", "ifile2", "bare") if g is not None), "")


def _inclusion_lines(text: str) -> list[int]:
    """Numbers of the lines holding an inclusion word, ascending: the only lines inclusion can change."""
    numbers, number, last = [], 0, 0
    for match in INCLUSION_WORD_RE.finditer(text):
        number += text.count("\n", last, match.start())
        last = match.start()
        if not numbers or numbers[-1] != number:
            numbers.append(number)
    return numbers


def _is_junk(path: str) -> bool:
    return path.startswith("__MACOSX/") or posixpath.basename(path).startswith("._")


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:8192]


class _Assembler:
    """State for one package: decoded files, counters, and the running size budget."""

    def __init__(self, package: SourcePackage):
        self.files = {p: d for p, d in package.files.items() if not _is_junk(p)}
        self.by_lower: dict[str, str] = {}
        for path in sorted(self.files):
            self.by_lower.setdefault(path.lower(), path)
        self.decoded: dict[str, tuple[str, str]] = {}
        self.issues: Counter = Counter()
        self.inputs_followed: list[str] = []
        self.bbl_files: list[str] = []
        self.total_chars = 0
        self.root_dir = ""

    def text_of(self, path: str) -> str:
        if path not in self.decoded:
            self.decoded[path] = decode_tex(self.files[path])
        return self.decoded[path][0]

    def lookup(self, path: str) -> str | None:
        if path in self.files:
            return path
        return self.by_lower.get(path.lower())

    def resolve(self, name: str, base_dirs: list[str]) -> str | None:
        """Package path for an \\input argument: as given, then with `.tex`, exact then any case.
        Returns OUTSIDE for absolute paths and paths climbing out of the package."""
        name = name.strip().strip('"')
        if not name or "\\" in name:
            return None
        if name.startswith("/"):
            return OUTSIDE
        for base in base_dirs:
            joined = posixpath.normpath(posixpath.join(base, name))
            if joined == ".." or joined.startswith("../"):
                return OUTSIDE
            for candidate in (joined, joined + ".tex"):
                found = self.lookup(candidate)
                if found is not None:
                    return found
        return None

    def references(self, path: str) -> set[str]:
        """Files a TeX-like file inputs, used only to rule out candidates that are not the root."""
        folder = posixpath.dirname(path)
        found, text = set(), self.text_of(path)
        lines = text.split("\n")
        for number in _inclusion_lines(text):
            for match in INCLUSION_RE.finditer(code_part(lines[number])):
                name = _argument(match)
                if match.group("import"):
                    name = posixpath.join(match.group("dir"), name)
                target = self.resolve(name, [folder])
                if target not in (None, OUTSIDE):
                    found.add(target)
        return found

    def expand(self, path: str, base_dir: str, ancestors: tuple[str, ...]) -> str:
        """The file's text with each followed inclusion replaced by the included text; like TeX,
        reading stops at a `\\endinput` line."""
        out_lines, kept, text = [], 0, self.text_of(path)
        file_dir, lines = posixpath.dirname(path), text.split("\n")
        for number in _inclusion_lines(text):
            out_lines += lines[kept:number]
            kept, line = number + 1, lines[number]
            code = code_part(line)
            if "\\" not in code:
                out_lines.append(line)
                continue
            expanded = self.expand_line(line, code, base_dir, file_dir, ancestors)
            if expanded is not None:
                out_lines.append(expanded)
            if ENDINPUT_LINE_RE.fullmatch(code):
                return "\n".join(out_lines)
        return "\n".join(out_lines + lines[kept:])

    def expand_line(self, line: str, code: str, base_dir: str, file_dir: str, ancestors: tuple[str, ...]) -> str | None:
        """The line with its inclusions replaced; None when dropped commands leave it blank."""
        pieces, last, dropped_any = [], 0, False
        for match in INCLUSION_RE.finditer(code):
            pieces.append(line[last : match.start()])
            replacement = self.follow(match, base_dir, file_dir, ancestors)
            dropped_any |= replacement is None
            pieces.append(replacement or "")
            last = match.end()
        pieces.append(line[last:])
        new_line = "".join(pieces)
        return None if dropped_any and not new_line.strip() else new_line

    def follow(self, match: re.Match, base_dir: str, file_dir: str, ancestors: tuple[str, ...]) -> str | None:
        """Replacement text for one inclusion command; None when it is dropped (and counted)."""
        command = match.group("import") or match.group("cmd") or "input"
        if command == "import":
            child_base = posixpath.normpath(posixpath.join(self.root_dir, match.group("dir")))
            name, bases = match.group("ifile"), [child_base]
        elif command == "subimport":
            child_base = posixpath.normpath(posixpath.join(file_dir, match.group("dir")))
            name, bases = match.group("ifile"), [child_base]
        else:
            child_base = base_dir
            name = _argument(match)
            bases = [base_dir] if file_dir == base_dir else [base_dir, file_dir]
        if "#" in name:
            return match.group(0)  # a macro parameter inside a definition, not a file
        if child_base == ".." or child_base.startswith("../") or child_base.startswith("/"):
            self.issues["outside_package"] += 1
            return None
        target = self.resolve(name, bases)
        if _suffix(name.strip()) == ".bbl" or (target not in (None, OUTSIDE) and _suffix(target) == ".bbl"):
            self.issues["bbl_skipped"] += 1
            if target not in (None, OUTSIDE) and target not in self.bbl_files:
                self.bbl_files.append(target)
            return None
        if target == OUTSIDE:
            self.issues["outside_package"] += 1
            return None
        if target is None or _is_binary(self.files[target]):
            self.issues["missing_input"] += 1
            return None
        if target in ancestors:
            self.issues["cycle"] += 1
            return None
        if len(ancestors) >= MAX_DEPTH:
            self.issues["depth_cap"] += 1
            return None
        if self.total_chars + len(self.text_of(target)) > MAX_TOTAL_CHARS:
            self.issues["size_cap"] += 1
            return None
        self.total_chars += len(self.text_of(target))
        self.inputs_followed.append(target)
        text = self.expand(target, child_base, ancestors + (target,))
        if command == "subfile":
            text = subfile_body(text)
        return text[:-1] if text.endswith("\n") else text

    def zzrm_directives(self) -> tuple[list[str], set[str]]:
        """Top-level files and ignored files named by a root 00README (legacy .XXX or JSON)."""
        toplevel: list[str] = []
        ignored: set[str] = set()
        for path in sorted(self.files):
            stem, suffix = posixpath.splitext(path)
            if stem.upper() != "00README":
                continue
            text = decode_tex(self.files[path])[0]
            if suffix.lower() == ".xxx":
                entries = _parse_zzrm_legacy(text)
            elif suffix.lower() in (".json", ".jsn"):
                entries = _parse_zzrm_json(text)
            else:
                continue
            for name, usage in entries:
                found = self.lookup(name)
                if found is None:
                    continue
                if usage == "toplevel" and found not in toplevel:
                    toplevel.append(found)
                elif usage == "ignore":
                    ignored.add(found)
        return toplevel, ignored

    def main_files(self) -> list[str]:
        """Root files to expand, in order; arXiv compiles every listed top-level file in turn."""
        toplevel, ignored = self.zzrm_directives()
        if toplevel:
            return toplevel
        usable = [p for p in sorted(self.files) if p not in ignored and not _is_binary(self.files[p])]
        candidates = [
            p
            for p in usable
            if _suffix(p) not in NEVER_MAIN_SUFFIXES
            and b"\\document" in self.files[p]
            and any(DOCUMENT_CLASS.search(code_part(line)) for line in self.text_of(p).split("\n"))
        ]
        if candidates:
            tex_like = set(candidates) | {p for p in usable if _suffix(p) in TEX_SUFFIXES}
            referenced = set().union(*(self.references(p) - {p} for p in sorted(tex_like)))
            roots = [p for p in candidates if p not in referenced] or candidates
            roots.sort(key=lambda p: (p.count("/"), -len(self.files[p]), p))
            return roots[:1]
        tex_like = [p for p in usable if _suffix(p) in TEX_SUFFIXES or _suffix(p) == ""]
        if len(tex_like) == 1:
            return tex_like
        if any(is_encrypted(p) for p in self.files):
            raise Rejected("encrypted", ", ".join(p for p in sorted(self.files) if is_encrypted(p)))
        raise Rejected("no_main_file", f"{len(tex_like)} TeX-like files, none with \\documentclass")


def _parse_zzrm_legacy(text: str) -> list[tuple[str, str]]:
    """arXiv's classic 00README.XXX: `FILE toplevelfile|ignore|include|append|...` lines and bare
    flags such as `nostamp`. The reversed `toplevelfile FILE` order is accepted too."""
    entries = []
    for line in text.split("\n"):
        words = line.split()
        if len(words) != 2:
            continue
        name, keyword = words
        if name in ZZRM_V1_KEYWORDS and keyword not in ZZRM_V1_KEYWORDS:
            name, keyword = keyword, name
        if keyword in ZZRM_V1_KEYWORDS:
            entries.append((name, "toplevel" if keyword == "toplevelfile" else keyword))
    return entries


def _parse_zzrm_json(text: str) -> list[tuple[str, str]]:
    """The 00README.json of submission system 1.5: `sources: [{filename, usage}]`, usage defaulting
    to toplevel when no other key is set."""
    try:
        sources = json.loads(text).get("sources", [])
    except (ValueError, AttributeError):
        return []
    entries = []
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, dict) and isinstance(source.get("filename"), str):
            others = {"usage", "orientation", "keep_comments", "fontmaps"} & source.keys()
            entries.append((source["filename"], source.get("usage") or ("toplevel" if not others else "")))
    return entries


def subfile_body(text: str) -> str:
    """A `subfiles` child is a full document; the parent uses only its body, as the package does."""
    begin = BEGIN_DOCUMENT.search(text)
    end = END_DOCUMENT.search(text, begin.end()) if begin else None
    if begin is None or end is None:
        return text
    return text[begin.end() : end.start()].strip("\n")


def assemble(package: SourcePackage) -> AssembledPaper:
    """Expand the package's main file(s) into one LaTeX string.

    Raises Rejected("no_main_file"), or Rejected("encrypted") when only `.cry` files stand in for it.
    """
    assembler = _Assembler(package)
    mains = assembler.main_files()
    texts = []
    for main in mains:
        main_dir = posixpath.dirname(main)
        assembler.root_dir = main_dir
        assembler.total_chars += len(assembler.text_of(main))
        if main != mains[0]:
            assembler.inputs_followed.append(main)
        texts.append(assembler.expand(main, main_dir, (main,)))
    file_encodings = {
        path: encoding
        for path, (_, encoding) in assembler.decoded.items()
        if path in mains or path in assembler.inputs_followed
    }
    assembler.issues["decoding_fallback"] = sum(enc != "utf-8" for enc in file_encodings.values())
    issues = +assembler.issues
    return AssembledPaper(
        paper_id=package.paper_id,
        source=package.source,
        main_file=mains[0],
        text="\n".join(texts),
        encoding=weakest_encoding(list(file_encodings.values())),
        inputs_followed=assembler.inputs_followed,
        issues=issues,
        bbl_files=assembler.bbl_files,
        file_encodings=file_encodings,
    )
