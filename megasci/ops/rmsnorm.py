"""RMSNorm with the numerics of transformers' LlamaRMSNorm, so checkpoints match HF bit for bit.

The statistics are taken in float32 (float64 for float64 inputs, so gradients can be checked). The
normalised activations are cast back to the input dtype *before* the weight multiply, exactly as HF
does, so the result has the promoted dtype of ``weight`` and ``x`` (``x.dtype`` when the weight is
stored in the same dtype).

Backends: ``reference`` (plain PyTorch, everywhere), ``triton`` (our fused kernels in
``triton_kernels.py``, same cast order as HF, float32 gradients) and ``apex`` (FusedRMSNorm). On CUDA,
``auto`` picks triton, because it keeps HF's cast order and apex does not; apex is used only when named
with ``set_backend`` or when triton is not installed.
"""

from __future__ import annotations

import torch

from .backends import TRITON_DTYPES, dispatch, module_available, register_backend, register_op


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    input_dtype = x.dtype
    h = x.to(torch.promote_types(input_dtype, torch.float32))
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


def rms_norm_apex(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """apex's fused CUDA kernel: one pass over memory; rounding differs slightly from HF's."""
    from apex.normalization.fused_layer_norm import fused_rms_norm_affine

    return fused_rms_norm_affine(x, weight, weight.shape, eps)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Fused forward and backward kernels; triton is imported on first use, not with megasci."""
    from .triton_kernels import rms_norm_triton as fn

    return fn(x, weight, eps)


_HAS_APEX = module_available("apex")
_HAS_TRITON = module_available("triton")
_TRITON_MAX_COLUMNS = 65536  # the kernel keeps one row in registers


def _triton_available() -> bool:
    """Triton kernels need a GPU; the CPU interpreter is for tests, which call the backend directly."""
    return _HAS_TRITON and torch.cuda.is_available()


def _auto(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> str:
    if not x.is_cuda:
        return "reference"
    if (
        _HAS_TRITON
        and x.dtype in TRITON_DTYPES
        and weight.dtype in TRITON_DTYPES
        and weight.shape == x.shape[-1:]
        and x.shape[-1] <= _TRITON_MAX_COLUMNS
    ):
        return "triton"
    return "apex" if _HAS_APEX else "reference"


register_op("rms_norm", _auto)
register_backend("rms_norm", "reference", rms_norm_reference)
register_backend("rms_norm", "apex", rms_norm_apex, lambda: _HAS_APEX)
register_backend("rms_norm", "triton", rms_norm_triton, _triton_available)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x**2, -1) + eps))``, normalised over the last dimension."""
    return dispatch("rms_norm", x, weight, eps)
