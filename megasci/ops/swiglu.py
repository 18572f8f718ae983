"""SwiGLU activation of the LLaMA MLP: ``silu(gate) * up``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import dispatch, register_backend, register_op


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


register_op("swiglu", lambda gate, up: "reference")
register_backend("swiglu", "reference", swiglu_reference)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, elementwise."""
    return dispatch("swiglu", gate, up)
