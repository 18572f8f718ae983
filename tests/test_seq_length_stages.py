"""Sequence length per curriculum stage (issue 20): per-length sample indices, the document-length
filter, the loader's per-stage micro-batch, and a 2-rank run that switches length mid-way, killed
and resumed, equal to the uninterrupted run bit for bit."""

import os
import time

import numpy as np
import pytest
import torch

from megasci.data.blended_dataset import BlendedDataset, parse_curriculum
from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig, select_documents
from megasci.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from megasci.data.loader import DataLoader
from megasci.training import checkpoint as ckpt
from megasci.training.data import check_stage_boundaries
from megasci.training.metrics import read_metrics
from training_fixtures import REPO, make_training_data, pretrain_killed_after_save, run_pretrain, training_overrides


@pytest.fixture(scope="module")
def lengths_prefix(tmp_path_factory):
    """40 documents of lengths 5, 10, ..., 200 tokens (document d holds the value d everywhere)."""
    prefix = str(tmp_path_factory.mktemp("lengths") / "docs")
    with IndexedDatasetWriter(prefix, dtype=np.uint16) as writer:
        for d in range(40):
            writer.add_document(np.full(5 * (d + 1), d, dtype=np.uint16))
    return prefix


def test_min_doc_tokens_keeps_only_long_documents_and_caches_the_selection(lengths_prefix, tmp_path):
    config = GPTDatasetConfig(
        prefix=lengths_prefix,
        split_fractions=(1, 0, 0),
        seq_length=16,
        num_samples=20,
        cache_dir=str(tmp_path),
        min_document_tokens=150,
    )
    kept = select_documents(config)
    assert kept.tolist() == list(range(29, 40))  # lengths 150..200
    assert len([f for f in os.listdir(tmp_path) if f.endswith("-documents.npy")]) == 1
    ds = GPTDataset(config)
    assert all(int(v) >= 29 for i in range(len(ds)) for v in ds[i])  # every token comes from a long document
    unfiltered = GPTDataset(
        GPTDatasetConfig(
            prefix=lengths_prefix, split_fractions=(1, 0, 0), seq_length=16, num_samples=20, cache_dir=str(tmp_path)
        )
    )
    assert ds.hash != unfiltered.hash and min(int(unfiltered[i].min()) for i in range(20)) < 29


def test_each_length_has_its_own_index_and_a_token_end_counts_in_the_stage_length(lengths_prefix, tmp_path):
    stages = parse_curriculum(
        [
            {"name": "short", "end_tokens": 160, "blend": [{"prefix": lengths_prefix, "weight": 1}]},
            {
                "name": "long",
                "seq_length": 32,
                "micro_batch_size": 1,
                "end_tokens": 160 + 8 * 32,
                "blend": [
                    {"prefix": lengths_prefix, "weight": 1},
                    {"prefix": lengths_prefix, "weight": 1, "min_doc_tokens": 100},
                ],
            },
        ]
    )
    ds = BlendedDataset(stages, seq_length=16, split_fractions=(1, 0, 0), cache_dir=str(tmp_path))
    assert ds.stage_ends.tolist() == [10, 18]  # 160 / 16, then 256 more tokens / 32
    assert [len(ds[i]) for i in (0, 9, 10, 17)] == [17, 17, 33, 33]
    assert ds.seq_length_at(9) == 16 and ds.seq_length_at(10) == 32
    assert ds.micro_batch_size_at(9) is None and ds.micro_batch_size_at(10) == 1
    assert [s.name for s in ds.sources] == ["docs", "docs@32", "docs[tokens>=100]"]
    assert {d.hash for d in ds.datasets[:2]} == {ds.datasets[0].hash, ds.datasets[1].hash} and ds.datasets[
        0
    ].hash != ds.datasets[1].hash  # the cache key includes the length
    assert ds.tokens_before(18) == 160 + 8 * 32
    with pytest.raises(ValueError, match="unknown key"):
        parse_curriculum([{"name": "x", "seq_len": 32, "blend": [{"prefix": lengths_prefix}]}])


def test_loader_uses_each_stage_micro_batch(lengths_prefix, tmp_path):
    stages = parse_curriculum(
        [
            {"name": "short", "end_samples": 8, "blend": [{"prefix": lengths_prefix, "weight": 1}]},
            {
                "name": "long",
                "end_samples": 16,
                "seq_length": 32,
                "micro_batch_size": 1,
                "blend": [{"prefix": lengths_prefix, "weight": 1}],
            },
        ]
    )
    ds = BlendedDataset(stages, seq_length=16, split_fractions=(1, 0, 0), cache_dir=str(tmp_path))
    with DataLoader(ds, micro_batch_size=2, global_batch_size=4, prefetch=0) as loader:
        shapes = [tuple(batch["tokens"].shape) for batch in loader]
        assert [loader.accumulation_at(s) for s in range(4)] == [2, 2, 4, 4]
    assert shapes == [(2, 16)] * 4 + [(1, 32)] * 8
    ds.stages[1].micro_batch_size = 3
    with pytest.raises(ValueError, match="stage 'long'.*not divisible by its micro_batch_size 3"):
        DataLoader(ds, micro_batch_size=2, global_batch_size=4)


def test_a_length_change_off_a_global_batch_boundary_is_refused(lengths_prefix, tmp_path):
    stages = parse_curriculum(
        [
            {"name": "short", "end_samples": 6, "blend": [{"prefix": lengths_prefix, "weight": 1}]},
            {"name": "long", "end_samples": 16, "seq_length": 32, "blend": [{"prefix": lengths_prefix, "weight": 1}]},
        ]
    )
    ds = BlendedDataset(stages, seq_length=16, split_fractions=(1, 0, 0), cache_dir=str(tmp_path))
    check_stage_boundaries(ds, 2)  # 6 is a whole number of global batches of 2
    with pytest.raises(ValueError, match="starts at sample 6, not a multiple of global_batch_size 4.* at 8 samples"):
        check_stage_boundaries(ds, 4)


def _curriculum(data, end=32):
    prefix = data["prefix"]
    return (
        f"[{{name: short, end_samples: {end}, blend: [{{prefix: {prefix}, weight: 1}}]}}, "
        f"{{name: long, seq_length: 64, micro_batch_size: 1, "
        f"blend: [{{prefix: {prefix}, weight: 1}}, {{prefix: {prefix}, weight: 1, min_doc_tokens: 48}}]}}]"
    )


def test_switching_length_mid_run_then_sigkill_and_resume_is_bit_exact(tmp_path):
    """Steps 1-4 at 32 tokens (micro 2), 5-8 at 64 (micro 1, long documents upsampled); SIGKILL right after
    the step-3 checkpoint, the same command resumes and crosses the change: losses and weights equal."""
    data = make_training_data(str(tmp_path / "data"), papers=40)
    job = {
        "data.curriculum": _curriculum(data),
        "train.train_steps": 8,
        "optim.decay_steps": 6,
        "train.eval_interval": 0,
        "train.log_interval": 1,
    }
    straight = str(tmp_path / "straight")
    log = run_pretrain(2, training_overrides(data, straight, **job)).stdout
    assert "stage short | seq 32" in log and "stage long | seq 64" in log
    killed = str(tmp_path / "killed")
    overrides = training_overrides(data, killed, **job, **{"train.save_interval": 3})
    pretrain_killed_after_save(2, overrides, step=3)
    time.sleep(1)
    assert ckpt.read_meta(killed)["step"] == 3
    resumed = run_pretrain(2, overrides)
    assert "resumed from" in resumed.stdout
    a, b = read_metrics(os.path.join(straight, "tensorboard")), read_metrics(os.path.join(killed, "tensorboard"))
    assert [a[s]["data/seq_length"] for s in range(1, 9)] == [32] * 4 + [64] * 4
    for step in range(1, 9):
        assert b[step]["train/loss"] == a[step]["train/loss"], step
        assert b[step]["data/seq_length"] == a[step]["data/seq_length"], step
    pa = torch.load(os.path.join(ckpt.latest_checkpoint(straight), ckpt.MODEL_NAME), weights_only=True)
    pb = torch.load(os.path.join(ckpt.latest_checkpoint(killed), ckpt.MODEL_NAME), weights_only=True)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    meta = ckpt.read_meta(killed)["data"]
    assert meta["consumed_samples"] == 64 and meta["stage"] == "long" and meta["seq_length"] == 64
    assert IndexedDataset(data["prefix"]).document_lengths().max() >= 48  # the filter kept something


def test_the_extend_4096_recipe_loads(monkeypatch):
    """examples/configs/extend_4096.yaml through the config loader: its knobs as documented."""
    from megasci.training.config import load_config

    for name in ("TOKENIZER", "ARXIV", "ARXIV_SECTIONS", "WEBMATH", "PRETRAIN_SAVE_DIR", "SAVE_DIR"):
        monkeypatch.setenv(name, f"/data/{name.lower()}")
    cfg = load_config(os.path.join(REPO, "examples", "configs", "extend_4096.yaml"))
    model = cfg.model.build()
    assert model.rope_theta == 500000.0 and model.max_seq_len >= cfg.data.seq_length == 4096
    assert cfg.data.document_mask and cfg.train.init_from == "/data/pretrain_save_dir"
    stages = parse_curriculum(cfg.data.curriculum)
    assert [s.min_doc_tokens for s in stages[0].blend] == [4096, 0, 0, 0]
    tokens = cfg.train.train_steps * cfg.train.global_batch_size * cfg.data.seq_length
    assert 0.02 <= tokens / 51.9e9 <= 0.05  # 2-5% of the 1p36b run's tokens


def test_a_continuation_raises_the_rope_base_and_the_length(tmp_path):
    """train.init_from with another rope_theta, max_seq_len and data.seq_length (the extension recipe's
    shape): the weights load, the run trains at the new length; another width is still refused."""
    data = make_training_data(str(tmp_path / "data"), papers=20)
    blend = {
        "data.curriculum": "null",
        "data.blend": f"[1, {data['prefix']}]",
        "train.eval_interval": 0,
        "train.train_steps": 2,
        "optim.warmup_steps": 1,
    }
    base = str(tmp_path / "base")
    run_pretrain(1, training_overrides(data, base, **blend))
    overrides = f"{{vocab_size: {data['vocab_size']}, rope_theta: 500000.0, max_seq_len: 256}}"
    longer = run_pretrain(
        1,
        training_overrides(
            data,
            str(tmp_path / "long"),
            **blend,
            **{
                "model.overrides": overrides,
                "data.seq_length": 256,
                "train.micro_batch_size": 1,
                "train.init_from": base,
                "train.log_interval": 1,
            },
        ),
    ).stdout
    assert "seq 256" in longer
    wider = run_pretrain(
        1,
        training_overrides(
            data,
            str(tmp_path / "wide"),
            **blend,
            **{"model.overrides": f"{{vocab_size: {data['vocab_size']}, hidden_size: 128}}", "train.init_from": base},
        ),
        check=False,
    )
    assert wider.returncode != 0 and "is not this run's" in wider.stdout + wider.stderr
