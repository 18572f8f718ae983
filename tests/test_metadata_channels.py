"""arXiv's own metadata channels (OAI-PMH arXivRaw / arXiv / oai_dc, .abs files) against the snapshot.

One set of papers is rendered in all four channels from its snapshot lines; each channel must give the
same kept/rejected decision and the same record fields as the snapshot does.
"""

import email.utils
import glob
import json
import os
import re
import textwrap
from xml.sax.saxutils import escape

import pytest

from megasci.corpus.metadata import MetadataFilterConfig, load_metadata, metadata_channel
from megasci.corpus.synthetic import generate_papers, write_arxiv_metadata

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "arxiv_sample")
OAI_SAMPLE, ABS_SAMPLE = os.path.join(SAMPLE, "metadata_oai"), os.path.join(SAMPLE, "metadata_abs")

FILTER = MetadataFilterConfig(min_first_version_year=2004)  # puts part of the generated years out of range

_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.openarchives.org/'
    'OAI/2.0/ http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd">\n<responseDate>2025-01-06T20:48:16Z'
    '</responseDate>\n<request verb="ListRecords" metadataPrefix="{prefix}">http://export.arxiv.org/oai2'
    "</request>\n<ListRecords>\n{records}{token}</ListRecords>\n</OAI-PMH>\n"
)
_GROUPS = {"math": "math", "cs": "cs", "stat": "stat"}  # every other archive used here is in physics


def _extra_entries():
    """Cases the generator does not draw: a 1990s old-style id, a withdrawal announced in the abstract,
    a paper outside every category, math-ph without math.MP."""

    def entry(arxiv_id, categories, created, comments=None, abstract="  An abstract that is\nwrapped.\n"):
        return {
            "id": arxiv_id,
            "title": "A title\n  wrapped",
            "comments": comments,
            "categories": categories,
            "abstract": abstract,
            "versions": [{"version": "v1", "created": created}],
            "update_date": "2008-11-26",
        }

    return [
        entry("hep-th/9901001", "hep-th", "Fri, 1 Jan 1999 00:00:00 GMT"),
        entry("math/9912001", "math.CO", "Wed, 1 Dec 1999 10:00:00 GMT", comments="withdrawn"),
        entry("1204.0008", "quant-ph", "Sun, 1 Apr 2012 10:00:00 GMT", abstract="  This paper has been withdrawn.\n"),
        entry("1301.0002", "astro-ph.CO", "Wed, 2 Jan 2013 10:00:00 GMT"),
        entry("1301.0003", "math-ph", "Wed, 2 Jan 2013 10:00:00 GMT"),
        entry("cs/0601001", "cs.LG stat.ML", "Sun, 1 Jan 2006 10:00:00 GMT"),
    ]


def _iso(rfc2822):
    return f"{email.utils.parsedate_to_datetime(rfc2822):%Y-%m-%d}"


def _set_specs(categories):
    """arXiv's per-category setSpecs: math.CO -> math:math:CO, hep-th -> physics:hep-th."""
    specs = []
    for category in categories.split():
        archive, _, subject = category.partition(".")
        group = _GROUPS.get(archive, "physics")
        specs.append(f"{group}:{archive}:{subject}" if subject else f"{group}:{archive}")
    return specs


def _header(entry, set_specs):
    sets = "".join(f" <setSpec>{s}</setSpec>\n" for s in set_specs)
    return (
        f"<header>\n <identifier>oai:arXiv.org:{entry['id']}</identifier>\n"
        f" <datestamp>{entry['update_date']}</datestamp>\n{sets}</header>\n"
    )


def _optional(tag, value):
    return f"<{tag}>{escape(value)}</{tag}>" if value else ""


def _arxiv_raw(entry):
    versions = "".join(
        f'<version version="{v["version"]}"><date>{v["created"]}</date><size>12kb</size>'
        f"<source_type>D</source_type></version>"
        for v in entry["versions"]
    )
    return (
        f'<arXivRaw xmlns="http://arxiv.org/OAI/arXivRaw/">\n <id>{entry["id"]}</id><submitter>A. Submitter'
        f"</submitter>{versions}<title>{escape(entry['title'])}</title><authors>A. Author</authors>"
        f"<categories>{entry['categories']}</categories>{_optional('comments', entry['comments'])}"
        f"{_optional('abstract', entry['abstract'])}</arXivRaw>"
    )


def _arxiv(entry):
    created, updated = _iso(entry["versions"][0]["created"]), _iso(entry["versions"][-1]["created"])
    return (
        f'<arXiv xmlns="http://arxiv.org/OAI/arXiv/">\n <id>{entry["id"]}</id><created>{created}</created>'
        + (f"<updated>{updated}</updated>" if len(entry["versions"]) > 1 else "")
        + "<authors><author><keyname>Author</keyname><forenames>A.</forenames></author></authors>"
        f"<title>{escape(entry['title'])}</title><categories>{entry['categories']}</categories>"
        f"{_optional('comments', entry['comments'])}{_optional('abstract', entry['abstract'])}</arXiv>"
    )


def _oai_dc(entry):
    dates = sorted({_iso(entry["versions"][0]["created"]), _iso(entry["versions"][-1]["created"])})
    return (
        '<oai_dc:dc xmlns:oai_dc="http://www.openarchives.org/OAI/2.0/oai_dc/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
        f" <dc:title>{escape(entry['title'])}</dc:title><dc:creator>Author, A.</dc:creator>"
        "<dc:subject>Mathematics - Combinatorics</dc:subject>"
        f"{_optional('dc:description', entry['abstract'])}{_optional('dc:description', entry['comments'])}"
        + "".join(f"<dc:date>{d}</dc:date>" for d in reversed(dates))  # order must not matter
        + f"<dc:type>text</dc:type><dc:identifier>http://arxiv.org/abs/{entry['id']}</dc:identifier></oai_dc:dc>"
    )


_RENDER = {"arXivRaw": _arxiv_raw, "arXiv": _arxiv, "oai_dc": _oai_dc}


def _write_oai(directory, prefix, entries, page_size=7):
    """ListRecords pages of `page_size` records, each with the resumption token arXiv would send."""
    os.makedirs(directory)
    for page, start in enumerate(range(0, len(entries), page_size)):
        records = "".join(
            f"<record>\n{_header(e, _set_specs(e['categories']))}<metadata>\n {_RENDER[prefix](e)}\n"
            "</metadata>\n</record>\n"
            for e in entries[start : start + page_size]
        )
        token = f'<resumptionToken cursor="{start}" completeListSize="{len(entries)}">{page}|1001</resumptionToken>\n'
        with open(os.path.join(directory, f"page_{page:03d}.xml"), "w", encoding="utf-8") as out:
            out.write(_ENVELOPE.format(prefix=prefix, records=records, token=token))


def _write_abs(directory, entries):
    """One .abs file per paper, laid out as arXiv's mirrors keep them (continuation lines indented)."""
    for entry in entries:
        path = os.path.join(directory, entry["id"].replace("/", "_") + ".abs")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dates = [f"Date: {entry['versions'][0]['created']}   (12kb)"] + [
            f"Date (revised {v['version']}): {v['created']}   (13kb)" for v in entry["versions"][1:]
        ]
        fields = [f"Title: {entry['title']}", "Authors: A. Author", f"Categories: {entry['categories']}"]
        if entry["comments"]:
            fields.append(textwrap.fill(f"Comments: {entry['comments']}", 60, subsequent_indent="  "))
        with open(path, "w", encoding="utf-8") as out:
            out.write(
                "-" * 78
                + "\n\\\\\n"
                + f"arXiv:{entry['id']}\nFrom: A. Submitter <a@b.c>\n"
                + "\n".join(dates)
                + "\n\n"
                + "\n".join(fields)
                + "\n\\\\\n"
                + (entry["abstract"] or "")
                + "\\\\\n"
            )


@pytest.fixture(scope="module")
def channels(tmp_path_factory):
    """The same papers as a snapshot file, three OAI-PMH harvests and a directory of .abs files."""
    root = tmp_path_factory.mktemp("channels")
    snapshot = str(root / "snapshot.jsonl")
    write_arxiv_metadata(snapshot, generate_papers(80, seed=5))
    with open(snapshot, encoding="utf-8") as lines:
        entries = [json.loads(line) for line in lines] + _extra_entries()
    with open(snapshot, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(e) + "\n" for e in entries)
    paths = {"snapshot": snapshot}
    for prefix in _RENDER:
        paths[prefix] = str(root / prefix)
        _write_oai(paths[prefix], prefix, entries)
    paths["abs"] = str(root / "abs")
    _write_abs(paths["abs"], entries)
    return paths


def test_generated_papers_cover_every_decision(channels):
    index = load_metadata(channels["snapshot"], FILTER)
    assert all(index.counts[kind] > 0 for kind in ("kept", "category", "before_min_year", "withdrawn"))
    assert {"hep-th/9901001", "math/9912001", "1204.0008", "1301.0002", "1301.0003"} <= set(index.excluded)
    assert "cs/0601001" in index.records and index.excluded["math/9912001"] == "before_min_year"


@pytest.mark.parametrize("channel", ["arXivRaw", "arXiv", "oai_dc", "abs"])
def test_every_channel_decides_like_the_snapshot(channels, channel):
    expected = load_metadata(channels["snapshot"], FILTER)
    index = load_metadata(channels[channel], FILTER)
    assert dict(index.counts) == dict(expected.counts)
    assert index.excluded == expected.excluded
    assert sorted(index.records) == sorted(expected.records)
    assert index.problems == []
    for key, want in expected.records.items():
        got = index.records[key]
        assert (got.title, got.abstract, got.categories, got.year, got.withdrawn) == (
            want.title,
            want.abstract,
            want.categories,
            want.year,
            want.withdrawn,
        ), key
        # arXivRaw and .abs list every version; the arXiv and oai_dc formats do not
        assert got.latest_version == (want.latest_version if channel in ("arXivRaw", "abs") else None)


def test_any_mix_of_files_and_directories_is_read_by_content(channels):
    assert [
        metadata_channel(p)
        for p in (channels["snapshot"], glob.glob(channels["arXiv"] + "/*")[0], glob.glob(channels["abs"] + "/*")[0])
    ] == ["snapshot", "oai", "abs"]
    expected = load_metadata(channels["snapshot"], FILTER)
    mixed = load_metadata([channels["abs"], channels["oai_dc"], channels["snapshot"]], FILTER)
    papers = len(expected.records) + sum(expected.counts[k] for k in ("category", "before_min_year", "withdrawn"))
    assert mixed.counts["duplicate_id"] == 2 * papers  # each paper three times: the last one read wins
    assert sorted(mixed.records) == sorted(expected.records) and mixed.excluded == expected.excluded


def _line_of(path, text):
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _page(records, prefix="arXivRaw"):
    return _ENVELOPE.format(prefix=prefix, records=records, token="")


def test_oai_problems_name_file_and_line(tmp_path):
    good = {
        "id": "0704.0001",
        "title": "T",
        "comments": None,
        "categories": "math.CO",
        "abstract": "  A.\n",
        "versions": [{"version": "v1", "created": "Mon, 2 Apr 2007 19:18:42 GMT"}],
        "update_date": "2008-11-26",
    }
    record = f"<record>\n{_header(good, ['math:math:CO'])}<metadata>\n {_arxiv_raw(good)}\n</metadata>\n</record>\n"
    cut = tmp_path / "cut.xml"
    cut.write_text(_page(record)[:-60])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(cut))}:\d+: truncated XML"):
        load_metadata(str(cut))
    broken = tmp_path / "broken.xml"
    broken.write_text(_page(record).replace("<title>T</title>", "<title>T</titel>"))
    bad_line = _line_of(broken, "</titel>")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(broken))}:{bad_line}: not well-formed XML"):
        load_metadata(str(broken))

    legacy_dc = f"<record>\n{_header(good, ['math', 'cs'])}<metadata>\n {_oai_dc(good)}\n</metadata>\n</record>\n"
    deleted = (
        '<record>\n<header status="deleted">\n <identifier>oai:arXiv.org:0704.0002</identifier>\n'
        " <datestamp>2010-01-01</datestamp>\n</header>\n</record>\n"
    )
    pages = tmp_path / "pages.xml"
    pages.write_text(_page(record + legacy_dc + deleted, prefix="oai_dc"))
    index = load_metadata(str(pages))
    assert dict(index.counts) == {
        "kept": 1,
        "bad_record": 2,
        "category": 0,
        "before_min_year": 0,
        "withdrawn": 0,
        "bad_json": 0,
        "duplicate_id": 0,
    }
    record_lines = [number for number, line in enumerate(pages.read_text().splitlines(), 1) if line == "<record>"]
    assert re.fullmatch(
        rf"{re.escape(str(pages))}:{record_lines[1]}: bad_record: oai:arXiv.org:0704.0001: oai_dc gives "
        r"categories only as setSpecs, and \['math', 'cs'\] name none: the category rule cannot be "
        r"applied \(harvest the arXivRaw or arXiv format\)",
        index.problems[0],
    )
    assert index.problems[1] == f"{pages}:{record_lines[2]}: bad_record: oai:arXiv.org:0704.0002: deleted record"
    assert "0704.0001" in index  # a record the filter cannot judge does not displace one it could


def test_real_oai_and_abs_samples_parse():
    if not (os.path.isdir(OAI_SAMPLE) and os.path.isdir(ABS_SAMPLE)):
        pytest.skip(f"real OAI-PMH / .abs samples not present under {os.path.normpath(SAMPLE)}")
    # Independent recount: categories by plain string search over the raw files.
    wanted = ("hep-th", "hep-ph", "quant-ph", "stat.ML", "stat.TH")
    raw = (
        open(os.path.join(OAI_SAMPLE, "mikesaelim_ListRecords_arXivRaw_2015.xml"), encoding="utf-8").read()
        + open(os.path.join(OAI_SAMPLE, "mikesaelim_GetRecord_arXivRaw_2015.xml"), encoding="utf-8").read()
    )
    category_lists = re.findall(r"<categories>(.*?)</categories>", raw)
    for path in sorted(glob.glob(os.path.join(ABS_SAMPLE, "*", "*.abs"))):
        category_lists += re.findall(r"^Categories: (.*)$", open(path, encoding="utf-8").read(), re.M)
    in_scope = [any(c in wanted or c.startswith(("math.", "cs.")) for c in cats.split()) for cats in category_lists]
    assert len(category_lists) == 7 + 38

    index = load_metadata([OAI_SAMPLE, ABS_SAMPLE])
    assert dict(index.counts) == {
        "kept": sum(in_scope),
        "category": in_scope.count(False),
        "bad_record": 1,
        "before_min_year": 0,
        "withdrawn": 0,
        "bad_json": 0,
        "duplicate_id": 0,
    }
    assert index.counts["kept"] == 41
    assert index.problems == [
        f"{os.path.join(OAI_SAMPLE, 'arXivRaw.xsd')}:5: skipped: XML but not an OAI-PMH response "
        "(<{http://www.w3.org/2001/XMLSchema}schema>)",
        f"{os.path.join(OAI_SAMPLE, 'mikesaelim_error_badResumptionToken.xml')}:5: OAI-PMH error badResumptionToken: "
        "The resumptionToken supplied is illegal for this repository",
        f"{os.path.join(ABS_SAMPLE, 'math-ph_0509', '0509037.abs')}:1: bad_record: empty .abs file",
    ]

    farkas = index.get("0704.0874")
    assert farkas.categories == ["math.AG"] and farkas.year == 2007 and farkas.latest_version == "v3"
    assert farkas.title == "Higher ramification and varieties of secant divisors on the generic curve"
    assert farkas.update_date == "2014-11-21" and farkas.abstract.startswith("For a smooth projective curve, the")
    meng = index.get("math-ph/0509002")
    assert meng.latest_version == "v6" and meng.year == 2005 and meng.categories == ["math-ph", "math.MP"]
    assert meng.first_version_date == "Fri, 2 Sep 2005 03:32:56 GMT"
    assert meng.title == "A Generalization of the Kepler Problem" and "\n" not in meng.abstract
    geyler = index.get("math-ph/0509001")
    assert geyler.title == "Zero modes in a system of Aharonov--Bohm solenoids on the Lobachevsky plane"
    assert index.get("0704.1114") is None and index.outcome("0704.1114") == "category"  # astro-ph
    assert index.get("1302.2146").categories == ["hep-ph", "hep-ex"]
    assert index.get("1302.2146").year == 2013
