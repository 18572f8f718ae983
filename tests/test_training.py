"""The training loop end to end on CPU (gloo, 2 processes): exact resume, re-sharded resume,
SIGTERM, hard kills, TensorBoard scalars; plus config and schedule units (the checkpoint files and
the spike guard have test_checkpoint.py and test_guard.py)."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from megasci.model import get_config
from megasci.training import checkpoint as ckpt
from megasci.training.config import load_config
from megasci.training.metrics import read_metrics
from megasci.training.schedule import learning_rate
from training_fixtures import REPO, make_training_data, pretrain_killed_after_save, run_pretrain, training_overrides


def metrics(save_dir):
    return read_metrics(os.path.join(save_dir, "tensorboard"))


def final_params(save_dir):
    return torch.load(os.path.join(ckpt.latest_checkpoint(save_dir), ckpt.MODEL_NAME), weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """8 steps straight; 4 steps, exit, resume to 8 (same 2 ranks); and a 1-rank resume of the 4-step checkpoint."""
    root = tmp_path_factory.mktemp("train")
    data = make_training_data(str(root / "data"))
    straight = str(root / "straight")
    run_pretrain(2, training_overrides(data, straight))
    resumed = str(root / "resumed")
    first = run_pretrain(2, training_overrides(data, resumed, **{"train.exit_interval": 4}))
    one_rank = str(root / "one_rank")
    shutil.copytree(resumed, one_rank)
    second = run_pretrain(2, training_overrides(data, resumed, **{"train.exit_interval": 4}))
    third = run_pretrain(1, training_overrides(data, one_rank))
    return {
        "data": data,
        "root": root,
        "straight": straight,
        "resumed": resumed,
        "one_rank": one_rank,
        "logs": [first.stdout, second.stdout, third.stdout],
    }


def test_loss_falls_and_validation_improves(runs):
    rows = metrics(runs["straight"])
    assert rows[8]["train/loss"] < rows[1]["train/loss"] - 0.3
    assert rows[8]["val/loss/all"] < rows[0]["val/loss/all"]
    assert rows[0]["val/ppl/all"] == pytest.approx(math.exp(rows[0]["val/loss/all"]))


def test_two_n_steps_equal_n_steps_exit_and_resume(runs):
    first, second, _ = runs["logs"]
    assert "stopping at step 4" in first and "resumed from" in second and "step 4" in second
    straight, resumed = metrics(runs["straight"]), metrics(runs["resumed"])
    for step in range(1, 9):
        assert resumed[step]["train/loss"] == straight[step]["train/loss"], step
        assert resumed[step]["train/grad_norm"] == straight[step]["train/grad_norm"], step
    a, b = final_params(runs["straight"]), final_params(runs["resumed"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.read_meta(runs["resumed"])["data"]["consumed_samples"] == 64


def test_hard_kill_then_resume_equals_an_uninterrupted_run(runs, tmp_path):
    """SIGKILL to torchrun and its workers right after the step-4 checkpoint (no chance to
    save again), then the same command resumes: steps 1-8 equal an uninterrupted run's, bit for bit.
    Both runs belong to one 200-step job (decay_steps fixed), stopped at step 8 by exit_interval."""
    job = {"train.train_steps": 200, "optim.decay_steps": 6, "train.eval_interval": 0, "train.log_interval": 1}
    straight = str(tmp_path / "straight")
    run_pretrain(2, training_overrides(runs["data"], straight, **job, **{"train.exit_interval": 8}))
    killed = str(tmp_path / "killed")
    overrides = training_overrides(runs["data"], killed, **job, **{"train.save_interval": 4})
    pretrain_killed_after_save(2, overrides, step=4)
    time.sleep(1)  # nothing may still be writing: the checkpoint must stay at step 4
    assert ckpt.read_meta(killed)["step"] == 4 and ckpt.complete_checkpoints(killed)[-1].endswith("step_00000004")
    resumed = run_pretrain(2, overrides + ["train.exit_interval=8"])
    assert "resumed from" in resumed.stdout
    a, b = metrics(straight), metrics(killed)
    for step in range(1, 9):
        assert b[step]["train/loss"] == a[step]["train/loss"], step
    assert all(torch.equal(x, y) for x, y in zip(final_params(straight).values(), final_params(killed).values()))


def test_resume_on_a_different_number_of_ranks_reshards(runs):
    """The 2-rank checkpoint at step 4, resumed by 1 rank: same trajectory up to float32 summation order."""
    log = runs["logs"][2]
    assert "saved with 2 rank(s), now 1" in log
    straight, one_rank = metrics(runs["straight"]), metrics(runs["one_rank"])
    for step in range(5, 9):
        assert one_rank[step]["train/loss"] == pytest.approx(straight[step]["train/loss"], abs=1e-4), step
    a, b = final_params(runs["straight"]), final_params(runs["one_rank"])
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


def test_tensorboard_event_files_hold_the_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(runs["straight"], "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    wanted = {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/skipped_steps",
        "val/loss/all",
        "val/ppl/all",
        "perf/tokens_per_s",
        "perf/tflops_per_device",
        "perf/mfu",
        "time/step_s",
        "time/data_wait_s",
        "time/forward_backward_s",
        "time/optimizer_comm_s",
        "data/stage",
        "data/consumed_samples",
    }
    assert wanted <= tags, wanted - tags
    assert any(t.startswith("val/ppl/arxiv_text_document[section=") for t in tags)
    assert {t for t in tags if t.startswith("data/samples/")} == {
        "data/samples/arxiv_text_document",
        "data/samples/arxiv_text_document[section=abstract,conclusion,introduction]",
    }
    stages = {e.step: e.value for e in events.Scalars("data/stage")}
    assert stages[4] == 0 and stages[8] == 1  # the curriculum switched at sample 32 = step 4
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs[0] == pytest.approx(1.5e-3) and lrs[1] == pytest.approx(3e-3)


def test_checkpoint_layout_and_keep_last(runs):
    save_dir = runs["straight"]
    assert [os.path.basename(p) for p in ckpt.complete_checkpoints(save_dir)] == ["step_00000004", "step_00000008"]
    path = ckpt.latest_checkpoint(save_dir)
    files = set(os.listdir(path))
    assert {"meta.json", "model.pt", "config.yaml", "tokenizer.model", "rank_00000.pt", "rank_00001.pt"} <= files
    meta = ckpt.read_meta(save_dir)
    assert meta["step"] == 8 and meta["dp_size"] == 2 and meta["data"]["stage"] == "all"
    assert meta["tokenizer"]["vocab_size"] == runs["data"]["vocab_size"]
    assert load_config(os.path.join(path, "config.yaml")).train.train_steps == 8
    model, _ = ckpt.load_model(save_dir)
    assert model.cfg.vocab_size == runs["data"]["vocab_size"]


def test_sigterm_saves_and_the_run_resumes(runs, tmp_path):
    save_dir = str(tmp_path / "sigterm")
    overrides = training_overrides(
        runs["data"],
        save_dir,
        **{"train.train_steps": 2000, "train.save_interval": 0, "train.eval_interval": 0, "train.log_interval": 1},
    )
    cmd = [sys.executable, os.path.join(REPO, "tools", "pretrain.py"), *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 0, out
    assert "stopping at step" in out and "(SIGTERM)" in out
    step = ckpt.read_meta(save_dir)["step"]
    assert 3 <= step < 2000
    resumed = run_pretrain(
        1,
        overrides[:-4]
        + [
            "train.train_steps=" + str(step + 2),
            "train.save_interval=0",
            "train.eval_interval=0",
            "train.log_interval=1",
        ],
    )
    assert f"step {step}" in resumed.stdout and ckpt.read_meta(save_dir)["step"] == step + 2


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\n  warmup: 10\n")
    with pytest.raises(ValueError, match=r"c.yaml.*optim.warmup"):
        load_config(str(path))
    path.write_text("optim:\n  lr: 3e-4\n")
    cfg = load_config(str(path), ["train.train_steps=7", "optim.warmup_steps=2", "train.activation_checkpointing=full"])
    assert cfg.optim.lr == 3e-4 and cfg.train.train_steps == 7 and cfg.train.activation_checkpointing == "full"
    with pytest.raises(ValueError, match="train.activation_checkpointing: expected one of none, full, selective"):
        load_config(None, ["train.activation_checkpointing=some", "optim.warmup_steps=2"])


def test_an_old_config_with_checkpointing_in_the_model_still_loads(tmp_path, capsys):
    """Activation checkpointing is training policy now; a config from before reads as such, with a note,
    and a checkpoint whose model config recorded it still loads."""
    cfg = load_config(None, ["model.overrides={checkpointing: selective}", "optim.warmup_steps=2"])
    assert cfg.train.activation_checkpointing == "selective" and "checkpointing" not in cfg.model.overrides
    assert "read as train.activation_checkpointing: selective" in capsys.readouterr().out
    with pytest.raises(ValueError, match="disagree"):
        load_config(
            None,
            ["model.overrides={checkpointing: full}", "train.activation_checkpointing=none", "optim.warmup_steps=2"],
        )
    old = {"model_config": {**dataclasses.asdict(get_config("tiny")), "checkpointing": "full"}}
    assert ckpt.model_config_from_meta(old) == get_config("tiny")
    with pytest.raises(ValueError, match="train.train_steps: expected an integer"):
        load_config(None, ["train.train_steps=seven"])
    assert load_config(None, []).to_yaml() == load_config(None, []).to_yaml()
    cfg2 = load_config(None, ["optim.bucket_numel=4e7", "train.keep_last=null", "model.overrides={rope_theta: 5e5}"])
    assert cfg2.optim.bucket_numel == 40_000_000 and cfg2.train.keep_last is None
    assert cfg2.model.build().rope_theta == 500_000.0
    for bad, message in (
        (["optim.lr=.nan"], "finite"),
        (["model.overrides={rope_thetaa: 1}"], "rope_thetaa"),
        (["optim.bucket_numel=4.5"], "integer"),
    ):
        with pytest.raises(ValueError, match=message):
            load_config(None, bad)
    round_trip = tmp_path / "r.yaml"
    round_trip.write_text(cfg.to_yaml())
    assert load_config(str(round_trip)) == cfg


def test_learning_rate_schedule_by_hand():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, decay_steps=10)
    assert [learning_rate(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(4, **kw) == pytest.approx(1.0)
    assert learning_rate(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert learning_rate(14, **kw) == pytest.approx(0.1)
    assert learning_rate(100, **kw) == pytest.approx(0.1)


def test_wsd_schedule_by_hand():
    """warmup 2, window 10, decay fraction 0.3: lr held for steps 2..8, then linear over 3 steps."""
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=2, decay_steps=10, schedule="wsd", decay_fraction=0.3)
    got = [learning_rate(s, **kw) for s in range(14)]
    expected = [0.5, 1.0] + [1.0] * 7 + [1.0, 1.0 - 0.9 / 3, 1.0 - 0.9 * 2 / 3, 0.1, 0.1]
    assert got == pytest.approx(expected, abs=1e-12)
    # extending a WSD run: the stable phase of a longer window is the same lr at every shared step
    longer = dict(kw, decay_steps=20)
    assert [learning_rate(s, **longer) for s in range(9)] == got[:9]
    assert learning_rate(5, **dict(kw, decay_fraction=0.0)) == 1.0
    assert learning_rate(12, **dict(kw, decay_fraction=0.0)) == 0.1
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, 1.0, 0.1, 0, 10, schedule="linear")


@pytest.mark.parametrize("count_scored_tokens", [False, True], ids=["all-scored", "scored-tokens"])
def test_z_loss_reaches_the_step_by_hand(count_scored_tokens):
    """optim.z_loss as the trainer passes it: the step's loss is CE + z * mean(logsumexp(logits)^2)."""
    from megasci.distributed import AdamWConfig, ZeroAdamW
    from megasci.model import build_model, get_config
    from megasci.training.guard import SpikeGuard
    from megasci.training.train_step import TrainStep, check_loss_options

    cfg, z = get_config("tiny"), 0.05
    check_loss_options({"z_loss": z})
    g = torch.Generator().manual_seed(4)
    data = torch.randint(0, cfg.vocab_size, (4, 17), generator=g)
    tokens, labels = data[:, :-1], data[:, 1:].clone()
    if count_scored_tokens:
        labels[0, :5] = -100
    torch.manual_seed(0)
    model = build_model(cfg, dtype=torch.float64)
    optimizer = ZeroAdamW(model, AdamWConfig(lr=0.0, weight_decay=0.0, max_grad_norm=None), bucket_numel=1 << 30)
    step = TrainStep(
        model,
        optimizer,
        SpikeGuard(0.0, 0, 5),
        accumulation=2,
        device=torch.device("cpu"),
        world_size=1,
        timing_sync=False,
        data_wait=lambda: 0.0,
        count_scored_tokens=count_scored_tokens,
        loss_options={"z_loss": z},
    )
    with torch.no_grad():
        logits = model(tokens)
    keep = labels != -100
    lse = logits[keep].logsumexp(-1)
    ce = (lse - logits[keep].gather(-1, labels[keep][:, None])[:, 0]).mean()
    expected = float(ce + z * (lse**2).mean())
    result = step(iter([{"tokens": tokens[i : i + 2], "labels": labels[i : i + 2]} for i in (0, 2)]), 0, lr=0.0)
    # the mean of micro-batch means is summed in float32 (as it always was); the scored-token path in float64
    assert result.loss == pytest.approx(expected, rel=1e-10 if count_scored_tokens else 1e-6)
    with pytest.raises(ValueError, match="no bogus"):
        check_loss_options({"bogus": 1.0})


def test_schedule_and_z_loss_fields_are_checked(tmp_path):
    assert load_config(None, ["optim.schedule=wsd", "optim.decay_fraction=0.2"]).optim.schedule == "wsd"
    for bad, match in (
        ("optim.schedule=linear", "optim.schedule"),
        ("optim.decay_fraction=1.5", "decay_fraction"),
        ("optim.z_loss=-1", "z_loss"),
    ):
        with pytest.raises(ValueError, match=match):
            load_config(None, [bad])


def test_compiled_blocks_train_like_eager(runs, tmp_path):
    """train.compile: the blocks under torch.compile (aot_eager: the compiler front end, no C++ build)
    give the eager run's losses, in one process."""
    from megasci.training.config import load_config as load
    from megasci.training.trainer import pretrain

    losses = {}
    for backend in (None, "aot_eager"):
        overrides = training_overrides(
            runs["data"],
            str(tmp_path / str(backend)),
            **{
                "train.train_steps": 3,
                "train.eval_interval": 0,
                "train.save_interval": 0,
                "train.compile": "null" if backend is None else backend,
            },
        )
        losses[backend] = pretrain(
            load(
                None,
                [o for o in overrides if not o.startswith("data.curriculum")]
                + [f"data.blend=[1, {runs['data']['prefix']}]"],
            )
        ).losses
    assert losses["aot_eager"] == pytest.approx(losses[None], abs=1e-5)
    assert len(losses[None]) == 3


def test_training_refuses_data_written_with_another_tokenizer(runs, tmp_path):
    """The preprocessing report records the tokenizer; training with a different one stops at once."""
    from megasci.training.config import load_config as load
    from megasci.training.trainer import pretrain

    prefix = runs["data"]["prefix"]
    report = prefix[: -len("_text_document")] + "_preprocess.json"
    with open(report, "w") as f:
        json.dump(
            {
                "config": {},
                "summary": {"outputs": {"text": prefix}},
                "tokenizer": {"sha256": "0" * 64, "vocab_size": 512},
            },
            f,
        )
    try:
        overrides = training_overrides(runs["data"], str(tmp_path / "run"))
        with pytest.raises(ValueError, match="not the tokenizer the data was written with"):
            pretrain(load(None, overrides))
    finally:
        os.remove(report)
