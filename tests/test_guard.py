"""The spike guard: which steps it skips, when it gives up, and its state across a resume."""

import pytest

from megasci.training.guard import SpikeGuard, TrainingDiverged


def test_spike_guard_without_warm_up_acts_from_the_second_step():
    guard = SpikeGuard(factor=2.0, warmup=0, max_skipped=2)
    assert guard.check(0, 4.0, 1.0) is None
    assert guard.check(1, 9.0, 1.0) is not None


def test_spike_guard():
    guard = SpikeGuard(factor=2.0, warmup=3, max_skipped=2, decay=0.5)
    assert [guard.check(s, 4.0, 1.0) for s in range(3)] == [None] * 3
    assert guard.check(3, 7.9, 1.0) is None  # below 2 x mean 4.0
    assert "above 2 x the running mean" in guard.check(4, 20.0, 1.0)
    assert "non-finite" in guard.check(5, float("nan"), 1.0)
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        guard.check(6, 5.0, float("inf"))
    restored = SpikeGuard(2.0, 3, 2, 0.5)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()
