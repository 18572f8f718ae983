"""The corpus builder end to end: every input accounted for, clean records, dedup, resume, real sample."""

import collections
import glob
import json
import os
import re
import tarfile

import pytest

from megasci.corpus import steps
from megasci.corpus.builder import build
from megasci.corpus.clean import clean_latex
from megasci.corpus.config import BuildConfig
from megasci.corpus.dedup import exact_key
from megasci.corpus.filters import check_language
from megasci.corpus.finalize import finalize
from megasci.corpus.package import Rejected, SourcePackage
from megasci.corpus.pipeline import Rejection, Step
from megasci.corpus.rejected import REJECTED_FILE
from megasci.corpus.sections import compose_document
from megasci.corpus.synthetic import generate_papers, gzip_bytes, write_arxiv_metadata, write_source_packages
from megasci.corpus.units import EXCERPT_CHARS, InputResult, process_paper
from megasci.utils.io import atomic_text_output, iter_json_records, jsonable

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "arxiv_sample")
UNESCAPED_PERCENT = re.compile(r"(?<!\\)(?:\\\\)*%")


def gz_tex(path, tex, name="main.tex"):
    path.write_bytes(gzip_bytes(tex.encode(), name=name))


def paper_tex(title, body):
    return (
        "\\documentclass{article}\n\\newcommand{\\R}{\\mathbb{R}}\n\\begin{document}\n"
        f"\\title{{{title}}}\n\\maketitle\n\\begin{{abstract}}\nWe study $f:\\R\\to\\R$.\n\\end{{abstract}}\n"
        f"\\section{{Introduction}}\n{body}\n\\end{{document}}\n"
    )


def words(seed, n=600):
    vocab = "the of a we show that function space bound estimate operator series proof lemma holds".split()
    return " ".join(vocab[(seed * 7 + i * i) % len(vocab)] + str((seed + i) % 97) for i in range(n))


def read_records(out):
    return [
        r for path in sorted(glob.glob(os.path.join(out, "shards", "*.jsonl.zst"))) for r in iter_json_records(path)
    ]


@pytest.fixture()
def sources(tmp_path):
    """Synthetic bulk tars plus hand-made papers: a duplicate, a near duplicate, a short one, junk."""
    records = list(generate_papers(12, seed=21))
    src = tmp_path / "src"
    paths = write_source_packages(str(src), records, bulk_tar=True)
    for path in paths:  # keep only the bulk tars, so each synthetic paper is one input
        if not os.path.basename(path).startswith("arXiv_src_"):
            os.remove(path)
    extra = tmp_path / "extra"
    extra.mkdir()
    body = words(1) + " Here $x^2 \\le 1$ % a comment\n" + "\\cite{ref} holds."
    gz_tex(extra / "2301.00001.gz", paper_tex("Original", body))
    gz_tex(extra / "2301.00002.gz", paper_tex("Original", body))  # the same paper under another id
    gz_tex(extra / "2301.00003.gz", paper_tex("Original", "Three changed words " + body.split(" ", 3)[3]))
    gz_tex(extra / "2301.00004.gz", paper_tex("Short", "Too short to keep, $x$."))
    (extra / "2301.00005.gz").write_bytes(b"\x1f\x8b\x08\x00corrupt")
    (extra / "2301.00006.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    metadata = tmp_path / "meta.jsonl"
    write_arxiv_metadata(str(metadata), records)
    return [str(src), str(extra)], str(metadata), records


def test_every_input_is_accounted_for_and_records_are_clean(tmp_path, sources):
    paths, metadata, records = sources
    out = str(tmp_path / "out")
    report = build(BuildConfig(sources=paths, output=out, metadata=[metadata]), progress=False)
    rejected = sum(n for reasons in report.rejections.values() for n in reasons.values())
    assert report.inputs == rejected + report.written
    expected_inputs = len(records) + 6
    assert report.inputs == expected_inputs
    pdf_members = sum(
        name.endswith(".pdf")
        for tar in glob.glob(os.path.join(paths[0], "*.tar"))
        for name in tarfile.open(tar).getnames()
    )
    assert report.rejections["archive"] == {"corrupt_gzip": 1, "pdf_only": 1 + pdf_members}
    assert report.rejections["length"] == {"too_short": 1}
    assert report.rejections["exact_dedup"] == {"exact_duplicate": 1}
    assert report.rejections["near_dedup"] == {"near_duplicate": 1}
    written = read_records(out)
    assert len(written) == report.written
    ids = {r["id"] for r in written}
    assert len({"2301.00001", "2301.00002", "2301.00003"} & ids) == 1
    for record in written:
        assert record["title"] and record["text"].startswith("\\title{")
        assert "\\cite{" not in record["text"] and "\\documentclass" not in record["text"]
        assert not UNESCAPED_PERCENT.search(record["text"])
        assert record["sections"][0]["label"] == "title" and record["sections"][-1]["end"] == len(record["text"])
        assert 0 < record["math_fraction"] < 1
    hand_made = next(r for r in written if r["id"].startswith("2301.0000"))
    assert "[CITATION] holds." in hand_made["text"] and "$x^2 \\le 1$" in hand_made["text"]
    assert "\\mathbb{R}" in hand_made["text"]  # the user macro \R expanded inside math
    assert hand_made["categories"] == []  # no metadata for it: kept, categories unknown
    assert open(os.path.join(out, "yield.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_workers_and_resume_give_identical_output(tmp_path, sources):
    paths, metadata, _ = sources
    one = str(tmp_path / "one")
    build(BuildConfig(sources=paths, output=one, metadata=[metadata]), progress=False)
    two = str(tmp_path / "two")
    build(BuildConfig(sources=paths, output=two, metadata=[metadata], workers=2), progress=False)
    assert read_records(one) == read_records(two)
    # A killed run: one unit unfinished, no shards yet. The rerun redoes only that unit.
    done = sorted(glob.glob(os.path.join(two, "units", "*.done.json")))
    os.remove(done[0])
    for path in glob.glob(os.path.join(two, "shards", "*")):
        os.remove(path)
    untouched = {p: os.path.getmtime(p) for p in done[1:]}
    build(BuildConfig(sources=paths, output=two, metadata=[metadata]), progress=False)
    assert {p: os.path.getmtime(p) for p in done[1:]} == untouched
    assert read_records(two) == read_records(one)


@pytest.mark.parametrize("field,says", [("minhash_scheme", "MinHash scheme None"), ("unit_format", "unit format 1")])
def test_units_another_builder_version_wrote_are_refused_by_name(tmp_path, sources, field, says):
    paths, metadata, _ = sources
    out = str(tmp_path / "o")
    build(BuildConfig(sources=paths, output=out, metadata=[metadata]), progress=False)
    done = sorted(glob.glob(os.path.join(out, "units", "*.done.json")))[1]
    with open(done, encoding="utf-8") as f:
        data = json.load(f)
    del data[field]  # as a unit from before the field was recorded
    with open(done, "w", encoding="utf-8") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match=re.escape(done) + ".*" + says):
        build(BuildConfig(sources=paths, output=out, metadata=[metadata]), progress=False)
    os.remove(done)
    assert build(BuildConfig(sources=paths, output=out, metadata=[metadata]), progress=False).written > 0


def test_a_records_file_that_does_not_match_its_results_is_an_error_naming_it(tmp_path, sources):
    paths, metadata, _ = sources
    out = str(tmp_path / "o")
    written = build(BuildConfig(sources=paths, output=out, metadata=[metadata]), progress=False).written
    assert len(read_records(out)) == written
    path = max(glob.glob(os.path.join(out, "units", "*.records.jsonl.zst")), key=os.path.getsize)
    lines = list(iter_json_records(path))
    assert len(lines) >= 2
    with atomic_text_output(path) as f:
        f.writelines(json.dumps(record) + "\n" for record in lines[:-1])
    with pytest.raises(ValueError, match=re.escape(path) + ": its records do not match"):
        finalize(BuildConfig(sources=paths, output=out, metadata=[metadata]))


def test_a_paper_over_its_time_limit_is_rejected_not_fatal(tmp_path, sources):
    paths, metadata, _ = sources
    report = build(BuildConfig(sources=[paths[1]], output=str(tmp_path / "o"), paper_time_limit_s=1e-6), progress=False)
    assert report.written == 0
    assert report.rejections["assembly"] == {"time_limit": 4}


def test_real_arxiv_sample(tmp_path, monkeypatch):
    if not os.path.isdir(SAMPLE):
        pytest.skip(f"real arXiv sample not present at {os.path.abspath(SAMPLE)}")
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "out")
    sources = [os.path.join(SAMPLE, d) for d in ("bulk", "packages", "hostile")]
    report = build(
        BuildConfig(
            sources=sources, output=out, metadata=[os.path.join(SAMPLE, "metadata", "arxiv-metadata-oai-snapshot.json")]
        ),
        progress=False,
    )
    assert os.listdir(tmp_path) == ["out"]  # nothing written outside the output directory
    rejected = sum(n for reasons in report.rejections.values() for n in reasons.values())
    assert report.inputs == rejected + report.written == 33
    assert report.rejections["archive"] == {
        "encrypted": 4,
        "pdf_only": 3,
        "no_tex": 2,
        "rar": 1,
        "empty": 1,
        "truncated_tar": 1,
        "withdrawn_stub": 1,
    }
    written = read_records(out)
    assert "12345678" in {r["id"] for r in written}  # its `/` member is skipped, the paper still yields
    assert report.skipped_members["absolute_path"] == 1
    assert report.skipped_members["parent_path"] == 2  # relative_path.tar.gz: both `../../` members
    # The sample's metadata and sources do not overlap: both counts are reported.
    assert report.metadata_lines["kept"] == 100 and sum(report.metadata_lines.values()) == 200
    assert (report.sources_with_metadata, report.sources_without_metadata) == (0, 20)
    assert len(written) == report.written == 20
    for record in written:
        text = record["text"]
        assert record["title"].strip(), record["id"]
        assert record["math_fraction"] > 0, record["id"]
        assert "\\cite{" not in text, record["id"]
        assert not UNESCAPED_PERCENT.search(text), record["id"]
        assert not re.search(r"\\(documentclass|documentstyle|usepackage)\b", text), record["id"]


def test_shards_split_by_record_count_with_the_same_records(tmp_path, sources):
    paths, metadata, _ = sources
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    build(BuildConfig(sources=paths, output=whole, metadata=[metadata]), progress=False)
    report = build(BuildConfig(sources=paths, output=split, metadata=[metadata], records_per_shard=3), progress=False)
    shards = sorted(glob.glob(os.path.join(split, "shards", "*.jsonl.zst")))
    assert len(shards) == -(-report.written // 3)
    assert [os.path.basename(p) for p in shards] == [f"arxiv-{i:05d}.jsonl.zst" for i in range(len(shards))]
    assert read_records(split) == read_records(whole)


def test_the_funnel_is_the_declared_stages_in_order():
    assert [step.name for step in steps.DEFAULT_PIPELINE] == [
        "assembly",
        "cleaning",
        "length",
        "language",
        "exact_dedup",
    ]
    assert (
        BuildConfig(sources=[], output="").stages
        == steps.DEFAULT_STAGES
        == ("archive", "metadata", "assembly", "cleaning", "length", "language", "exact_dedup", "near_dedup")
    )


def _paper_result(tex: str, **config) -> InputResult:
    package = SourcePackage(paper_id="2301.00009", source="test:2301.00009", files={"main.tex": tex.encode()})
    return process_paper((package, None, BuildConfig(sources=[], output="", **config)))


def test_a_paper_leaves_at_the_first_stage_that_rejects_it_with_that_stage_timed():
    tex = paper_tex("Short", "Too short to keep, $x$.")
    result = _paper_result(tex)
    assert result.rejection == Rejection("length", "too_short")
    assert list(result.seconds) == ["assembly", "cleaning", "length"]
    cleaned = clean_latex(tex)
    composed, _ = compose_document(cleaned.title, cleaned.abstract, cleaned.text)
    assert result.chars == {"assembly": len(tex), "cleaning": len(composed)}
    assert result.record is None and result.has_metadata is False
    nothing = SourcePackage(paper_id="x", source="x", files={"a.tex": b"text\n", "b.tex": b"text\n"})
    assert process_paper((nothing, None, BuildConfig(sources=[], output=""))).rejection == Rejection(
        "assembly", "no_main_file"
    )


def test_the_language_stage_is_the_language_filter_of_the_config():
    tex = paper_tex("Original", words(3))
    kept = _paper_result(tex)
    assert kept.rejection is None and kept.record["text"].startswith("\\title{Original}")
    assert kept.exact_key == exact_key(kept.record["text"]) and len(kept.minhash) == 128
    assert list(kept.seconds) == ["assembly", "cleaning", "length", "language", "exact_dedup"]
    cleaned = clean_latex(tex)
    language, _ = check_language(cleaned.title, cleaned.abstract, cleaned.text)
    assert language == "en"
    assert _paper_result(tex, language="de").rejection == Rejection("language", "language_en")


def test_a_step_that_fails_rejects_the_paper_at_its_stage(monkeypatch):
    def broken_cleaner(text, keep_captions=True):
        raise ValueError("pathological input")

    monkeypatch.setattr(steps, "clean_latex", broken_cleaner)
    result = _paper_result(paper_tex("Original", words(3)))
    assert result.rejection == Rejection("cleaning", "error_ValueError")
    assert list(result.chars) == ["assembly"]


def test_unit_lines_read_back_as_the_results_written():
    result = _paper_result(paper_tex("Original", words(3)))
    assert InputResult.from_json(json.loads(json.dumps(jsonable(result)))) == result
    rejected = _paper_result(paper_tex("Short", "Too short."))
    assert InputResult.from_json(json.loads(json.dumps(jsonable(rejected)))) == rejected


def _flat(rejections: dict) -> collections.Counter:
    return collections.Counter(
        {(stage, reason): n for stage, reasons in rejections.items() for reason, n in reasons.items()}
    )


def test_a_step_the_caller_adds_or_moves_changes_the_output_as_declared(tmp_path, sources):
    paths, metadata, _ = sources
    default = build(BuildConfig(sources=paths, output=str(tmp_path / "default"), metadata=[metadata]), progress=False)
    records = read_records(str(tmp_path / "default"))
    generated = [r["id"] for r in records if not r["id"].startswith("2301.0000")]  # outside the duplicates
    dropped_ids = {generated[0], generated[-1]}

    def no_listed_ids(paper, cfg):
        return Rejected("listed_id") if paper.package.paper_id in dropped_ids else paper

    user = Step("user_filter", no_listed_ids)
    custom = steps.DEFAULT_PIPELINE[:2] + (user,) + steps.DEFAULT_PIPELINE[2:]
    out = str(tmp_path / "custom")
    report = build(
        BuildConfig(sources=paths, output=out, metadata=[metadata], pipeline=custom, workers=2), progress=False
    )
    assert read_records(out) == [r for r in records if r["id"] not in dropped_ids]
    assert report.rejections["user_filter"] == {"listed_id": 2}
    assert _flat(report.rejections) - _flat(default.rejections) == {("user_filter", "listed_id"): 2}
    rows = {row["stage"]: row for row in report.funnel}
    assert [row["stage"] for row in report.funnel][3:6] == ["assembly", "cleaning", "user_filter"]
    assert rows["user_filter"]["papers"] == rows["cleaning"]["papers"] - 2
    with open(os.path.join(out, "yield.json"), encoding="utf-8") as f:
        assert [row["stage"] for row in json.load(f)["funnel"]] == [
            "inputs",
            *BuildConfig(sources=[], output="", pipeline=custom).stages,
        ]
    # Moved: language before length gives the same records, with the funnel rows in the new order.
    moved = steps.DEFAULT_PIPELINE[:2] + (
        steps.DEFAULT_PIPELINE[3],
        steps.DEFAULT_PIPELINE[2],
        steps.DEFAULT_PIPELINE[4],
    )
    report = build(
        BuildConfig(sources=paths, output=str(tmp_path / "moved"), metadata=[metadata], pipeline=moved), progress=False
    )
    assert read_records(str(tmp_path / "moved")) == records
    assert [row["stage"] for row in report.funnel][5:7] == ["language", "length"]


def test_a_pipeline_the_funnel_cannot_count_is_refused():
    keys = steps.DEFAULT_PIPELINE[-1]
    with pytest.raises(ValueError, match="must end with the 'exact_dedup' step"):
        BuildConfig(sources=[], output="", pipeline=steps.DEFAULT_PIPELINE[:-1])
    with pytest.raises(ValueError, match=r"fixed stage names \['cleaning'\]"):
        BuildConfig(sources=[], output="", pipeline=steps.DEFAULT_PIPELINE[:2] + steps.DEFAULT_PIPELINE[1:])
    with pytest.raises(ValueError, match=r"fixed stage names \['metadata'\]"):
        BuildConfig(sources=[], output="", pipeline=(Step("metadata", steps.length_step), keys))


def test_the_rejected_log_lists_every_rejected_paper_with_stage_and_reason(tmp_path, sources, run_tool):
    paths, metadata, _ = sources
    out, rejected_dir = str(tmp_path / "out"), str(tmp_path / "rejected")
    report = build(
        BuildConfig(sources=paths, output=out, metadata=[metadata], rejected_dir=rejected_dir), progress=False
    )
    path = os.path.join(rejected_dir, REJECTED_FILE)
    with open(path, "rb") as f:
        assert f.read(4) == b"\x28\xb5\x2f\xfd"  # zstd, as the shards are
    log = list(iter_json_records(path))
    assert len(log) == report.inputs - report.written
    assert collections.Counter((r["stage"], r["reason"]) for r in log) == _flat(report.rejections)
    per_stage = collections.Counter(r["stage"] for r in log)
    for before, row in zip(report.funnel, report.funnel[1:]):  # each funnel step loses exactly the logged papers
        assert before["papers"] - row["papers"] == per_stage[row["stage"]], row
    written = read_records(out)
    assert {r["source"] for r in log}.isdisjoint(r["source"] for r in written)
    assert len({r["source"] for r in log}) == len(log)
    by_reason = {r["reason"]: r for r in log}
    assert by_reason["too_short"]["id"] == "2301.00004"
    assert by_reason["too_short"]["excerpt"].startswith("\\title{Short}")  # its clean text when it left
    assert by_reason["corrupt_gzip"]["excerpt"] == "" and by_reason["corrupt_gzip"]["id"] is None
    for reason in ("exact_duplicate", "near_duplicate"):
        entry = by_reason[reason]
        assert entry["kept"] in {r["source"] for r in written} and entry["excerpt"].startswith("\\title{Original}")
        assert entry["id"] in {"2301.00001", "2301.00002", "2301.00003"}
    assert all(r["kept"] is None for r in log if r["stage"] not in ("exact_dedup", "near_dedup"))
    assert all(len(r["excerpt"]) <= EXCERPT_CHARS for r in log)
    # The same log for a finished run, from the command line's finalize alone.
    again = str(tmp_path / "again")
    assert run_tool("build_arxiv_corpus.py", ["--output", out, "--finalize-only", "--rejected-dir", again]) == 0
    assert list(iter_json_records(os.path.join(again, REJECTED_FILE))) == log
