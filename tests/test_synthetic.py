"""Tests for the synthetic arXiv-style corpus that replaces real arXiv files in demos and fixtures."""

import gzip
import io
import json
import os
import re
import tarfile

import pytest

from megasci.corpus.labels import PROSE_LABELS, SECTION_LABELS
from megasci.corpus.synthetic import (
    generate_papers,
    write_arxiv_metadata,
    write_corpus_jsonl,
    write_source_packages,
)

RECORD_KEYS = {"id", "title", "text", "sections", "categories", "year", "math_fraction", "source", "encoding"}
SNAPSHOT_KEYS = {
    "id",
    "submitter",
    "authors",
    "title",
    "comments",
    "journal-ref",
    "doi",
    "report-no",
    "categories",
    "license",
    "abstract",
    "versions",
    "update_date",
    "authors_parsed",
}
NEW_STYLE_ID = re.compile(r"^(\d{2})(\d{2})\.\d{4,5}$")
OLD_STYLE_ID = re.compile(r"^[a-z-]+/(\d{2})(\d{2})\d{3}$")
MATH = re.compile(r"\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\begin\{(equation|align)\*?\}.*?\\end\{\1\*?\}", re.S)


@pytest.fixture(scope="module")
def papers():
    return list(generate_papers(120, seed=7))


@pytest.fixture(scope="module")
def packages(papers, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("packages")
    return out_dir, write_source_packages(str(out_dir), papers[:60])


def gzip_header_name(data: bytes):
    """The FNAME field of a gzip member header (RFC 1952), or None when absent."""
    assert data[:2] == b"\x1f\x8b"
    flags, position = data[3], 10
    if flags & 0x04:
        position += 2 + int.from_bytes(data[10:12], "little")
    if not flags & 0x08:
        return None
    return data[position : data.index(b"\x00", position)].decode("latin-1")


def test_labels_are_canonical():
    assert SECTION_LABELS[:2] == ("title", "abstract") and set(PROSE_LABELS) <= set(SECTION_LABELS)


def test_same_seed_same_records_and_prefix_property(papers):
    assert list(generate_papers(120, seed=7)) == papers
    assert list(generate_papers(10, seed=7)) == papers[:10]
    assert [p["text"] for p in generate_papers(10, seed=8)] != [p["text"] for p in papers[:10]]


def test_record_shape(papers):
    for paper in papers:
        assert set(paper) == RECORD_KEYS
        assert paper["source"] == f"synthetic/{paper['id']}" and paper["encoding"] == "utf-8"
        assert paper["text"].startswith("\\title{" + paper["title"] + "}")
        assert 3500 <= len(paper["text"]) <= 24000


def test_sections_are_contiguous_and_cover_text(papers):
    for paper in papers:
        spans = paper["sections"]
        assert spans[0]["label"] == "title" and spans[0]["start"] == 0 and spans[1]["label"] == "abstract"
        assert spans[-1]["end"] == len(paper["text"])
        for before, after in zip(spans, spans[1:]):
            assert before["end"] == after["start"] and before["label"] != after["label"]
        assert all(span["start"] < span["end"] and span["label"] in SECTION_LABELS for span in spans)
    used = {span["label"] for paper in papers for span in paper["sections"]}
    assert {"introduction", "results", "proof", "conclusion", "appendix", "other"} <= used


def test_math_fraction_matches_regex_recount(papers):
    for paper in papers:
        text = paper["text"]
        recount = sum(len(match.group(0)) for match in MATH.finditer(text)) / len(text)
        assert paper["math_fraction"] == pytest.approx(recount, abs=1e-3)
        assert 0.0 < paper["math_fraction"] < 0.5


def test_ids_unique_and_years_consistent(papers):
    ids = [paper["id"] for paper in papers]
    assert len(set(ids)) == len(ids)
    old_style = 0
    for paper in papers:
        match = NEW_STYLE_ID.match(paper["id"]) or OLD_STYLE_ID.match(paper["id"])
        assert match, paper["id"]
        old_style += "/" in paper["id"]
        assert paper["year"] == 2000 + int(match.group(1)) and 2000 <= paper["year"] <= 2025
        assert 1 <= int(match.group(2)) <= 12
    assert 0 < old_style < len(papers) / 4


def test_categories_include_some_to_filter(papers):
    primaries = [paper["categories"][0] for paper in papers]
    assert any(p.startswith(("astro-ph", "cond-mat")) for p in primaries)
    assert sum(p.startswith(("math", "cs", "hep", "quant-ph", "stat")) for p in primaries) > 0.8 * len(papers)


def test_text_looks_like_latex(papers):
    corpus = "\n".join(paper["text"] for paper in papers)
    for marker in (
        "\\begin{abstract}",
        "\\section{Introduction}",
        "\\subsection{",
        "\\begin{theorem}",
        "\\begin{proof}",
        "\\begin{equation}",
        "\\label{eq:",
        "\\begin{align",
        "\\[",
        "\\(",
        "\\cite{",
        "\\ref{",
        "\\emph{",
        "\\begin{itemize}",
        "\\frac{",
        "\\sum",
        "\\int",
        "\\mathbb{",
        "\\mathcal{",
        "\\operatorname{",
        "\\left(",
        "\\sqrt{",
        "\\langle",
        "\\nabla",
        "–",
        "ö",
        "ő",
    ):
        assert marker in corpus, marker
    assert len(set(re.findall(r"[a-z]{4,}", corpus))) > 2500
    assert all("\n\n" in paper["text"] and "\n\n\n" not in paper["text"] for paper in papers)


def test_corpus_jsonl_round_trips(tmp_path):
    expected = list(generate_papers(5, seed=1))
    for name in ("corpus.jsonl", "corpus.jsonl.gz", "corpus.jsonl.zst"):
        path = str(tmp_path / name)
        assert write_corpus_jsonl(path, 5, seed=1) == 5
        assert not os.path.exists(path + ".tmp")
        with open(path, "rb") as handle:
            raw = handle.read()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        elif name.endswith(".zst"):
            import zstandard

            raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
        assert [json.loads(line) for line in raw.decode("utf-8").splitlines()] == expected


def test_arxiv_metadata_snapshot_format(papers, tmp_path):
    path = tmp_path / "arxiv-metadata-oai-snapshot.json"
    assert write_arxiv_metadata(path, papers) == len(papers)
    with open(path, encoding="utf-8") as handle:
        entries = [json.loads(line) for line in handle]
    date = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")
    for entry, paper in zip(entries, papers):
        assert set(entry) == SNAPSHOT_KEYS and entry["id"] == paper["id"]
        assert entry["categories"] == " ".join(paper["categories"]) and isinstance(entry["categories"], str)
        assert all(date.match(version["created"]) for version in entry["versions"])
        assert re.match(r"^\d{4}-\d{2}-\d{2}$", entry["update_date"])
        assert len(entry["authors_parsed"]) == len(re.split(r", | and ", entry["authors"]))
    assert any(len(entry["versions"]) > 1 for entry in entries)
    assert any((entry["comments"] or "").startswith("This paper has been withdrawn") for entry in entries)


def test_source_packages_are_deterministic(papers, packages, tmp_path):
    out_dir, paths = packages
    again = write_source_packages(str(tmp_path), papers[:60])
    assert [os.path.relpath(p, out_dir) for p in paths] == [os.path.relpath(p, tmp_path) for p in again]
    for first, second in zip(paths, again):
        with open(first, "rb") as a, open(second, "rb") as b:
            assert a.read() == b.read(), first


def expand_inputs(files: dict, main: str) -> str:
    """Replace each \\input/\\include line of the main file by the file it names, as LaTeX would."""

    def load(match):
        name = match.group(1) if match.group(1).endswith(".tex") else match.group(1) + ".tex"
        return files[name]

    return re.sub(r"\\(?:input|include)\{([^}]*)\}\n", load, main)


def test_source_package_contents(papers, packages):
    out_dir, paths = packages
    by_id = {paper["id"].replace("/", ""): paper for paper in papers}
    kinds = set()
    for path in paths:
        if os.path.basename(path).startswith("arXiv_src_"):
            continue
        paper = by_id[os.path.basename(path).rsplit(".", 1)[0]]
        with open(path, "rb") as handle:
            data = handle.read()
        if path.endswith(".pdf"):
            kinds.add("pdf")
            assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
            continue
        content = gzip.decompress(data)
        if content.startswith(b"\\documentclass"):
            kinds.add("single")
            assert gzip_header_name(data).endswith(".tex")
            assert paper["text"] in content.decode("utf-8")
            continue
        kinds.add("multi")
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        texts = {name: blob.decode("utf-8") for name, blob in files.items() if name.endswith(".tex")}
        mains = [name for name, tex in texts.items() if "\\documentclass{article}" in tex]
        assert len(mains) == 1 and "\\begin{document}" in texts[mains[0]]
        assert paper["text"] in expand_inputs(texts, texts[mains[0]])
        assert "refs.bib" in files or mains[0][:-4] + ".bbl" in files
        if "00README.XXX" in files:
            assert files["00README.XXX"].decode() == f"{mains[0]} toplevelfile\n"
        if "figures/fig1.png" in files:
            assert files["figures/fig1.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert kinds == {"pdf", "single", "multi"}


def test_bulk_tars_hold_yymm_members(papers, packages):
    out_dir, paths = packages
    bulk = [p for p in paths if os.path.basename(p).startswith("arXiv_src_")]
    members = []
    for path in bulk:
        yymm = re.match(r"arXiv_src_(\d{4})_001\.tar$", os.path.basename(path)).group(1)
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert names == sorted(names) and all(name.startswith(yymm + "/") for name in names)
        members += names
    expected = {f"{p['id'].split('/')[-1][:4]}/{p['id'].replace('/', '')}" for p in papers[:60]}
    assert {re.sub(r"\.(gz|pdf)$", "", name) for name in members} == expected
    old = next(p["id"] for p in papers[:60] if "/" in p["id"])
    archive, number = old.split("/")
    assert any(name.startswith(f"{number[:4]}/{archive}{number}.") for name in members)
