"""training/metrics.py: the interval report's scalars and console line, computed by hand."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from megasci.training.metrics import MetricsLog, TrainingMetrics, read_metrics
from megasci.training.train_step import StepResult


def fake_data():
    """Two sources, two stages; global samples 0-7 are stage 0, from sources 0,1,0,1,..."""
    return SimpleNamespace(
        sources=[SimpleNamespace(name="prose"), SimpleNamespace(name="full")],
        stages=[SimpleNamespace(name="warm"), SimpleNamespace(name="main")],
        stage_of=lambda i: 0 if i < 8 else 1,
        source_index=np.array([0, 1] * 8),
    )


def test_interval_report_by_hand(tmp_path, capsys):
    log = MetricsLog(str(tmp_path), active=True)
    metrics = TrainingMetrics(
        log,
        fake_data(),
        train_steps=10,
        global_batch_size=4,
        seq_length=8,
        flops_per_token=1_000_000,
        world_size=2,
        peak_tflops=1e-4,
        device=torch.device("cpu"),
        rank0=True,
    )
    metrics.start()
    for step, (loss, seconds) in enumerate([(3.0, 0.5), (2.0, 1.5)], start=1):
        metrics.step(
            step,
            StepResult(
                loss=loss,
                grad_norm=0.5,
                skipped=None,
                seconds=seconds,
                data_wait_s=0.1,
                forward_backward_s=seconds - 0.3,
                optimizer_s=0.2,
            ),
            lr=1e-3,
            total_skipped=0,
        )
    line = metrics.report(2, consumed=10, lr=1e-3, grad_norm=0.5, total_skipped=1)
    log.close()
    tokens_per_s = 2 * 4 * 8 / 2.0  # 2 steps of 4 samples of 8 tokens in 2 s
    tflops = tokens_per_s * 1e6 / 2 / 1e12
    assert line == (
        f"step 2/10 | loss 2.5000 | lr 0.001 | grad norm 0.500 | 32 tok/s | {tflops:.3g} TFLOP/s/device "
        f"{100 * tflops / 1e-4:.1f}% MFU | step 1.000s (data 0.100, fwd+bwd 0.700, opt+comm 0.200) | "
        f"stage main | seq 8 | skipped 1"
    )
    assert capsys.readouterr().out == line + "\n"
    rows = read_metrics(str(tmp_path))
    assert rows[1]["train/loss"] == 3.0 and rows[2]["train/loss"] == 2.0 and rows[2]["train/lr"] == 1e-3
    assert rows[2]["perf/tokens_per_s"] == pytest.approx(tokens_per_s)
    assert rows[2]["perf/mfu"] == pytest.approx(tflops / 1e-4)
    assert rows[2]["data/stage"] == 1 and rows[2]["data/consumed_samples"] == 10
    assert (rows[2]["data/samples/prose"], rows[2]["data/samples/full"]) == (5, 5)
    assert rows[2]["time/forward_backward_s"] == pytest.approx(0.7)
    metrics.step(3, StepResult(3.0, 0.5, None, 4.0, 0.0, 3.0, 1.0), lr=1e-3, total_skipped=0)
    assert metrics.interval["steps"] == 1 and metrics.interval["time"] == 4.0  # a new interval
