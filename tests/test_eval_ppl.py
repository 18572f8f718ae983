"""tools/eval_ppl.py and megasci/evaluation.py: losses checked against a hand computation, the
held-out split against the one training uses, label groups, the CLI, and the errors and warnings."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig, split_documents
from megasci.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from megasci.data.provenance import tokenizer_warnings
from megasci.evaluation import evaluate_perplexity, held_out_settings, plan_groups
from megasci.model import build_model, get_config
from megasci.tokenizer import load_tokenizer
from megasci.training.checkpoint import load_model, read_meta, save_checkpoint
from megasci.training.config import TrainConfig
from training_fixtures import make_training_data

FRACTIONS, SEED, SEQ = (0.7, 0.2, 0.1), 5, 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_ppl")
    data = make_training_data(str(root / "data"), papers=40)
    cfg = get_config("tiny", vocab_size=data["vocab_size"])
    torch.manual_seed(0)
    model = build_model(cfg)
    train = TrainConfig()
    train.data.seq_length, train.data.split, train.data.seed = SEQ, FRACTIONS, SEED
    train.data.tokenizer, train.data.blend = data["tokenizer"], f"1 {data['prefix']}"
    identity = load_tokenizer(data["tokenizer"]).identity()
    save_dir = str(root / "ckpt")
    save_checkpoint(
        save_dir,
        1,
        rank=0,
        rank_state={},
        model_state=model.state_dict(),
        meta={"model_config": dataclasses.asdict(cfg), "tokenizer": identity, "train_config": train.to_dict()},
    )
    return {**data, "checkpoint": save_dir, "root": root, "cache": str(root / "cache")}


def sections(prefix):
    with open(f"{prefix}.docs.jsonl", encoding="utf-8") as f:
        return [json.loads(line).get("section") for line in f]


def reference_loss(model, prefix, samples, cache_dir, document_filter=None, split="valid"):
    """Token-weighted mean cross-entropy of the group's first `samples` samples, from logits."""
    ds = GPTDataset(
        GPTDatasetConfig(
            prefix=prefix,
            split=split,
            split_fractions=FRACTIONS,
            seq_length=SEQ,
            seed=SEED,
            num_samples=samples,
            document_filter=document_filter,
            cache_dir=cache_dir,
        )
    )
    tokens = torch.from_numpy(np.stack([ds[i] for i in range(samples)]))
    with torch.no_grad():
        logits = model(tokens[:, :-1]).double()
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="sum")
    return float(total) / tokens[:, 1:].numel(), ds


def test_losses_match_a_hand_computation(setup, tmp_path):
    report = evaluate_perplexity(
        setup["checkpoint"], [setup["prefix"]], by="section", max_samples=12, batch_size=5, cache_dir=setup["cache"]
    )
    model, _ = load_model(setup["checkpoint"])
    model.eval()
    rows = {g["name"]: g for g in report["groups"]}
    source = rows["arxiv_text_document"]
    expected, ds = reference_loss(model, setup["prefix"], 12, str(tmp_path / "ref"))
    assert source["samples"] == 12 and source["tokens_evaluated"] == 12 * SEQ
    assert source["loss"] == pytest.approx(expected, abs=1e-5)
    assert report["overall"]["loss"] == pytest.approx(expected, abs=1e-5)  # one prefix: overall = it
    abstract = rows["arxiv_text_document[section=abstract]"]
    expected, ds = reference_loss(
        model, setup["prefix"], abstract["samples"], str(tmp_path / "ref"), {"section": {"abstract"}}
    )
    assert abstract["loss"] == pytest.approx(expected, abs=1e-5)
    labels = sections(setup["prefix"])
    assert all(labels[d] == "abstract" for d in ds.split_documents)
    for row in report["groups"]:
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]), rel=1e-12)


def test_label_groups_partition_the_held_out_documents(setup):
    report = evaluate_perplexity(
        setup["checkpoint"], [setup["prefix"]], by="section", max_samples=2, cache_dir=setup["cache"]
    )
    prefix = setup["prefix"]
    valid = split_documents(IndexedDataset(prefix).num_documents, FRACTIONS, SEED)["valid"]
    labels = sections(prefix)
    source, *by_label = report["groups"]
    assert source["documents"] == report["overall"]["documents"] == len(valid)
    assert sum(g["documents"] for g in by_label) == len(valid)
    assert {g["label"] for g in by_label} == {labels[d] for d in valid}
    for g in by_label:
        assert g["documents"] == sum(labels[d] == g["label"] for d in valid)
        assert g["samples"] <= 2


def test_valid_split_is_what_training_left_out(setup):
    prefix = setup["prefix"]
    fractions, seed, seq_length = held_out_settings(read_meta(setup["checkpoint"]), setup["checkpoint"])
    assert (fractions, seed, seq_length) == (FRACTIONS, SEED, SEQ)
    [group] = plan_groups([prefix], "valid", fractions, seed, seq_length, cache_dir=setup["cache"])
    documents = IndexedDataset(prefix).num_documents
    assert group.documents.tolist() == split_documents(documents, FRACTIONS, SEED)["valid"].tolist()
    assert GPTDataset(group.config).split_documents.tolist() == group.documents.tolist()  # what is sampled
    trained = GPTDataset(
        GPTDatasetConfig(
            prefix=prefix,
            split="train",
            split_fractions=FRACTIONS,
            seq_length=SEQ,
            seed=SEED,
            num_samples=1,
            cache_dir=setup["cache"],
        )
    ).split_documents
    assert not set(trained.tolist()) & set(group.documents.tolist())
    [everything] = plan_groups([prefix], "all", fractions, seed, seq_length, cache_dir=setup["cache"])
    assert everything.documents.tolist() == list(range(documents))
    assert everything.tokens == IndexedDataset(prefix).num_tokens
    assert everything.samples == (everything.tokens - 1) // SEQ  # one pass, every full sample


def test_cli_prints_the_table_and_writes_json(setup, tmp_path, capsys, run_tool):
    out = tmp_path / "ppl.json"
    args = [
        "--checkpoint",
        setup["checkpoint"],
        "--data",
        setup["prefix"],
        "--by",
        "section",
        "--max-samples",
        "3",
        "--split",
        "all",
        "--cache-dir",
        setup["cache"],
        "--json-out",
        str(out),
    ]
    assert run_tool("eval_ppl.py", args) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert printed.splitlines()[0].split() == ["group", "documents", "tokens", "evaluated", "loss", "perplexity"]
    for g in report["groups"]:
        assert g["name"] in printed and f"{g['loss']:.4f}" in printed
    overall = next(line for line in printed.splitlines() if line.startswith("overall"))
    assert f"{report['overall']['perplexity']:.3f}" in overall
    assert report["overall"]["documents"] == IndexedDataset(setup["prefix"]).num_documents
    direct = evaluate_perplexity(
        setup["checkpoint"], [setup["prefix"]], split="all", by="section", max_samples=3, cache_dir=setup["cache"]
    )
    assert report["overall"]["loss"] == pytest.approx(direct["overall"]["loss"], abs=1e-12)


def test_missing_prefix_is_named(setup, tmp_path, capsys, run_tool):
    missing = str(tmp_path / "nope")
    args = ["--checkpoint", setup["checkpoint"], "--data", setup["prefix"], missing]
    assert run_tool("eval_ppl.py", args) == 1
    assert f"{missing}.idx: indexed dataset file not found" in capsys.readouterr().err


def write_dataset(prefix, documents):
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as writer:
        for doc in documents:
            writer.add_document(np.asarray(doc, dtype=np.uint16))


def test_foreign_and_too_small_datasets_fail_naming_the_file(setup, tmp_path):
    foreign = str(tmp_path / "foreign")
    write_dataset(foreign, [np.arange(1000, 1100), np.arange(1100, 1200)])
    with pytest.raises(ValueError, match=f"{foreign}.bin: token id .* outside the model's vocabulary"):
        evaluate_perplexity(setup["checkpoint"], [foreign], split="all", cache_dir=setup["cache"])
    small = str(tmp_path / "small")
    write_dataset(small, [[1, 2, 3], [4, 5]])
    with pytest.raises(ValueError, match=f"{small}.bin: the all split .* 2 documents and 5 tokens"):
        evaluate_perplexity(setup["checkpoint"], [small], split="all", cache_dir=setup["cache"])
    with pytest.raises(FileNotFoundError, match="small.docs.jsonl"):
        evaluate_perplexity(
            setup["checkpoint"], [small], split="all", by="section", seq_length=2, cache_dir=setup["cache"]
        )


def test_checkpoint_without_training_config_needs_split_all(setup, tmp_path):
    model, meta = load_model(setup["checkpoint"])
    save_checkpoint(
        str(tmp_path / "bare"),
        1,
        rank=0,
        rank_state={},
        model_state=model.state_dict(),
        meta={"model_config": meta["model_config"]},
    )
    with pytest.raises(ValueError, match="records no training config"):
        evaluate_perplexity(str(tmp_path / "bare"), [setup["prefix"]], seq_length=SEQ)
    report = evaluate_perplexity(
        str(tmp_path / "bare"), [setup["prefix"]], split="all", seq_length=SEQ, max_samples=1, cache_dir=setup["cache"]
    )
    assert report["groups"][0]["samples"] == 1


def test_tokenizer_mismatch_warns_from_the_preprocessing_report(setup, tmp_path):
    prefix = str(tmp_path / "corpus_text_document")
    for suffix in (".bin", ".idx", ".docs.jsonl"):
        shutil.copyfile(setup["prefix"] + suffix, prefix + suffix)
    identity = read_meta(setup["checkpoint"])["tokenizer"]
    assert tokenizer_warnings(prefix, identity) == []  # nothing recorded: nothing to say
    report_path = tmp_path / "corpus_preprocess.json"

    def record(tokenizer_model):
        report_path.write_text(
            json.dumps(
                {
                    "config": {"tokenizer_model": tokenizer_model},
                    "summary": {"outputs": {"text": prefix}, "vocab_size": 99},
                }
            )
        )

    record(setup["tokenizer"])
    assert tokenizer_warnings(prefix, identity) == []
    other = tmp_path / "other.model"
    other.write_bytes(b"not the same tokenizer")
    record(str(other))
    [warning] = tokenizer_warnings(prefix, identity)
    assert str(report_path) in warning and "sha256" in warning
    record(str(tmp_path / "gone.model"))  # the tokenizer file is gone: compare vocabulary sizes
    [warning] = tokenizer_warnings(prefix, identity)
    assert "vocab_size 99" in warning
    warned = []
    evaluate_perplexity(
        setup["checkpoint"], [prefix], split="all", max_samples=1, cache_dir=setup["cache"], warn=warned.append
    )
    assert any("vocab_size 99" in w for w in warned)
    warned = []
    evaluate_perplexity(setup["checkpoint"], [prefix], max_samples=1, cache_dir=setup["cache"], warn=warned.append)
    assert any(f"{prefix} is not a source of this checkpoint's training data" in w for w in warned)
