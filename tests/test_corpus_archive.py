"""Archive validation (corpus stage 2) against hostile inputs built here and, when present, real arXiv files."""

from __future__ import annotations

import glob
import io
import os
import stat
import struct
import sys
import tarfile
import tracemalloc
import zipfile
import zlib

import pytest

from megasci.corpus.archive import ArchiveLimits, iter_pending_inputs, iter_source_inputs, read_package, sniff
from megasci.corpus.package import Rejected, SourcePackage
from megasci.corpus.synthetic import generate_papers, gzip_bytes, write_source_packages

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "arxiv_sample")
TEX = b"\\documentclass{article}\n\\begin{document}\nHello $x^2$.\n\\end{document}\n"


def tar_bytes(*members: tuple) -> bytes:
    """Members are (name, data) for regular files or (name, None, tar type, linkname) for anything else."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, *special in members:
            info = tarfile.TarInfo(name)
            if special:
                info.type, info.linkname = special
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


gz = gzip_bytes


def zip_bytes(*members: tuple[str, bytes], symlink: str = "", encrypted: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, b"/etc/passwd")
        if encrypted:
            archive.writestr(encrypted, b"ciphertext")
    data = bytearray(buffer.getvalue())
    if encrypted:  # zipfile cannot write encrypted members: set the flag in the central directory entry
        entry = data.rfind(b"PK\x01\x02", 0, data.rfind(encrypted.encode()))
        data[entry + 8] |= 1
    return bytes(data)


def rejected(name: str, data: bytes, limits: ArchiveLimits | None = None) -> Rejected:
    with pytest.raises(Rejected) as caught:
        read_package(name, data, limits)
    return caught.value


def v7_tar(name: str, data: bytes) -> bytes:
    """An old pre-POSIX tar: no ustar magic, only the header checksum says it is a tar."""
    archive = bytearray(tar_bytes((name, data)))
    archive[257:265] = bytes(8)
    archive[148:156] = b" " * 8
    archive[148:156] = b"%06o\0 " % sum(archive[:512])
    return bytes(archive)


def test_sniff_names_every_kind_by_magic_bytes():
    assert sniff(gz(TEX)) == "gzip"
    assert sniff(tar_bytes(("a.tex", TEX))) == "tar"
    assert sniff(v7_tar("a.tex", TEX)) == "tar"
    forged = bytearray(v7_tar("a.tex", TEX))
    forged[0] ^= 1
    assert sniff(bytes(forged)) != "tar"
    assert sniff(zip_bytes(("a.tex", TEX))) == "zip"
    assert sniff(b"%PDF-1.4\n...") == "pdf"
    assert sniff(b"Rar!\x1a\x07\x00\xcf\x90") == "rar"
    assert sniff(b"<!DOCTYPE html><html>") == "html"
    assert sniff(b"  <HTML><body>withdrawn</body>") == "html"
    assert sniff(b"%!PS-Adobe-2.0\n") == "postscript"
    assert sniff(TEX) == "text"
    assert sniff("\\section{Résumé}\n".encode("latin-1")) == "text"
    assert sniff(b"") == "empty"
    assert sniff(bytes(10240)) == "nul"
    assert sniff(bytes(range(256)) * 8) == "unknown"


def test_single_gzipped_tex_takes_its_name_from_the_gzip_header():
    package = read_package("2301.04217.gz", gz(TEX, name="paper.tex"), source="s:2301.04217.gz")
    assert package == SourcePackage("2301.04217", "s:2301.04217.gz", {"paper.tex": TEX}, [])
    assert read_package("2301.04217.gz", gz(TEX)).files == {"main.tex": TEX}
    assert read_package("x.gz", gz(TEX, name="../../etc/paper.tex")).files == {"paper.tex": TEX}


def test_multi_file_tar_gz_and_plain_tar_and_v7_tar():
    files = {"main.tex": TEX, "sections/intro.tex": b"\\section{Intro}\n", "figs/f.png": b"\x89PNG\r\n\x1a\n"}
    archive = tar_bytes(*files.items())
    assert read_package("2301.04217.tar.gz", gz(archive)).files == files
    assert read_package("upload.tgz", gz(archive)).files == files
    assert read_package("upload.tar", archive).files == files
    assert read_package("old.tar", v7_tar("paper.tex", TEX)).files == {"paper.tex": TEX}


def test_unsafe_tar_members_are_skipped_and_the_paper_still_yields():
    archive = tar_bytes(
        ("/", None, tarfile.DIRTYPE, ""),
        ("../evil.tex", TEX),
        ("/etc/passwd", b"root"),
        ("main.tex", TEX),
        ("link.tex", None, tarfile.SYMTYPE, "/etc/passwd"),
        ("hard.tex", None, tarfile.LNKTYPE, "main.tex"),
        ("tty", None, tarfile.CHRTYPE, ""),
        ("pipe", None, tarfile.FIFOTYPE, ""),
        ("sub", None, tarfile.DIRTYPE, ""),
        ("sub/./a.tex", b"A"),
        ("__MACOSX/._main.tex", b"junk"),
        ("._main.tex", b"junk"),
        ("C:\\evil.tex", b"x"),
        ("main.tex", b"second copy"),
    )
    package = read_package("1403.1234.tar.gz", gz(archive))
    assert package.paper_id == "1403.1234"
    assert package.files == {"main.tex": TEX, "sub/a.tex": b"A"}
    assert package.skipped_members == [
        ("/", "absolute_path"),
        ("../evil.tex", "parent_path"),
        ("/etc/passwd", "absolute_path"),
        ("link.tex", "link"),
        ("hard.tex", "link"),
        ("tty", "special_file"),
        ("pipe", "special_file"),
        ("sub", "directory"),
        ("__MACOSX/._main.tex", "__MACOSX"),
        ("._main.tex", "appledouble"),
        ("C:\\evil.tex", "absolute_path"),
        ("main.tex", "duplicate_name"),
    ]


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("0303/math0303009.pdf", b"%PDF-1.5\n%...", "pdf_only"),
        ("paper.tex.cry", b"\x8d*\xa4^\xe4", "encrypted"),
        ("0303/math0303004.gz", gz(bytes(range(256)), name="giacsqua.tex.cry"), "encrypted"),
        ("p.tar.gz", gz(tar_bytes(("style.sty", b"\\def\\x{}"), ("main.tex.cry", b"\x01\x02"))), "encrypted"),
        ("p.zip", zip_bytes(("main.tex", TEX), encrypted="secret.tex"), "encrypted"),
        ("p.gz", gz(b"<html><body>Not found</body></html>"), "html"),
        ("0604408.pdf", b"Rar!\x1a\x07\x00" + bytes(range(256)), "rar"),
        ("fig.gz", gz(b"%!PS-Adobe-3.0\nshowpage\n"), "postscript_only"),
        ("p.tar", tar_bytes(("a.ps", b"%!PS-Adobe-3.0\n"), ("b.ps", b"%!PS-Adobe-3.0\n")), "postscript_only"),
        ("p.gz", gz(bytes(range(256)) * 4), "not_source"),
        ("p.gz", gz(gz(TEX)), "not_source"),
        ("p.gz", b"", "empty"),
        ("null.tar", bytes(10240), "empty"),
        ("p.tar.gz", gz(bytes(10240)), "empty"),
        ("p.tar", tar_bytes(("figure.png", b"\x89PNG\r\n\x1a\n")), "no_tex"),
        ("p.tar", tar_bytes(("../../ir.png", b"\x89PNG\r\n\x1a\n")), "no_tex"),
        ("not_gzip.gz", b"Contents of 0011004.gz for testing.\n", "no_tex"),
        ("withdrawn.gz", gz(b"%auto-ignore", name="withdrawn"), "withdrawn_stub"),
        ("p.tar", tar_bytes(("00README.XXX", b"ignore"), ("withdrawn", b"%auto-ignore\n")), "withdrawn_stub"),
        ("p.zip", b"PK\x03\x04" + bytes(100), "corrupt_zip"),
    ],
)
def test_rejections_have_stable_reasons(name, data, reason):
    assert rejected(name, data).reason == reason


def test_unsafe_paths_are_named_in_the_no_tex_detail():
    detail = rejected("rel.tar.gz", gz(tar_bytes(("../../ir.png", b"\x89PNG")))).detail
    assert "'../../ir.png' (parent_path)" in detail


def test_plain_tex_named_gz_is_read_as_text():
    assert read_package("0011004.gz", TEX).files == {"0011004": TEX}
    assert read_package("polch.tex", TEX).files == {"polch.tex": TEX}


def test_truncated_corrupt_tar_and_gzip():
    archive = tar_bytes(("main.tex", TEX), ("fig.eps", b"%!PS" + bytes(5000)), ("b.tex", TEX))
    assert rejected("p.tar", archive[:2000]).reason == "truncated_tar"
    assert rejected("p.tar", archive[: 1024 + 5120 + 300]).reason == "truncated_tar"
    assert rejected("p.tar.gz", gz(archive[:2000])).reason == "truncated_tar"
    garbage = tar_bytes(("main.tex", TEX))[:1024] + b"not a header" * 43 + bytes(1024)
    assert rejected("p.tar", garbage[:1024] + garbage[1024:1536] + bytes(1024)).reason == "corrupt_tar"
    compressed = gz(archive)
    assert rejected("p.tar.gz", compressed[: len(compressed) // 2]).reason == "corrupt_gzip"
    flipped = bytearray(compressed)
    flipped[len(flipped) // 2] ^= 0xFF
    assert rejected("p.tar.gz", bytes(flipped)).reason == "corrupt_gzip"
    assert rejected("p.gz", b"\x1f\x8b\x08").reason == "corrupt_gzip"


def gzip_bomb(gigabytes: int = 1) -> bytes:
    """About 1 MB that inflates to ``gigabytes`` GB of zeros: one 1 MB block after a full flush repeats verbatim."""
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks, crc = gigabytes << 10, 0
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x08\0\0\0\0\x02\xffbomb.tex\0"
    return header + block * blocks + b"\x03\x00" + struct.pack("<II", crc, (blocks << 20) & 0xFFFFFFFF)


class CountingInflater:
    """zlib's decompressor, counting the bytes it hands out into ``counter[0]``."""

    def __init__(self, make, counter: list[int], *args):
        self._inner, self._counter = make(*args), counter

    def decompress(self, data, max_length=0):
        piece = self._inner.decompress(data, max_length)
        self._counter[0] += len(piece)
        return piece

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_gzip_bomb_is_stopped_early_and_small_in_memory(monkeypatch):
    bomb = gzip_bomb()
    assert len(bomb) < 2 << 20
    # Stopped early, counted in bytes rather than seconds: the reader inflates just past the cap, not the gigabyte.
    inflated, make = [0], zlib.decompressobj
    with monkeypatch.context() as patch:
        patch.setattr(zlib, "decompressobj", lambda *args: CountingInflater(make, inflated, *args))
        assert rejected("bomb.gz", bomb).reason == "total_too_large"
    cap = ArchiveLimits().max_total_bytes
    assert cap < inflated[0] <= cap + (1 << 20)
    small = ArchiveLimits(max_total_bytes=8 << 20)
    tracemalloc.start()
    try:
        assert rejected("bomb.gz", bomb, small).reason == "total_too_large"
        assert rejected("bomb.tar.gz", gz(tar_bytes(("main.tex", TEX))) + bomb, small).reason == "total_too_large"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * small.max_total_bytes


def test_member_and_count_limits():
    limits = ArchiveLimits(max_members=10, max_member_bytes=100, max_total_bytes=250)
    many = tar_bytes(*[(f"f{i}.tex", b"x") for i in range(11)])
    assert rejected("p.tar", many, limits).reason == "too_many_members"
    assert rejected("p.tar", tar_bytes(("main.tex", b"x" * 101)), limits).reason == "member_too_large"
    three = tar_bytes(*[(f"f{i}.tex", b"x" * 90) for i in range(3)])
    assert rejected("p.tar", three, limits).reason == "total_too_large"
    assert rejected("p.gz", gz(b"x" * 101), limits).reason == "member_too_large"
    assert rejected("p.zip", zip_bytes(*[(f"f{i}.tex", b"x") for i in range(11)]), limits).reason == "too_many_members"


def test_nested_archives_unpack_one_level_in_place():
    deeper = zip_bytes(("deep.tex", TEX))
    inner_zip = zip_bytes(("a.eps", b"%!PS-A"), ("inner.zip", deeper), ("__MACOSX/._a.eps", b"junk"))
    inner_tgz = gz(tar_bytes(("d1.eps", b"%!PS-1"), ("../up.eps", b"x")))
    archive = tar_bytes(
        ("main.tex", TEX),
        ("figs/figs.zip", inner_zip),
        ("dyn.tar.gz", inner_tgz),
        ("bad.tar.gz", b"\x1f\x8b\x08\x00garbage"),
        ("fig.eps.gz", gz(b"%!PS-gz")),
    )
    package = read_package("p.tar", archive)
    assert package.files == {
        "main.tex": TEX,
        "figs/a.eps": b"%!PS-A",
        "d1.eps": b"%!PS-1",
        "fig.eps.gz": gz(b"%!PS-gz"),
    }
    assert package.skipped_members == [
        ("figs/figs.zip:inner.zip", "nested_archive_too_deep"),
        ("figs/figs.zip:__MACOSX/._a.eps", "__MACOSX"),
        ("dyn.tar.gz:../up.eps", "parent_path"),
        ("bad.tar.gz", "nested_corrupt_gzip"),
    ]
    flat = read_package("p.tar", archive, ArchiveLimits(max_nesting=0))
    assert ("figs/figs.zip", "nested_archive_too_deep") in flat.skipped_members


def test_zip_input_follows_the_tar_rules():
    archive = zip_bytes(
        ("paper/main.tex", TEX),
        ("paper/", b""),
        ("__MACOSX/paper/._main.tex", b"x"),
        ("../x.tex", TEX),
        ("/abs.tex", TEX),
        symlink="paper/link.tex",
    )
    package = read_package("upload.zip", archive)
    assert package.files == {"paper/main.tex": TEX}
    assert package.skipped_members == [
        ("paper/", "directory"),
        ("__MACOSX/paper/._main.tex", "__MACOSX"),
        ("../x.tex", "parent_path"),
        ("/abs.tex", "absolute_path"),
        ("paper/link.tex", "link"),
    ]


def _expected_id(arxiv_id: str) -> str:
    """Canonical ids once arxiv_ids is importable; archive.py falls back to the file stem before that."""
    try:
        from megasci.corpus.arxiv_ids import canonical_id
    except ImportError:
        return arxiv_id.replace("/", "")
    return canonical_id(arxiv_id)


def test_synthetic_bulk_tar_yields_one_item_per_member(tmp_path):
    records = list(generate_papers(40, seed=3))
    write_source_packages(tmp_path, records, bulk_tar=True)
    bulks = sorted(glob.glob(str(tmp_path / "arXiv_src_*.tar")))
    items = list(iter_source_inputs(bulks))
    id_by_member = {f"{r['id'].split('/')[-1][:4]}/{r['id'].replace('/', '')}": r["id"] for r in records}
    seen, pdfs = [], 0
    for source, outcome in items:
        archive, member = source.split(":")
        stem, suffix = os.path.splitext(member)
        assert archive.startswith("arXiv_src_") and suffix in (".gz", ".pdf")
        seen.append(id_by_member[stem])
        if suffix == ".pdf":
            assert isinstance(outcome, Rejected) and outcome.reason == "pdf_only"
            pdfs += 1
            continue
        assert outcome.paper_id == _expected_id(id_by_member[stem])
        assert outcome.source == source and not outcome.skipped_members
        assert any(name.endswith(".tex") for name in outcome.files)
    assert sorted(seen) == sorted(id_by_member.values())
    assert 0 < pdfs < len(records) and any("/" in i for i in seen)
    renamed = tmp_path / "monthly.tar"
    os.rename(bulks[0], renamed)
    assert all(":" in source for source, _ in iter_source_inputs([renamed]))
    everything = list(iter_source_inputs([tmp_path]))
    assert len(everything) == 2 * len(records)


def test_truncated_bulk_tar_accounts_for_the_break(tmp_path):
    records = list(generate_papers(12, seed=5))
    bulk = [p for p in write_source_packages(tmp_path, records) if p.endswith(".tar")][0]
    data = open(bulk, "rb").read()
    cut = tmp_path / "arXiv_src_cut_001.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])
    items = list(iter_source_inputs([cut]))
    assert isinstance(items[-1][1], Rejected) and items[-1][1].reason in ("truncated_tar", "corrupt_tar")
    assert items[-1][0] == cut.name and len(items) > 1
    empty = tmp_path / "arXiv_src_9901_001.tar"
    empty.write_bytes(bytes(10240))
    [(source, outcome)] = iter_source_inputs([empty])
    assert (source, outcome.reason) == (empty.name, "empty")
    not_tar = tmp_path / "arXiv_src_9902_001.tar"
    not_tar.write_bytes(b"<html>rate limited</html>")
    [(source, outcome)] = iter_source_inputs([not_tar])
    assert (source, outcome.reason) == (not_tar.name, "corrupt_tar")


def test_directory_walk_is_sorted_and_single_files_yield_once(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.tex").write_bytes(TEX)
    (tmp_path / "a.gz").write_bytes(gz(TEX, "a.tex"))
    (tmp_path / "notes.txt").write_bytes(b"ignored")
    (tmp_path / "z.pdf").write_bytes(b"%PDF-1.4")
    items = list(iter_source_inputs([tmp_path], ArchiveLimits()))
    assert [os.path.relpath(source, tmp_path) for source, _ in items] == ["a.gz", "z.pdf", "b/2.tex"]
    assert [getattr(outcome, "reason", "ok") for _, outcome in items] == ["ok", "pdf_only", "ok"]
    huge = tmp_path / "huge.gz"
    huge.write_bytes(b"\x1f\x8b" + bytes(300))
    [(_, outcome)] = iter_source_inputs([huge], ArchiveLimits(max_total_bytes=100))
    assert outcome.reason == "total_too_large"


def test_nothing_is_written_to_disk(tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    hostile = tar_bytes(
        ("../evil.tex", TEX),
        ("/tmp/abs.tex", TEX),
        ("l", None, tarfile.SYMTYPE, "/etc"),
        ("main.tex", TEX),
        ("n.zip", zip_bytes(("../../z.tex", TEX))),
    )
    read_package("p.tar", hostile)
    assert rejected("bomb.gz", gzip_bomb(), ArchiveLimits(max_total_bytes=1 << 20)).reason == "total_too_large"
    if os.path.isdir(SAMPLE):
        for _ in iter_source_inputs([os.path.join(SAMPLE, "hostile")]):
            pass
    assert os.listdir(workdir) == []


OK = "ok"
REAL_EXPECTED = {
    "bulk/minitest.tar": {
        "0303/math0303001.gz": OK,
        "0303/math0303002.gz": OK,
        "0303/math0303003.gz": OK,
        "0303/math0303004.gz": "encrypted",
        "0303/math0303005.gz": OK,
        "0303/math0303006.gz": "encrypted",
        "0303/math0303007.gz": OK,
        "0303/math0303008.gz": "encrypted",
        "0303/math0303009.pdf": "pdf_only",
    },
    "bulk/minitest3.tar": {
        "1403/1403.0035.pdf": "pdf_only",
        "1403/1403.0036.pdf": "pdf_only",
        "1403/1403.0037.gz": OK,
        "1403/1403.0038.gz": OK,
        "1403/1403.0039.gz": OK,
        "1403/1403.0040.gz": OK,
    },
    "bulk/minitest4.tar": {
        "0504/math0504292.gz": "encrypted",
        "0504/math0504297.gz": OK,
        "0504/math0504298.gz": OK,
        "0504/math0504299.gz": OK,
    },
    "packages": {
        "paper-t4.1_Vienna_preprint.tex": OK,
        "polch.tex": OK,
        "upload2.tar.gz": OK,
        "upload4.gz": OK,
        "upload6.tgz": OK,
        "with__MACOSX_hidden.tar.gz": OK,
    },
    "hostile": {
        "0604408.pdf": "rar",
        "10240_null_chars.tar": "empty",  # all NUL = a valid tar with no members
        "12345678.tar.gz": OK,  # the "/" member is skipped, the astro-ph paper yields
        "mutau2-sub_first10kB.tar": "truncated_tar",
        "not_gzip_0011004.gz": "no_tex",  # plain text, read as a file, but not TeX
        "relative_path.tar.gz": "no_tex",  # both members are ../../ paths; nothing else is left
        "upload-nested-zip-and-tar.zip": OK,  # nested tar.gz unpacked; the nested zip is itself corrupt
        "withdrawn_stub_2101.10016.gz": "withdrawn_stub",
    },  # gzip FNAME "withdrawn", body "%auto-ignore"
}


@pytest.mark.skipif(not os.path.isdir(SAMPLE), reason=f"real arXiv sample not present at {SAMPLE}")
@pytest.mark.parametrize("where", sorted(REAL_EXPECTED))
def test_real_arxiv_sample(where):
    items = list(iter_source_inputs([os.path.join(SAMPLE, where)]))
    outcomes = {
        source.split(":")[-1] if ":" in source else os.path.basename(source): outcome for source, outcome in items
    }
    assert len(outcomes) == len(items)
    assert {key: getattr(o, "reason", OK) for key, o in outcomes.items()} == REAL_EXPECTED[where]
    packages = {key: o for key, o in outcomes.items() if isinstance(o, SourcePackage)}
    if where == "bulk/minitest.tar":
        assert packages["0303/math0303005.gz"].files.keys() == {"REPRES.TEX"}
        assert sorted(packages["0303/math0303002.gz"].files) == ["JCMI.Fig.1.eps", "JCMI.Fig.2.eps", "JCMI.Final.ii"]
        assert packages["0303/math0303003.gz"].skipped_members == [("Images", "directory")]
        assert _expected_id("math/0303005") == packages["0303/math0303005.gz"].paper_id
    if where == "bulk/minitest3.tar":
        assert packages["1403/1403.0039.gz"].files.keys() == {"tensorprodCB.tex"}
        assert packages["1403/1403.0038.gz"].paper_id == "1403.0038"
    if where == "packages":
        macosx = packages["with__MACOSX_hidden.tar.gz"]
        assert not any("__MACOSX" in name.split("/") for name in macosx.files)
        assert ("with__MACOSX_hidden/__MACOSX", "__MACOSX") in macosx.skipped_members
        assert "with__MACOSX_hidden/For-arXive/pol_leps.tex" in macosx.files
        assert packages["upload4.gz"].files.keys() == {"hepth_desitterv3.tex"}
    if where == "hostile":
        paper = packages["12345678.tar.gz"]
        assert paper.skipped_members == [("/", "absolute_path"), ("chip_images", "directory")]
        assert "draft.tex" in paper.files and len(paper.files) == 42
        nested = packages["upload-nested-zip-and-tar.zip"]
        assert sorted(nested.files) == [
            "QuantumBJJWithTwoSpecies_10.tex",
            "catstates.eps",
            "dynamics1.eps",
            "dynamics2.eps",
            "dynamics3.eps",
        ]
        assert nested.skipped_members == [("jz2.zip", "nested_corrupt_zip")]
        assert "(parent_path)" in outcomes["relative_path.tar.gz"].detail


def test_paper_id_falls_back_to_the_file_stem_without_arxiv_ids(monkeypatch):
    from megasci.corpus.archive import _paper_id

    monkeypatch.setitem(sys.modules, "megasci.corpus.arxiv_ids", None)
    assert _paper_id("0303/math0303004.gz") == "math0303004"
    assert _paper_id("2301.04217.tar.gz") == "2301.04217"
    assert _paper_id("dir/upload6.tgz") == "upload6"
    assert _paper_id("1403/1403.0036.pdf") == "1403.0036"
    assert _paper_id("packages/polch.tex") == "polch"


def test_pending_inputs_are_unopened_and_carry_the_id_their_package_gets(tmp_path):
    """The builder's reading process hands out objects unopened (a worker decompresses them) and
    decides metadata from `paper_id` before opening: that id must be the opened package's."""
    records = list(generate_papers(6, seed=12))
    paths = write_source_packages(str(tmp_path / "src"), records, bulk_tar=True)
    if os.path.isdir(SAMPLE):
        paths += [os.path.join(SAMPLE, folder) for folder in ("bulk", "packages", "hostile")]
    opened = 0
    for source, item in iter_pending_inputs(paths):
        if isinstance(item, Rejected):
            continue
        assert item.source == source
        if os.path.isfile(source):
            with open(source, "rb") as f:
                assert item.data == f.read()  # the bytes as stored, not decompressed
        elif source.startswith("arXiv_src_"):
            assert sniff(item.data) in ("gzip", "pdf")  # generated bulk tars hold gzipped papers and PDFs
        outcome = item.open()
        if isinstance(outcome, SourcePackage):
            assert (outcome.paper_id, outcome.source) == (item.paper_id, source)
            opened += 1
    assert opened >= 6
    assert [(s, getattr(o, "reason", None)) for s, o in iter_source_inputs(paths)] == [
        (s, getattr(i if isinstance(i, Rejected) else i.open(), "reason", None)) for s, i in iter_pending_inputs(paths)
    ]
