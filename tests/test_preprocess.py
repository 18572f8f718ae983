"""tools/preprocess_data.py against tokenizing each record directly with SentencePiece."""

import dataclasses
import gzip
import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import zstandard

from megasci.corpus.synthetic import generate_papers
from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.preprocess import PreprocessConfig, PreprocessError, preprocess
from megasci.data.records import BadRecord, JSONArrayError, iter_blocks, iter_records
from megasci.data.sidecar import read_sidecar
from megasci.tokenizer import SentencePieceTrainConfig, train_sentencepiece


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "t.model")
    train_sentencepiece(
        (p["text"] for p in generate_papers(40, seed=11)),
        path,
        SentencePieceTrainConfig(vocab_size=1000, num_threads=2),
    )
    return path


@pytest.fixture(scope="module")
def records():
    out = []
    for p in generate_papers(60, seed=12):
        abstract = next(s for s in p["sections"] if s["label"] == "abstract")
        out.append(
            {
                "id": p["id"],
                "source": "synthetic",
                "text": p["text"],
                "abstract": p["text"][abstract["start"] : abstract["end"]],
            }
        )
    return out


def write_jsonl(path, lines):
    return write_bytes(path, "".join(line + "\n" for line in lines).encode())


def expected_docs(model, texts, eod=None):
    sp = spm.SentencePieceProcessor(model_file=model)
    return [sp.encode(t) + ([eod] if eod is not None else []) for t in texts if t]


def read_docs(prefix):
    ds = IndexedDataset(prefix)
    return [ds.get_document(d).tolist() for d in range(ds.num_documents)]


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_matches_direct_encoding_in_order(tmp_path, tokenizer_model, records, workers):
    path = write_jsonl(str(tmp_path / "in.jsonl"), [json.dumps(r) for r in records])
    cfg = PreprocessConfig(
        inputs=[path],
        output_prefix=str(tmp_path / "out"),
        tokenizer_model=tokenizer_model,
        workers=workers,
        append_eod=True,
        block_bytes=20_000,
    )  # many blocks, out-of-order risk
    summary = preprocess(cfg, progress=False)
    prefix = str(tmp_path / "out_text_document")
    assert read_docs(prefix) == expected_docs(tokenizer_model, [r["text"] for r in records], eod=2)
    assert IndexedDataset(prefix).dtype == np.uint16
    assert summary.documents["text"] == len(records)
    assert summary.tokens["text"] == IndexedDataset(prefix).num_tokens
    assert [m["id"] for m in read_sidecar(prefix)] == [r["id"] for r in records]


def test_several_keys_compressed_inputs_and_globs(tmp_path, tokenizer_model, records):
    lines = [json.dumps(r) for r in records]
    write_jsonl(str(tmp_path / "a.jsonl.gz"), lines[:25])
    write_jsonl(str(tmp_path / "b.jsonl.zst"), lines[25:])
    cfg = PreprocessConfig(
        inputs=[str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl.*")],
        output_prefix=str(tmp_path / "out"),
        tokenizer_model=tokenizer_model,
        json_keys=("text", "abstract"),
        workers=2,
    )
    preprocess(cfg, progress=False)
    for key in ("text", "abstract"):
        assert read_docs(str(tmp_path / f"out_{key}_document")) == expected_docs(
            tokenizer_model, [r[key] for r in records]
        )
    summary = json.load(open(tmp_path / "out_preprocess.json"))["summary"]
    assert summary["documents"] == {"text": 60, "abstract": 60}


@pytest.mark.parametrize("name", ["in.jsonl", "in.jsonl.gz"])
def test_bad_lines_are_reported_with_file_and_line_and_skipped(tmp_path, tokenizer_model, records, name):
    lines = [json.dumps(r) for r in records[:5]]
    lines.insert(2, '{"text": "unterminated')
    lines.insert(4, '["a", "list"]')
    lines.insert(5, json.dumps({"title": "no text key"}))
    lines.insert(6, json.dumps({"text": ""}))
    lines.insert(7, "")
    lines.append("{broken")  # last line, no newline after it: still counted and numbered
    path = write_jsonl(str(tmp_path / name), lines)
    with open(path, "rb") as f:
        data = f.read()
    if name.endswith(".jsonl"):
        with open(path, "wb") as f:
            f.write(data.rstrip(b"\n"))
    cfg = PreprocessConfig(
        inputs=[path], output_prefix=str(tmp_path / "out"), tokenizer_model=tokenizer_model, workers=1, block_bytes=100
    )
    logged = []
    summary = preprocess(cfg, progress=False, log=logged.append)
    assert summary.errors == {"bad_json": 2, "not_an_object": 1, "missing_key": 1}
    assert summary.empty_skipped == {"text": 1}
    assert any(f"{path}:3: not valid JSON" in m for m in logged)
    assert any(f"{path}:5: a JSON list" in m for m in logged)
    assert any(f"{path}:6: no key 'text'" in m for m in logged)
    assert any(f"{path}:11: not valid JSON" in m for m in logged)
    assert summary.lines == 11
    assert read_docs(str(tmp_path / "out_text_document")) == expected_docs(
        tokenizer_model, [r["text"] for r in records[:5]]
    )


def test_strict_stops_and_writes_nothing(tmp_path, tokenizer_model, records):
    path = write_jsonl(str(tmp_path / "in.jsonl"), [json.dumps(records[0]), "not json"])
    cfg = PreprocessConfig(
        inputs=[path], output_prefix=str(tmp_path / "out"), tokenizer_model=tokenizer_model, workers=1, strict=True
    )
    with pytest.raises(PreprocessError, match=r"in\.jsonl:2: not valid JSON"):
        preprocess(cfg, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_tool_interface_and_exit_codes(tmp_path, tokenizer_model, records, run_tool, capsys):
    path = write_jsonl(str(tmp_path / "in.jsonl"), [json.dumps(r) for r in records[:10]])
    args = [
        "--input",
        path,
        "--output-prefix",
        str(tmp_path / "o"),
        "--tokenizer-model",
        tokenizer_model,
        "--workers",
        "2",
        "--append-eod",
        "--no-progress",
    ]
    assert run_tool("preprocess_data.py", args) == 0
    assert "10 documents" in capsys.readouterr().out
    assert IndexedDataset(str(tmp_path / "o_text_document")).num_documents == 10
    assert run_tool("preprocess_data.py", args[:1] + [str(tmp_path / "missing.jsonl")] + args[2:]) == 1
    assert "missing.jsonl: input file not found" in capsys.readouterr().err


# JSON arrays: datasets shipped as one array in a `.json` file (MathInstruct compact, Alpaca indented by 4).
MATHINSTRUCT = [
    {
        "source": "data/CoT/aqua_rat.json",
        "output": "Let's think about the multi-choice question step by step.\nSpeed = 60 km/hr = 50/3 m/s.\n"
        "Length = speed \u00d7 time = 50/3 \u00d7 9 = 150 m.\nThe answer is D",
        "instruction": "A train running at the speed of 60 km/hr crosses a pole in 9 seconds. What is the length of "
        "the train?\nAnswer Choices: (A) 120 metres (B) 180 metres (C) 324 metres (D) 150 metres (E) 145 metres",
    },
    {
        "source": "data/PoT/mathqa.json",
        "output": "n0 = 60.0\nn1 = 9.0\nt0 = n0 * 1000.0 / 3600.0\nanswer = n1 * t0\nprint(answer)",
        "instruction": "a train running at the speed of 60 km / hr crosses a pole in 9 seconds . what is the length "
        "of the train ? Let's write a Python program.",
    },
    ["not", "an", "object"],
    {
        "source": "data/CoT/MATH_train.json",
        "output": "We have $\\sqrt{x^2} = |x|$, so the answer is $\\boxed{5}$. \u2014 done",
        "instruction": "What is $\\sqrt{(-5)^2}$?",
    },
]
ALPACA = [
    {
        "instruction": "Give three tips for staying healthy.",
        "input": "",
        "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep.",
    },
    {
        "instruction": "Evaluate this sentence for spelling and grammar mistakes",
        "input": "He finnished his meal and left the resturant",
        "output": "He finished his meal and left the restaurant.",
    },
    "a string element",
    {"instruction": "Convert from celsius to fahrenheit.", "input": "Temperature in Celsius: 15", "output": "59 F"},
]


def write_json_array(path, elements, indent=None, ensure_ascii=True, head=""):
    """`elements` as one JSON array (plain, `.gz` or `.zst` by the name), as `json.dump` writes a dataset."""
    return write_bytes(path, (head + json.dumps(elements, indent=indent, ensure_ascii=ensure_ascii)).encode())


def write_bytes(path, data):
    if path.endswith(".gz"):
        data = gzip.compress(data)
    elif path.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("name", ["MathInstruct.json", "alpaca_data.json.gz", "alpaca_data.json.zst"])
@pytest.mark.parametrize("block_bytes", [60, 1 << 20])
def test_a_json_array_file_is_read_element_by_element(tmp_path, name, block_bytes):
    elements = MATHINSTRUCT if name.startswith("Math") else ALPACA
    indent, ensure_ascii = (None, False) if name.startswith("Math") else (4, True)
    path = write_json_array(str(tmp_path / name), elements, indent, ensure_ascii, head="\ufeff" + " \n" * 40)
    got = list(iter_records(path, block_bytes=block_bytes))
    assert [where for where, _ in got] == [f"{path}[{i}]" for i in range(4)]
    assert [r for _, r in got if not isinstance(r, BadRecord)] == [elements[i] for i in (0, 1, 3)]
    kind = "list" if name.startswith("Math") else "str"
    assert got[2][1] == BadRecord("not_an_object", f"a JSON {kind}, not an object")
    blocks = list(iter_blocks([path], block_bytes))
    assert (len(blocks) == 1) == (block_bytes > 1000) and all(b.array for b in blocks)
    if not name.endswith((".gz", ".zst")):
        assert sum(b.length for b in blocks) == os.path.getsize(path)  # the progress bar's total


def test_json_lines_keep_their_reading_whatever_the_name(tmp_path):
    lines = [json.dumps(r) for r in ALPACA[:2]] + ['["a", "list"]']
    for name in ("lines.json", "lines.jsonl"):
        path = write_jsonl(str(tmp_path / name), lines)
        got = list(iter_records(path))
        assert [w for w, _ in got] == [f"{path}:{n}" for n in (1, 2, 3)]
        assert [r for _, r in got[:2]] == ALPACA[:2] and got[2][1].kind == "not_an_object"
    path = write_jsonl(str(tmp_path / "arrays.jsonl"), ['["a", "list"]', json.dumps(ALPACA[0])])
    assert [r.kind if isinstance(r, BadRecord) else r for _, r in iter_records(path)] == ["not_an_object", ALPACA[0]]


@pytest.mark.parametrize("name", ["cut.json", "cut.json.gz", "cut.json.zst"])
def test_a_truncated_or_broken_json_array_is_an_error_naming_the_file(tmp_path, name):
    whole = json.dumps(ALPACA, indent=4).encode()
    cut = whole.index(b"finnished")
    for data, element in ((whole[:cut], 1), (whole[: whole.rindex(b"}") + 1], 3)):
        path = write_bytes(str(tmp_path / name), data)
        with pytest.raises(
            JSONArrayError, match=rf"{name}: truncated JSON array: the file ends .*element \[{element}\]"
        ):
            list(iter_records(path, block_bytes=64))
    for broken in (whole.replace(b'"output": "59 F"', b'"output" "59 F"'), whole.replace(b'"59 F"', b'"59 F",')):
        path = write_bytes(str(tmp_path / name), broken)  # a missing colon, a comma before the closing brace
        with pytest.raises(JSONArrayError, match=rf"{name}: element \[3\] of the JSON array is not valid JSON"):
            list(iter_records(path, block_bytes=64))
    path = write_bytes(str(tmp_path / name), whole + b"\n[]")
    with pytest.raises(JSONArrayError, match=rf"{name}: data after the end of the JSON array"):
        list(iter_records(path))


@pytest.mark.parametrize("workers", [0, 2])
def test_preprocessing_a_json_array_matches_its_json_lines(tmp_path, tokenizer_model, records, workers):
    elements = [dict(r) for r in records[:20]]
    elements.insert(5, ["not", "an", "object"])
    elements[9]["text"] = "ligne avec \ud800 un demi-caract\u00e8re"  # a lone surrogate, escaped by json.dumps
    path = write_json_array(str(tmp_path / "papers.json.zst"), elements, indent=2)
    cfg = PreprocessConfig(
        inputs=[path],
        output_prefix=str(tmp_path / "out"),
        tokenizer_model=tokenizer_model,
        workers=workers,
        block_bytes=5_000,
    )
    logged = []
    summary = preprocess(cfg, progress=False, log=logged.append)
    assert summary.lines == 21 and summary.errors == {"not_an_object": 1, "bad_unicode": 1}
    assert logged[0] == f"skipped {path}[5]: a JSON list, not an object"
    assert logged[1].startswith(f"skipped {path}[9]: key 'text'")
    kept = [r["text"] for r in records[:20] if r is not records[8]]
    assert read_docs(str(tmp_path / "out_text_document")) == expected_docs(tokenizer_model, kept)
    assert [m["id"] for m in read_sidecar(str(tmp_path / "out_text_document"))] == [
        r["id"] for r in records[:20] if r is not records[8]
    ]
    cut = write_bytes(str(tmp_path / "cut.json"), json.dumps(elements).encode()[:-30])
    with pytest.raises(JSONArrayError, match=r"cut\.json: truncated JSON array"):
        preprocess(dataclasses.replace(cfg, inputs=[cut], output_prefix=str(tmp_path / "cut")), progress=False)
    assert not any(n.startswith("cut_") for n in os.listdir(tmp_path))
