"""tools/preprocess_data.py against tokenizing each record directly with SentencePiece."""

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
    data = "".join(line + "\n" for line in lines).encode()
    if path.endswith(".gz"):
        data = gzip.compress(data)
    elif path.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return path


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
