"""RMSNorm with the numerics of transformers' LlamaRMSNorm, so checkpoints match HF bit for bit.

The statistics are taken in float32 (float64 for float64 inputs, so gradients can be checked). The
normalised activations are cast back to the input dtype *before* the weight multiply, exactly as HF
does, so the result has the promoted dtype of ``weight`` and ``x`` (``x.dtype`` when the weight is
stored in the same dtype).
"""

from __future__ import annotations

import torch

from .backends import dispatch, module_available, register_backend, register_op


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


_HAS_APEX = module_available("apex")


def _auto(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> str:
    return "apex" if _HAS_APEX and x.is_cuda else "reference"


register_op("rms_norm", _auto)
register_backend("rms_norm", "reference", rms_norm_reference)
register_backend("rms_norm", "apex", rms_norm_apex, lambda: _HAS_APEX)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``weight * (x / sqrt(mean(x**2, -1) + eps))``, normalised over the last dimension."""
    return dispatch("rms_norm", x, weight, eps)
