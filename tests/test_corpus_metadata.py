"""Stage 1 of the corpus builder: canonical arXiv ids and the metadata filter."""

from __future__ import annotations

import gzip
import json
import os
import random
import re

import pytest

from megasci.corpus.arxiv_ids import OLD_STYLE_ARCHIVES, bulk_member_stem, canonical_id, id_year_month, is_old_style
from megasci.corpus.metadata import OUTCOMES, MetadataFilterConfig, load_metadata
from megasci.corpus.metadata.record import WITHDRAWN_PATTERN, is_withdrawn_text, normalize_abstract, normalize_title
from megasci.corpus.synthetic import generate_papers, write_arxiv_metadata

SAMPLE_METADATA = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "arxiv_sample", "metadata", "arxiv-metadata-oai-snapshot.json"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2301.04217", "2301.04217"),
        ("2301.04217v3", "2301.04217"),
        ("arXiv:2301.04217v12", "2301.04217"),
        (" 0704.0001\n", "0704.0001"),
        ("0704.0001", "0704.0001"),
        ("1412.9999", "1412.9999"),
        ("1501.00001", "1501.00001"),
        ("math/0303004", "math/0303004"),
        ("math/0303004v2", "math/0303004"),
        ("hep-th/9901001", "hep-th/9901001"),
        ("math.GT/0309136", "math/0309136"),
        ("cond-mat.str-el/0301001v1", "cond-mat/0301001"),
        ("physics.optics/0612001", "physics/0612001"),
        ("0303/math0303004.gz", "math/0303004"),
        ("0303/math0303009.pdf", "math/0303009"),
        ("math0303004", "math/0303004"),
        ("math-ph0303004", "math-ph/0303004"),
        ("0301/cond-mat0301001.gz", "cond-mat/0301001"),
        ("hep-th9108001", "hep-th/9108001"),
        ("1403/1403.1234.gz", "1403.1234"),
        ("1403/1403.0035.pdf", "1403.0035"),
        ("2301.04217.tar.gz", "2301.04217"),
        ("2301.04217.tgz", "2301.04217"),
        ("2301.04217.gz", "2301.04217"),
        ("2301.04217v2.tar", "2301.04217"),
    ],
)
def test_canonical_id(text, expected):
    assert canonical_id(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "2301.4217",
        "2301.042171",
        "1501.1234",
        "1412.12345",
        "0703.1234",
        "2313.04217",
        "12345678.tar.gz",
        "foo/0303004",
        "Math/0303004",
        "mathematics/0303004",
        "math/030300",
        "math/9101001",
        "math/0704001",
        "math/0313001",
        "0304/math0303004.gz",
        "1404/1403.1234.gz",
        "2301.04217v0",
        "2301.04217.zip",
        "withdrawn_stub_2101.10016.gz",
        "0303/0303004.pdf",
        "0604408.pdf",
    ],
)
def test_canonical_id_rejects_with_input_in_message(text):
    with pytest.raises(ValueError) as info:
        canonical_id(text)
    assert repr(text) in str(info.value)


def test_bare_old_style_number_needs_archive_from_context():
    assert canonical_id("0303/0303004.pdf", default_archive="math") == "math/0303004"
    assert canonical_id("0604408", default_archive="hep-th") == "hep-th/0604408"
    with pytest.raises(ValueError, match="not an old-style archive"):
        canonical_id("0604408", default_archive="stat")
    with pytest.raises(ValueError):
        canonical_id(None)


def test_every_old_style_archive_splits_from_its_glued_member_name():
    for archive in OLD_STYLE_ARCHIVES:
        assert canonical_id(f"0101/{archive}0101001.gz") == f"{archive}/0101001"
        assert bulk_member_stem(f"{archive}/0101001") == f"0101/{archive}0101001"


@pytest.mark.parametrize(
    "text, year_month",
    [
        ("0704.0001", (2007, 4)),
        ("2301.04217v3", (2023, 1)),
        ("1501.00001", (2015, 1)),
        ("math/0303004", (2003, 3)),
        ("hep-th/9108001", (1991, 8)),
        ("astro-ph/9912001", (1999, 12)),
        ("math/0001001", (2000, 1)),
        ("0303/math0303004.gz", (2003, 3)),
    ],
)
def test_id_year_month(text, year_month):
    assert id_year_month(text) == year_month


def test_old_style_and_bulk_member_stem():
    assert is_old_style("math/0303004") and not is_old_style("0704.0001")
    assert bulk_member_stem("1403.1234v2") == "1403/1403.1234"
    assert bulk_member_stem("math.GT/0309136") == "0309/math0309136"


@pytest.mark.parametrize(
    "text",
    [
        "This paper has been withdrawn by the author",
        "This paper has been withdrawn by the authors. This paper has been\n  accepted for publication in JGR",
        "  This paper has been withdrawn by the authors.\n",
        "This paper has been withdrawn by the author due to a crucial error in the proof of Lemma 3",
        "This submission has been withdrawn by arXiv administrators due to inappropriate text overlap",
        "The paper is withdrawn because of an error in equation 4",
        "This manuscript has been permanently withdrawn",
        "This article has been retracted",
        "Paper withdrawn",
        "12 pages; paper withdrawn due to a gap in Section 3",
        "Withdrawn.",
        "withdrawn",
        "The authors have withdrawn this paper since Theorem 2 is false",
        "We withdraw this paper: the main estimate is wrong",
        "Withdrawn by the submitter",
        "This work has been withdrawn",
    ],
)
def test_withdrawn_notices_are_detected(text):
    assert is_withdrawn_text(text)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "37 pages, 15 figures; published version",
        "We study nicotine withdrawal symptoms in a cohort of smokers.",
        "The tip is withdrawn from the surface at constant speed and the force is recorded.",
        "Every compact absolute neighbourhood retract is dominated by a CW complex; we construct a retraction.",
        "We show that X is a deformation retract of Y and that the retracted curve is smooth.",
        "Funds withdrawn from the market during the crisis are modelled as a jump process.",
        "In this paper withdrawn capital flows are modelled by a Markov chain.",
        "The troops were withdrawn in 1989; we analyse the conflict data.",
        "A previous version was withdrawn from a journal after review; this version corrects the proof.",
    ],
)
def test_withdrawal_in_another_sense_is_not_flagged(text):
    assert not is_withdrawn_text(text)


def test_the_substring_shortcut_answers_as_the_pattern_does():
    """ASCII text without "withdraw" or "retract" skips the search; every other text is searched. Held
    to the bare pattern over the notices above, case variants, non-ASCII look-alikes and the sample."""
    texts = [
        "This Paper Has Been WITHDRAWN",
        "THE AUTHORS HAVE RETRACTED THIS PAPER",
        "paper Withdrawn.",
        "This paper has been wıthdrawn",
        "Thİs paper has been retracted",
        "paper wi\u0307thdrawn",
        "withdrawing",
        "withdraw",
        "RETRACT",
        "Withdrawn\u00a0",
        "\u00e9 Withdrawn.",
        "nothing to see",
        "",
    ]
    if os.path.exists(SAMPLE_METADATA):
        with open(SAMPLE_METADATA, encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                texts += [entry.get("comments") or "", entry.get("abstract") or ""]
    for text in texts + [t.upper() for t in texts] + [t.swapcase() for t in texts]:
        assert is_withdrawn_text(text) == bool(text and WITHDRAWN_PATTERN.search(text)), text


_LINE_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*")  # the rules as first written, as regexes
_PARAGRAPH_BREAK = re.compile(r"[ \t]*\r?\n[ \t]+(?=\S)")


def test_unwrapping_equals_the_regex_rules_on_random_whitespace():
    rng = random.Random(5)
    pieces = [" ", "\t", "\r", "\n", "a", "b", "\u00a0", "\x0b", "\n  ", "\r\n", " \r", "$x$"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 14))) for _ in range(20_000)]
    if os.path.exists(SAMPLE_METADATA):
        with open(SAMPLE_METADATA, encoding="utf-8") as f:
            texts += [text for line in f for text in (json.loads(line)["title"], json.loads(line)["abstract"])]
    for text in texts:
        assert normalize_title(text) == _LINE_BREAK.sub(" ", text).strip(), repr(text)
        assert normalize_abstract(text) == "\n".join(
            _LINE_BREAK.sub(" ", p).strip() for p in _PARAGRAPH_BREAK.split(text.strip()) if p.strip()
        ), repr(text)


def test_title_normalisation_collapses_wrapping_and_keeps_latex():
    assert (
        normalize_title("Calculation of prompt diphoton production cross sections at Tevatron and\n  LHC energies")
        == "Calculation of prompt diphoton production cross sections at Tevatron and LHC energies"
    )
    latex_title = "Modular forms over $\\Q(\\sqrt{5})$ via\n  the Jacquet-Langlands correspondence"
    assert (
        normalize_title(latex_title) == "Modular forms over $\\Q(\\sqrt{5})$ via the Jacquet-Langlands correspondence"
    )
    assert normalize_title("  $p$-adic  Limit \r\n\tof Forms \n") == "$p$-adic  Limit of Forms"
    assert normalize_title(None) == ""


def test_abstract_normalisation_unwraps_lines_and_keeps_paragraphs():
    abstract = (
        "  We describe the $(k,\\ell)$-pebble game and use\nit to obtain a characterization.\n"
        "  In the second part\nwe prove \\emph{more}.\n"
    )
    assert normalize_abstract(abstract) == (
        "We describe the $(k,\\ell)$-pebble game and use it to obtain a "
        "characterization.\nIn the second part we prove \\emph{more}."
    )
    assert normalize_abstract("  One line.\n") == "One line."
    assert normalize_abstract(None) == ""


def _line(
    arxiv_id,
    categories="math.CO",
    created="Mon, 2 Apr 2007 19:18:42 GMT",
    comments=None,
    abstract="  An abstract\nwrapped.\n",
    versions=None,
    title="A title\n  wrapped",
):
    return json.dumps(
        {
            "id": arxiv_id,
            "title": title,
            "comments": comments,
            "categories": categories,
            "abstract": abstract,
            "versions": versions or [{"version": "v1", "created": created}],
            "update_date": "2008-11-26",
        }
    )


def test_filter_counts_every_outcome(tmp_path):
    lines = [  # comments give each line's final outcome
        _line("0704.0001", "hep-ph"),  # kept
        _line("0704.0002", "math.CO cs.CG"),  # superseded: duplicate_id
        _line("math/0303004", "math.GT", created="Tue, 4 Mar 2003 10:00:00 GMT"),  # kept (old style)
        _line("0704.0003", "physics.gen-ph"),  # superseded: duplicate_id
        _line("0704.0004", "math-ph math.MP"),  # superseded: duplicate_id
        _line("0704.0005", "math-ph"),  # category: math.* is not math-ph
        _line("0704.0006", "stat.ME"),  # category
        _line("hep-th/9901001", "hep-th", created="Fri, 1 Jan 1999 00:00:00 GMT"),  # before_min_year
        _line("0704.0007", "math.CO", comments="This paper has been withdrawn by the author"),  # withdrawn
        _line("0704.0008", "quant-ph", abstract="  This paper has been withdrawn.\n"),  # withdrawn
        _line("0704.0009", "astro-ph", comments="withdrawn"),  # category wins over withdrawn
        '{"id": "0704.0010", "title": ',  # bad_json
        "not json at all",  # bad_json
        "",  # blank: not counted
        _line("nonsense-id"),  # bad_record
        _line("0704.0011", versions=[{"version": "v1", "created": "someday"}]),  # bad_record
        json.dumps(["a", "list"]),  # bad_record
        _line(
            "0704.0002v2",
            "math.CO",
            versions=[  # kept, replacing line 2
                {"version": "v1", "created": "Sat, 31 Mar 2007 02:26:18 GMT"},
                {"version": "v2", "created": "Sat, 13 Dec 2008 17:26:00 GMT"},
            ],
        ),
        _line("0704.0003", "math.AG"),  # kept: a recategorised paper
        _line("0704.0004", "math.MP", comments="Paper withdrawn"),  # withdrawn: drops line 5's record
    ]
    path = tmp_path / "meta.jsonl"
    path.write_text("\n".join(lines) + "\n")
    index = load_metadata(str(path))
    assert dict(index.counts) == {
        "kept": 4,
        "category": 3,
        "before_min_year": 1,
        "withdrawn": 3,
        "bad_json": 2,
        "bad_record": 3,
        "duplicate_id": 3,
    }
    assert sum(index.counts.values()) == len([line for line in lines if line])
    assert set(index.counts) == set(OUTCOMES)
    assert sorted(index.records) == ["0704.0001", "0704.0002", "0704.0003", "math/0303004"]
    assert len(index) == index.counts["kept"] == 4
    assert index.get("0704.0002").latest_version == "v2"
    assert index.get("0704.0002").year == 2007
    assert index.get("0704.0002").title == "A title wrapped"
    assert index.get("0704.0003").categories == ["math.AG"]
    assert "0303/math0303004.gz" in index and "math.GT/0309136" not in index and "garbage" not in index
    assert index.problems[0].startswith(f"{path}:12: bad_json:")
    assert index.problems[1].startswith(f"{path}:13: bad_json:")
    assert index.problems[2].startswith(f"{path}:15: bad_record:")
    assert len(index.problems) == 5


@pytest.mark.parametrize(
    "categories, matches",
    [
        (["math.MP"], True),
        (["math-ph", "math.MP"], True),
        (["math-ph"], False),
        (["cs.LG"], True),
        (["hep-th"], True),
        (["hep-ex"], False),
        (["stat.ML"], True),
        (["stat.ME"], False),
        (["Math.CO"], False),
        (["astro-ph", "quant-ph"], True),
        (["q-bio.QM"], False),
    ],
)
def test_default_category_patterns(categories, matches):
    assert MetadataFilterConfig().matches_categories(categories) is matches


def test_config_controls_each_rule(tmp_path):
    path = tmp_path / "meta.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write(_line("0704.0001", "astro-ph") + "\n")
        out.write(_line("0704.0002", "math.CO", comments="withdrawn") + "\n")
        out.write(_line("0704.0003", "math.CO") + "\n")
    everything = load_metadata(
        [str(path)], MetadataFilterConfig(categories=["*"], drop_withdrawn=False, min_first_version_year=0)
    )
    assert everything.counts["kept"] == 3 and everything.get("0704.0002").withdrawn
    later = load_metadata([str(path)], MetadataFilterConfig(min_first_version_year=2008))
    assert later.counts["before_min_year"] == 2 and later.counts["category"] == 1
    with pytest.raises(TypeError):
        MetadataFilterConfig(categories="math.*")


def test_synthetic_snapshot_compressed_matches_plain_recount(tmp_path):
    papers = list(generate_papers(60, seed=3))
    plain, compressed = str(tmp_path / "meta.jsonl"), str(tmp_path / "meta.jsonl.zst")
    write_arxiv_metadata(plain, papers)
    write_arxiv_metadata(compressed, papers)
    expected, kept_ids = _independent_sample_counts(plain)
    index = load_metadata(compressed)
    assert dict(index.counts) == {**expected, "bad_json": 0, "bad_record": 0, "duplicate_id": 0}
    assert sorted(index.records) == sorted(kept_ids)
    assert expected["category"] > 0 and expected["withdrawn"] > 0 and expected["kept"] > 40
    assert any("/" in arxiv_id for arxiv_id in kept_ids)


def _independent_sample_counts(path):
    """Recount the sample with plain string tests, sharing no code with the filter."""
    wanted = ("hep-th", "hep-ph", "quant-ph", "stat.ML", "stat.TH")
    counts = {"kept": 0, "category": 0, "before_min_year": 0, "withdrawn": 0}
    kept = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            entry = json.loads(line)
            categories = entry["categories"].split(" ")
            year = int(re.search(r" (\d{4}) ", entry["versions"][0]["created"]).group(1))
            notice = f"{entry['comments']} {entry['abstract']}".lower()
            if not any(c in wanted or c.startswith(("math.", "cs.")) for c in categories):
                counts["category"] += 1
            elif year < 2000:
                counts["before_min_year"] += 1
            elif "has been withdrawn" in notice:
                counts["withdrawn"] += 1
            else:
                counts["kept"] += 1
                kept.append(entry["id"])
    return counts, kept


def test_real_metadata_sample():
    if not os.path.exists(SAMPLE_METADATA):
        pytest.skip(f"real arXiv metadata sample not present at {os.path.normpath(SAMPLE_METADATA)}")
    index = load_metadata(SAMPLE_METADATA)
    expected, kept_ids = _independent_sample_counts(SAMPLE_METADATA)
    assert expected == {"kept": 100, "category": 100, "before_min_year": 0, "withdrawn": 0}
    assert dict(index.counts) == {**expected, "bad_json": 0, "bad_record": 0, "duplicate_id": 0}
    assert sorted(index.records) == sorted(kept_ids)
    first = index.get("0704.0001")
    assert first.categories == ["hep-ph"] and first.year == 2007 and first.latest_version == "v2"
    assert first.title == "Calculation of prompt diphoton production cross sections at Tevatron and LHC energies"
    assert first.abstract.startswith(
        "A fully differential calculation in perturbative quantum chromodynamics is presented for the production"
    )
    assert "\n" not in first.abstract
    assert "0704.0002" in index and index.get("0704.0002").categories == ["math.CO", "cs.CG"]
    assert "0704.0156" not in index  # astro-ph, and withdrawn: the category rule counts it first

    everything = load_metadata(SAMPLE_METADATA, MetadataFilterConfig(categories=("*",)))
    assert dict(everything.counts) == {
        "kept": 199,
        "category": 0,
        "before_min_year": 0,
        "withdrawn": 1,
        "bad_json": 0,
        "bad_record": 0,
        "duplicate_id": 0,
    }
