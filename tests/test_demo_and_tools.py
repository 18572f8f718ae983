"""The demo end to end (shortened) and the small dataset tools over its output."""

import json
import os

import numpy as np
import pytest

from megasci import demo
from megasci.data.indexed_dataset import IndexedDataset
from megasci.data.sidecar import read_sidecar
from megasci.tokenizer import load_tokenizer
from megasci.utils.io import iter_json_records



@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = demo.run(str(out), papers=80, vocab_size=1500, workers=2, seed=3, train_overrides=SHORT_TRAINING)
    return out, result


# The demo's training stage shortened for CI: 24 steps, curriculum stages at 128 and 256 samples.
SHORT_TRAINING = ["train.train_steps=24", "data.curriculum.0.end_samples=128", "data.curriculum.1.end_samples=256",
                  "optim.warmup_steps=5", "train.eval_interval=12", "train.save_interval=12", "train.log_interval=6",
                  "data.eval_samples=16"]


def test_demo_trains_and_validation_perplexity_falls(demo_run, capsys):
    out, result = demo_run
    training = result["training"]
    assert training["steps"] == 24
    assert training["val_ppl_end"] < training["val_ppl_start"]
    assert training["train_loss_end"] < training["train_loss_start"]
    assert os.path.isfile(out / "run" / "latest")
    assert os.path.isfile(out / "hf_export" / "model.safetensors")
    assert os.path.isfile(out / "hf_export" / "tokenizer.json")


# The post-training stages shortened for CI: 12 steps, validation every 4.
SHORT_SFT = ["train.train_steps=12", "train.eval_interval=4", "train.save_interval=12", "train.log_interval=4",
             "optim.warmup_steps=2", "data.eval_samples=16"]


def test_demo_sft_fine_tunes_the_demo_model_and_chats(demo_run, capfd):
    out, _ = demo_run
    result = demo.finetune_and_chat(str(out), SHORT_SFT, conversations=600)
    losses = list(result["sft_val_loss"].values())
    assert sorted(result["sft_val_loss"]) == [0, 4, 8, 12]
    assert losses[-1] < losses[0] - 0.5, losses  # the assistant-token loss falls
    assert os.path.isfile(out / "hf_sft" / "tokenizer_config.json")
    assert json.load(open(out / "hf_sft" / "tokenizer_config.json"))["chat_template"]
    printed = capfd.readouterr().out  # the fine-tune's own output comes from torchrun's processes
    assert f"assistant: {result['answer']}" in printed and "initialised the weights from" in printed
    assert demo.load_tokenizer(str(out / "tokenizer" / "arxiv.model")).chat_template.name == demo.CHAT_TEMPLATE


def test_demo_writes_consistent_datasets(demo_run):
    out, result = demo_run
    papers = IndexedDataset(str(out / "data" / "arxiv_text_document"))
    sections = IndexedDataset(str(out / "data" / "arxiv_sections_text_document"))
    records = [r for path in sorted((out / "corpus" / "shards").glob("*.jsonl.zst"))
               for r in iter_json_records(str(path))]
    assert 0 < len(records) == papers.num_documents < 80  # the builder's funnel drops some papers
    assert json.load(open(out / "corpus" / "yield.json"))["written"] == len(records)
    tok = load_tokenizer(str(out / "tokenizer" / "arxiv.model"))
    assert papers.get_document(0).tolist() == tok.encode(records[0]["text"]) + [tok.eod_id]
    # Sections partition each paper, so both datasets hold the same text: token counts nearly agree.
    assert abs(sections.num_tokens - papers.num_tokens) / papers.num_tokens < 0.05
    labels = [r["section"] for r in read_sidecar(str(out / "data" / "arxiv_sections_text_document"))]
    assert labels.count("abstract") == len(records) and labels.count("title") == len(records)
    stats = result["datasets"][str(out / "data" / "arxiv_text_document")]
    assert stats["documents"] == len(records) and stats["tokens"] == papers.num_tokens


def test_dataset_info_tool(demo_run, capsys, run_tool):
    out, _ = demo_run
    prefix = str(out / "data" / "arxiv_sections_text_document")
    assert run_tool("dataset_info.py", [prefix, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["documents_by_section"]["abstract"] == stats["documents_by_section"]["title"] > 0
    assert stats["tokens"] == IndexedDataset(prefix).num_tokens
    assert run_tool("dataset_info.py", [str(out / "nope")]) == 1
    assert "nope.idx: indexed dataset file not found" in capsys.readouterr().err


def test_merge_tool_merges_tokens_and_sidecars(demo_run, tmp_path, capsys, run_tool):
    out, _ = demo_run
    a = str(out / "data" / "arxiv_text_document")
    b = str(out / "data" / "arxiv_sections_text_document")
    assert run_tool("merge_datasets.py", ["--input", a, b, "--output-prefix", str(tmp_path / "m")]) == 0
    assert "sidecar" in capsys.readouterr().out
    merged, da, db = IndexedDataset(str(tmp_path / "m")), IndexedDataset(a), IndexedDataset(b)
    assert merged.num_documents == da.num_documents + db.num_documents
    assert np.array_equal(merged.get_document(da.num_documents), db.get_document(0))
    assert len(read_sidecar(str(tmp_path / "m"))) == merged.num_documents
    with open(a + ".tokenizer.json") as fa, open(str(tmp_path / "m") + ".tokenizer.json") as fm:
        assert json.load(fm) == json.load(fa)  # both inputs record the same tokenizer: so does the merge
