"""The C++ blending-index builders against slow pure-Python references, and the prefix bounds.

Prefix bound. Let S' be the number of sources with positive weight and dev_s(n) = count_s(n) - w_s * n
after n samples. Over-allocation (proved): before a pick the errors w_s * (n + 1) - count_s(n) of
the positive-weight sources sum to 1, so the winner's is at least 1/S' and after the pick
dev_s <= 1 - 1/S'; a source that is not picked only falls further behind. Under-allocation is not
bounded by 1 once S' >= 4: the devs sum to 0, which proves -dev_s <= (S' - 1)(1 - 1/S') (= 1/2 for
two sources), and the tests assert the tighter H_S' - 1 = 1/2 + ... + 1/S' (under 1 for S' <= 3).
That one is observed, not proved here: random searches with N = 3000 to 4000 reach 0.83, 1.05, 1.16,
1.24 and 1.30 for S' = 3, 4, 5, 6 and 8 against 0.83, 1.08, 1.28, 1.45 and 1.72. This greedy rule
is the online greedy of the chairman assignment problem (Coppersmith et al., ACM TALG 7(3), 2011).
"""

import numpy as np
import pytest

from megasci.data.helpers import build_blending_indices, build_curriculum_blending_indices


def normalise(weights):
    """Left-to-right sum, as the C++ does, so the normalised doubles are identical."""
    total = 0.0
    for w in weights:
        total += w
    return [w / total for w in weights]


def reference_greedy(weights, length, global_counts):
    """Megatron's rule one sample at a time: argmax_s w_s * (j + 1) - count_s, ties to the lowest s."""
    counts = [0] * len(weights)
    sources, samples = [], []
    for j in range(length):
        errors = [w * (j + 1) - c for w, c in zip(weights, counts)]
        best = errors.index(max(errors))
        counts[best] += 1
        sources.append(best)
        samples.append(global_counts[best])
        global_counts[best] += 1
    return sources, samples


def reference_blending(weights, num_samples):
    sources, samples = reference_greedy(normalise([float(w) for w in weights]), num_samples, [0] * len(weights))
    return np.array(sources, np.int16), np.array(samples, np.int64)


def reference_curriculum(stage_ends, stage_weights):
    global_counts = [0] * len(stage_weights[0])
    sources, samples, stages, start = [], [], [], 0
    for k, (end, weights) in enumerate(zip(stage_ends, stage_weights)):
        s, n = reference_greedy(normalise([float(w) for w in weights]), int(end) - start, global_counts)
        sources += s
        samples += n
        stages += [k] * (int(end) - start)
        start = int(end)
    return np.array(sources, np.int16), np.array(samples, np.int64), np.array(stages, np.int16)


def random_weights(rng, num_sources):
    """Mixed scales, exact ties and zeros, with at least one positive weight."""
    kind = rng.integers(3)
    if kind == 0:
        weights = rng.random(num_sources)
    elif kind == 1:
        weights = rng.random(num_sources) ** 6
    else:
        weights = rng.integers(1, 4, num_sources).astype(float)  # small integers: many exact ties
    weights[rng.random(num_sources) < 0.3] = 0.0
    if not weights.any():
        weights[rng.integers(num_sources)] = 1.0
    return weights


def prefix_deviation(source_index, weights):
    """dev[n - 1, s] = count_s(n) - w_s * n for every prefix length n."""
    weights = np.asarray(normalise([float(w) for w in weights]))
    counts = np.cumsum(source_index[:, None] == np.arange(len(weights)), axis=0)
    return counts - weights * np.arange(1, len(source_index) + 1)[:, None]


def assert_prefix_bounds(source_index, weights):
    positive = int(np.count_nonzero(weights))
    dev = prefix_deviation(source_index, weights)
    slack = 1e-9
    assert dev.max(initial=0) <= 1 - 1 / positive + slack
    assert -dev.min(initial=0) <= sum(1 / k for k in range(2, positive + 1)) + slack
    if positive <= 3:
        assert np.abs(dev).max(initial=0) <= 1 + slack


@pytest.mark.parametrize("seed", range(40))
def test_blending_matches_reference(seed):
    rng = np.random.default_rng(seed)
    weights = random_weights(rng, int(rng.integers(1, 9)))
    num_samples = int(rng.integers(0, 3000))
    got_sources, got_samples = build_blending_indices(weights, num_samples)
    want_sources, want_samples = reference_blending(weights, num_samples)
    assert got_sources.dtype == np.int16 and got_samples.dtype == np.int64
    np.testing.assert_array_equal(got_sources, want_sources)
    np.testing.assert_array_equal(got_samples, want_samples)
    assert not np.isin(got_sources, np.flatnonzero(weights == 0)).any()
    assert_prefix_bounds(got_sources, weights)


def test_source_sample_index_counts_each_source_from_zero():
    sources, samples = build_blending_indices([0.5, 0.3, 0.2], 1000)
    for s in range(3):
        np.testing.assert_array_equal(samples[sources == s], np.arange(np.count_nonzero(sources == s)))


def test_known_sequence_and_ties_go_to_the_lowest_source():
    sources, samples = build_blending_indices([0.5, 0.3, 0.2], 10)
    assert sources.tolist() == [0, 1, 2, 0, 0, 1, 0, 2, 1, 0]
    assert samples.tolist() == [0, 0, 0, 1, 2, 1, 3, 1, 2, 4]
    assert build_blending_indices([1, 1, 1], 6)[0].tolist() == [0, 1, 2, 0, 1, 2]


def test_weights_are_normalised():
    np.testing.assert_array_equal(build_blending_indices([2, 6], 50)[0], build_blending_indices([0.25, 0.75], 50)[0])


@pytest.mark.parametrize("num_sources", [2, 3, 4, 8])
def test_prefix_bounds_on_many_weights(num_sources):
    rng = np.random.default_rng(num_sources)
    for _ in range(50):
        weights = random_weights(rng, num_sources)
        assert_prefix_bounds(build_blending_indices(weights, 5000)[0], weights)


def test_two_and_three_sources_stay_within_one_sample_at_scale():
    for weights in ([0.7, 0.3], [0.6, 0.3, 0.1], [1e-6, 1, 1], [0.5, 0.25, 0.25]):
        dev = prefix_deviation(build_blending_indices(weights, 200_000)[0], weights)
        assert np.abs(dev).max() <= 1


def test_under_allocation_can_exceed_one_with_many_sources():
    """Why the bound above is H_S' - 1 and not 1: a case with four sources, found by random search."""
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(400):
        weights = rng.random(4) ** 8
        worst = max(worst, -prefix_deviation(build_blending_indices(weights, 4000)[0], weights).min())
    assert 1 < worst <= 1 / 2 + 1 / 3 + 1 / 4


@pytest.mark.parametrize("seed", range(30))
def test_curriculum_matches_reference(seed):
    rng = np.random.default_rng(1000 + seed)
    num_sources, num_stages = int(rng.integers(1, 9)), int(rng.integers(1, 6))
    stage_ends = np.cumsum(rng.integers(1, 800, num_stages))
    stage_weights = np.stack([random_weights(rng, num_sources) for _ in range(num_stages)])
    got = build_curriculum_blending_indices(stage_ends, stage_weights)
    want = reference_curriculum(stage_ends, stage_weights)
    assert [a.dtype for a in got] == [np.int16, np.int64, np.int16]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    sources, samples, stages = got
    # Boundaries exact: the stage changes exactly at stage_ends, and sample stage_ends[k-1] opens stage k.
    np.testing.assert_array_equal(np.flatnonzero(np.diff(stages)) + 1, stage_ends[:-1])
    starts = np.r_[0, stage_ends[:-1]]
    for k, (start, end) in enumerate(zip(starts, stage_ends)):
        assert (stages[start:end] == k).all()
        assert not np.isin(sources[start:end], np.flatnonzero(stage_weights[k] == 0)).any()
        assert_prefix_bounds(sources[start:end], stage_weights[k])
    # Each source's sample numbers run 0, 1, 2, ... across the whole schedule, never repeating.
    for s in range(num_sources):
        np.testing.assert_array_equal(samples[sources == s], np.arange(np.count_nonzero(sources == s)))


def test_curriculum_stage_restarts_the_greedy_position_but_not_the_sample_numbers():
    sources, samples, stages = build_curriculum_blending_indices([4, 8, 12], [[1, 0], [0, 1], [1, 1]])
    assert sources.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1]
    assert samples.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 5, 5]
    assert stages.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_single_stage_curriculum_equals_plain_blending():
    weights = [0.2, 0.0, 0.5, 0.3]
    plain = build_blending_indices(weights, 777)
    staged = build_curriculum_blending_indices([777], [weights])
    np.testing.assert_array_equal(plain[0], staged[0])
    np.testing.assert_array_equal(plain[1], staged[1])


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0.5, -0.1], r"weights\[1\] = -0.1.* is negative"),
        ([np.nan, 1.0], r"weights\[0\] is NaN"),
        ([1.0, np.inf], r"weights\[1\] is infinite"),
        ([0.0, 0.0], "all zero"),
        ([], "at least one source"),
        ([1e308, 1e308], "sum to infinity"),
    ],
)
def test_bad_weights_are_value_errors(weights, message):
    with pytest.raises(ValueError, match=message):
        build_blending_indices(np.array(weights, dtype=float), 10)


def test_bad_sizes_are_value_errors():
    with pytest.raises(ValueError, match="non-negative"):
        build_blending_indices([1.0], -1)
    with pytest.raises(ValueError, match="one-dimensional"):
        build_blending_indices([[1.0]], 3)
    with pytest.raises(ValueError, match="int16"):
        build_blending_indices(np.ones(40_000), 3)
    assert [len(a) for a in build_blending_indices([1.0], 0)] == [0, 0]


@pytest.mark.parametrize(
    "stage_ends, stage_weights, message",
    [
        ([5, 5], [[1], [1]], r"strictly increasing.*stage_ends\[1\] = 5"),
        ([0, 5], [[1], [1]], r"stage_ends\[0\] = 0"),
        ([5, 3], [[1], [1]], r"stage_ends\[1\] = 3"),
        ([5], [[1], [1]], "2 rows for 1 stages"),
        ([5, 9], [[1, 0], [0, 0]], r"stage_weights\[1\] are all zero"),
        ([5, 9], [[1, -1], [1, 1]], r"stage_weights\[0\]\[1\] = -1 is negative"),
        ([5, 9], [[1, 1], [np.nan, 1]], r"stage_weights\[1\]\[0\] is NaN"),
        ([], np.ones((0, 2)), "at least one stage"),
        ([5], [1.0, 1.0], "two-dimensional"),
    ],
)
def test_bad_schedules_are_value_errors(stage_ends, stage_weights, message):
    with pytest.raises(ValueError, match=message):
        build_curriculum_blending_indices(np.array(stage_ends, dtype=np.int64), np.array(stage_weights, dtype=float))
