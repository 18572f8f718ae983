"""LaTeX assembly: exact expanded text on small hand-made packages, then real arXiv sources."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from megasci.corpus import assemble as assemble_module
from megasci.corpus.assemble import assemble, decode_tex
from megasci.corpus.latex import code_part
from megasci.corpus.package import Rejected, SourcePackage

DOC = b"\\documentclass{article}\n"
SAMPLE = Path(__file__).parent / ".." / ".." / "shared" / "arxiv_sample"


def package(files: dict[str, bytes]) -> SourcePackage:
    return SourcePackage(paper_id="2301.00001", source="test", files=files)


def test_input_chain_across_folders_skips_unreached_files():
    paper = assemble(
        package(
            {
                "main.tex": DOC + b"\\begin{document}\n\\input{sections/intro}\nEnd.\n\\end{document}\n",
                "sections/intro.tex": b"Intro.\n\\input{sections/detail.tex}\n",
                "sections/detail.tex": b"Detail.\n",
                "unused.tex": b"Never reached.\n",
            }
        )
    )
    assert paper.main_file == "main.tex"
    assert paper.text == DOC.decode() + "\\begin{document}\nIntro.\nDetail.\nEnd.\n\\end{document}\n"
    assert paper.inputs_followed == ["sections/intro.tex", "sections/detail.tex"]
    assert paper.encoding == "utf-8" and not paper.issues


def test_unbraced_input_and_optional_extension():
    paper = assemble(
        package(
            {
                "main.tex": DOC + b"\\input macros\n\\input{body.tex}\\relax\n\\input defs\n",
                "macros.tex": b"\\def\\x{1}\n",
                "body.tex": b"Body.\n",
                "defs": b"Defs without extension.\n",
            }
        )
    )
    assert paper.text == DOC.decode() + "\\def\\x{1}\nBody.\\relax\nDefs without extension.\n"


def test_endinput_line_stops_the_file_but_guarded_endinput_does_not():
    paper = assemble(
        package(
            {
                "main.tex": DOC + b"\\input{defs}\n\\newcommand{\\inp}[1]{\\input{#1}}\n",
                "defs.tex": b"\\ifx\\defs\\undefined\\else\\endinput\\fi\nKept\n\\endinput\nNotes after endinput\n",
            }
        )
    )
    guard = "\\ifx\\defs\\undefined\\else\\endinput\\fi\n"
    assert paper.text == DOC.decode() + guard + "Kept\n\\endinput\n\\newcommand{\\inp}[1]{\\input{#1}}\n"
    assert not paper.issues


def test_case_insensitive_fallback():
    paper = assemble(package({"main.tex": DOC + b"\\input{Chapter}\n", "chapter.TEX": b"Ch.\n"}))
    assert paper.text == DOC.decode() + "Ch.\n"
    assert paper.inputs_followed == ["chapter.TEX"]


def test_cycle_is_cut_and_counted():
    paper = assemble(
        package(
            {
                "main.tex": DOC + b"\\input{a}\n",
                "a.tex": b"A1\n\\input{b}\nA2\n",
                "b.tex": b"B1\n\\input{a}\nB2\n",
            }
        )
    )
    assert paper.text == DOC.decode() + "A1\nB1\nB2\nA2\n"
    assert paper.issues == {"cycle": 1}


def test_commented_inputs_are_not_followed_but_escaped_percent_is_literal():
    main = DOC + b"%\\input{x}\nfoo % \\input{x}\n\\%\\input{y}\n\\\\%\\input{x}\n"
    paper = assemble(package({"main.tex": main, "x.tex": b"X\n", "y.tex": b"Y\n"}))
    assert paper.text == DOC.decode() + "%\\input{x}\nfoo % \\input{x}\n\\%Y\n\\\\%\\input{x}\n"
    assert paper.inputs_followed == ["y.tex"]


def test_code_part():
    assert code_part("a % b") == "a "
    assert code_part("50\\% of % c") == "50\\% of "
    assert code_part("\\\\% c") == "\\\\"
    assert code_part("\\\\\\% kept") == "\\\\\\% kept"


def test_legacy_00readme_picks_main_over_root_documentclass():
    files = {
        "template.tex": DOC + b"Template with a much longer body than the paper.\n" * 5,
        "paper/real.tex": DOC + b"Real.\n",
    }
    for readme in (b"paper/real.tex toplevelfile\nnostamp\n", b"toplevelfile paper/real.tex\n"):
        paper = assemble(package({**files, "00README.XXX": readme}))
        assert paper.main_file == "paper/real.tex"
        assert paper.text == DOC.decode() + "Real.\n"


def test_00readme_ignore_and_json_and_several_toplevel_files():
    files = {"big.tex": DOC + b"Big.\n" * 9, "small.tex": DOC + b"Small.\n", "supp.tex": DOC + b"Supp.\n"}
    assert assemble(package(files)).main_file == "big.tex"
    ignored = assemble(package({**files, "00README.XXX": b"big.tex ignore\nsupp.tex ignore\n"}))
    assert ignored.main_file == "small.tex"
    readme = {"sources": [{"filename": "small.tex", "usage": "toplevel"}, {"filename": "supp.tex"}]}
    both = assemble(package({**files, "00README.json": json.dumps(readme).encode()}))
    assert both.main_file == "small.tex"
    assert both.text == DOC.decode() + "Small.\n\n" + DOC.decode() + "Supp.\n"


def test_candidate_that_another_inputs_is_not_main_and_ties_break_by_folder_size_name():
    paper = assemble(
        package(
            {
                "main.tex": DOC + b"\\input{standalone}\n",
                "standalone.tex": DOC + b"A standalone part, larger than main.\n" * 3,
            }
        )
    )
    assert paper.main_file == "main.tex"
    deep = {"sub/huge.tex": DOC + b"x\n" * 50, "b.tex": DOC + b"bb\n", "a.tex": DOC + b"aa\n", "c.tex": DOC}
    assert assemble(package(deep)).main_file == "a.tex"


def test_main_with_ii_extension_and_single_plain_tex_file():
    paper = assemble(package({"JCMI.Final.ii": DOC + b"Body.\n", "JCMI.Fig.1.eps": b"%!PS-Adobe-2.0\n"}))
    assert paper.main_file == "JCMI.Final.ii"
    plain = assemble(package({"robin.tex": b"\\magnification=1200\nPlain TeX.\n\\bye\n", "f.eps": b"%!PS\n"}))
    assert plain.main_file == "robin.tex"


def test_no_main_file_is_rejected():
    with pytest.raises(Rejected) as error:
        assemble(package({"a.tex": b"text\n", "b.tex": b"text\n", "fig.eps": b"%!PS\n"}))
    assert error.value.reason == "no_main_file"
    with pytest.raises(Rejected) as error:
        assemble(package({"paper.tex.cry": b"\x93\x11binary", "imsart.sty": b"\\input{leqno.clo}\n"}))
    assert error.value.reason == "encrypted"


def test_latin1_cp1252_and_mixed_encodings():
    paper = assemble(
        package(
            {
                "main.tex": DOC + "Schrödinger café\n\\input{u}\n".encode("latin-1"),
                "u.tex": "\ufeffUTF-8 naïve\n".encode("utf-8"),
            }
        )
    )
    assert paper.text == DOC.decode() + "Schrödinger café\nUTF-8 naïve\n"
    assert paper.encoding == "cp1252"
    assert paper.file_encodings == {"main.tex": "cp1252", "u.tex": "utf-8"}
    assert paper.issues == {"decoding_fallback": 1}
    undefined_in_cp1252 = assemble(package({"main.tex": DOC + b"caf\xe9 \x81\n"}))
    assert undefined_in_cp1252.encoding == "latin-1"
    assert undefined_in_cp1252.text == DOC.decode() + "café \x81\n"


def test_confident_detection_names_the_codec():
    russian = "Теорема Пифагора: квадрат гипотенузы равен сумме квадратов катетов.\n" * 3
    text, encoding = decode_tex(russian.encode("koi8-r"))
    assert (text, encoding) == (russian, "detected:koi8_r")
    french = "Le problème de la théorie des ensembles est très intéressant, à côté.\n" * 3
    assert decode_tex(french.encode("latin-1")) == (french, "cp1252")


def test_crlf_and_lone_cr_become_lf():
    crlf_main = b"\\documentstyle{article}\r\n\\input{b}\r\nX\rY\r\n"
    paper = assemble(package({"MAIN.TEX": crlf_main, "b.tex": b"B\r\n"}))
    assert paper.text == "\\documentstyle{article}\nB\nX\nY\n"


def test_missing_input_line_is_left_out():
    paper = assemble(package({"main.tex": DOC + b"\\input epsf.tex\nText \\input{gone} more\nEnd\n"}))
    assert paper.text == DOC.decode() + "Text  more\nEnd\n"
    assert paper.issues == {"missing_input": 2}


def test_bbl_input_is_not_inlined():
    bbl = b"\\begin{thebibliography}\n"
    paper = assemble(package({"main.tex": DOC + b"\\input{main.bbl}\nEnd\n", "main.bbl": bbl}))
    assert paper.text == DOC.decode() + "End\n"
    assert paper.issues == {"bbl_skipped": 1}
    assert paper.bbl_files == ["main.bbl"]


def test_paths_outside_the_package_are_not_followed():
    paper = assemble(
        package(
            {
                "sub/main.tex": DOC
                + b"\\input{../../etc/passwd}\n\\input{/etc/passwd}\n\\import{../../}{x}\n\\input{../shared}\n",
                "shared.tex": b"Shared.\n",
            }
        )
    )
    assert paper.text == DOC.decode() + "Shared.\n"
    assert paper.issues == {"outside_package": 3}


def test_import_subimport_include_subfile():
    paper = assemble(
        package(
            {
                "main.tex": DOC + b"\\import{chapters/}{one}\n\\include{ch1}\n\\subfile{sub/part}\n",
                "chapters/one.tex": b"One\n\\input{fig}\n\\subimport{deep/}{two}\n",
                "chapters/fig.tex": b"Fig\n",
                "chapters/deep/two.tex": b"Two\n",
                "ch1.tex": b"Ch1\n",
                "sub/part.tex": b"\\documentclass[../main.tex]{subfiles}\n\\begin{document}\nPart\n\\end{document}\n",
            }
        )
    )
    assert paper.main_file == "main.tex"
    assert paper.text == DOC.decode() + "One\nFig\nTwo\nCh1\nPart\n"


def test_depth_and_size_caps(monkeypatch):
    chain = {f"f{i}.tex": f"L{i}\n\\input{{f{i + 1}}}\n".encode() for i in range(1, 30)}
    paper = assemble(package({"main.tex": DOC + b"\\input{f1}\n", **chain}))
    assert paper.issues == {"depth_cap": 1}
    assert len(paper.inputs_followed) == assemble_module.MAX_DEPTH - 1
    monkeypatch.setattr(assemble_module, "MAX_TOTAL_CHARS", 50)
    two_inputs = DOC + b"\\input{a}\n\\input{b}\n"
    capped = assemble(package({"main.tex": two_inputs, "a.tex": b"A\n", "b.tex": b"B" * 30}))
    assert capped.text == DOC.decode() + "A\n"
    assert capped.issues == {"size_cap": 1}


def _gzip_name(data: bytes) -> str | None:
    """The FNAME field of a gzip header, which Python's gzip module does not expose."""
    flags, start = data[3], 10
    if not flags & 0x08:
        return None
    if flags & 0x04:
        start += 2 + int.from_bytes(data[10:12], "little")
    return data[start : data.index(b"\0", start)].decode("latin-1")


def _bulk_package(tar_name: str, member: str) -> SourcePackage:
    """A bulk-tar member as a SourcePackage, unpacked in memory (a stand-in for the archive stage)."""
    with tarfile.open(SAMPLE / "bulk" / tar_name) as outer:
        compressed = outer.extractfile(member).read()
    raw = gzip.decompress(compressed)
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as inner:
            files = {m.name: inner.extractfile(m).read() for m in inner.getmembers() if m.isfile()}
    except tarfile.TarError:
        files = {_gzip_name(compressed) or "main.tex": raw}
    return SourcePackage(paper_id=member, source=f"{tar_name}:{member}", files=files)


def _file_package(name: str) -> SourcePackage:
    path = SAMPLE / "packages" / name
    if name.endswith(".tex"):
        return SourcePackage(paper_id=name, source=name, files={name: path.read_bytes()})
    with tarfile.open(path) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
    return SourcePackage(paper_id=name, source=name, files=files)


real = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real arXiv sample not present at {SAMPLE.resolve()}")


@real
def test_real_multi_file_paper_with_ii_main():
    paper = assemble(_bulk_package("minitest.tar", "0303/math0303002.gz"))
    assert paper.main_file == "JCMI.Final.ii"
    assert "Équations aux dérivées partielles" in paper.text
    assert paper.encoding == "cp1252"


@real
def test_real_crlf_upper_case_single_file():
    paper = assemble(_bulk_package("minitest.tar", "0303/math0303005.gz"))
    assert paper.main_file == "REPRES.TEX"
    assert "\r" not in paper.text and paper.text.startswith("\\documentstyle{article}\n")


@real
def test_real_upload_with_00readme_nostamp_only():
    """Its 00README.XXX holds only `nostamp`, so the main file still comes from \\documentclass."""
    pkg = _file_package("upload2.tar.gz")
    assert pkg.files["00README.XXX"].split() == [b"nostamp"]
    paper = assemble(pkg)
    assert paper.main_file == "main_a.tex"
    assert paper.bbl_files == [] and "\\documentclass" in paper.text


@real
def test_real_non_utf8_preprint():
    paper = assemble(_file_package("paper-t4.1_Vienna_preprint.tex"))
    assert paper.encoding == "cp1252"
    assert "Ontario Premier\u2019s Research Excellence Award" in paper.text
    assert "chamber\u20141975" in paper.text


@real
def test_real_documentstyle_paper():
    paper = assemble(_file_package("polch.tex"))
    assert paper.main_file == "polch.tex" and paper.issues == {"missing_input": 1}


@real
def test_real_missing_system_file_and_bbl_input():
    robin = assemble(_bulk_package("minitest4.tar", "0504/math0504297.gz"))
    assert robin.main_file == "robin.tex"
    assert robin.issues["missing_input"] == 1 and "\\input epsf.tex" not in robin.text
    techrpt = assemble(_bulk_package("minitest4.tar", "0504/math0504298.gz"))
    assert techrpt.issues["bbl_skipped"] == 1 and techrpt.bbl_files == ["techrpt.bbl"]
    assert "\\input{techrpt.bbl}" not in techrpt.text and "%\\input{title}" in techrpt.text


@real
def test_real_commented_out_inputs_not_followed():
    paper = assemble(_bulk_package("minitest3.tar", "1403/1403.0039.gz"))
    assert paper.inputs_followed == [] and not paper.issues
    assert "%\\input pictex" in paper.text


@real
def test_real_encrypted_source_rejected():
    with pytest.raises(Rejected) as error:
        assemble(_bulk_package("minitest.tar", "0303/math0303004.gz"))
    assert error.value.reason == "encrypted"
