"""The run planner against hand-computed totals on small manifests in arXiv's real format."""

import json

import pytest

from megasci.plan import DEFAULTS, expected_funnel, read_manifest

_FILE = """  <file>
    <content_md5sum>cacbfede21d5dfef26f367ec99384546</content_md5sum>
    <filename>src/arXiv_src_{yymm}_{seq:03d}.tar</filename>
    <first_item>{first}</first_item>
    <last_item>{last}</last_item>
    <md5sum>949ae880fbaf4649a02a8e9b0e4a4d5a</md5sum>
    <num_items>{items}</num_items>
    <seq_num>{seq}</seq_num>
    <size>{size}</size>
    <timestamp>2010-12-23 00:13:59</timestamp>
    <yymm>{yymm}</yymm>
  </file>
"""
TARS = [
    ("9912", 1, "astro-ph9912001", "solv-int9912010", 2999, 100_000_000),
    ("0303", 1, "astro-ph0303001", "math0303500", 1500, 200_000_000),
    ("0303", 2, "math0303501", "quant-ph0303200", 1400, 300_000_000),
    ("0704", 1, "0704.0001", "0704.0500", 500, 400_000_000),
    ("0704", 2, "0704.0501", "0704.1000", 500, 500_000_000),
    ("2301", 1, "2301.00001", "2301.01000", 1000, 600_000_000),
]


def _snapshot_line(arxiv_id, categories, created):
    return json.dumps(
        {
            "id": arxiv_id,
            "title": "T",
            "abstract": "  An abstract.\n",
            "comments": None,
            "categories": categories,
            "versions": [{"version": "v1", "created": created}],
        }
    )


@pytest.fixture
def inputs(tmp_path):
    manifest = tmp_path / "arXiv_src_manifest.xml"
    manifest.write_text(
        "<?xml version='1.0' standalone='yes'?>\n<arXivSRC>\n"
        + "".join(_FILE.format(yymm=y, seq=s, first=f, last=last, items=i, size=b) for y, s, f, last, i, b in TARS)
        + "</arXivSRC>\n"
    )
    metadata = tmp_path / "meta.jsonl"
    metadata.write_text(
        "\n".join(
            [
                _snapshot_line("math/0303004", "math.GT", "Tue, 4 Mar 2003 10:00:00 GMT"),  # tar 0303_001
                _snapshot_line("0704.0002", "math.CO", "Mon, 2 Apr 2007 19:18:42 GMT"),  # tar 0704_001
                _snapshot_line("0704.0003", "astro-ph", "Mon, 2 Apr 2007 19:18:42 GMT"),  # out of scope
                _snapshot_line("hep-th/9912005", "hep-th", "Wed, 1 Dec 1999 10:00:00 GMT"),  # before 2000
                _snapshot_line("2301.00005", "cs.LG", "Tue, 3 Jan 2023 10:00:00 GMT"),  # after 2020
                _snapshot_line("0704.0777", "cs.LG", "Mon, 2 Apr 2007 19:18:42 GMT"),  # tar 0704_002
            ]
        )
        + "\n"
    )
    return str(manifest), str(metadata)


def test_manifest_fields(inputs):
    tars = read_manifest(inputs[0])
    assert [t.filename for t in tars][:2] == ["src/arXiv_src_9912_001.tar", "src/arXiv_src_0303_001.tar"]
    assert tars[0].year == 1999 and tars[3].year == 2007 and tars[1].num_items == 1500 and tars[2].seq_num == 2
    assert tars[1].holds("math/0303004") and not tars[2].holds("math/0303004") and tars[4].holds("0704.0777")


def test_years_alone_select_tars(inputs, run_tool, tmp_path):
    out = tmp_path / "plan.json"
    assert run_tool("plan_run.py", ["--manifest", inputs[0], "--years", "2003-2007", "--json-out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["fetch"]["tars"] == 4 and plan["fetch"]["bytes"] == 1_400_000_000
    assert plan["papers_in_scope"] == 1500 + 1400 + 500 + 500


def test_metadata_selects_tars_and_totals(inputs, run_tool, tmp_path, capsys):
    out, fetch = tmp_path / "plan.json", tmp_path / "fetch.txt"
    assert (
        run_tool(
            "plan_run.py",
            [
                "--manifest",
                inputs[0],
                "--metadata",
                inputs[1],
                "--years",
                "2000-2020",
                "--gpus",
                "2",
                "--tokens-per-s",
                "45000",
                "--json-out",
                str(out),
                "--fetch-list",
                str(fetch),
            ],
        )
        == 0
    )
    plan = json.loads(out.read_text())
    assert fetch.read_text() == "src/arXiv_src_0303_001.tar\nsrc/arXiv_src_0704_001.tar\nsrc/arXiv_src_0704_002.tar\n"
    assert plan["fetch"]["bytes"] == 200_000_000 + 400_000_000 + 500_000_000
    assert plan["papers_in_scope"] == 3
    # Default funnel: 18 of 25 inputs pass the archive stage, all 18 are written with 1,201,145 characters.
    written = round(3 * 18 / 25)
    assert plan["funnel"][-1] == {"stage": "near_dedup", "papers": written, "chars": round(written * 1_198_107 / 18)}
    tokens = round(plan["funnel"][-1]["chars"] / (159_849 / 53_681))
    assert plan["tokens"] == tokens and plan["token_dtype"] == "int32"
    assert plan["disk_bytes"]["dataset_bin"] == 4 * tokens
    assert plan["disk_bytes"]["dataset_idx"] == 34 + 20 * written
    assert plan["training"]["seconds"] == round(tokens / 90_000)
    assert "default" in capsys.readouterr().out


def test_measured_yield_scales_the_funnel():
    rows = [
        {"stage": "inputs", "papers": 100, "chars": 0},
        {"stage": "archive", "papers": 80, "chars": 0},
        {"stage": "metadata", "papers": 40, "chars": 0},
        {"stage": "assembly", "papers": 36, "chars": 3_600_000},
    ] + [
        {"stage": s, "papers": 30, "chars": 1_500_000}
        for s in ("cleaning", "length", "language", "exact_dedup", "near_dedup")
    ]
    funnel = expected_funnel(1000, rows)
    assert funnel[0] == {"stage": "archive", "papers": 800, "chars": 0}
    assert funnel[2] == {"stage": "assembly", "papers": 720, "chars": 72_000_000}  # 1000 * 0.8 * 36/40
    assert funnel[-1] == {"stage": "near_dedup", "papers": 600, "chars": 30_000_000}
    assert expected_funnel(25, DEFAULTS["funnel"])[-1]["papers"] == 18


def test_bad_manifest_names_the_entry(tmp_path, run_tool, capsys):
    bad = tmp_path / "m.xml"
    bad.write_text("<arXivSRC><file><filename>src/x.tar</filename><size>big</size></file></arXivSRC>")
    assert run_tool("plan_run.py", ["--manifest", str(bad)]) == 1
    assert f"{bad}: <file> 1 (src/x.tar)" in capsys.readouterr().err


def test_tokenizer_measures_chars_per_token_on_in_scope_metadata(inputs, tmp_path):
    from megasci.corpus.synthetic import generate_papers
    from megasci.plan import plan_run
    from megasci.tokenizer import SentencePieceTrainConfig, load_tokenizer, train_sentencepiece

    model = str(tmp_path / "t.model")
    train_sentencepiece(
        (p["text"] for p in generate_papers(10, seed=1)), model, SentencePieceTrainConfig(vocab_size=500, num_threads=1)
    )
    plan = plan_run(inputs[0], [inputs[1]], ("math.*", "cs.*", "hep-th"), (2000, 2020), tokenizer=model)
    texts = ["T\nAn abstract."] * 3  # the three in-scope papers' titles and abstracts
    expected = sum(map(len, texts)) / sum(len(load_tokenizer(model).encode(t)) for t in texts)
    assert plan["chars_per_token"] == round(expected, 4) and plan["token_dtype"] == "uint16"
    assert plan["vocab_size"] == 500 and "measured" in plan["chars_per_token_source"]
