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
