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


def build_sample_idx(sizes: np.ndarray, doc_idx: np.ndarray, seq_length: int, num_samples: int,
                     dtype=None) -> np.ndarray:
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


def build_blending_indices(weights, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(source_index int16, source_sample_index int64) of `num_samples` samples blended by `weights`.

    Greedy and deterministic: sample i goes to the source furthest behind its share,
    argmax_s weights[s] * (i + 1) - count[s] with ties to the lowest s, and takes that source's
    next sample number. Weights are normalised; negative, NaN, infinite or all-zero weights raise
    ValueError, and zero-weight sources are never chosen.
    """
    return _C.build_blending_indices(np.ascontiguousarray(weights, dtype=np.float64), int(num_samples))


def build_curriculum_blending_indices(stage_ends, stage_weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source_index int16, source_sample_index int64, stage_index int16) for a staged blend.

    Stage k covers global samples [stage_ends[k-1], stage_ends[k]) (stage_ends strictly
    increasing from above 0; the last is the sample count) and blends by row k of
    `stage_weights` (stages, sources), restarting the greedy rule's position and counts at the
    stage start, so every stage tracks its own shares. source_sample_index keeps counting per
    source across stages, so a source returning in a later stage continues where it stopped.
    """
    return _C.build_curriculum_blending_indices(np.ascontiguousarray(stage_ends, dtype=np.int64),
                                                np.ascontiguousarray(stage_weights, dtype=np.float64))
