"""Parquet input for pretraining preprocessing: row groups streamed, rows numbered like lines, same tokens."""

import datetime
import json

import pytest
import sentencepiece as spm

from megasci.corpus.synthetic import generate_papers
from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.preprocess import PreprocessConfig, PreprocessError, preprocess
from megasci.data.records import BadRecord, iter_blocks, iter_records
from megasci.data.sidecar import read_sidecar
from megasci.tokenizer import SentencePieceTrainConfig, train_sentencepiece

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'megasci[parquet]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow.parquet is not available")


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "t.model")
    train_sentencepiece(
        (p["text"] for p in generate_papers(30, seed=31)), path, SentencePieceTrainConfig(vocab_size=800, num_threads=2)
    )
    return path


def write_parquet(path, rows, row_group_size):
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def papers(n, seed):
    return [
        {"id": p["id"], "text": p["text"], "source": "synthetic", "date": datetime.date(2020, 1, 1 + i % 28)}
        for i, p in enumerate(generate_papers(n, seed=seed))
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_parquet_matches_direct_encoding_across_row_groups(tmp_path, tokenizer_model, workers):
    rows = papers(23, seed=32)
    rows[4]["text"] = None  # a null: no text, reported by row
    rows[9]["text"] = ""  # empty: skipped and counted, as in JSONL
    path = write_parquet(tmp_path / "owm.parquet", rows, row_group_size=5)
    assert len(list(iter_blocks([path], 1 << 20))) == 5
    logged = []
    cfg = PreprocessConfig(
        inputs=[path],
        output_prefix=str(tmp_path / "out"),
        tokenizer_model=tokenizer_model,
        workers=workers,
        metadata_keys=("id", "date"),
        append_eod=True,
    )
    summary = preprocess(cfg, progress=False, log=logged.append)
    assert summary.lines == 23 and summary.errors == {"missing_key": 1} and summary.empty_skipped == {"text": 1}
    assert logged[0] == f"skipped {path}:row 5: no key 'text'"
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    kept = [r for r in rows if r["text"]]
    ds = IndexedDataset(str(tmp_path / "out_text_document"))
    assert [ds.get_document(d).tolist() for d in range(ds.num_documents)] == [sp.encode(r["text"]) + [2] for r in kept]
    sidecar = read_sidecar(str(tmp_path / "out_text_document"))
    assert sidecar == [{"id": r["id"], "date": r["date"].isoformat()} for r in kept]


def test_parquet_strict_names_the_row(tmp_path, tokenizer_model):
    rows = papers(6, seed=33)
    rows[3]["text"] = None
    path = write_parquet(tmp_path / "a.parquet", rows, row_group_size=2)
    cfg = PreprocessConfig(
        inputs=[path], output_prefix=str(tmp_path / "out"), tokenizer_model=tokenizer_model, workers=0, strict=True
    )
    with pytest.raises(PreprocessError, match=r"a\.parquet:row 4: no key 'text'"):
        preprocess(cfg, progress=False)


def test_non_string_column_is_reported_per_row(tmp_path, tokenizer_model):
    path = write_parquet(tmp_path / "n.parquet", [{"text": i} for i in range(3)], row_group_size=2)
    cfg = PreprocessConfig(
        inputs=[path], output_prefix=str(tmp_path / "out"), tokenizer_model=tokenizer_model, workers=0
    )
    logged = []
    summary = preprocess(cfg, progress=False, log=logged.append)
    assert summary.errors == {"not_a_string": 3}
    assert logged == [f"skipped {path}:row {i}: key 'text' holds a int" for i in (1, 2, 3)]


def test_one_reader_gives_the_same_records_for_jsonl_and_parquet(tmp_path):
    rows = [{"text": f"document {i}", "n": i} for i in range(11)]
    parquet = write_parquet(tmp_path / "r.parquet", rows, row_group_size=3)
    jsonl = tmp_path / "r.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(4, "{not json")
    lines.insert(6, "")
    jsonl.write_text("\r\n".join(lines))  # CRLF and no final newline
    from_parquet = list(iter_records(parquet))
    from_jsonl = list(iter_records(str(jsonl), block_bytes=40))
    assert [r for _, r in from_parquet] == rows
    assert [w for w, _ in from_parquet] == [f"{parquet}:row {i}" for i in range(1, 12)]
    bad = [(w, r) for w, r in from_jsonl if isinstance(r, BadRecord)]
    assert bad == [(f"{jsonl}:5", BadRecord("bad_json", bad[0][1].message))] and bad[0][1].message.startswith(
        "not valid"
    )
    assert [r for _, r in from_jsonl if not isinstance(r, BadRecord)] == rows
    assert [w for w, r in from_jsonl if not isinstance(r, BadRecord)] == [
        f"{jsonl}:{n}" for n in (1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 13)
    ]


def test_unreadable_parquet_names_the_file(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"broken\.parquet: not a readable Parquet file"):
        list(iter_records(str(bad)))
