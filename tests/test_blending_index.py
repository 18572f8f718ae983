"""The C++ blending-index builders against slow pure-Python references, and the prefix bounds.

Greedy (Megatron's megatron/core/datasets/helpers.cpp): sample i (0-based) goes to the positive-weight
source with the largest w_s * max(i, 1) - count_s, ties to the lowest s; samples 0 and 1 both use
the multiplier 1. Prefix bounds, with S' the number of positive-weight sources and
dev_s(n) = count_s(n) - w_s * n after n samples. Over-allocation (proved): from sample 1 on the
errors w_s * i - count_s(i) of the positive-weight sources sum to 0, so the winner's is at least 0,
i.e. its dev is at most 0 before the pick and at most 1 - w_s after it (sample 0 goes to the largest
weight, whose dev becomes 1 - w_s too); a source that is not picked only falls further behind, so
dev_s <= 1 - w_s < 1. Under-allocation: the devs sum to 0, so -dev_s <= sum over t != s of
(1 - w_t) = S' - 2 + w_s, which is w_s (< 1) for two sources. Above two it can exceed one sample:
random searches with N = 3000 reach 1.50, 1.72, 1.91 and 1.81 for S' = 3, 4, 5 and 8. This greedy
rule is an online greedy of the chairman assignment problem (Coppersmith et al., ACM TALG 7(3), 2011).

The default rule="fair" is Tijdeman's rule for that problem (R. Tijdeman, "The chairman assignment
problem", Discrete Math. 32, 1980): with delta = 1/(2(S' - 1)), the sources with
w_s * n - count_s(n - 1) >= delta are eligible for sample n, and the eligible one with the earliest
deadline (count_s(n - 1) + 1 - delta) / w_s wins (ties to the lowest s). Its guarantee,
|dev_s(n)| <= 1 - delta at every prefix for any S' >= 2, is asserted below on random weights with
S' up to 8 and N = 20,000, per stage for curricula; the greedy tests call rule="greedy" explicitly.
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
    """Megatron's rule one sample at a time: among w_s > 0, argmax_s w_s * max(j, 1) - count_s, ties to the lowest s."""
    counts = [0] * len(weights)
    positive = [s for s, w in enumerate(weights) if w > 0]
    sources, samples = [], []
    for j in range(length):
        multiplier = float(max(j, 1))
        errors = [weights[s] * multiplier - counts[s] for s in positive]
        best = positive[errors.index(max(errors))]
        counts[best] += 1
        sources.append(best)
        samples.append(global_counts[best])
        global_counts[best] += 1
    return sources, samples


FAIR_TOLERANCE = 1e-12
FAIR_FALLBACKS = []  # one entry per rounding fallback the fair reference takes; the tests expect none


def reference_fair(weights, length, global_counts):
    """Tijdeman's rule one sample at a time, the same double expressions as the C++.

    n = j + 1; eligible: w_s > 0 and w_s * n - count_s >= delta - 1e-12 * (1 + w_s * n); the
    eligible source with the smallest (count_s + 1 - delta) / w_s wins, ties to the lowest s.
    """
    counts = [0] * len(weights)
    positive = [s for s, w in enumerate(weights) if w > 0]
    sources, samples = [], []
    delta = 1.0 / (2.0 * (len(positive) - 1)) if len(positive) > 1 else 0.0
    for j in range(length):
        n = float(j + 1)
        if len(positive) == 1:
            best = positive[0]
        else:
            best, best_deadline = -1, None
            for s in positive:
                share = weights[s] * n
                if share - counts[s] >= delta - FAIR_TOLERANCE * (1.0 + share):
                    deadline = (counts[s] + 1.0 - delta) / weights[s]
                    if best < 0 or deadline < best_deadline:
                        best, best_deadline = s, deadline
            if best < 0:
                FAIR_FALLBACKS.append((list(weights), j))
                errors = [weights[s] * n - counts[s] for s in positive]
                best = positive[errors.index(max(errors))]
        counts[best] += 1
        sources.append(best)
        samples.append(global_counts[best])
        global_counts[best] += 1
    return sources, samples


REFERENCES = {"greedy": reference_greedy, "fair": reference_fair}


def reference_blending(weights, num_samples, rule):
    sources, samples = REFERENCES[rule](normalise([float(w) for w in weights]), num_samples, [0] * len(weights))
    return np.array(sources, np.int16), np.array(samples, np.int64)


def reference_curriculum(stage_ends, stage_weights, rule):
    global_counts = [0] * len(stage_weights[0])
    sources, samples, stages, start = [], [], [], 0
    for k, (end, weights) in enumerate(zip(stage_ends, stage_weights)):
        s, n = REFERENCES[rule](normalise([float(w) for w in weights]), int(end) - start, global_counts)
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


def fair_bound(positive):
    """Tijdeman's bound 1 - 1/(2(S' - 1)) on |count_s(n) - w_s * n|; one source is exact."""
    return 1 - 1 / (2 * (positive - 1)) if positive > 1 else 0.0


def assert_prefix_bounds(source_index, weights, rule="greedy"):
    positive = int(np.count_nonzero(weights))
    dev = prefix_deviation(source_index, weights)
    slack = 1e-9
    if rule == "fair":
        assert np.abs(dev).max(initial=0) <= fair_bound(positive) + slack
        return
    normalised = np.asarray(normalise([float(w) for w in weights]))
    assert (dev.max(axis=0, initial=0) <= 1 - normalised + slack).all()
    assert (-dev.min(axis=0, initial=0) <= positive - 2 + normalised + slack)[normalised > 0].all()


@pytest.fixture(autouse=True)
def no_fair_fallbacks():
    """The fair rule's rounding fallback is never taken (the C++ matches the reference bit for bit)."""
    FAIR_FALLBACKS.clear()
    yield
    assert FAIR_FALLBACKS == []


@pytest.mark.parametrize("rule", ["greedy", "fair"])
@pytest.mark.parametrize("seed", range(40))
def test_blending_matches_reference(seed, rule):
    rng = np.random.default_rng(seed)
    weights = random_weights(rng, int(rng.integers(1, 9)))
    num_samples = int(rng.integers(0, 3000))
    got_sources, got_samples = build_blending_indices(weights, num_samples, rule=rule)
    want_sources, want_samples = reference_blending(weights, num_samples, rule)
    assert got_sources.dtype == np.int16 and got_samples.dtype == np.int64
    np.testing.assert_array_equal(got_sources, want_sources)
    np.testing.assert_array_equal(got_samples, want_samples)
    assert not np.isin(got_sources, np.flatnonzero(weights == 0)).any()
    assert_prefix_bounds(got_sources, weights, rule)


@pytest.mark.parametrize("num_sources", range(1, 9))
def test_fair_matches_reference_on_many_inputs(num_sources):
    rng = np.random.default_rng(500 + num_sources)
    for _ in range(12):
        weights = random_weights(rng, num_sources)
        num_samples = int(rng.integers(0, 4000))
        got = build_blending_indices(weights, num_samples, rule="fair")
        want = reference_blending(weights, num_samples, "fair")
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_fair_is_the_default():
    for weights in ([0.5, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]):
        np.testing.assert_array_equal(
            build_blending_indices(weights, 500)[0], build_blending_indices(weights, 500, rule="fair")[0]
        )
    sources, samples = build_blending_indices([0.5, 0.3, 0.2], 10)
    assert sources.tolist() == [0, 1, 0, 2, 0, 1, 0, 2, 1, 0]
    assert samples.tolist() == [0, 0, 1, 0, 2, 1, 3, 1, 2, 4]


@pytest.mark.parametrize("num_sources", range(2, 9))
def test_fair_stays_within_tijdemans_bound_at_every_prefix(num_sources):
    """|count_s(n) - w_s n| <= 1 - 1/(2(S'-1)) for every n <= 20,000 and s, on many weight vectors."""
    rng = np.random.default_rng(2000 + num_sources)
    for trial in range(60):
        weights = random_weights(rng, num_sources)
        if trial % 3 == 0:
            weights[weights == 0] = 1.0  # every source positive: S' = num_sources exactly
        sources = build_blending_indices(weights, 20_000, rule="fair")[0]
        assert not np.isin(sources, np.flatnonzero(weights == 0)).any()
        assert_prefix_bounds(sources, weights, "fair")


@pytest.mark.parametrize(
    "weights",
    [
        [1, 1],
        [1, 1, 2],
        [1, 1, 1, 3],
        [1, 1, 1, 1],
        [1, 2, 3, 4, 5, 6, 7, 8],
        [1] * 8,
        [1e-6, 1, 1, 1],
        [1, 1, 1, 1, 1, 5],
        [0.5, 0.25, 0.125, 0.125],
    ],
)
def test_fair_bound_with_exact_ties(weights):
    """Rational weights make w_s n - count_s hit delta exactly; the tolerance keeps those sources eligible."""
    sources = build_blending_indices(weights, 20_000, rule="fair")[0]
    assert_prefix_bounds(sources, np.asarray(weights, float), "fair")
    want = reference_blending(weights, 3000, "fair")[0]
    np.testing.assert_array_equal(sources[:3000], want)


def test_fair_beats_greedy_where_greedy_exceeds_one():
    rng = np.random.default_rng(1)
    worst_greedy = worst_fair = 0.0
    for _ in range(100):
        weights = rng.random(4) ** 8
        worst_greedy = max(
            worst_greedy,
            np.abs(prefix_deviation(build_blending_indices(weights, 4000, rule="greedy")[0], weights)).max(),
        )
        worst_fair = max(worst_fair, np.abs(prefix_deviation(build_blending_indices(weights, 4000)[0], weights)).max())
    assert worst_greedy > 1 and worst_fair <= fair_bound(4) + 1e-9


@pytest.mark.parametrize("rule", ["greedy", "fair"])
def test_bad_rule_is_a_value_error(rule):
    with pytest.raises(ValueError, match="rule must be one of"):
        build_blending_indices([1.0], 3, rule=rule.upper())
    with pytest.raises(ValueError, match="rule must be one of"):
        build_curriculum_blending_indices([3], [[1.0]], rule=None)


@pytest.mark.parametrize("rule", ["greedy", "fair"])
def test_source_sample_index_counts_each_source_from_zero(rule):
    sources, samples = build_blending_indices([0.5, 0.3, 0.2], 1000, rule=rule)
    for s in range(3):
        np.testing.assert_array_equal(samples[sources == s], np.arange(np.count_nonzero(sources == s)))


def test_known_sequence_and_ties_go_to_the_lowest_source():
    sources, samples = build_blending_indices([0.5, 0.3, 0.2], 10, rule="greedy")
    assert sources.tolist() == [0, 1, 2, 0, 1, 0, 2, 0, 1, 0]
    assert samples.tolist() == [0, 0, 0, 1, 1, 2, 1, 3, 2, 4]
    assert build_blending_indices([1, 1, 1], 6, rule="greedy")[0].tolist() == [0, 1, 2, 0, 1, 2]
    assert build_blending_indices([1, 1, 1], 6, rule="fair")[0].tolist() == [0, 1, 2, 0, 1, 2]


def test_greedy_is_megatrons_sequence():
    """Megatron's helpers.cpp for weights [0.3, 0.7] and 20 samples (samples 0 and 1 share the multiplier 1)."""
    sources, samples = build_blending_indices([0.3, 0.7], 20, rule="greedy")
    assert sources.tolist() == [1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1]
    assert samples.tolist() == [0, 0, 1, 2, 1, 3, 4, 2, 5, 6, 3, 7, 8, 9, 4, 10, 11, 5, 12, 13]


@pytest.mark.parametrize("num_sources", range(1, 9))
def test_greedy_matches_reference_on_positive_random_weights(num_sources):
    """All weights positive, the blends Megatron itself accepts: the C++ equals the stated rule bit for bit."""
    rng = np.random.default_rng(700 + num_sources)
    for _ in range(10):
        weights = random_weights(rng, num_sources)
        weights[weights == 0] = rng.random(np.count_nonzero(weights == 0)) + 1e-3
        num_samples = int(rng.integers(0, 4000))
        got = build_blending_indices(weights, num_samples, rule="greedy")
        want = reference_blending(weights, num_samples, "greedy")
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert_prefix_bounds(got[0], weights)


def test_greedy_zero_weights_never_win_a_tie():
    """At sample 2 of [0, 0.5, 0.5] every error is 0 and Megatron's tie goes to source 0; ours skips it,
    giving Megatron's sequence for the blend without that source."""
    with_zero = build_blending_indices([0.0, 0.5, 0.5], 50, rule="greedy")[0]
    without = build_blending_indices([0.5, 0.5], 50, rule="greedy")[0]
    np.testing.assert_array_equal(with_zero, without + 1)


@pytest.mark.parametrize("rule", ["greedy", "fair"])
def test_weights_are_normalised(rule):
    np.testing.assert_array_equal(
        build_blending_indices([2, 6], 50, rule=rule)[0], build_blending_indices([0.25, 0.75], 50, rule=rule)[0]
    )


@pytest.mark.parametrize("num_sources", [2, 3, 4, 8])
def test_prefix_bounds_on_many_weights(num_sources):
    rng = np.random.default_rng(num_sources)
    for _ in range(50):
        weights = random_weights(rng, num_sources)
        assert_prefix_bounds(build_blending_indices(weights, 5000, rule="greedy")[0], weights)


@pytest.mark.parametrize("rule", ["greedy", "fair"])
def test_two_and_three_sources_stay_within_one_sample_at_scale(rule):
    for weights in ([0.7, 0.3], [0.6, 0.3, 0.1], [1e-6, 1, 1], [0.5, 0.25, 0.25]):
        dev = prefix_deviation(build_blending_indices(weights, 200_000, rule=rule)[0], weights)
        assert np.abs(dev).max() <= 1
        if rule == "fair":
            assert np.abs(dev).max() <= fair_bound(len(weights)) + 1e-9


def test_under_allocation_can_exceed_one_with_many_sources():
    """Why greedy's under-allocation bound is S' - 2 + w_s and not 1: four sources, found by random search."""
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(400):
        weights = rng.random(4) ** 8
        worst = max(worst, -prefix_deviation(build_blending_indices(weights, 4000, rule="greedy")[0], weights).min())
    assert 1 < worst < 4 - 1  # S' - 2 + w_s < S' - 1


@pytest.mark.parametrize("rule", ["greedy", "fair"])
@pytest.mark.parametrize("seed", range(30))
def test_curriculum_matches_reference(seed, rule):
    rng = np.random.default_rng(1000 + seed)
    num_sources, num_stages = int(rng.integers(1, 9)), int(rng.integers(1, 6))
    stage_ends = np.cumsum(rng.integers(1, 800, num_stages))
    stage_weights = np.stack([random_weights(rng, num_sources) for _ in range(num_stages)])
    got = build_curriculum_blending_indices(stage_ends, stage_weights, rule=rule)
    want = reference_curriculum(stage_ends, stage_weights, rule)
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
        assert_prefix_bounds(sources[start:end], stage_weights[k], rule)
    # Each source's sample numbers run 0, 1, 2, ... across the whole schedule, never repeating.
    for s in range(num_sources):
        np.testing.assert_array_equal(samples[sources == s], np.arange(np.count_nonzero(sources == s)))


@pytest.mark.parametrize("rule", ["greedy", "fair"])
def test_curriculum_stage_restarts_the_position_but_not_the_sample_numbers(rule):
    sources, samples, stages = build_curriculum_blending_indices([4, 8, 12], [[1, 0], [0, 1], [1, 1]], rule=rule)
    assert sources.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1]
    assert samples.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 5, 5]
    assert stages.tolist() == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("rule", ["greedy", "fair"])
def test_single_stage_curriculum_equals_plain_blending(rule):
    weights = [0.2, 0.0, 0.5, 0.3]
    plain = build_blending_indices(weights, 777, rule=rule)
    staged = build_curriculum_blending_indices([777], [weights], rule=rule)
    np.testing.assert_array_equal(plain[0], staged[0])
    np.testing.assert_array_equal(plain[1], staged[1])


def test_curriculum_default_is_fair():
    ends, weights = [300, 700], [[0.1, 0.2, 0.3, 0.4], [0.4, 0.0, 0.3, 0.3]]
    for a, b in zip(
        build_curriculum_blending_indices(ends, weights), build_curriculum_blending_indices(ends, weights, rule="fair")
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("num_sources", [2, 4, 6, 8])
def test_fair_curriculum_stays_within_the_bound_in_every_stage(num_sources):
    """The bound with stage-local n and counts, stage by stage, over 20,000 samples."""
    rng = np.random.default_rng(3000 + num_sources)
    for _ in range(10):
        num_stages = int(rng.integers(1, 6))
        stage_ends = np.sort(rng.choice(np.arange(1, 20_000), num_stages - 1, replace=False))
        stage_ends = np.r_[stage_ends, 20_000]
        stage_weights = np.stack([random_weights(rng, num_sources) for _ in range(num_stages)])
        sources, samples, _ = build_curriculum_blending_indices(stage_ends, stage_weights, rule="fair")
        for start, end, weights in zip(np.r_[0, stage_ends[:-1]], stage_ends, stage_weights):
            assert_prefix_bounds(sources[start:end], weights, "fair")
        for s in range(num_sources):
            np.testing.assert_array_equal(samples[sources == s], np.arange(np.count_nonzero(sources == s)))


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
