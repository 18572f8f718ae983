"""Numerical building blocks of the LLaMA-style model, each behind a swappable backend.

Every op has a plain PyTorch ``reference`` implementation that runs on CPU and is tested against
transformers' LLaMA code; ``auto`` (the default) picks a faster one when the inputs allow (our
Triton RMSNorm, SwiGLU, RoPE and cross-entropy kernels and flash-attn on CUDA, apex FusedRMSNorm when
named or when triton is missing, PyTorch SDPA elsewhere, the fused chunked cross-entropy everywhere).
``set_backend(op, name)`` forces a choice for every later call.

The Triton kernels (triton_kernels.py) are verified against the reference paths under Triton's
CPU interpreter (tests/test_triton_ops.py; triton is pinned in the dev extra) and run compiled by the
same tests where CUDA is present (``pytest -m gpu``); their speed still needs a GPU session. There is
no separate ``torch.compile`` path for swiglu or rms_norm: the reference paths are plain tensor code
that ``torch.compile`` of the whole model traces and fuses (a test checks that all ops trace into a
single graph).

Op names for the registry: ``rms_norm``, ``swiglu``, ``attention``, ``cross_entropy_loss``,
``apply_rotary``: the ops with several implementations. The rotary tables (and the RoPE scaling
variants behind them) and the cached-decode attention have one and are plain functions.
"""

from .attention import attention, cached_attention
from .backends import available_backends, get_backend, register_backend, resolve_backend, set_backend
from .loss import cross_entropy_loss
from .rmsnorm import rms_norm
from .rotary import apply_rotary, check_rope_scaling, rope_frequencies, rotary_tables
from .swiglu import swiglu

__all__ = [
    "apply_rotary",
    "attention",
    "cached_attention",
    "available_backends",
    "check_rope_scaling",
    "cross_entropy_loss",
    "get_backend",
    "register_backend",
    "resolve_backend",
    "rms_norm",
    "rope_frequencies",
    "rotary_tables",
    "set_backend",
    "swiglu",
]
