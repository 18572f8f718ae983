"""Impossible optimiser and training values fail when the config is read, naming the key, instead of
training with NaNs, a frozen model or a schedule that never reaches its peak."""

import pytest

from megasci.training.config import load_config


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["optim.lr=0"], "optim.lr"),
        (["optim.lr=-3e-4"], "optim.lr"),
        (["optim.min_lr=-1e-5"], "optim.min_lr"),
        (["optim.lr=1e-4", "optim.min_lr=1e-3"], "optim.min_lr"),
        (["optim.betas=[1.0, 0.95]"], r"optim.betas\[0\]"),
        (["optim.betas=[0.9, -0.1]"], r"optim.betas\[1\]"),
        (["optim.eps=0"], "optim.eps"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay"),
        (["optim.lr=20", "optim.weight_decay=0.1"], "optim.weight_decay"),
        (["optim.clip_grad=-1"], "optim.clip_grad"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps"),
        (["optim.decay_steps=-5"], "optim.decay_steps"),
        (["optim.bucket_numel=0"], "optim.bucket_numel"),
        (["optim.warmup_steps=200", "train.train_steps=100"], "optim.warmup_steps"),
        (["train.train_steps=0"], "train.train_steps"),
        (["train.micro_batch_size=0"], "train.micro_batch_size"),
        (["train.keep_last=-1"], "train.keep_last"),
        (["train.spike_factor=0.5"], "train.spike_factor"),
        (["train.skip_batches=3"], "train.skip_batches"),
        (["train.resume_step=-1"], "train.resume_step"),
        (["train.resume_step=90", "train.skip_batches=20", "train.train_steps=100"], "train.skip_batches"),
    ],
)
def test_impossible_values_fail_naming_the_key(tmp_path, overrides, key):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3e-4\n")
    with pytest.raises(ValueError, match=rf"run.yaml: {key}"):
        load_config(str(path), overrides)


def test_the_possible_edges_pass():
    cfg = load_config(
        None,
        [
            "optim.min_lr=3e-4",
            "optim.betas=[0.0, 0.999]",
            "optim.weight_decay=0",
            "optim.clip_grad=0",
            "optim.warmup_steps=1000",
            "train.train_steps=1000",
            "train.spike_factor=0",
            "train.keep_last=null",
            "train.resume_step=0",
            "train.skip_batches=2",
        ],
    )
    assert cfg.optim.min_lr == cfg.optim.lr and cfg.train.skip_batches == 2
