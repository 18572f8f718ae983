"""Issue 21, the data side: nothing lost silently, nothing trained that should not be.

Truncated shards are errors naming the file; a record holding a lone UTF-16 surrogate is one bad
record, not a failed run; `.idx` files are checked when opened and a dataset's files are committed
so that a crash between renames cannot pair a new `.bin` with an old `.idx`; token ids are checked
against the model's vocabulary before the embedding; an SFT dataset without its loss mask is an error.
"""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import zstandard

import megasci.utils.io as io_module
from megasci.corpus.synthetic import generate_papers
from megasci.data.commit import DatasetCommitError
from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig
from megasci.data.indexed_dataset import IndexedDataset, IndexedDatasetError, IndexedDatasetWriter, merge_datasets
from megasci.data.naming import commit_record_path, sft_output_prefixes, sft_report_path
from megasci.data.preprocess import PreprocessConfig, PreprocessError, preprocess
from megasci.data.sft import SFTConfig, SFTError, preprocess_sft
from megasci.tokenizer import SentencePieceTrainConfig, train_sentencepiece

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A small tokenizer with the chat template: serves pretraining and SFT preprocessing alike."""
    path = str(tmp_path_factory.mktemp("safety_tok") / "chat.model")
    train_sentencepiece(
        (p["text"] for p in generate_papers(30, seed=41)),
        path,
        SentencePieceTrainConfig(vocab_size=900, num_threads=1, chat_template="megasci-v1"),
    )
    return path


@pytest.fixture(scope="module")
def papers():
    return [{"id": p["id"], "text": p["text"]} for p in generate_papers(24, seed=5)]


def write_lines(path, lines, cut: float | None = None):
    """JSON lines, compressed by the suffix; `cut` keeps only that fraction of the file's bytes."""
    data = "".join(line + "\n" for line in lines).encode()
    if path.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    elif path.endswith(".gz"):
        data = gzip.compress(data)
    if cut is not None:
        data = data[: int(len(data) * cut)]
    with open(path, "wb") as f:
        f.write(data)
    return path


CHATS = [
    [
        {"role": "user", "content": f"Question {i}: what is $x^{i}$?"},
        {"role": "assistant", "content": f"It is $x$ to the power {i}."},
    ]
    for i in range(40)
]


# --- 1. a truncated shard is an error naming the file -------------------------------------------------


@pytest.mark.parametrize("name", ["shard.jsonl.zst", "shard.jsonl.gz"])
def test_truncated_shard_stops_preprocessing_naming_the_file(tmp_path, chat_model, papers, name):
    path = write_lines(str(tmp_path / name), [json.dumps(p) for p in papers], cut=0.5)
    cfg = PreprocessConfig(inputs=[path], output_prefix=str(tmp_path / "out"), tokenizer_model=chat_model, workers=0)
    with pytest.raises(ValueError, match=rf"{name}: truncated"):
        preprocess(cfg, progress=False)
    assert sorted(os.listdir(tmp_path)) == [name]  # no dataset from half a shard


def test_truncated_shard_stops_sft_preprocessing(tmp_path, chat_model):
    path = write_lines(str(tmp_path / "chat.jsonl.zst"), [json.dumps({"messages": m}) for m in CHATS], cut=0.5)
    cfg = SFTConfig(inputs=[path], output_prefix=str(tmp_path / "sft"), tokenizer_model=chat_model)
    with pytest.raises(ValueError, match=r"chat\.jsonl\.zst: truncated zstd file"):
        preprocess_sft(cfg, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["chat.jsonl.zst"]


def test_truncated_shard_stops_tokenizer_training(tmp_path, papers, run_tool, capsys):
    path = write_lines(str(tmp_path / "c.jsonl.zst"), [json.dumps(p) for p in papers * 4], cut=0.5)
    args = ["--input", path, "--output", str(tmp_path / "tok"), "--vocab-size", "400", "--num-threads", "1"]
    assert run_tool("train_tokenizer.py", args) == 1
    err = capsys.readouterr().err
    assert "c.jsonl.zst: truncated zstd file" in err and "INTERNAL" not in err
    assert not os.path.exists(tmp_path / "tok.model")


# --- 2. a lone surrogate is one bad record -----------------------------------------------------------


def with_surrogate(lines: list[str], at: int, field: str = "text") -> list[str]:
    """Line `at` rewritten to hold the JSON escape of a lone surrogate (valid JSON, invalid Unicode)."""
    record = json.loads(lines[at])
    record[field] = "SURROGATE" + record.get(field, "")
    lines = list(lines)
    lines[at] = json.dumps(record).replace("SURROGATE", "\\ud800")
    return lines


@pytest.mark.parametrize("workers", [0, 1])
def test_lone_surrogate_is_a_bad_record_in_preprocessing(tmp_path, chat_model, papers, workers):
    lines = with_surrogate([json.dumps(p) for p in papers[:6]], at=1)
    path = write_lines(str(tmp_path / "in.jsonl"), lines)
    cfg = PreprocessConfig(
        inputs=[path], output_prefix=str(tmp_path / "o"), tokenizer_model=chat_model, workers=workers
    )
    logged = []
    summary = preprocess(cfg, progress=False, log=logged.append)
    assert summary.errors == {"bad_unicode": 1} and summary.documents == {"text": 5}
    assert any("in.jsonl:2:" in line and "surrogate" in line for line in logged)
    assert IndexedDataset(str(tmp_path / "o_text_document")).num_documents == 5
    cfg.strict = True
    with pytest.raises(PreprocessError, match=r"in\.jsonl:2: .*surrogate"):
        preprocess(cfg, progress=False)


def test_a_surrogate_in_a_field_nobody_reads_costs_nothing(tmp_path, chat_model, papers):
    """Only the fields preprocessing uses must be valid Unicode; an escaped surrogate pair is valid."""
    lines = with_surrogate([json.dumps({**p, "title": "t"}) for p in papers[:3]], at=0, field="title")
    lines[2] = json.dumps({"id": "emoji", "text": "SMILE"}).replace("SMILE", "\\ud83d\\ude00 and text")
    path = write_lines(str(tmp_path / "in.jsonl"), lines)
    summary = preprocess(
        PreprocessConfig(inputs=[path], output_prefix=str(tmp_path / "o"), tokenizer_model=chat_model, workers=0),
        progress=False,
    )
    assert summary.errors == {} and summary.documents == {"text": 3}


def test_lone_surrogate_is_a_bad_record_in_sft_preprocessing(tmp_path, chat_model):
    lines = [json.dumps({"messages": m}) for m in CHATS[:5]]
    lines[3] = lines[3].replace("Question 3", "Question \\udc00")
    path = write_lines(str(tmp_path / "chat.jsonl"), lines)
    cfg = SFTConfig(inputs=[path], output_prefix=str(tmp_path / "s"), tokenizer_model=chat_model)
    logged = []
    summary = preprocess_sft(cfg, progress=False, log=logged.append)
    assert summary.conversations == 4 and summary.skipped == {"bad_unicode": 1}
    report = json.loads(open(sft_report_path(str(tmp_path / "s"))).read())
    assert [s["where"] for s in report["skipped_records"]] == [f"{path}:4"]
    cfg.strict = True
    with pytest.raises(SFTError, match=r"chat\.jsonl:4: .*surrogate"):
        preprocess_sft(cfg, progress=False)


def test_lone_surrogate_is_a_bad_record_in_tokenizer_training(tmp_path, papers, run_tool, capsys):
    path = write_lines(str(tmp_path / "c.jsonl"), with_surrogate([json.dumps(p) for p in papers], at=2))
    args = ["--input", path, "--output", str(tmp_path / "tok"), "--vocab-size", "400", "--num-threads", "1"]
    assert run_tool("train_tokenizer.py", args) == 0
    captured = capsys.readouterr()
    assert f"skipped {path}:3:" in captured.err and "bad_unicode: 1" in captured.out
    assert run_tool("train_tokenizer.py", args + ["--strict"]) == 1
    assert f"error: {path}:3: " in capsys.readouterr().err


# --- 3. indices checked at open; datasets committed as a whole -----------------------------------------


def write_by_hand(prefix, docs, dtype):
    """Megatron's layout written independently of the writer (as tests/test_indexed_dataset.py does)."""
    dtype = np.dtype(dtype)
    sizes = np.array([len(d) for d in docs], np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1], dtype=np.int64)]).astype(np.int64) * dtype.itemsize
    codes = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, codes[dtype], len(sizes), len(sizes) + 1))
        f.write(sizes.tobytes() + pointers.tobytes() + np.arange(len(sizes) + 1, dtype=np.int64).tobytes())
    return prefix


def test_pointers_that_are_not_the_running_sum_are_refused(tmp_path):
    docs = [np.arange(10), np.arange(5), np.arange(3)]
    prefix = write_by_hand(str(tmp_path / "ds"), docs, np.uint16)
    np.concatenate(docs).astype(np.uint16).tofile(prefix + ".bin")
    raw = bytearray(open(prefix + ".idx", "rb").read())
    struct.pack_into("<q", raw, 34 + 3 * 4 + 8, 24)  # sequence 1's pointer: 2 tokens late, the last one still right
    open(prefix + ".idx", "wb").write(bytes(raw))
    with pytest.raises(
        IndexedDatasetError,
        match=r"ds\.idx: sequence 1 starts at byte 24, but the lengths "
        r"before it put it at 20",
    ):
        IndexedDataset(prefix)


def test_a_bin_of_another_dtype_is_refused(tmp_path):
    docs = [np.arange(10), np.arange(5)]
    prefix = write_by_hand(str(tmp_path / "ds"), docs, np.uint16)
    np.concatenate(docs).astype(np.int32).tofile(prefix + ".bin")  # twice the bytes the index addresses
    with pytest.raises(
        IndexedDatasetError,
        match=r"ds\.bin: 60 bytes, but the 15 tokens of .*ds\.idx take 30 as "
        r"uint16",
    ):
        IndexedDataset(prefix)


def test_a_dtype_too_small_for_the_recorded_tokenizer_is_refused(tmp_path):
    docs = [np.arange(10), np.arange(5)]
    prefix = write_by_hand(str(tmp_path / "ds"), docs, np.uint16)
    np.concatenate(docs).astype(np.uint16).tofile(prefix + ".bin")
    IndexedDataset(prefix)
    with open(prefix + ".tokenizer.json", "w") as f:
        json.dump({"kind": "sentencepiece", "vocab_size": 102400}, f)
    with pytest.raises(IndexedDatasetError, match=r"ds\.idx: dtype uint16 cannot hold the ids .*vocabulary 102400"):
        IndexedDataset(prefix)


def write_dataset(prefix, docs, sidecar=None):
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as writer:
        for doc in docs:
            writer.add_document(doc)
        if sidecar is not None:
            writer.attach_json(prefix + ".extra.json", sidecar)
    return prefix


def crash_at_rename(monkeypatch, suffix):
    """Make the process "die" (an exception, after which nothing more is renamed) at the rename onto `suffix`."""
    real = os.replace

    def replace(src, dst):
        if os.fspath(dst).endswith(suffix):
            raise KeyboardInterrupt(f"killed before renaming onto {dst}")
        return real(src, dst)

    monkeypatch.setattr(io_module.os, "replace", replace)


def test_a_crash_between_renames_cannot_pair_a_new_bin_with_an_old_idx(tmp_path, monkeypatch):
    prefix = write_dataset(str(tmp_path / "ds"), [np.arange(10), np.arange(6)])
    crash_at_rename(monkeypatch, ".idx")
    with pytest.raises(KeyboardInterrupt):
        write_dataset(prefix, [np.arange(100, 104), np.arange(100, 112)])  # same token count, new documents
    monkeypatch.undo()
    assert np.fromfile(prefix + ".bin", np.uint16)[0] == 100  # the new .bin is in place beside the old .idx
    with pytest.raises(DatasetCommitError, match=r"ds\.commit\.json: write \w+ of dataset .*ds did not finish"):
        IndexedDataset(prefix)
    write_dataset(prefix, [np.arange(100, 104), np.arange(100, 112)])  # writing again repairs it
    assert IndexedDataset(prefix).get_document(0).tolist() == [100, 101, 102, 103]


def test_an_index_or_companion_from_another_write_is_refused(tmp_path):
    a = write_dataset(str(tmp_path / "a"), [np.arange(10), np.arange(6)], sidecar={"run": 1})
    b = write_dataset(str(tmp_path / "b"), [np.arange(4), np.arange(12)], sidecar={"run": 22})
    shutil.copyfile(b + ".idx", a + ".idx")  # same size, same .bin size: only the record tells them apart
    with pytest.raises(DatasetCommitError, match=r"a\.idx: sha256 .* differs .*a\.commit\.json"):
        IndexedDataset(a)
    write_dataset(a, [np.arange(10), np.arange(6)], sidecar={"run": 1})
    shutil.copyfile(b + ".extra.json", a + ".extra.json")  # a companion file (a sidecar, say) of another write
    with pytest.raises(DatasetCommitError, match=r"a\.extra\.json: 16 bytes, but .*a\.commit\.json records 15"):
        IndexedDataset(a)


def test_merging_checks_each_input_bin_against_its_checksum(tmp_path):
    a = write_dataset(str(tmp_path / "a"), [np.arange(10), np.arange(6)])
    b = write_dataset(str(tmp_path / "b"), [np.arange(4)])
    data = bytearray(open(a + ".bin", "rb").read())
    data[3] ^= 0xFF  # a flipped bit: same size, so opening cannot see it, but the merge reads every byte
    open(a + ".bin", "wb").write(bytes(data))
    with pytest.raises(IndexedDatasetError, match=r"a\.bin: its sha256 differs"):
        merge_datasets([a, b], str(tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m.bin")


def test_merge_tool_commits_the_sidecar_and_tokenizer_record_with_the_tokens(
    tmp_path, chat_model, papers, run_tool, capsys
):
    from megasci.data.sidecar import read_sidecar

    prefixes = []
    for part, chunk in enumerate((papers[:10], papers[10:])):
        path = write_lines(str(tmp_path / f"in{part}.jsonl"), [json.dumps(p) for p in chunk])
        preprocess(
            PreprocessConfig(
                inputs=[path], output_prefix=str(tmp_path / f"p{part}"), tokenizer_model=chat_model, workers=0
            ),
            progress=False,
        )
        prefixes.append(str(tmp_path / f"p{part}_text_document"))
    merged = str(tmp_path / "m")
    assert run_tool("merge_datasets.py", ["--input", *prefixes, "--output-prefix", merged]) == 0
    assert "sidecar" in capsys.readouterr().out
    record = json.loads(open(commit_record_path(merged)).read())
    assert sorted(record["files"]) == [".bin", ".docs.jsonl", ".idx", ".tokenizer.json"]
    assert [r["id"] for r in read_sidecar(merged)] == [p["id"] for p in papers]
    assert open(merged + ".tokenizer.json").read() == open(prefixes[0] + ".tokenizer.json").read()


def test_committed_files_stay_megatron_files(tmp_path):
    """The commit record lives beside the pair; .bin/.idx are byte for byte what Megatron's layout gives."""
    docs = [np.arange(7), np.arange(3)]
    ours = write_dataset(str(tmp_path / "ours"), docs)
    theirs = write_by_hand(str(tmp_path / "theirs"), docs, np.uint16)
    np.concatenate(docs).astype(np.uint16).tofile(theirs + ".bin")
    for ext in (".bin", ".idx"):
        assert open(ours + ext, "rb").read() == open(theirs + ext, "rb").read()
    record = json.loads(open(commit_record_path(ours)).read())
    assert record["state"] == "committed" and record["files"][".bin"]["bytes"] == 20
    assert (record["min_token_id"], record["max_token_id"]) == (0, 6)
    assert IndexedDataset(theirs).commit is None  # a dataset without a record (Megatron's) still opens


# --- 4. token ids against the vocabulary, before the embedding --------------------------------------------


def test_a_dataset_whose_record_shows_ids_beyond_the_vocabulary_is_refused_at_open(tmp_path):
    docs = [np.arange(0, 50), np.arange(40, 60), np.array([5, 700, 8, 900])]
    prefix = write_dataset(str(tmp_path / "ds"), docs)
    config = GPTDatasetConfig(prefix=prefix, seq_length=8, num_samples=4, split_fractions=(1, 0, 0))
    GPTDataset(config, vocab_size=1000)
    with pytest.raises(
        IndexedDatasetError,
        match=r"ds\.bin: token id 700 \(document 2\) is outside the vocabulary "
        r"of 512",
    ):
        GPTDataset(config, vocab_size=512)


def test_a_dataset_without_a_record_is_checked_sample_by_sample(tmp_path):
    docs = [np.arange(0, 30), np.array([1, 2, 600, 3] * 5), np.arange(10, 40)]
    prefix = write_by_hand(str(tmp_path / "ds"), docs, np.uint16)
    np.concatenate(docs).astype(np.uint16).tofile(prefix + ".bin")
    config = GPTDatasetConfig(prefix=prefix, seq_length=8, num_samples=9, split_fractions=(1, 0, 0))
    ds = GPTDataset(config, vocab_size=512)
    with pytest.raises(
        ValueError,
        match=r"ds\.bin: token id 600 \(sample \d+, document 1\) is outside the model's "
        r"vocabulary of 512",
    ):
        for i in range(len(ds)):
            ds.sample(i)
            ds[i]


def test_training_checks_token_ids_against_the_model_vocabulary(tmp_path, chat_model, papers):
    """Through the trainer's own data set-up: a model smaller than the data's ids never sees them."""
    from megasci.training.config import load_config
    from megasci.training.data import build_train_dataset

    path = write_lines(str(tmp_path / "in.jsonl"), [json.dumps(p) for p in papers])
    preprocess(
        PreprocessConfig(inputs=[path], output_prefix=str(tmp_path / "d"), tokenizer_model=chat_model, workers=0),
        progress=False,
    )
    prefix = str(tmp_path / "d_text_document")

    def config(vocab_size):
        return load_config(
            None,
            [
                "model.preset=tiny",
                f"model.overrides={{vocab_size: {vocab_size}}}",
                f"data.tokenizer={chat_model}",
                "data.seq_length=16",
                f"data.blend=[1, {prefix}]",
                "train.micro_batch_size=2",
                "train.global_batch_size=2",
                "train.train_steps=4",
                "optim.warmup_steps=1",
                f"train.save_dir={tmp_path / 'run'}",
            ],
        )

    assert len(build_train_dataset(config(900), str(tmp_path / "cache"))) == 8
    with pytest.raises(
        IndexedDatasetError,
        match=r"d_text_document\.bin: token id \d+ \(document \d+\) is outside "
        r"the vocabulary of 300",
    ):
        build_train_dataset(config(300), str(tmp_path / "cache"))


# --- 5. an SFT dataset without its loss mask --------------------------------------------------------------


@pytest.fixture
def sft_output(tmp_path, chat_model):
    path = write_lines(str(tmp_path / "chat.jsonl"), [json.dumps({"messages": m}) for m in CHATS])
    out = str(tmp_path / "sft")
    preprocess_sft(SFTConfig(inputs=[path], output_prefix=out, tokenizer_model=chat_model), progress=False)
    return out


def sft_config(out, tmp_path):
    return GPTDatasetConfig(
        prefix=sft_output_prefixes(out)["tokens"],
        seq_length=16,
        num_samples=8,
        split_fractions=(1, 0, 0),
        cache_dir=str(tmp_path / "cache"),
    )


@pytest.mark.parametrize("records", ["commit record", "report only"])
def test_an_sft_dataset_whose_loss_mask_is_missing_is_refused(sft_output, tmp_path, records):
    config = sft_config(sft_output, tmp_path)
    assert GPTDataset(config).has_loss_mask
    mask = sft_output_prefixes(sft_output)["loss_mask"]
    for path in (mask + ".bin", mask + ".idx", commit_record_path(mask)):
        if os.path.exists(path):
            os.remove(path)
    if records == "report only" and os.path.exists(commit_record_path(config.prefix)):
        os.remove(commit_record_path(config.prefix))  # a dataset written before commit records: the report says SFT
    with pytest.raises(
        FileNotFoundError,
        match=r"sft_loss_mask_document\.idx: the loss mask of SFT dataset "
        r".*sft_text_document is missing",
    ):
        GPTDataset(config)


def test_a_loss_mask_from_another_sft_run_is_refused(sft_output, tmp_path, chat_model):
    """Same conversations, so the same lengths: only the write id tells the second run's mask apart."""
    other = str(tmp_path / "again")
    preprocess_sft(
        SFTConfig(inputs=[str(tmp_path / "chat.jsonl")], output_prefix=other, tokenizer_model=chat_model),
        progress=False,
    )
    for ext in (".bin", ".idx", ".commit.json"):
        source = sft_output_prefixes(other)["loss_mask"] + ext
        if os.path.exists(source):
            shutil.copyfile(source, sft_output_prefixes(sft_output)["loss_mask"] + ext)
    with pytest.raises(
        ValueError,
        match=r"sft_loss_mask_document: the loss mask comes from write \w+, its tokens "
        r".* from write \w+: they are not one SFT run's output",
    ):
        GPTDataset(sft_config(sft_output, tmp_path))


def test_a_pretraining_text_dataset_needs_no_loss_mask(tmp_path, chat_model, papers):
    """`<out>_text_document` is also what pretraining's `text` key is called: no mask is expected there."""
    path = write_lines(str(tmp_path / "in.jsonl"), [json.dumps(p) for p in papers])
    preprocess(
        PreprocessConfig(inputs=[path], output_prefix=str(tmp_path / "p"), tokenizer_model=chat_model, workers=0),
        progress=False,
    )
    config = GPTDatasetConfig(
        prefix=str(tmp_path / "p_text_document"), seq_length=16, num_samples=4, split_fractions=(1, 0, 0)
    )
    assert not GPTDataset(config).has_loss_mask


# --- issue 18: one home for dataset naming -------------------------------------------------------------


def test_sampling_does_not_import_the_sft_driver():
    """gpt_dataset.py needs SFT's naming rule only; it gets it from data/naming.py."""
    code = "import sys, megasci.data.gpt_dataset; print(sorted(m for m in sys.modules if m.startswith('megasci.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "megasci.data.naming" in loaded
    for module in ("megasci.data.sft", "megasci.data.stackexchange", "megasci.data.conversations"):
        assert module not in loaded
