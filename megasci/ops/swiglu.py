"""SwiGLU activation of the LLaMA MLP: ``silu(gate) * up``.

Backends: ``reference`` (plain PyTorch, everywhere) and ``triton`` (our fused kernels in
``triton_kernels.py``: float32 math, one read of gate and up per pass). ``auto`` picks triton for CUDA
tensors of equal shape and dtype, since the kernel does not broadcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import TRITON_DTYPES, dispatch, module_available, register_backend, register_op

_HAS_TRITON = module_available("triton")


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Fused forward and backward kernels; triton is imported on first use, not with megasci."""
    from .triton_kernels import swiglu_triton as fn

    return fn(gate, up)


def _triton_available() -> bool:
    """Triton kernels need a GPU; the CPU interpreter is for tests, which call the backend directly."""
    return _HAS_TRITON and torch.cuda.is_available()


def _auto(gate: torch.Tensor, up: torch.Tensor) -> str:
    if (
        _HAS_TRITON
        and gate.is_cuda
        and up.is_cuda
        and gate.shape == up.shape
        and gate.dtype == up.dtype
        and gate.dtype in TRITON_DTYPES
    ):
        return "triton"
    return "reference"


register_op("swiglu", _auto)
register_backend("swiglu", "reference", swiglu_reference)
register_backend("swiglu", "triton", swiglu_triton, _triton_available)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, elementwise."""
    return dispatch("swiglu", gate, up)
