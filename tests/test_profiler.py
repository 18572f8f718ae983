"""train.profile_steps: a Chrome-format trace of exactly the chosen steps (training/profiler.py), from the
component and from a real training run on the CPU."""

import json
import os

import pytest
import torch

from megasci.training.profiler import StepProfiler
from training_fixtures import make_training_data, training_overrides


def step_ranges(trace_path):
    with open(trace_path) as f:
        trace = json.load(f)
    return {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("step ")}


def test_only_the_chosen_steps_are_traced(tmp_path):
    profiler = StepProfiler((2, 3), str(tmp_path), torch.device("cpu"), rank=1)
    x = torch.randn(64, 64)
    for number in range(1, 6):
        with profiler.step(number):
            x = torch.tanh(x @ x)
    assert profiler.written == [str(tmp_path / "trace_rank00001_steps2-3.json")]
    assert step_ranges(profiler.written[0]) == {"step 2", "step 3"}
    with open(profiler.written[0]) as f:
        assert any(e.get("name") == "aten::mm" for e in json.load(f)["traceEvents"])


def test_no_steps_no_files(tmp_path):
    profiler = StepProfiler(None, str(tmp_path / "profile"), torch.device("cpu"), rank=0)
    for number in range(1, 4):
        with profiler.step(number):
            torch.ones(2).sum()
    assert profiler.written == [] and not os.path.exists(tmp_path / "profile")


def test_bad_ranges_are_refused(tmp_path):
    for steps in ((3, 2), (0, 1)):
        with pytest.raises(ValueError, match="profile_steps"):
            StepProfiler(steps, str(tmp_path), torch.device("cpu"), rank=0)


def test_a_training_run_writes_the_trace_of_its_steps(tmp_path):
    from megasci.training.config import load_config
    from megasci.training.trainer import pretrain

    data = make_training_data(str(tmp_path / "data"), papers=30)
    save_dir = tmp_path / "run"
    overrides = training_overrides(
        data,
        str(save_dir),
        **{"train.train_steps": 3, "train.eval_interval": 0, "train.save_interval": 0, "train.profile_steps": "[2, 3]"},
    )
    cfg = load_config(
        None, [o for o in overrides if not o.startswith("data.curriculum")] + [f"data.blend=[1, {data['prefix']}]"]
    )
    assert cfg.train.profile_steps == (2, 3)
    pretrain(cfg)
    trace = save_dir / "profile" / "trace_rank00000_steps2-3.json"
    assert step_ranges(trace) == {"step 2", "step 3"}
