"""Divergence is recoverable: with an absurd learning rate no checkpoint takes the wrecked weights,
the last good one survives keep_last, and the rollback the error prints (train.resume_step,
train.skip_batches) with a sane learning rate trains on. Plus the pieces: the guard's warm-up
ceiling, the checkpoint refusal, keep_last's pin, and the rollback's set-aside and idempotency."""

import os

import pytest
import torch

from checkpoint_fixtures import guard_of, make_checkpointer, save_at
from megasci.distributed import AdamWConfig, ZeroAdamW
from megasci.model import build_model, get_config
from megasci.training import checkpoint as ckpt
from megasci.training.config import load_config
from megasci.training.guard import SpikeGuard, TrainingDiverged
from megasci.training.train_step import TrainStep
from megasci.training.trainer import pretrain
from training_fixtures import make_training_data, training_overrides


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_training_data(str(tmp_path_factory.mktemp("diverge") / "data"))


def _config(data, save_dir, **extra):
    overrides = training_overrides(
        data,
        save_dir,
        **{"train.train_steps": 12, "train.eval_interval": 0, "train.log_interval": 1, "train.keep_last": 1, **extra},
    )
    return load_config(
        None, [o for o in overrides if not o.startswith("data.curriculum")] + [f"data.blend=[1, {data['prefix']}]"]
    )


def _weights(path):
    return torch.load(os.path.join(path, ckpt.MODEL_NAME), weights_only=True)


def test_an_absurd_learning_rate_never_reaches_a_checkpoint_and_the_rollback_trains_on(data, tmp_path, capsys):
    save_dir = str(tmp_path / "run")
    pretrain(_config(data, save_dir, **{"train.save_interval": 2, "train.exit_interval": 4}))
    good = os.path.join(save_dir, "step_00000004")
    assert [os.path.basename(p) for p in ckpt.complete_checkpoints(save_dir)] == ["step_00000004"]
    good_weights = _weights(good)

    # lr 5 (weight decay 0.1: 0.5 per step) wrecks the weights in one update; a save every step
    with pytest.raises(TrainingDiverged) as diverged:
        pretrain(_config(data, save_dir, **{"optim.lr": 5.0, "optim.min_lr": 0.0, "train.save_interval": 1}))
    out = capsys.readouterr().out
    assert "step 5: no checkpoint written: the updated weights fail the spike guard" in out  # the probe
    assert "step 6: no checkpoint written: the spike guard skipped" in out
    assert [os.path.basename(p) for p in ckpt.complete_checkpoints(save_dir)] == ["step_00000004"]  # kept
    assert ckpt.latest_checkpoint(save_dir) == good
    after = _weights(good)
    assert all(torch.equal(after[k], good_weights[k]) and torch.isfinite(after[k]).all() for k in after)
    message = str(diverged.value)
    assert "steps in a row skipped" in message and f"the last good checkpoint is {good}" in message
    rollback = diverged.value.rollback
    assert rollback[0] == "train.resume_step=4" and rollback[1].startswith("train.skip_batches=")
    skip = int(rollback[1].split("=")[1])
    assert 4 + skip <= 12 and " ".join(rollback) in message

    # the advice, with a sane learning rate: continues after the skipped batches, to the end
    overrides = {"optim.lr": 3e-3, "train.save_interval": 2, **dict(o.split("=") for o in rollback)}
    summary = pretrain(_config(data, save_dir, **overrides))
    assert summary.start_step == 4 + skip and summary.end_step == 12 and not summary.skipped
    assert all(loss < 7 for loss in summary.losses.values())
    meta = ckpt.read_meta(save_dir)
    assert meta["step"] == 12 and meta["data"]["consumed_samples"] == 12 * 8
    assert meta["rollback"] == {"to_step": 4, "skip_batches": skip, "abandoned": []}
    final = _weights(ckpt.latest_checkpoint(save_dir))
    assert all(torch.isfinite(v).all() for v in final.values())


def test_the_guard_warm_up_still_stops_a_wrecked_model():
    guard = SpikeGuard(factor=3.0, warmup=20, max_skipped=5)
    assert guard.check(0, 6.2, 1.0) is None and guard.check(1, 9.0, 1.0) is None  # early rises are fine
    assert "highest accepted loss 9.0000" in guard.check(2, 123.0, 1.0)
    state = guard.state_dict()
    assert state["peak"] == 9.0
    assert guard.verdict(5.0) is None and guard.state_dict() == state  # verdict changes nothing


class _Tokenizer:
    """A tokenizer with no file to copy (the checkpoint records its identity only)."""

    def files(self):
        return {}

    def identity(self):
        return {"kind": "test", "sha256": "ab" * 32, "vocab_size": 256}


def _checkpointer(save_dir, keep_last=None):
    cfg = get_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = ZeroAdamW(model, AdamWConfig(lr=1e-2), bucket_numel=5000)
    return make_checkpointer(
        save_dir,
        model=model,
        optimizer=optimizer,
        guard=SpikeGuard(3.0, 0, 5),
        tokenizer=_Tokenizer(),
        model_cfg=cfg,
        keep_last=keep_last,
    )


def test_no_checkpoint_of_non_finite_weights_or_during_a_skip_streak(tmp_path):
    saver = _checkpointer(tmp_path)
    guard = guard_of(saver)
    step = TrainStep(
        saver.model,
        saver.components["optimizer"].optimizer,
        guard,
        accumulation=1,
        device=torch.device("cpu"),
        world_size=1,
        timing_sync=False,
        data_wait=lambda: 0.0,
    )
    guard.check(0, 4.0, 1.0)
    assert step.unsafe_to_save(lambda: 4.1) is None
    assert "fail the spike guard" in step.unsafe_to_save(lambda: float("nan"))
    assert "fail the spike guard" in step.unsafe_to_save(lambda: 40.0)
    with torch.no_grad():
        next(saver.model.parameters())[0] = float("inf")
    assert "non-finite" in step.unsafe_to_save(lambda: 4.1)
    guard.check(1, float("nan"), 1.0)
    assert "skipped the last 1 step(s)" in step.unsafe_to_save(lambda: 4.1)


def test_keep_last_never_prunes_the_last_checkpoint_before_skipped_steps(tmp_path):
    saver = _checkpointer(tmp_path, keep_last=1)
    guard_of(saver).check(0, 4.0, 1.0)
    save_at(saver, 2, 16)
    guard_of(saver).check(1, float("nan"), 1.0)  # a skip streak after step 2, then recovery
    guard_of(saver).check(2, 4.0, 1.0)
    save_at(saver, 4, 32)
    save_at(saver, 6, 48)
    names = [os.path.basename(p) for p in ckpt.complete_checkpoints(str(tmp_path))]
    assert names == ["step_00000002", "step_00000006"]  # 4 pruned by keep_last=1; 2 pinned
    assert ckpt.read_meta(str(tmp_path))["pinned"] == "step_00000002"
    resumed = _checkpointer(tmp_path, keep_last=1)  # the pin survives a resume
    resumed.load(ckpt.latest_checkpoint(str(tmp_path)))
    save_at(resumed, 8, 64)
    assert [os.path.basename(p) for p in ckpt.complete_checkpoints(str(tmp_path))] == ["step_00000002", "step_00000008"]


def test_a_rollback_sets_newer_checkpoints_aside_and_its_command_can_be_rerun(tmp_path, capsys):
    saver = _checkpointer(tmp_path)
    for step in (2, 4, 6):
        save_at(saver, step, step * 8)
    start = ckpt.choose_start(str(tmp_path), rank=0, world_size=1, global_batch_size=8, resume_step=2, skip_batches=3)
    assert (start.path, start.step, start.consumed_samples) == (os.path.join(tmp_path, "step_00000002"), 5, 40)
    assert start.rollback == {"to_step": 2, "skip_batches": 3, "abandoned": ["step_00000004", "step_00000006"]}
    assert sorted(os.listdir(tmp_path)) == [
        "latest",
        "step_00000002",
        "step_00000004.rolled-back",
        "step_00000006.rolled-back",
    ]
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_00000002")
    resumed = _checkpointer(tmp_path)
    resumed.load(start)
    save_at(resumed, 7, 56)  # the new line's checkpoint records the rollback it descends from
    again = ckpt.choose_start(str(tmp_path), rank=0, world_size=1, global_batch_size=8, resume_step=2, skip_batches=3)
    assert again.path.endswith("step_00000007") and again.step == 7 and again.consumed_samples == 56
    assert "was done by an earlier run" in capsys.readouterr().out
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"train.resume_step=3: .*step_00000003 is not a complete "
        r"checkpoint \(checkpoints in .*: 2, 7\)",
    ):
        ckpt.choose_start(str(tmp_path), rank=0, world_size=1, global_batch_size=8, resume_step=3)
