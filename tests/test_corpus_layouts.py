"""Bulk tars are recognised by their members, not their names: every layout mirrors and repackaged
downloads use (arXiv's `YYMM/`, other folders, none; `.gz`, `.tar.gz`, `.pdf`; old-style ids glued or
under their archive's folder) yields one input per paper, and a tar that holds no papers says what it holds."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from megasci.corpus.archive import ArchiveLimits, is_bulk_listing, iter_source_inputs, per_paper_archive_id
from megasci.corpus.builder import BuildConfig, build
from megasci.corpus.package import Rejected, SourcePackage
from megasci.corpus.synthetic import generate_papers, write_arxiv_metadata, write_source_packages

TEX = b"\\documentclass{article}\n\\begin{document}\nHello $x^2$.\n\\end{document}\n"


def write_tar(path, members: list[tuple[str, bytes | None]]) -> str:
    """Members are (name, data); data None makes a symbolic link to /etc/passwd under that name."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(scope="module")
def papers(tmp_path_factory):
    """Generated papers as arXiv serves them: {canonical id: (suffix, bytes)}, old and new style, some PDF-only."""
    out = tmp_path_factory.mktemp("loose")
    records = list(generate_papers(16, seed=11))
    objects = {}
    for path, record in zip(write_source_packages(out, records, bulk_tar=False), records):
        with open(path, "rb") as handle:
            objects[record["id"]] = (os.path.splitext(path)[1], handle.read())
    assert any("/" in paper_id for paper_id in objects) and any("." in paper_id for paper_id in objects)
    assert {suffix for suffix, _ in objects.values()} == {".gz", ".pdf"}
    return objects


def glued(paper_id: str) -> str:
    return paper_id.replace("/", "")


def yymm(paper_id: str) -> str:
    return paper_id.split("/")[-1][:4]


LAYOUTS = {  # layout name -> (member name for a paper id and suffix)
    "yymm": lambda i, s: f"{yymm(i)}/{glued(i)}{s}",
    "other_folder": lambda i, s: f"mirror/cs-2024/{glued(i)}{s}",
    "no_folder": lambda i, s: f"{glued(i)}{s}",
    "old_style_under_archive": lambda i, s: f"src/{i}{s}",  # math/0303004.gz keeps the slash
    "tar_gz_suffix": lambda i, s: f"papers/{glued(i)}{'.tar.gz' if s == '.gz' else s}",
    "versioned": lambda i, s: f"{glued(i)}v2{s}",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("tar_name", ["arXiv_src_2101_001.tar", "download.tar", "papers.bin"])
def test_every_layout_yields_every_paper(tmp_path, papers, layout, tar_name):
    if tar_name.startswith("arXiv_src_") and layout != "yymm":
        tar_name = "arXiv_src_like_but_not.tar"  # a different name, so that only the members decide
    members = [(LAYOUTS[layout](paper_id, suffix), data) for paper_id, (suffix, data) in sorted(papers.items())]
    path = write_tar(tmp_path / tar_name, members)
    items = list(iter_source_inputs([path]))
    assert [source for source, _ in items] == [f"{tar_name}:{name}" for name, _ in members]
    for (paper_id, (suffix, _)), (source, outcome) in zip(sorted(papers.items()), items):
        if suffix == ".pdf":
            assert isinstance(outcome, Rejected) and outcome.reason == "pdf_only", source
        else:
            assert isinstance(outcome, SourcePackage), (source, outcome)
            assert outcome.paper_id == paper_id and outcome.source == source


def test_per_paper_names_are_read_under_any_folder():
    assert per_paper_archive_id("0303/math0303004.gz") == "math/0303004"
    assert per_paper_archive_id("math0303004.gz") == "math/0303004"
    assert per_paper_archive_id("some/where/math/0303004.gz") == "math/0303004"
    assert per_paper_archive_id("x/math.GT/0309136.pdf") == "math/0309136"
    assert per_paper_archive_id("a/b/1403.0038.tar.gz") == "1403.0038"
    assert per_paper_archive_id("2301.04217v3.tgz") == "2301.04217"
    for not_a_paper in (
        "0303/0303004.gz",
        "main.tex",
        "figs/1403.0038.png",
        "1403.0038",
        "README",
        "data/12345678.gz",
        "2301.04217.tex",
    ):
        assert per_paper_archive_id(not_a_paper) is None, not_a_paper


def test_a_papers_own_tar_is_not_a_bulk_tar():
    """Its source decides: a paper that ships its own PDF (or an old tar of itself) beside main.tex is one paper."""
    assert not is_bulk_listing(["main.tex", "2301.04217.pdf"])
    assert not is_bulk_listing(["2301.04217.pdf", "2301.04218.pdf", "refs.bib"])
    assert not is_bulk_listing(["fig1.eps", "fig2.eps", "2301.04217.pdf"])  # mostly not papers
    assert not is_bulk_listing([])
    assert is_bulk_listing(["2301.04217.gz", "__MACOSX/._2301.04217.gz", ".DS_Store"])
    assert is_bulk_listing(["README", "2301.04217.gz", "2301.04218.pdf"])


def test_paper_tar_with_its_own_pdf_yields_one_paper(tmp_path):
    path = write_tar(tmp_path / "2301.04217.tar", [("2301.04217.pdf", b"%PDF-1.4\n%%EOF\n"), ("main.tex", TEX)])
    [(source, outcome)] = iter_source_inputs([path])
    assert source == path and isinstance(outcome, SourcePackage)
    assert outcome.paper_id == "2301.04217" and set(outcome.files) == {"2301.04217.pdf", "main.tex"}


def test_a_stray_file_in_a_bulk_tar_is_one_rejected_input(tmp_path, papers):
    members = [("mirror/README", b"mirror of arXiv sources\n")] + [
        (f"mirror/{glued(i)}{s}", data) for i, (s, data) in sorted(papers.items())
    ]
    items = list(iter_source_inputs([write_tar(tmp_path / "bundle.tar", members)]))
    assert len(items) == len(members)
    assert items[0][0] == "bundle.tar:mirror/README" and items[0][1].reason == "no_tex"
    assert sum(isinstance(outcome, SourcePackage) for _, outcome in items) == sum(
        s == ".gz" for s, _ in papers.values()
    )


def test_a_tar_of_unrelated_files_is_rejected_naming_what_it_holds(tmp_path):
    path = write_tar(
        tmp_path / "dataset.tar",
        [
            ("data/results.csv", b"a,b\n1,2\n"),
            ("data/run.json", b"{}"),
            ("plots/fig.png", b"\x89PNG\r\n\x1a\n"),
            ("README", b"notes\n"),
        ],
    )
    [(source, outcome)] = iter_source_inputs([path])
    assert source == path and isinstance(outcome, Rejected)
    assert outcome.reason == "tar_of_data+images+other"
    assert (
        "neither a paper nor a bulk tar" in outcome.detail
        and "2 data (data/results.csv, data/run.json)" in outcome.detail
        and "1 images (plots/fig.png)" in outcome.detail
    )
    pdfs = write_tar(tmp_path / "scans.tar", [("scan1.pdf", b"%PDF-1.4\n"), ("scan2.pdf", b"%PDF-1.4\n")])
    [(_, outcome)] = iter_source_inputs([pdfs])
    assert outcome.reason == "pdf_only"  # PDFs not named by id: one paper without source, as before


def test_hostile_members_of_a_bulk_tar_stay_contained(tmp_path, papers, monkeypatch):
    """Links, escaping names and oversized members are each one rejected input; nothing reaches the disk."""
    ((paper_id, (suffix, data)),) = [(i, v) for i, v in sorted(papers.items()) if v[0] == ".gz"][:1]
    members = [
        ("x/2101.00001.gz", None),
        (f"../../{glued(paper_id)}{suffix}", data),
        ("x/2101.00002.gz", bytes(4096)),
        (f"x/{glued(paper_id)}{suffix}", data),
    ]
    path = write_tar(tmp_path / "hostile.tar", members)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    items = list(iter_source_inputs([path]))
    assert [getattr(outcome, "reason", "ok") for _, outcome in items] == ["special_file", "ok", "empty", "ok"]
    assert items[1][1].paper_id == paper_id and all(".." not in name for name in items[1][1].files)
    assert os.listdir(workdir) == []
    limited = list(iter_source_inputs([path], ArchiveLimits(max_total_bytes=16)))
    assert [getattr(outcome, "reason", "ok") for _, outcome in limited][1:] == ["total_too_large"] * 3


def test_builder_writes_every_paper_of_a_renamed_bundle(tmp_path):
    """End to end: a mirror's bundle without `YYMM/` folders gives one funnel row per paper, not one `no_tex`."""
    records = list(generate_papers(10, seed=4))
    objects = {}
    for path, record in zip(write_source_packages(tmp_path / "loose", records, bulk_tar=False), records):
        with open(path, "rb") as handle:
            objects[record["id"]] = (os.path.splitext(path)[1], handle.read())
    bundle = write_tar(tmp_path / "bundle.tar", [(f"arxiv/{glued(i)}{s}", d) for i, (s, d) in sorted(objects.items())])
    write_arxiv_metadata(tmp_path / "meta.jsonl", records)
    report = build(
        BuildConfig(
            sources=[bundle], output=str(tmp_path / "out"), metadata=[str(tmp_path / "meta.jsonl")], min_body_chars=200
        ),
        progress=False,
    )
    assert report.inputs == len(records)
    pdfs = sum(suffix == ".pdf" for suffix, _ in objects.values())
    assert report.rejections.get("archive", {}) == ({"pdf_only": pdfs} if pdfs else {})
    assert (
        report.written
        + sum(n for stage, reasons in report.rejections.items() if stage != "archive" for n in reasons.values())
        == len(records) - pdfs
    )
    assert report.written > 0
