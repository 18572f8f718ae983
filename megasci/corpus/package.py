"""What archive validation hands to LaTeX assembly: one paper's files, already proven safe."""

from __future__ import annotations

from dataclasses import dataclass, field

ENCRYPTED_SUFFIX = ".cry"


def is_encrypted(name: str) -> bool:
    """arXiv stores sources its authors keep private as `<name>.cry`: nothing in them can be read."""
    return name.lower().endswith(ENCRYPTED_SUFFIX)


class Rejected(Exception):
    """A whole input yields no paper. `reason` is a short stable key counted in the yield report.

    Archive reading and assembly raise it; the builder's paper steps return it as their outcome.

    `skipped_members` lists (member, reason) pairs dropped before the package was rejected (a tar of
    only `../` paths is rejected as having no TeX; its members still count as `parent_path`).
    """

    def __init__(self, reason: str, detail: str = "", skipped_members: list[tuple[str, str]] | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.skipped_members = skipped_members or []


@dataclass
class SourcePackage:
    """One paper's source files, by relative POSIX path, read into memory.

    Only regular files with safe relative names are here; anything skipped inside an otherwise sound
    package is listed in `skipped_members` as (member name, reason).
    """

    paper_id: str  # canonical arXiv id: "2301.04217" or "math/0303004"
    source: str  # where it came from, e.g. "arXiv_src_0303_001.tar:0303/math0303004.gz"
    files: dict[str, bytes]
    skipped_members: list[tuple[str, str]] = field(default_factory=list)
