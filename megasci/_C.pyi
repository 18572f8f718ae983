# Signatures of the compiled helpers in csrc/helpers.cpp, for type checkers (they cannot read the .so).
# Keep in step with the m.def lines of PYBIND11_MODULE there.
import numpy as np
import numpy.typing as npt

def build_sample_idx_int32(
    sizes: npt.ArrayLike, doc_idx: npt.ArrayLike, seq_length: int, num_samples: int
) -> npt.NDArray[np.int32]: ...
def build_sample_idx_int64(
    sizes: npt.ArrayLike, doc_idx: npt.ArrayLike, seq_length: int, num_samples: int
) -> npt.NDArray[np.int64]: ...
def build_blending_indices(
    weights: npt.ArrayLike, num_samples: int, rule: int
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int64]]: ...
def build_curriculum_blending_indices(
    stage_ends: npt.ArrayLike, stage_weights: npt.ArrayLike, rule: int
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int64], npt.NDArray[np.int16]]: ...
