"""training/data.py: the datasets of a distributed run, built on rank 0 and loaded by the others (gloo),
the refusal of data written with another tokenizer, and of a validation split too small to hold a document."""

import json
import os
import time

import numpy as np
import pytest

from megasci.data.gpt_dataset import GPTDataset, GPTDatasetConfig, build_indices
from megasci.training.config import config_from_dict
from megasci.training.data import build_eval_datasets, build_train_dataset, built_on_rank0
from test_gpt_dataset import random_docs, write_dataset


@pytest.fixture
def corpus(tmp_path):
    return write_dataset(str(tmp_path / "corpus"), random_docs(1, 200), multi_sequence=True)


def _distributed_worker(rank, world_size, rendezvous, prefix, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:

        def slow_build(config, dataset):
            time.sleep(0.5)  # rank 1 would find no cache if it did not wait at the barrier
            return build_indices(config, dataset)

        config = GPTDatasetConfig(prefix, seq_length=16, num_samples=50)
        ds = built_on_rank0(
            lambda may_build: GPTDataset(config, builder=slow_build, may_build=may_build), rank, world_size
        )
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.stack([ds[i] for i in range(len(ds))]))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"built": ds.built, "hash": ds.hash}, f)
    finally:
        dist.destroy_process_group()


def test_rank_zero_builds_and_rank_one_loads(corpus, tmp_path):
    mp = pytest.importorskip("torch.multiprocessing")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "rendezvous"), corpus, str(out_dir)), nprocs=2, join=True)
    reports = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["built"] for r in reports] == [True, False]
    assert reports[0]["hash"] == reports[1]["hash"]
    np.testing.assert_array_equal(np.load(out_dir / "rank0.npy"), np.load(out_dir / "rank1.npy"))
    assert len(os.listdir(corpus + "_cache")) == 4


def _failing_worker(rank, world_size, rendezvous, prefix, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:

        def broken_build(config, dataset):
            raise OSError("disk full")

        config = GPTDatasetConfig(prefix, seq_length=16, num_samples=50)
        try:
            built_on_rank0(
                lambda may_build: GPTDataset(config, builder=broken_build, may_build=may_build), rank, world_size
            )
        except (OSError, RuntimeError) as error:
            with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
                f.write(f"{type(error).__name__}: {error}")
    finally:
        dist.destroy_process_group()


def test_a_failed_build_on_rank_zero_fails_every_rank_instead_of_hanging(corpus, tmp_path):
    mp = pytest.importorskip("torch.multiprocessing")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    mp.spawn(_failing_worker, args=(2, str(tmp_path / "rendezvous"), corpus, str(out_dir)), nprocs=2, join=True)
    assert (out_dir / "rank0.txt").read_text() == "OSError: disk full"
    assert "was not built" in (out_dir / "rank1.txt").read_text()


def test_one_process_builds_itself():
    made = []
    assert built_on_rank0(lambda may_build: made.append(may_build) or "dataset", 0, 1) == "dataset"
    assert made == [True]


def _small_run(prefix, split, seq_length=256):
    return config_from_dict(
        {
            "model": {"preset": "tiny", "overrides": {"vocab_size": 512, "max_seq_len": seq_length}},
            "data": {"blend": [1, prefix], "seq_length": seq_length, "split": split},
            "train": {"train_steps": 2, "global_batch_size": 2, "micro_batch_size": 1},
            "optim": {"warmup_steps": 1},
        }
    )


def test_an_empty_validation_split_names_the_source_and_data_split(tmp_path, capsys):
    """47 documents and a 0.5% valid share: the split rounds to no document. The run used to fail building a
    dataset of -1 samples ("need seq_length > 0 and num_samples >= 0, got 256, -1")."""
    rng = np.random.default_rng(5)
    prefix = write_dataset(str(tmp_path / "small_text_document"), [rng.integers(0, 500, size=300) for _ in range(47)])
    cache = str(tmp_path / "cache")
    cfg = _small_run(prefix, [0.995, 0.005, 0])
    train = build_train_dataset(cfg, cache)
    with pytest.raises(ValueError) as failure:
        build_eval_datasets(cfg, train, cache)
    assert str(failure.value) == (
        f"{prefix}: the valid split is empty: data.split=[0.995, 0.005, 0.0] gives it 0 documents (0 tokens) of the "
        "dataset's 47 (14,100 tokens): a valid share of 0.005 of 47 documents rounds to none. Raise data.split's "
        "valid share above 1/47 = 0.0213, e.g. data.split=[0.957, 0.043, 0], add documents, or set the valid share "
        "to 0 to train without validation"
    )
    fixed = _small_run(prefix, [0.957, 0.043, 0])  # the suggestion gives it documents
    assert list(build_eval_datasets(fixed, build_train_dataset(fixed, cache), cache)) == ["small_text_document"]
    off = _small_run(prefix, [1, 0, 0])  # no valid share: no validation, said once per source
    assert build_eval_datasets(off, build_train_dataset(off, cache), cache) == {}
    assert "data.split has no valid share; source small_text_document not evaluated" in capsys.readouterr().out
