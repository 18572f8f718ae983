"""The one Python door to the C++ helpers in csrc/ (built as megasci._C by setup.py)."""

from __future__ import annotations

import numpy as np

try:
    from megasci import _C
except ImportError as e:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "megasci's C++ extension is not built (megasci._C). Run `pip install -e .` in the repository, "
        f"which compiles csrc/ with pybind11. Original error: {e}"
    ) from None


def build_sample_idx(
    sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_samples: int, dtype=None
) -> np.ndarray:
    """(num_samples + 1, 2) starts of `seq_length + 1`-token samples over documents in `doc_idx` order.

    int32 unless positions or offsets could exceed it (then int64), or as `dtype` says.
    """
    sizes = np.ascontiguousarray(sizes, dtype=np.int32)
    doc_idx = np.ascontiguousarray(doc_idx, dtype=np.int64)
    if dtype is None:
        fits32 = len(doc_idx) < 2**31 and (sizes.max(initial=0) < 2**31)
        dtype = np.int32 if fits32 else np.int64
    builder = _C.build_sample_idx_int32 if np.dtype(dtype) == np.int32 else _C.build_sample_idx_int64
    return builder(sizes, doc_idx, int(seq_length), int(num_samples))


RULES = {"greedy": 0, "fair": 1}
"""Blending rules by name (the C++ takes the number). "fair" is the default."""


def _rule_id(rule: str) -> int:
    try:
        return RULES[rule]
    except (KeyError, TypeError):
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}") from None


def build_blending_indices(weights, num_samples: int, rule: str = "fair") -> tuple[np.ndarray, np.ndarray]:
    """(source_index int16, source_sample_index int64) of `num_samples` samples blended by `weights`.

    Deterministic. Each sample takes its source's next sample number. Weights are normalised;
    negative, NaN, infinite or all-zero weights raise ValueError, and zero-weight sources are
    never chosen. With P sources of positive weight, count_s(n) the picks of s among the first n
    samples and w_s the normalised weights:

    - rule="fair" (default), Tijdeman's rule for the chairman assignment problem: with
      delta = 1 / (2 (P - 1)), sample n (1-based) goes, among the sources with
      w_s * n - count_s(n - 1) >= delta (up to a 1e-12 * (1 + w_s * n) rounding tolerance), to
      the one with the earliest deadline (count_s(n - 1) + 1 - delta) / w_s, ties to the lowest s.
      Every prefix then satisfies |count_s(n) - w_s * n| <= 1 - delta (< 1) for any P; P = 1 takes
      the one source throughout. Were no source eligible through rounding (never seen), the
      sample goes to the largest w_s * n - count_s(n - 1).
    - rule="greedy", Megatron's rule (its helpers.cpp): sample i (0-based) goes to
      argmax_s w_s * max(i, 1) - count_s over the positive-weight sources, ties to the lowest s.
      Samples 0 and 1 both use the multiplier 1, so (P >= 2) sample 1 goes to the largest weight
      among the sources sample 0 did not take, however small. Bit-exact with Megatron for positive
      weights (Megatron lets a zero-weight source win an exact tie at error 0); over-allocation
      is at most 1 - w_s, but under-allocation can exceed one sample once P >= 3.
    """
    return _C.build_blending_indices(np.ascontiguousarray(weights, dtype=np.float64), int(num_samples), _rule_id(rule))


def build_curriculum_blending_indices(
    stage_ends, stage_weights, rule: str = "fair"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source_index int16, source_sample_index int64, stage_index int16) for a staged blend.

    Stage k covers global samples [stage_ends[k-1], stage_ends[k]) (stage_ends strictly
    increasing from above 0; the last is the sample count) and blends by row k of
    `stage_weights` (stages, sources) with `rule` (as in build_blending_indices), restarting the
    rule's position and counts at the stage start, so every stage tracks its own shares (and
    the fair rule's bound holds within each stage with stage-local n). source_sample_index keeps
    counting per source across stages, so a source returning in a later stage continues where
    it stopped.
    """
    return _C.build_curriculum_blending_indices(
        np.ascontiguousarray(stage_ends, dtype=np.int64),
        np.ascontiguousarray(stage_weights, dtype=np.float64),
        _rule_id(rule),
    )
