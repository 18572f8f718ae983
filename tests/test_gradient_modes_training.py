"""The trainer under each gradient mode (optim.fp32_grad_accumulation, optim.shard_gradients): the same
losses as the reference path, in one process (tests/test_zero.py holds the modes against each other on two ranks)."""

import pytest

from training_fixtures import make_training_data, training_overrides

MODES = {
    "reference": ["optim.fp32_grad_accumulation=false"],
    "fp32_accumulation": [],
    "shard_gradients": ["optim.shard_gradients=true"],
}


def test_every_gradient_mode_trains_like_the_reference_path(tmp_path):
    from megasci.training.config import load_config
    from megasci.training.trainer import pretrain

    data = make_training_data(str(tmp_path / "data"), papers=30)
    losses = {}
    for mode, extra in MODES.items():
        overrides = training_overrides(
            data, str(tmp_path / mode), **{"train.train_steps": 4, "train.eval_interval": 0, "train.save_interval": 0}
        )
        overrides = [o for o in overrides if not o.startswith("data.curriculum")] + [
            f"data.blend=[1, {data['prefix']}]"
        ]
        losses[mode] = pretrain(load_config(None, overrides + extra)).losses
    assert len(losses["reference"]) == 4
    assert losses["reference"][4] < losses["reference"][1]  # it trains, so later losses depend on the updates
    for mode in ("fp32_accumulation", "shard_gradients"):
        assert losses[mode] == pytest.approx(losses["reference"], abs=1e-5), mode
